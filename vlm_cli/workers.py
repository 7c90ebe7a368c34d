"""A process pool that survives its workers: a crash or hang fails one task, not the run.

decord is known to abort the whole process (SIGABRT / SIGSEGV) on some corrupt files, and a bad
file can make a decoder hang. ``concurrent.futures.ProcessPoolExecutor`` marks the whole pool broken
when one worker dies; :func:`run_isolated` instead reports that task as failed (with the signal or
the timeout), starts a replacement worker and goes on. Workers never ``fork`` the calling
process (which may hold torch threads): where the platform has it, they are forked from a
``forkserver`` process, a fresh single-threaded process that imports the modules the caller names
(``preload``: torch, the decoders) once, so that each worker starts in milliseconds instead of
importing torch again (~2 s of CPU per worker); elsewhere they are started with ``spawn``. They
run one task at a time, so a failure is always attributed to the right task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from vlm_cli.errors import MediaError, VlmError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TaskFailure:
    """A task that did not produce a result: ``reason`` is one line for the user."""

    reason: str


def _worker_main(conn: Connection, fn: Callable[[Any], Any],
                 initializer: Callable[[], None] | None) -> None:
    if initializer is not None:
        initializer()
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        index, task = msg
        try:
            reply = ("ok", fn(task))
        except MediaError as err:
            reply = ("err", err.reason)
        except VlmError as err:
            reply = ("err", str(err))
        except Exception as err:  # any decoder error fails this task only, with its message
            reply = ("err", f"{type(err).__name__}: {err}")
        conn.send((index, reply))


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"decoder process crashed ({name})"
    return f"decoder process exited unexpectedly (exit code {exitcode})"


@dataclasses.dataclass
class _Worker:
    process: Any
    conn: Connection
    index: int | None = None
    started: float = 0.0


def run_isolated(fn: Callable[[T], Any], tasks: Sequence[T], *, workers: int,
                 timeout_s: float | None = None,
                 initializer: Callable[[], None] | None = None,
                 on_running: Callable[[int], None] | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 preload: Sequence[str] = (),
                 ) -> Iterator[tuple[int, Any]]:
    """Run ``fn`` on every task in worker processes; yield ``(task index, result)`` as each ends.

    Args:
        fn: a module-level (picklable) function of one task.
        tasks: picklable task objects.
        workers: number of worker processes (≥ 1).
        timeout_s: a task running longer is killed and reported as failed; None = no limit.
        initializer: run once in each worker before its first task (e.g. limit torch threads).
        on_running: called with the number of tasks being worked on whenever it changes (e.g.
            to give the cores the workers leave idle to another part of the program).
        cancelled: checked about once a second and after each task; when it returns True the
            workers are killed and nothing more is yielded.
        preload: modules the forkserver imports once for all workers (e.g. ``torch``); only the
            first call of the program sets them (the server is started once).

    Yields:
        ``(index, result)`` in completion order; result is ``fn``'s return value, or a
        :class:`TaskFailure` when ``fn`` raised (its message), the worker died (the signal), or
        the task timed out. Every task is yielded exactly once.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    ctx = _context(preload)
    pending = deque(enumerate(tasks))
    pool: list[_Worker] = []
    running = 0

    def count(change: int) -> None:
        nonlocal running
        running += change
        if on_running is not None:
            on_running(running)

    def start() -> _Worker:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, fn, initializer), daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def assign(worker: _Worker) -> None:
        worker.index, task = pending.popleft()
        worker.started = time.monotonic()
        worker.conn.send((worker.index, task))
        count(+1)

    def retire(worker: _Worker, kill: bool) -> None:
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()
        pool.remove(worker)

    try:
        for _ in range(min(workers, len(pending))):
            pool.append(start())
            assign(pool[-1])
        while pool and not (cancelled is not None and cancelled()):
            waitables = [w.conn for w in pool] + [w.process.sentinel for w in pool]
            wait(waitables, timeout=1.0)
            now = time.monotonic()
            for worker in list(pool):
                outcome = None
                if worker.conn.poll():
                    try:
                        _, (status, payload) = worker.conn.recv()
                        outcome = payload if status == "ok" else TaskFailure(payload)
                    except (EOFError, OSError):  # died mid-reply
                        worker.process.join(timeout=5)
                        outcome = TaskFailure(_death_reason(worker.process.exitcode))
                    dead = isinstance(outcome, TaskFailure) and not worker.process.is_alive()
                elif not worker.process.is_alive():
                    worker.process.join(timeout=5)
                    outcome, dead = TaskFailure(_death_reason(worker.process.exitcode)), True
                elif timeout_s is not None and now - worker.started > timeout_s:
                    outcome, dead = TaskFailure(f"timed out after {timeout_s:g} s"), True
                    worker.process.kill()
                else:
                    continue
                index = worker.index
                worker.index = None
                count(-1)
                yield index, outcome
                if dead:
                    retire(worker, kill=True)
                    if pending:
                        pool.append(start())
                        assign(pool[-1])
                elif pending:
                    assign(worker)
                else:
                    worker.conn.send(None)
                    retire(worker, kill=False)
    finally:
        for worker in list(pool):
            retire(worker, kill=True)


def _context(preload: Sequence[str]) -> Any:
    """The ``forkserver`` context with ``preload`` set (the first call's list is the one the
    server imports), or ``spawn`` where the platform has no forkserver."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


def start_forkserver(preload: Sequence[str] = ()) -> None:
    """Start the forkserver now, so that it imports ``preload`` (torch, the decoders: ~1 s of
    CPU) while the caller does other work (e.g. hashes the rest of its files), instead of when
    :func:`run_isolated` first needs a worker. ``multiprocessing.forkserver.ensure_running``
    only launches the server (its imports run in it); nothing happens where there is no
    forkserver, or when it is running already."""
    if _context(preload).get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    forkserver.ensure_running()


def stop_forkserver() -> None:
    """Kill the forkserver this process started (if any) without waiting for it to finish.

    For the command line's exit (:func:`vlm_cli.cli.main`), once every pool is closed: left
    alone, the server notices the exit and goes through the interpreter's teardown of torch
    (0.3-0.5 s on 2 cores), holding the caller's stdout and stderr open meanwhile, so that
    ``$(vlm preprocess ... --json)`` or ``subprocess.run(..., capture_output=True)`` waited for
    it. It holds no files and has no task left. Uses multiprocessing's private
    ``_forkserver._forkserver_pid`` (CPython 3.8-3.13); where it is absent nothing happens.
    """
    server = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # already gone
            pass


class Prefetched:
    """Results of an iterator produced ahead in a background thread (see :func:`prefetched`)."""

    _END = object()

    def __init__(self, make: Callable[[Callable[[], bool]], Iterator[Any]], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(make(self._stop.is_set),),
                                        daemon=True, name="vlm-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, results: Iterator[Any]) -> None:
        try:
            for item in results:
                if not self._put(item):
                    break
        except BaseException as err:  # handed to the consumer, raised there
            self._error = err
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
            self._put(self._END)

    def take(self, most: int) -> list[Any]:
        """Wait for the next result, then take those already produced, ``most`` in all;
        ``[]`` once the iterator is exhausted.

        Raises:
            BaseException: whatever the iterator raised, once the results before it are taken.
        """
        out: list[Any] = []
        while not self._done and len(out) < most:
            try:
                item = self._queue.get() if not out else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is self._END:
                self._done = True
                if self._error is not None:
                    raise self._error
                break
            out.append(item)
        return out

    def ready(self) -> int:
        """How many results are waiting to be taken."""
        return self._queue.qsize()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def prefetched(make: Callable[[Callable[[], bool]], Iterator[Any]],
               depth: int) -> Iterator[Prefetched]:
    """Run the iterator ``make(cancelled)`` returns (e.g. :func:`run_isolated`, with
    ``cancelled`` passed on) in a background thread that keeps up to ``depth`` results ready, so
    that its producers go on while the caller works on earlier results (decoders decode ahead
    while the encoder runs). Leaving the block makes ``cancelled()`` true, closes the iterator
    (a pool's workers are ended) and joins the thread."""
    ahead = Prefetched(make, depth)
    try:
        yield ahead
    finally:
        ahead.close()
