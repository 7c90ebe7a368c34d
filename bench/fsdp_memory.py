"""Training-state memory per process under FSDP2 vs DDP: 2 CPU processes, a ~100 M-parameter
LLM-shaped model (LLaMA layout), side by side in one run.

The parent launches this file twice with ``accelerate launch`` (``recipes/accelerate/ddp.yaml``
and ``recipes/accelerate/fsdp2.yaml``, ``--num_processes 2``); each process builds the model with
the same seed, prepares it through the trainer's own pieces (``make_accelerator``, the FSDP2 shard
plan: one unit per decoder layer, as ``vlm pretrain`` / ``vlm tune``) with AdamW, and runs
``--steps`` full fine-tuning steps on random tokens. After each backward pass and each optimizer
step it counts the bytes this process holds of

- parameters (the local shard of a DTensor under FSDP2, the whole tensor under DDP),
- gradients (``.grad``; DDP's communication buckets are not counted: DDP holds more),
- optimizer state (AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``),

and reports the peak of their sum per process (tensor accounting: a CPU has no allocator
statistics like ``torch.cuda.max_memory_allocated``), plus the process's peak RSS (which also
counts the full model every process builds before sharding, the interpreter and the libraries).
fp32 everywhere (CPU). Also checks that the losses of both runs agree.

Run: ``python bench/fsdp_memory.py [--json]`` (about 2 minutes on 2 cores). No network.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: ~100 M parameters: LLaMA layout, 10 decoder layers of width 768, a 16k vocabulary (untied).
CONFIG = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 10,
          "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 16000,
          "max_position_embeddings": 512, "tie_word_embeddings": False}
CONFIGS = {"DDP": ROOT / "recipes" / "accelerate" / "ddp.yaml",
           "FSDP2": ROOT / "recipes" / "accelerate" / "fsdp2.yaml"}


def local_bytes(t) -> int:
    """Bytes this process holds of tensor ``t`` (its local shard when it is a DTensor)."""
    from torch.distributed.tensor import DTensor

    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def state_bytes(model, optimizer) -> dict[str, int]:
    params = list(model.parameters())
    optim = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values()
                if hasattr(v, "numel"))
    return {"params": sum(local_bytes(p) for p in params),
            "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
            "optimizer": optim}


def worker(out: Path, steps: int, seq: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlm_cli.train.fsdp import shard_plan
    from vlm_cli.train.loop import make_accelerator

    accelerator = make_accelerator()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shard_plan(accelerator, model, model)  # FSDP2 only: decoder layers as units
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    peak: dict[str, int] = {}
    losses = []
    world, rank = accelerator.num_processes, accelerator.process_index
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        ids = torch.randint(0, CONFIG["vocab_size"], (world * 2, seq), generator=g)
        mine = ids[rank * 2:(rank + 1) * 2]
        loss = model(input_ids=mine, labels=mine).loss
        accelerator.backward(loss)
        points = [state_bytes(model, optimizer.optimizer)]
        optimizer.step()
        points.append(state_bytes(model, optimizer.optimizer))
        optimizer.zero_grad(set_to_none=True)
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        for p in points:
            if sum(p.values()) > sum(peak.values(), 0):
                peak = p
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "params_total": n_params, "peak": peak, "rss": rss, "losses": losses,
         "mode": accelerator.distributed_type.value}))


def launch(mode: str, out: Path, steps: int, seq: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(CONFIGS[mode]), "--num_processes", "2", "--main_process_port", str(port),
               __file__, "--worker", str(out), "--steps", str(steps), "--seq", str(seq)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2, help="training steps per run")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sample")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.seq)
        # As `vlm` ends (vlm_cli.cli.main): skip the interpreter's teardown, in which torch 2.11
        # with a gloo group sometimes aborts ("terminate called without an active exception";
        # DDP and FSDP2 alike, after the work is done and written).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {mode: launch(mode, Path(tmp) / mode, args.steps, args.seq) for mode in CONFIGS}
    mib = 1 / 2**20
    rows = {}
    for mode, ranks in runs.items():
        for r in ranks:
            rows[f"{mode} rank {r['rank']}"] = {**{k: v * mib for k, v in r["peak"].items()},
                                                "state": sum(r["peak"].values()) * mib,
                                                "rss": r["rss"] * mib, "mode": r["mode"]}
    ratio = max(sum(r["peak"].values()) for r in runs["FSDP2"]) / \
        max(sum(r["peak"].values()) for r in runs["DDP"])
    drift = max(abs(a - b) / abs(a) for a, b in zip(runs["DDP"][0]["losses"],
                                                    runs["FSDP2"][0]["losses"]))
    result = {"params": runs["DDP"][0]["params_total"], "per_rank_mib": rows,
              "fsdp2_over_ddp": ratio, "loss_max_rel_diff": drift}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['params'] / 1e6:.1f} M parameters, fp32, AdamW, 2 CPU processes (gloo)")
    print(f"{'':16} {'params':>8} {'grads':>8} {'AdamW':>8} {'state':>8} {'peak RSS':>9}  (MiB)")
    for name, r in rows.items():
        print(f"{name:16} {r['params']:8.1f} {r['grads']:8.1f} {r['optimizer']:8.1f} "
              f"{r['state']:8.1f} {r['rss']:9.1f}")
    print(f"FSDP2 / DDP peak state per rank: {ratio:.3f}; losses agree within {drift:.1e}")


if __name__ == "__main__":
    main()
