"""Wall time of each step of the `make demo` chain (target: the whole chain ≤ 6 min on 2 cores,
after installation), run in a fresh directory with a fresh VLM_HOME.

Each step is the installed `vlm` command, as `make demo` runs it. Prints one line per step and the
total, and the test/probe accuracy of the installed (merged) model. ``--set KEY=VALUE`` (repeated)
passes recipe overrides to the training and preprocessing steps, as ``DEMO_OVERRIDES`` does.

Usage: .venv/bin/python bench/demo_steps.py [--clips 1000] [--set train.encoders.steps=600 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VLM = str(Path(sys.executable).with_name("vlm"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for the training and preprocessing steps")
    args = parser.parse_args()
    sets = args.set
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "VLM_HOME": str(root / "home")}
        env.pop("VLM_MODEL", None)
        toy, runs = root / "toy-av", root / "runs"
        model = root / "home" / "models" / "tiny-av"
        clip = toy / "media" / "toyav-00070.mp4"
        steps = [
            ("download toy-av", ["download", "toy-av", "--out", toy, "--clips", args.clips]),
            ("encoders (alignment)", ["pretrain", "tiny-av", *sets, "--stage", "encoders",
                                      "--data", toy / "stage1.json", "--out", runs / "encoders"]),
            ("preprocess", ["preprocess", toy / "clips.jsonl", *sets, "--encoders",
                            runs / "encoders"]),
            ("stage 1", ["pretrain", "tiny-av", *sets, "--encoders", runs / "encoders", "--data",
                         toy / "stage1.json", "--out", runs / "stage1"]),
            ("stage 2 (LoRA)", ["tune", "tiny-av", *sets, "--from", runs / "stage1", "--data",
                                toy / "stage2.json", "--out", runs / "stage2"]),
            ("merge-lora --verify", ["merge-lora", runs / "stage2", "--out", model, "--verify"]),
            ("eval test", ["eval", "--data", toy / "qa" / "test_questions.json", "--out",
                           root / "eval-test"]),
            ("eval probe", ["eval", "--data", toy / "qa" / "probe_questions.json", "--out",
                            root / "eval-probe"]),
            ("ask", ["ask", clip, "what sound is playing?"]),
        ]
        total = 0.0
        for name, argv in steps:
            start = time.perf_counter()
            out = subprocess.run([VLM, *map(str, argv)], capture_output=True, text=True,
                                 env=env)
            seconds = time.perf_counter() - start
            total += seconds
            if out.returncode != 0:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            extra = f"  -> {out.stdout.strip()!r}" if name == "ask" else ""
            print(f"{name:<22} {seconds:7.1f} s{extra}", flush=True)
        print(f"{'total':<22} {total:7.1f} s = {total / 60:.2f} min (target <= 6 min)")
        for split in ("test", "probe"):
            report = json.loads((root / f"eval-{split}" / "report.json").read_text())
            cells = "  ".join(f"{k} {v['exact']:.3f}" for k, v in report["accuracy"].items())
            print(f"{split}: {cells}")


if __name__ == "__main__":
    main()
