"""Time toy-av generation: ``python bench/toyav_generate.py [--clips 1000] [--workers N]``.

Generates into a temporary directory (deleted afterwards) and prints clips/s and seconds on stdout.
Target: 1000 clips in <= 60 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_cli.toyav.generate import generate_toy_av  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="default: available CPUs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="toyav-bench-") as tmp:
        start = time.perf_counter()
        out = Path(tmp) / "toy-av"
        summary = generate_toy_av(out, clips=args.clips, seed=args.seed, workers=args.workers)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (Path(tmp) / "toy-av").rglob("*") if p.is_file())
    result = {
        "clips": args.clips,
        "seconds": round(seconds, 2),
        "clips_per_s": round(args.clips / seconds, 1),
        "workers": args.workers or len(os.sched_getaffinity(0)),  # default: available CPUs
        "cpus": os.cpu_count(),
        "load_avg_1m_before": round(load, 2),  # other work on the machine slows the run
        "dataset_mib": round(size / 2**20, 2),
        "counts": summary["counts"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.clips} clips in {seconds:.2f} s: {args.clips / seconds:.1f} clips/s "
              f"({result['workers']} workers, {result['dataset_mib']} MiB, "
              f"load average before {load:.2f})")


if __name__ == "__main__":
    main()
