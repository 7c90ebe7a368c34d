"""The training engine of every stage (encoder alignment, stage 1, stage 2), on accelerate
(1 CPU, 1 GPU, or DDP / FSDP2 under ``accelerate launch``): :func:`fit` takes the model, a loss
function and an :class:`~vlm_cli.recipe.OptimSpec`.

Per optimizer step: the global batch comes from the owned data order (:mod:`.order`); this process
takes its slice and splits it into ``grad_accum`` micro-batches; each micro-batch's summed loss is
divided by the *whole global batch*'s weight (for stages 1 and 2 its number of target tokens,
known up front from the labels), times the process count because DDP and FSDP2 average gradients.
Every unit of weight therefore counts the same whatever the split, so 1 process and N processes
take the same steps. Then gradient clipping, AdamW, and the schedule (cosine / linear / constant
with linear warmup, transformers' ``get_scheduler``). Checkpoints hold the trainable parameters
(sharded under FSDP2), the optimizer, scheduler and RNG states, so ``--resume`` continues bit for
bit (:mod:`.checkpoint`).
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
from vlm_cli.recipe import OptimSpec, StageSpec
from vlm_cli.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vlm_cli.train.data import FeatureDataset
from vlm_cli.train.order import global_batch, shard, total_steps

#: ``loss(model, micro_batch_indices) -> summed loss`` (a scalar tensor with a graph).
LossFn = Callable[[torch.nn.Module, list[int]], torch.Tensor]

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
    loss scaling) on other GPUs, fp32 on CPU (the dtype :func:`vlm_cli.runtime.resolve_dtype`
    picks for ``auto``); DDP with unused parameters allowed (a batch without audio leaves the
    audio connector idle), or FSDP2 when launched with an FSDP config
    (:func:`vlm_cli.train.fsdp.fsdp_plugin`: bf16 / fp16 parameters, fp32 reductions).

    Without CUDA the accelerator is told ``cpu=True``, so that several processes started by
    ``accelerate launch --multi_gpu --num_processes N`` or ``torchrun`` form a gloo
    (MULTI_CPU) group instead of N independent runs; an FSDP config then switches that group
    to FSDP2 (:func:`vlm_cli.train.fsdp.use_on_cpu`).

    Raises:
        UsageError: the launch config asks for something FSDP2 cannot do here (FSDP1).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from vlm_cli.runtime import pick_device, resolve_dtype
    from vlm_cli.train.fsdp import fsdp_plugin, use_on_cpu

    device = pick_device()
    dtype = resolve_dtype("auto", device)  # the dtype `auto` picks, as autocast
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    plugin = fsdp_plugin(dtype)
    accelerator = Accelerator(
        mixed_precision=precision, cpu=device == "cpu",
        fsdp_plugin=plugin if device != "cpu" else None,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if plugin is not None and device == "cpu":
        use_on_cpu(accelerator, plugin)
    return accelerator


def train_stage(model: torch.nn.Module, dataset: FeatureDataset, stage: StageSpec,
                run_dir: Path, *, resume: bool, accelerator: Any,
                on_step: Callable[[StepMetrics], None] | None = None,
                ) -> tuple[StageResult, torch.nn.Module | None]:
    """Stage 1 or 2: :func:`fit` with the summed next-token loss over assistant tokens, weighed
    by the global batch's target-token count; under FSDP2 the LLM's decoder layers are the
    sharded units."""

    def loss(model: torch.nn.Module, micro: list[int]) -> torch.Tensor:
        batch = [dataset[i] for i in micro]
        loss_sum, _ = model([s.input_ids for s in batch], [s.labels for s in batch],
                            [s.media for s in batch])
        return loss_sum

    steps = total_steps(len(dataset), stage.batch_size, stage.epochs, stage.max_steps)
    # No KV cache while training: it is never read, and a layer replayed by an activation
    # checkpoint (FSDP2's) would append to it twice.
    config = model.llm.config
    use_cache, config.use_cache = getattr(config, "use_cache", None), False
    try:
        result, trained = fit(model, loss, stage, n=len(dataset), steps=steps, run_dir=run_dir,
                              weight=lambda indices: sum(dataset.targets(i) for i in indices),
                              resume=resume, accelerator=accelerator, on_step=on_step,
                              layers=model.llm)
    finally:
        config.use_cache = use_cache
    if trained is not None:  # a copy gathered from the shards has a copy of the config
        trained.llm.config.use_cache = use_cache
    return result, trained


def fit(model: torch.nn.Module, loss: LossFn, spec: OptimSpec, *, n: int, steps: int,
        run_dir: Path, weight: Callable[[list[int]], float] | None = None, resume: bool = False,
        accelerator: Any, on_step: Callable[[StepMetrics], None] | None = None,
        layers: torch.nn.Module | None = None) -> tuple[StageResult, torch.nn.Module | None]:
    """Train ``model``'s trainable parameters for ``steps`` optimizer steps over ``n`` samples.

    Args:
        loss: the summed loss of a micro-batch (sample indices).
        spec: AdamW, schedule, batch, accumulation, checkpoint and logging settings.
        weight: the global batch's total weight (the loss is divided by it); default: its
            number of samples (a loss that is a sum of per-sample means).
        resume: continue from the last checkpoint in ``run_dir/checkpoints``.
        layers: under FSDP2, the part of ``model`` whose transformer layers are the sharded
            units (:func:`vlm_cli.train.fsdp.shard_plan`; default: the whole model). Every
            process must run them on every micro-batch (an LLM, not a connector that a batch
            without its modality skips).

    Checkpoints go to ``run_dir/checkpoints`` every ``save_every`` steps and at the end; metrics
    to ``run_dir/metrics.jsonl`` every ``log_every`` steps and at the end.

    Returns:
        The result, and the trained model with its full weights: unwrapped (DDP), or gathered
        from the shards on the main process under FSDP2 (None on the other processes).

    Raises:
        UsageError: the global batch does not split over processes × accumulation steps,
            nothing is trainable, ``resume`` is asked but the run has no checkpoint, or FSDP2
            finds no layer class to wrap.
    """
    from vlm_cli.train.fsdp import gather, is_fsdp, shard_plan

    weight = weight or len
    world, rank = accelerator.num_processes, accelerator.process_index
    if spec.batch_size % (world * spec.grad_accum):
        raise UsageError(f"train batch_size {spec.batch_size} is not divisible by processes "
                         f"({world}) x grad_accum ({spec.grad_accum})")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError("nothing to train: every part is frozen")
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise UsageError(f"{run_dir}: --resume given but the run has no checkpoint")
    optimizer, scheduler = setup_optimizer(params, spec, steps)
    if not resume:
        torch.manual_seed(spec.seed)  # dropout
    skeleton = shard_plan(accelerator, model, layers if layers is not None else model)
    model, optimizer = accelerator.prepare(model, optimizer)
    optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer
    params = [p for p in model.parameters() if p.requires_grad]  # sharded ones under FSDP2
    sharded = is_fsdp(accelerator)
    start = 0
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, model, optimizer, scheduler)["step"]
        if accelerator.is_main_process:
            _truncate_metrics(run_dir / "metrics.jsonl", start)
    metrics_path = run_dir / "metrics.jsonl"
    began, samples, loss_value = time.monotonic(), 0, float("nan")
    model.train()
    for step in range(start, steps):
        indices = global_batch(n, spec.batch_size, spec.seed, step)
        total = max(1, weight(indices))
        micros = shard(indices, rank, world, spec.grad_accum)
        step_loss = torch.zeros((), device=accelerator.device)
        for k, micro in enumerate(micros):
            sync = contextlib.nullcontext() if k == len(micros) - 1 else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                loss_sum = loss(model, micro)
                if sharded:
                    loss_sum = loss_sum + _touch_unsharded(model)
                accelerator.backward(loss_sum * world / total)
            step_loss += loss_sum.detach()
        if spec.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = accelerator.reduce(step_loss, reduction="sum").item() / total
        samples += spec.batch_size
        done = step + 1
        elapsed = time.monotonic() - began
        record = StepMetrics(done, steps, loss_value, scheduler.get_last_lr()[0],
                             samples / elapsed if elapsed > 0 else 0.0, elapsed)
        if on_step is not None and accelerator.is_main_process:
            on_step(record)
        if accelerator.is_main_process and (done % spec.log_every == 0 or done == steps):
            with open(metrics_path, "a") as f:
                f.write(json.dumps(dataclasses.asdict(record)) + "\n")
        if (spec.save_every and done % spec.save_every == 0) or done == steps:
            save_checkpoint(run_dir, done, model, optimizer, scheduler,
                            {"total_steps": steps, "loss": loss_value})
    accelerator.wait_for_everyone()
    model.eval()
    seconds = time.monotonic() - began
    trained = gather(model, skeleton) if sharded else accelerator.unwrap_model(model)
    return StageResult(steps - start, steps, start, loss_value, seconds,
                       samples / seconds if seconds > 0 else 0.0), trained


def setup_optimizer(params: list[torch.nn.Parameter], spec: OptimSpec,
                    steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over ``params`` (``lr``, ``weight_decay``) and its learning-rate schedule over
    ``steps`` optimizer steps (``schedule`` with linear warmup over ``warmup_ratio`` of them:
    transformers' ``get_scheduler``), for every stage."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = get_scheduler(SCHEDULES[spec.schedule], optimizer,
                              num_warmup_steps=math.ceil(spec.warmup_ratio * steps),
                              num_training_steps=steps)
    return optimizer, scheduler


def _touch_unsharded(model: torch.nn.Module) -> torch.Tensor | float:
    """Zero times every trainable parameter that is unsharded after the forward pass (FSDP2's
    root group: connectors, embeddings, the LLM's head). FSDP2 reduce-scatters the gradients a
    process has, so a connector idle on one process (a micro-batch without audio) and used on
    another would make the processes' collectives differ; DDP's ``find_unused_parameters``
    counterpart. Adds nothing to the loss or to any gradient."""
    from torch.distributed.tensor import DTensor

    idle = [p.sum() for p in model.parameters() if p.requires_grad and not isinstance(p, DTensor)]
    return torch.stack(idle).sum() * 0.0 if idle else 0.0


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
