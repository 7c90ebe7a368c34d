"""Progress that a log can read, and no third-party progress bars in our output."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

from vlm_cli import console
from vlm_cli.console import LogProgress
from vlm_cli.train.report import StageProgress


def test_log_progress_prints_step_total_rate_and_eta_while_idle():
    out = io.StringIO()
    with LogProgress("clips", interval=0.05, file=out) as bar:
        task = bar.add_task("preprocess", total=10)
        bar.advance(task, 4)
        time.sleep(0.3)  # no update meanwhile: lines keep coming (the step is alive)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3, lines
    assert all(re.match(r"^\[\d\d:\d\d:\d\d\] preprocess: 4/10 clips \(40%\), [\d.]+ clips/s, "
                        r"elapsed 0:00:00, ETA 0:00:\d\d$", line) for line in lines), lines


def test_log_progress_final_line_and_unknown_total():
    out = io.StringIO()
    with LogProgress("clips", interval=60, file=out) as bar:
        task = bar.add_task("preprocess", total=None)
        bar.advance(task)
        bar.advance(task)
    (line,) = out.getvalue().splitlines()  # nothing until the end, then the final state
    assert line.endswith("preprocess: 2 clips, " + line.split(", ")[1] + ", elapsed 0:00:00")
    assert "ETA" not in line


def test_stage_progress_in_a_log_shows_loss_and_lr(monkeypatch):
    from vlm_cli.train.loop import StepMetrics

    out = io.StringIO()
    monkeypatch.setattr(console, "LOG_INTERVAL_S", 60)
    monkeypatch.setattr(sys, "stderr", out)  # not a terminal
    fields = {f.name: 0 for f in StepMetrics.__dataclass_fields__.values()}
    with StageProgress("stage 1") as progress:
        assert isinstance(progress.bar, LogProgress)
        progress.update(StepMetrics(**{**fields, "step": 3, "total": 12, "loss": 0.5,
                                       "lr": 1e-4, "samples_per_s": 32.0}))
    line = out.getvalue().strip()
    assert re.search(r"stage 1: 3/12 steps \(25%\), .* loss 0\.5000 lr 1\.00e-04 32\.0 "
                     r"samples/s$", line), line


def test_progress_bar_is_rich_on_a_terminal_and_plain_lines_otherwise(monkeypatch):
    from rich.progress import Progress

    monkeypatch.setattr(console.stderr, "_force_terminal", True)
    assert isinstance(console.progress_bar("clips"), Progress)
    monkeypatch.setattr(console.stderr, "_force_terminal", False)
    assert isinstance(console.progress_bar("clips"), LogProgress)


def test_command_boundary_turns_third_party_bars_off():
    """transformers and huggingface_hub read the switch at import: it is set before either is
    imported, and flipped directly when one already is."""
    code = ("import sys; from vlm_cli.runtime import quiet_third_party; quiet_third_party(); "
            "from transformers.utils import logging; "
            "from huggingface_hub.utils import are_progress_bars_disabled; "
            "print(logging.is_progress_bar_enabled(), are_progress_bars_disabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["False", "True"]
    code = ("from transformers.utils import logging; from vlm_cli.runtime import "
            "quiet_third_party; quiet_third_party(); print(logging.is_progress_bar_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["False"]


def test_log_progress_prints_nothing_more_when_the_step_fails():
    """An error ends in one line of its own: no progress line after it."""
    out = io.StringIO()
    try:
        with LogProgress("MB", interval=60, file=out) as bar:
            bar.add_task("org/model", total=10)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert out.getvalue() == ""
