"""Throughput of `vlm preprocess`, cold vs warm cache, on toy-av and on ../shared/media.

Each measurement runs the installed `vlm preprocess ... --json` as a subprocess (start-up included,
as a user sees it) against a fresh VLM_HOME (cold), then again (warm: everything cached).
Target: warm ≥ 20× faster than cold.

Usage: .venv/bin/python bench/preprocess.py [--clips 200] [--workers 2]
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
SHARED_MEDIA = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "media",
                     Path("/work/shared/media")) if p.is_dir()), None)


def timed_preprocess(data: Path, home: Path, workers: int) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run([VLM, "preprocess", str(data), "--workers", str(workers), "--json"],
                         capture_output=True, text=True, env={**os.environ, "VLM_HOME": str(home)},
                         check=True)
    return time.perf_counter() - start, json.loads(out.stdout)


def measure(name: str, data: Path, home: Path, workers: int) -> None:
    cold_s, cold = timed_preprocess(data, home, workers)
    warm_s, warm = timed_preprocess(data, home, workers)
    n = cold["clips"]
    assert warm["computed"] == 0, warm
    print(f"{name}: {n} clips, {len(cold['failed'])} failed | cold {cold_s:.1f} s "
          f"({n / cold_s:.1f} clips/s) | warm {warm_s:.2f} s ({n / warm_s:.1f} clips/s) | "
          f"warm speed-up {cold_s / warm_s:.1f}x (target >= 20x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([VLM, "download", "toy-av", "--out", str(tmp / "toy"), "--clips",
                        str(args.clips)], check=True, capture_output=True)
        measure("toy-av", tmp / "toy" / "clips.jsonl", tmp / "home-toy", args.workers)
        if SHARED_MEDIA is not None:
            files = sorted(p for p in SHARED_MEDIA.iterdir() if p.suffix in {".mp4", ".wav"})
            data = tmp / "shared.json"
            data.write_text(json.dumps([{"audio" if p.suffix == ".wav" else "video": str(p)}
                                        for p in files]))
            measure("shared/media", data, tmp / "home-shared", args.workers)


if __name__ == "__main__":
    main()
