"""The training loop of stages 1 and 2, on accelerate (1 CPU, 1 GPU, or DDP under
``accelerate launch``).

Per optimizer step: the global batch comes from the owned data order (:mod:`.order`); this process
takes its slice and splits it into ``grad_accum`` micro-batches; each micro-batch's summed token
loss is divided by the number of target tokens of the *whole global batch* (known up front from the
labels), times the process count because DDP averages gradients. Every target token therefore
weighs the same whatever the split, so 1 process and N processes take the same steps. Then gradient
clipping, AdamW, and the schedule (cosine / linear / constant with linear warmup, transformers'
``get_scheduler``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlm_cli.errors import UsageError
from vlm_cli.recipe import StageSpec
from vlm_cli.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vlm_cli.train.data import FeatureDataset
from vlm_cli.train.order import global_batch, shard, total_steps

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclasses.dataclass
class StepMetrics:
    """One logged step: mean token loss over the global batch, learning rate, throughput."""

    step: int
    total: int
    loss: float
    lr: float
    samples_per_s: float
    elapsed_s: float


@dataclasses.dataclass
class StageResult:
    """What a stage did: steps run (this invocation), final loss, wall time, throughput."""

    steps: int
    total_steps: int
    resumed_from: int
    final_loss: float
    seconds: float
    samples_per_s: float


def make_accelerator() -> Any:
    """An ``accelerate.Accelerator``: bf16 autocast on GPUs that support it, else fp16 (with
    loss scaling) on other GPUs, fp32 on CPU; DDP
    with unused parameters allowed (a batch without audio leaves the audio connector idle).

    Without CUDA the accelerator is told ``cpu=True``, so that several processes started by
    ``accelerate launch --multi_gpu --num_processes N`` or ``torchrun`` form a gloo
    (MULTI_CPU) group instead of N independent runs."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    cuda = torch.cuda.is_available()
    precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    return Accelerator(mixed_precision=precision, cpu=not cuda, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=True)])


def train_stage(model: torch.nn.Module, dataset: FeatureDataset, stage: StageSpec,
                run_dir: Path, *, resume: bool, accelerator: Any,
                on_step: Callable[[StepMetrics], None] | None = None) -> StageResult:
    """Train ``model``'s trainable parameters on ``dataset`` with the stage's settings.

    Checkpoints go to ``run_dir/checkpoints`` every ``save_every`` steps and at the end; metrics
    to ``run_dir/metrics.jsonl`` every ``log_every`` steps and at the end.

    Raises:
        UsageError: the global batch does not split over processes × accumulation steps, or
            ``resume`` is asked but the run has no checkpoint.
    """
    from transformers import get_scheduler

    world, rank = accelerator.num_processes, accelerator.process_index
    if stage.batch_size % (world * stage.grad_accum):
        raise UsageError(f"train batch_size {stage.batch_size} is not divisible by processes "
                         f"({world}) x grad_accum ({stage.grad_accum})")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError("nothing to train: every part is frozen")
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    steps = total_steps(len(dataset), stage.batch_size, stage.epochs, stage.max_steps)
    scheduler = get_scheduler(SCHEDULES[stage.schedule], optimizer,
                              num_warmup_steps=math.ceil(stage.warmup_ratio * steps),
                              num_training_steps=steps)
    start = 0
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise UsageError(f"{run_dir}: --resume given but the run has no checkpoint")
        start = load_checkpoint(checkpoint, model, optimizer, scheduler)["step"]
        _truncate_metrics(run_dir / "metrics.jsonl", start)
    else:
        torch.manual_seed(stage.seed)  # dropout
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    metrics_path = run_dir / "metrics.jsonl"
    began, samples, loss_value = time.monotonic(), 0, float("nan")
    model.train()
    for step in range(start, steps):
        indices = global_batch(len(dataset), stage.batch_size, stage.seed, step)
        global_tokens = max(1, sum(dataset.targets(i) for i in indices))
        micros = shard(indices, rank, world, stage.grad_accum)
        step_loss = torch.zeros((), device=accelerator.device)
        for k, micro in enumerate(micros):
            batch = [dataset[i] for i in micro]
            sync = contextlib.nullcontext() if k == len(micros) - 1 else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                loss_sum, _ = model([s.input_ids for s in batch], [s.labels for s in batch],
                                    [s.media for s in batch])
                accelerator.backward(loss_sum * world / global_tokens)
            step_loss += loss_sum.detach()
        if stage.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, stage.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = accelerator.reduce(step_loss, reduction="sum").item() / global_tokens
        samples += stage.batch_size
        done = step + 1
        elapsed = time.monotonic() - began
        record = StepMetrics(done, steps, loss_value, scheduler.get_last_lr()[0],
                             samples / elapsed if elapsed > 0 else 0.0, elapsed)
        if on_step is not None and accelerator.is_main_process:
            on_step(record)
        if accelerator.is_main_process and (done % stage.log_every == 0 or done == steps):
            with open(metrics_path, "a") as f:
                f.write(json.dumps(dataclasses.asdict(record)) + "\n")
        if (stage.save_every and done % stage.save_every == 0) or done == steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(run_dir, done, core, optimizer.optimizer
                                if hasattr(optimizer, "optimizer") else optimizer, scheduler,
                                {"total_steps": steps, "loss": loss_value})
    accelerator.wait_for_everyone()
    model.eval()
    seconds = time.monotonic() - began
    return StageResult(steps - start, steps, start, loss_value, seconds,
                       samples / seconds if seconds > 0 else 0.0)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` by a run that was killed (they are redone)."""
    if path.exists():
        from vlm_cli.atomic import atomic_write_text

        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in keep))


def plot_loss(run_dir: Path) -> Path | None:
    """Write ``run_dir/loss.png`` from ``metrics.jsonl`` (matplotlib, Agg); None if no metrics."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlm_cli.atomic import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean per target token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(run_dir / "loss.png", buffer.getvalue())
    return run_dir / "loss.png"
