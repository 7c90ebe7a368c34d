"""The longest silence in a log: pipe a command's output through it.

    make demo 2>&1 | python bench/log_gaps.py

Echoes every line as it arrives, prefixed with the seconds since the start, then prints the
number of lines, the total time and the longest gap between two lines (and where it ended), so a
claim like "a progress line at least every 30 s" can be checked on a real run.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    start = last = time.monotonic()
    worst, worst_line, lines = 0.0, "", 0
    for line in sys.stdin:
        now = time.monotonic()
        if now - last > worst:
            worst, worst_line = now - last, line.rstrip()
        last = now
        lines += 1
        sys.stdout.write(f"{now - start:8.1f}s | {line}")
        sys.stdout.flush()
    total = time.monotonic() - start
    print(f"log_gaps: {lines} lines in {total:.1f} s; longest gap {worst:.1f} s, ended by: "
          f"{worst_line[:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
