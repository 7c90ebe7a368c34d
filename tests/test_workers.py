"""The crash-isolated pool: an abort, an exception or a hang fails one task only."""

from __future__ import annotations

import os
import time

from vlm_cli.errors import MediaError
from vlm_cli.workers import TaskFailure, run_isolated


def flaky(task: str) -> str:
    if task == "abort":
        os.abort()  # what decord does on some corrupt files
    if task == "raise":
        raise MediaError("clip.mp4", "cannot decode")
    if task == "hang":
        time.sleep(60)
    return task.upper()


def test_failures_are_isolated_and_every_task_reported():
    tasks = ["a", "abort", "b", "raise", "hang", "c", "d"]
    results = dict(run_isolated(flaky, tasks, workers=2, timeout_s=4))
    assert sorted(results) == list(range(len(tasks)))
    assert [results[i] for i in (0, 2, 5, 6)] == ["A", "B", "C", "D"]
    assert results[1] == TaskFailure("decoder process crashed (SIGABRT)")
    assert results[3] == TaskFailure("cannot decode")
    assert results[4] == TaskFailure("timed out after 4 s")


def test_empty():
    assert list(run_isolated(flaky, [], workers=2)) == []
