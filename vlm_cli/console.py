"""Terminal output shared by the commands: results on stdout, progress and logs on stderr.

``vlm ... --json | jq`` must work, so stdout carries only results (a table, an answer, one JSON
object) and everything else (progress bars, warnings) goes to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """One warning line on stderr."""
    stderr.print(f"[yellow]warning:[/] {message}", markup=True)


def info(message: str) -> None:
    """One informational line on stderr (what the toolkit chose or did, e.g. the device)."""
    stderr.print(message, markup=False)


def print_json(obj: Any) -> None:
    """One JSON object on stdout (no colour codes, one line, for scripts)."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


class RateColumn(ProgressColumn):
    """Items per second since the task started, e.g. ``12.3 clips/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:.1f} {self.unit}/s")


def progress_bar(unit: str) -> Progress:
    """A rich progress bar on stderr: description, bar, done/total, rate, elapsed, ETA."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    RateColumn(unit), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=stderr, transient=False)
