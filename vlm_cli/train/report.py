"""Progress and summaries of training stages on the terminal (stderr progress, stdout result)."""

from __future__ import annotations

import dataclasses
from typing import Any

from vlm_cli import console


class StageProgress:
    """Training progress on stderr (:func:`vlm_cli.console.progress_bar`): step/total, steps/s,
    elapsed, ETA, loss, learning rate and samples/s; fed one
    :class:`vlm_cli.train.loop.StepMetrics` per optimiser step by ``update``."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar = console.progress_bar(
            "steps", "loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} "
                     "{task.fields[rate]:.1f} samples/s")
        self.task: int | None = None

    def __enter__(self) -> StageProgress:
        self.bar.__enter__()
        # Shown from the start (setup, first batches) so a log sees the stage is alive.
        self.task = self.bar.add_task(self.description, total=None, loss=float("nan"), lr=0.0,
                                      rate=0.0)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def update(self, m: Any) -> None:
        self.bar.update(self.task, total=m.total, completed=m.step, loss=m.loss, lr=m.lr,
                        rate=m.samples_per_s)


def print_summary(summary: Any, json_out: bool) -> None:
    """The stage summary: one JSON object with ``--json``, else a few lines (nothing on the
    non-main processes of a distributed run, which have no summary)."""
    if summary is None:
        return
    if json_out:
        console.print_json(dataclasses.asdict(summary))
        return
    s = summary
    if s.stage == "encoders":
        accuracy = ", ".join(f"{k} {v:.2f}" for k, v in s.train_accuracy.items())
        console.stdout.print(f"encoders: {s.steps} steps on {s.samples} clips in {s.seconds:.1f} s;"
                             f" final loss {s.final_loss:.4f}; train accuracy: {accuracy}")
        console.stdout.print(f"run: {s.run_dir}")
        return
    resumed = f", resumed at step {s.resumed_from}" if s.resumed_from else ""
    console.stdout.print(
        f"{s.stage}: {s.steps} steps of {s.total_steps}{resumed} on {s.samples} samples in "
        f"{s.seconds:.1f} s ({s.samples_per_s:.1f} samples/s); final loss {s.final_loss:.4f}")
    console.stdout.print(f"trained: {', '.join(s.trained)} ({s.trainable_params:,} parameters)")
    console.stdout.print(f"run: {s.run_dir}")
