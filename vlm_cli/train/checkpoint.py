"""Resumable training state: ``RUN/checkpoints/step-NNNNNN/``.

One layout for one process, DDP and FSDP2 (torch distributed checkpoint, DCP):

    state/                  trainable parameters and optimizer state (DCP: ``.metadata`` and one
                            ``.distcp`` file per writing process; under FSDP2 each process writes
                            its own shards, under DDP the replicas are written once)
    rng-<rank>.safetensors  each process's torch RNG states
    trainer_state.json      step, counters and the scheduler state

Parameters and optimizer state are keyed by parameter name (``torch.distributed.checkpoint.
state_dict``), so a checkpoint can be resumed under another process count or with or without
FSDP (DCP reshards on load). Frozen parameters are never written (they are rebuilt from the
recipe and the parent run). The data order needs no state (see :mod:`vlm_cli.train.order`). Every
process calls :func:`save_checkpoint` and :func:`load_checkpoint` (collectives when a process
group exists). A checkpoint is written into a temporary directory that the main process renames
into place once every process has finished, so a run killed mid-write leaves no half checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_cli.errors import VlmError

PREFIX = "step-"


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if _distributed() else 0


def _barrier() -> None:
    import torch.distributed as dist

    if _distributed():
        dist.barrier()


def _state_dicts(model: nn.Module, optimizer: Any) -> tuple[dict, dict, Any]:
    """Name-keyed trainable parameters and optimizer state (DTensor shards under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    return model_state, optim_state, options


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: Any,
                    scheduler: Any, state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` (every process calls it); returns its directory.

    Args:
        model: the model as prepared (plain, DDP or FSDP2).
        optimizer: the torch optimizer (not accelerate's wrapper).
        state: trainer counters for ``trainer_state.json``.
    """
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    rank = _rank()
    final = run_dir / "checkpoints" / f"{PREFIX}{step:06d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_state, optim_state, _ = _state_dicts(model, optimizer)
    with warnings.catch_warnings():  # one process: DCP warns that it saves without a group
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / "state",
                 no_dist=not _distributed())
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / f"rng-{rank}.safetensors")
    _barrier()
    if rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps(
            {**state, "step": step, "scheduler": scheduler.state_dict()}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    _barrier()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = sorted(p for p in (run_dir / "checkpoints").glob(f"{PREFIX}*") if p.is_dir())
    return found[-1] if found else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any
                    ) -> dict[str, Any]:
    """Restore a checkpoint into ``model`` / ``optimizer`` (as prepared; every process calls
    it), ``scheduler`` and this process's RNG states (when the checkpoint has them).

    Returns:
        The trainer state (``step`` and counters).

    Raises:
        VlmError: the checkpoint is incomplete, of an older layout, or does not match the
            model's trainable parts.
    """
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    model_state, optim_state, options = _state_dicts(model, optimizer)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        saved = dcp.FileSystemReader(path / "state").read_metadata().state_dict_metadata
    except (OSError, ValueError) as err:
        raise VlmError(f"{path}: cannot read checkpoint ({err}); a checkpoint of an earlier vlm "
                       "version cannot be resumed") from err
    if {k for k in saved if k.startswith("model.")} != {f"model.{k}" for k in model_state}:
        raise VlmError(f"{path}: checkpoint parameters do not match this model's trainable parts")
    # The template holds AdamW state for every parameter (DCP initialises it with one zero-lr
    # step); keep what the checkpoint has, so a parameter that had no gradient yet (an unused
    # pooler, a connector idle so far) has no state after the load either, as before the kill.
    optim_state["state"] = {
        name: {k: v for k, v in entry.items() if f"optimizer.state.{name}.{k}" in saved}
        for name, entry in optim_state["state"].items()
        if any(f"optimizer.state.{name}.{k}" in saved for k in entry)}
    try:
        with warnings.catch_warnings():  # one process: DCP warns that it loads without a group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"model": model_state, "optimizer": optim_state},
                     checkpoint_id=path / "state", no_dist=not _distributed())
    except (OSError, RuntimeError, ValueError, CheckpointException) as err:
        raise VlmError(f"{path}: cannot read checkpoint ({err})") from err
    # not strict: the frozen parameters are absent by design (the keys are checked above)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=dataclasses.replace(options, strict=False))
    scheduler.load_state_dict(state.pop("scheduler"))
    rng_path = path / f"rng-{_rank()}.safetensors"
    if rng_path.exists():
        rng = load_file(rng_path)
        torch.set_rng_state(rng["cpu"])
        cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
    return state
