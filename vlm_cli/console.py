"""Terminal output shared by the commands: results on stdout, progress and logs on stderr.

``vlm ... --json | jq`` must work, so stdout carries only results (a table, an answer, one JSON
object) and everything else (progress bars, warnings) goes to stderr.

``console.stdout`` and ``console.stderr`` are rich ``Console`` objects, built (and rich imported,
~40 ms on 2 cores) on first use: a cached ``vlm preprocess --json`` or ``vlm ask --json`` whose
stderr is a log never needs rich.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

_consoles: dict[str, Console] = {}


def _console(name: str) -> Console:
    """The rich Console writing to ``name`` (``stdout`` or ``stderr``), made on first use."""
    if name not in _consoles:
        from rich.console import Console

        _consoles[name] = Console(stderr=name == "stderr", highlight=False, soft_wrap=True)
    return _consoles[name]


def __getattr__(name: str) -> Any:
    """``console.stdout`` / ``console.stderr`` (PEP 562: built when first asked for)."""
    if name in ("stdout", "stderr"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def warn(message: str) -> None:
    """One warning line on stderr."""
    _console("stderr").print(f"[yellow]warning:[/] {message}", markup=True)


def info(message: str) -> None:
    """One informational line on stderr (what the toolkit chose or did, e.g. the device)."""
    _console("stderr").print(message, markup=False)


def print_json(obj: Any) -> None:
    """One JSON object on stdout (no colour codes, one line, for scripts)."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


#: Environment variables with which rich treats a pipe or file as a terminal.
_FORCE_TERMINAL = ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE")


def _stderr_is_terminal() -> bool:
    """rich's ``Console.is_terminal`` for stderr; for a pipe or a file, with none of
    :data:`_FORCE_TERMINAL` set and no Console made yet, False without importing rich."""
    if ("stderr" not in _consoles and not sys.stderr.isatty()
            and not any(os.environ.get(v) for v in _FORCE_TERMINAL)):
        return False
    return _console("stderr").is_terminal


#: Seconds between two progress lines when stderr is not a terminal (a log, CI, ``| cat``).
LOG_INTERVAL_S = 15.0


def progress_bar(unit: str, detail: str | None = None) -> Progress | LogProgress:
    """Progress on stderr: description, done/total, rate, elapsed, ETA (and ``detail``).

    On a terminal this is a live rich bar. Otherwise (``make demo > log 2>&1``, CI, nohup) a
    rich bar prints nothing until it ends, so a :class:`LogProgress` prints one plain line every
    :data:`LOG_INTERVAL_S` seconds instead.

    Args:
        unit: what is counted, plural (``clips``, ``steps``), shown in the rate.
        detail: a format string over the task's fields, e.g. ``"loss {task.fields[loss]:.4f}"``.
    """
    if not _stderr_is_terminal():
        return LogProgress(unit, detail)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second since the task started, e.g. ``12.3 clips/s``."""

        def render(self, task: Task) -> Text:
            elapsed = task.elapsed or 0.0
            rate = task.completed / elapsed if elapsed > 0 else 0.0
            return Text(f"{rate:.1f} {unit}/s")

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    if detail:
        columns.insert(4, TextColumn(detail))
    return Progress(*columns, console=_console("stderr"), transient=False)


class _LogTask:
    """One counted task of a :class:`LogProgress` (the attributes rich's ``Task`` has)."""

    def __init__(self, description: str, total: float | None, completed: float,
                 fields: dict) -> None:
        self.description, self.total, self.completed, self.fields = (description, total,
                                                                     completed, fields)
        self.start, self.start_completed = time.monotonic(), completed
        self.printed = False


class LogProgress:
    """Plain progress lines for a stderr that is not a terminal, with rich ``Progress``'s API
    (``add_task``, ``update``, ``advance``; a context manager).

    A background thread prints every task's state every ``interval`` seconds, whether or not it
    advanced (so a slow step still shows it is alive), and each task's final state on a normal exit::

        [03:12:45] stage 1: 120/900 steps (13%), 8.1 steps/s, elapsed 0:00:15, ETA 0:01:36, loss 0.4120
    """

    def __init__(self, unit: str, detail: str | None = None, *,
                 interval: float = LOG_INTERVAL_S, file: Any = None) -> None:
        self.unit, self.detail, self.interval = unit, detail, interval
        self.file = file
        self.tasks: list[_LogTask] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlm-progress", daemon=True)

    def __enter__(self) -> LogProgress:
        self._thread.start()
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        if kind is not None:  # the error is reported on its own line, alone
            return
        with self._lock:
            for task in self.tasks:
                self._print(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 **fields: Any) -> int:
        with self._lock:
            self.tasks.append(_LogTask(description, total, completed, fields))
            return len(self.tasks) - 1

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, **fields: Any) -> None:
        with self._lock:
            task = self.tasks[task_id]
            if total is not None:
                task.total = total
            if completed is not None:
                task.completed = completed
            if advance is not None:
                task.completed += advance
            task.fields.update(fields)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                for task in self.tasks:
                    self._print(task)

    def line(self, task: _LogTask) -> str:
        """The progress line of ``task`` (without the time stamp)."""
        elapsed = time.monotonic() - task.start
        done = task.completed
        rate = (done - task.start_completed) / elapsed if elapsed > 0 else 0.0
        count = f"{done:g}/{task.total:g} {self.unit}" if task.total else f"{done:g} {self.unit}"
        if task.total:
            count += f" ({100 * done / task.total:.0f}%)"
        parts = [count, f"{rate:.1f} {self.unit}/s", f"elapsed {_clock(elapsed)}"]
        if task.total and rate > 0:
            parts.append(f"ETA {_clock(max(task.total - done, 0) / rate)}")
        elif task.total:
            parts.append("ETA -")
        if self.detail:
            parts.append(self.detail.format(task=task))
        return f"{task.description}: " + ", ".join(parts)

    def _print(self, task: _LogTask) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {self.line(task)}", file=self.file or sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
