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


def test_prefetched_runs_ahead_and_leaving_early_ends_the_workers():
    from vlm_cli.workers import prefetched

    running = []
    tasks = ["a", "b", "c", "d", "e"]

    def pool(cancelled):
        return run_isolated(flaky, tasks, workers=2, on_running=running.append,
                            cancelled=cancelled)

    with prefetched(pool, depth=2) as ahead:
        got = []
        while batch := ahead.take(3):
            assert 1 <= len(batch) <= 3
            got += batch
    assert sorted(got) == [(i, t.upper()) for i, t in enumerate(tasks)]
    assert max(running) == 2 and running[-1] == 0

    started = time.monotonic()
    with prefetched(lambda cancelled: run_isolated(flaky, ["hang"] * 3, workers=2,
                                                   cancelled=cancelled), depth=2):
        pass  # the caller stops at once: the hung workers are killed, not waited for
    assert time.monotonic() - started < 10



def test_stop_forkserver_kills_the_server_and_later_pools_start_another():
    """The command line's exit kills the forkserver rather than waiting for its teardown; a
    pool started afterwards in the same process gets a new server."""
    import multiprocessing
    import multiprocessing.forkserver as fs

    from vlm_cli.workers import stop_forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return  # spawn platforms: nothing to stop
    assert dict(run_isolated(abs, [-1, -2], workers=2)) == {0: 1, 1: 2}
    pid = fs._forkserver._forkserver_pid
    stop_forkserver()
    deadline = time.monotonic() + 10
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT  # look, do not reap: multiprocessing does
    while os.waitid(os.P_PID, pid, flags) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.waitid(os.P_PID, pid, flags).si_status == 9  # SIGKILL, not a normal exit
    assert dict(run_isolated(abs, [-3], workers=1)) == {0: 3}
    assert fs._forkserver._forkserver_pid not in (None, pid)
