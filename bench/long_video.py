"""Peak memory and wall time of `vlm ask --fps 1` on a 1-minute and a 2-hour video.

Writes two 640x360 h264 clips with PyAV (mostly static frames at a low source rate and a long
key-frame interval, so a 2-hour file encodes in a few minutes and is a few MB; frames are
streamed to the encoder, never held), then runs

    vlm ask CLIP "What is happening?" --fps 1 --json --model MODEL

on each in a subprocess with an empty feature cache (a cache miss: decode + encode + answer) and
prints the child's peak RSS (``os.wait4``'s ``ru_maxrss``), its CPU time (user + system,
``ru_utime + ru_stime``, all threads), its wall time, and the ratios 2 h / 1 min. Targets
(issue 15): peak memory of the 2-hour run within 1.3x of the 1-minute run, an answer, and time
linear in the length; (issue 25) with B-frames, less CPU than decoding every frame.

Usage:
    python bench/long_video.py [--model DIR] [--hours 2] [--source-fps 2] [--bframes 0]
                               [--audio] [--only short|long] [--out /tmp/vlm-long-video]

``--model``: a tiny-av run (default: $VLM_MODEL, else $VLM_HOME/models/tiny-av after
`make demo`). ``--audio`` gives both clips a mono AAC track (a tone) too. ``--bframes N``: x264
puts N B-frames between reference frames (its default pyramid: the middle one is a reference,
the others are not); 0 (``ultrafast``'s default) writes none.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_clip(path: Path, seconds: float, *, fps: int, audio: bool, size=(360, 640),
               bframes: int = 0) -> Path:
    """A mostly static clip: a grey background with a coloured square that jumps every 10 s;
    16 distinct pictures, converted to yuv420p once and re-sent with new timestamps
    (``bframes``: B-frames between reference frames)."""
    if path.exists():
        return path
    height, width = size
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "35", "g": str(fps * 120),
                          "tune": "stillimage", **({"bf": str(bframes)} if bframes else {})}
        astream = None
        if audio:
            astream = out.add_stream("aac", rate=16000, layout="mono")
            astream.bit_rate = 16000
        pictures = []
        for k in range(16):
            rgb = np.full((height, width, 3), 96, np.uint8)
            y, x = (k * 37) % (height - 64), (k * 91) % (width - 64)
            rgb[y:y + 64, x:x + 64] = ((k * 50) % 256, (k * 90) % 256, 200)
            pictures.append(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p"))
        total = int(seconds * fps)
        samples_per_frame = 16000 // fps
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples_per_frame) / 16000)) \
            .astype(np.float32)[None]
        apts = 0
        for i in range(total):
            frame = pictures[(i // (10 * fps)) % 16]
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
            if astream is not None:
                aframe = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                aframe.sample_rate, aframe.pts = 16000, apts
                apts += samples_per_frame
                out.mux(astream.encode(aframe))
        out.mux(stream.encode(None))
        if astream is not None:
            out.mux(astream.encode(None))
    tmp.rename(path)
    return path


def measure(clip: Path, model: str) -> dict:
    """Run `vlm ask CLIP ... --fps 1 --json` in a child with a fresh VLM_HOME; its peak RSS
    (MiB), CPU time (user + system, s), wall time (s) and JSON answer."""
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryFile("w+") as out, \
            tempfile.TemporaryFile("w+") as err:
        env = {**os.environ, "VLM_HOME": home}
        cmd = [sys.executable, "-m", "vlm_cli", "ask", str(clip), "What is happening?",
               "--fps", "1", "--json", "--model", model]
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, log = out.read(), err.read()
    if child.returncode != 0:
        raise SystemExit(f"{clip}: vlm ask failed ({child.returncode}):\n{log[-2000:]}")
    answer = json.loads(text)
    return {"rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "wall_s": wall, "answer": answer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.environ.get("VLM_MODEL") or str(
        Path(os.environ.get("VLM_HOME", Path.home() / ".cache" / "vlm")) / "models" / "tiny-av"))
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--source-fps", type=int, default=2)
    parser.add_argument("--bframes", type=int, default=0)
    parser.add_argument("--audio", action="store_true")
    parser.add_argument("--only", choices=("short", "long"))
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "vlm-long-video")
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").exists():
        raise SystemExit(f"{args.model}: no model (run `make demo`, or pass --model RUN_DIR)")
    args.out.mkdir(parents=True, exist_ok=True)
    tag = (f"{args.source_fps}fps{f'-b{args.bframes}' if args.bframes else ''}"
           f"{'-audio' if args.audio else ''}")
    lengths = {"short": ("1 min", 60.0), "long": (f"{args.hours:g} h", args.hours * 3600)}
    rows = []
    for which, (name, seconds) in lengths.items():
        if args.only not in (None, which):
            continue
        start = time.perf_counter()
        clip = write_clip(args.out / f"long-{int(seconds)}s-{tag}.mp4", seconds,
                          fps=args.source_fps, audio=args.audio, bframes=args.bframes)
        made = time.perf_counter() - start
        print(f"{name}: {clip} ({clip.stat().st_size / 2**20:.1f} MiB, written in {made:.0f} s)",
              file=sys.stderr)
        result = measure(clip, args.model)
        rows.append((name, seconds, result))
    print(f"model: {args.model}; clips 640x360 at {args.source_fps} fps"
          f"{f', {args.bframes} B-frames' if args.bframes else ''}"
          f"{' with AAC audio' if args.audio else ', no audio'}; vlm ask --fps 1 --json, "
          "cache miss")
    print(f"{'clip':>6} {'frames':>7} {'used':>5} {'tokens':>6} {'peak RSS MiB':>13} "
          f"{'CPU s':>7} {'wall s':>8} {'dec+enc s':>9} {'s/video h':>9}  pooled / answer")
    for name, seconds, r in rows:
        budget = r["answer"].get("budget") or {}
        work = r["answer"]["timings"]["decode"] + r["answer"]["timings"]["encode"]
        print(f"{name:>6} {r['answer']['frames']['count']:>7} {budget.get('frames_used', '-'):>5} "
              f"{budget.get('tokens', '-'):>6} {r['rss_mib']:>13.0f} {r['cpu_s']:>7.1f} "
              f"{r['wall_s']:>8.1f} {work:>9.1f} {work / (seconds / 3600):>9.0f}  "
              f"{budget.get('pooled', '-')} / {r['answer']['answer']!r}")
    if len(rows) < 2:
        return
    (_, short_s, short), (_, long_s, long) = rows
    print(f"peak RSS ratio (long / short): {long['rss_mib'] / short['rss_mib']:.2f} "
          "(target <= 1.3)")
    work = [r["answer"]["timings"]["decode"] + r["answer"]["timings"]["encode"]
            for _, _, r in rows]
    print(f"wall ratio: {long['wall_s'] / short['wall_s']:.1f} for {long_s / short_s:.0f}x the "
          f"length (start-up included); decode+encode ratio: {work[1] / work[0]:.0f}")


if __name__ == "__main__":
    main()
