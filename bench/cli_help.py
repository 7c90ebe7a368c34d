"""Wall time of `vlm --help` (target ≤ 0.3 s): best and median of 10 runs of the installed script.

Usage: .venv/bin/python bench/cli_help.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

VLM = str(Path(sys.executable).with_name("vlm"))


def main() -> None:
    times = []
    for _ in range(10):
        start = time.perf_counter()
        subprocess.run([VLM, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    print(f"vlm --help: best {min(times):.3f} s, median {statistics.median(times):.3f} s "
          f"(target <= 0.3 s)")


if __name__ == "__main__":
    main()
