"""`vlm ask` latency, cold vs warm feature cache, and generation speed.

Asks the same clip two questions with ``vlm ask --json`` (the installed command, timed as a user
sees it) in a fresh ``VLM_HOME``: the first decodes and encodes the clip (cache miss), the second
reads the cached features (cache hit). Prints both runs' decode + encode time and their ratio
(target: >= 20x less on the hit), prefill, generation tokens/s and wall time.

Usage: .venv/bin/python bench/ask_latency.py [--model DIR] [--clip FILE] [--json]
(default model: the merged demo model, demo/runs/merged, after `make demo`).
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

ROOT = Path(__file__).resolve().parents[1]
VLM = str(Path(sys.executable).with_name("vlm"))
QUESTIONS = ("What sound is playing?", "What colour is the shape?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "demo" / "runs" / "merged")
    parser.add_argument("--clip", type=Path, default=None,
                        help="default: the first toy-av test clip of the demo")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    clip = args.clip or next(iter(sorted((ROOT / "demo" / "toy-av" / "media").glob("*.mp4"))),
                             None)
    if not args.model.is_dir() or clip is None:
        sys.exit("ask_latency: needs a model and a clip; run `make demo` first or pass "
                 "--model and --clip")
    rows = []
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "VLM_HOME": home}
        for question in QUESTIONS:
            start = time.perf_counter()
            out = subprocess.run([VLM, "ask", str(clip), question, "--model", str(args.model),
                                  "--json"], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"vlm ask failed:\n{out.stderr[-2000:]}")
            result = json.loads(out.stdout)
            result["wall_s"] = time.perf_counter() - start
            rows.append(result)
    cold, warm = rows
    media = lambda r: r["timings"]["decode"] + r["timings"]["encode"]  # noqa: E731
    summary = {"model": str(args.model), "clip": str(clip),
               "cold": {"cache": cold["cache"], "decode_encode_s": media(cold),
                        **cold["timings"], "wall_s": cold["wall_s"], "answer": cold["answer"]},
               "warm": {"cache": warm["cache"], "decode_encode_s": media(warm),
                        **warm["timings"], "wall_s": warm["wall_s"], "answer": warm["answer"]},
               "speedup": media(cold) / max(media(warm), 1e-9)}
    if args.json:
        print(json.dumps(summary))
        return
    for name in ("cold", "warm"):
        r = summary[name]
        print(f"{name:5s} cache {r['cache']:4s}  decode+encode {r['decode_encode_s']:.4f} s  "
              f"prefill {r['prefill']:.4f} s  {r['tokens']} tokens at {r['tokens_per_s']:.1f}/s"
              f"  wall {r['wall_s']:.2f} s  answer {r['answer']!r}")
    print(f"decode+encode, cold / warm: {summary['speedup']:.0f}x (target >= 20x)")


if __name__ == "__main__":
    main()
