"""Resumable training state: ``RUN/checkpoints/step-NNNNNN/``.

Each checkpoint holds the trainable parameters (safetensors), the optimizer state
(``torch.save``; read back with ``weights_only=True``, never unpickling arbitrary objects), the
scheduler state and trainer counters (JSON), and the torch RNG states (safetensors). The data order
needs no state (see :mod:`vlm_cli.train.order`). A checkpoint is written into a temporary
directory and renamed into place, so a run killed mid-write leaves no half checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_cli.errors import VlmError

PREFIX = "step-"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor of every parameter that requires grad (CPU, contiguous)."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters()
            if p.requires_grad}


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: Any,
                    scheduler: Any, state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` atomically; returns its directory."""
    from safetensors.torch import save_file

    final = run_dir / "checkpoints" / f"{PREFIX}{step:06d}"
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / "rng.safetensors")
    (tmp / "trainer_state.json").write_text(json.dumps(
        {**state, "step": step, "scheduler": scheduler.state_dict()}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = sorted(p for p in (run_dir / "checkpoints").glob(f"{PREFIX}*") if p.is_dir())
    return found[-1] if found else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any
                    ) -> dict[str, Any]:
    """Restore a checkpoint into ``model`` / ``optimizer`` / ``scheduler`` and the RNG states.

    Returns:
        The trainer state (``step`` and counters).

    Raises:
        VlmError: the checkpoint is incomplete or does not match the model's trainable parts.
    """
    from safetensors.torch import load_file

    try:
        weights = load_file(path / "trainable.safetensors")
        opt_state = torch.load(path / "optimizer.pt", weights_only=True)
        state = json.loads((path / "trainer_state.json").read_text())
        rng = load_file(path / "rng.safetensors")
    except (OSError, ValueError, RuntimeError) as err:
        raise VlmError(f"{path}: cannot read checkpoint ({err})") from err
    expected = set(trainable_state(model))
    if set(weights) != expected:
        raise VlmError(f"{path}: checkpoint parameters do not match this model's trainable parts")
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(state.pop("scheduler"))
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return state
