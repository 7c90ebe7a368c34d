"""The data order, owned by us so that resuming replays it exactly (accelerate does not restore a
sampler's permutation).

The order is an endless stream of per-epoch permutations of ``range(n)``, each drawn from a
generator seeded by ``(seed, epoch)``. Global batch ``s`` is the slice ``[s*B, (s+1)*B)`` of the
stream, so any step's batch is a pure function of (n, B, seed, s): resuming at step s needs no
saved sampler state, and 1 or many processes see the same global batches.
"""

from __future__ import annotations

import math

import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of epoch ``epoch``: a permutation of ``range(n)``."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def global_batch(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Sample indices of optimizer step ``step`` (0-based): ``batch_size`` of them."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = epoch_permutation(n, seed, epoch)
        out += perm[offset: offset + batch_size - len(out)]
    return out


def total_steps(n: int, batch_size: int, epochs: float, max_steps: int | None) -> int:
    """Optimizer steps of a stage: ``max_steps``, else ceil(epochs × n / batch_size)."""
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(epochs * n / batch_size))


def shard(indices: list[int], rank: int, world: int, micro_batches: int) -> list[list[int]]:
    """This process's micro-batches of a global batch: process ``rank`` of ``world`` takes a
    contiguous slice and splits it into ``micro_batches`` equal parts."""
    per_rank = len(indices) // world
    mine = indices[rank * per_rank:(rank + 1) * per_rank]
    size = per_rank // micro_batches
    return [mine[i * size:(i + 1) * size] for i in range(micro_batches)]
