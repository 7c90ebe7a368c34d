"""A process pool that survives its workers: a crash or hang fails one task, not the run.

decord is known to abort the whole process (SIGABRT / SIGSEGV) on some corrupt files, and a bad
file can make a decoder hang. ``concurrent.futures.ProcessPoolExecutor`` marks the whole pool broken
when one worker dies; :func:`run_isolated` instead reports that task as failed (with the signal or
the timeout), starts a replacement worker and goes on. Workers are started with ``spawn`` (never
``fork`` a process that holds torch threads) and run one task at a time, so a failure is always
attributed to the right task.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import signal
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
                 ) -> Iterator[tuple[int, Any]]:
    """Run ``fn`` on every task in worker processes; yield ``(task index, result)`` as each ends.

    Args:
        fn: a module-level (picklable) function of one task.
        tasks: picklable task objects.
        workers: number of worker processes (≥ 1).
        timeout_s: a task running longer is killed and reported as failed; None = no limit.
        initializer: run once in each worker before its first task (e.g. limit torch threads).

    Yields:
        ``(index, result)`` in completion order; result is ``fn``'s return value, or a
        :class:`TaskFailure` when ``fn`` raised (its message), the worker died (the signal), or
        the task timed out. Every task is yielded exactly once.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    ctx = mp.get_context("spawn")
    pending = deque(enumerate(tasks))
    pool: list[_Worker] = []

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
        while pool:
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
