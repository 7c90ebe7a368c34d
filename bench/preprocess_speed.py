"""`vlm preprocess` against the two seed pipelines, per size class of clip, on the same encoders.

Clips, by class (``--classes``; all by default):

- ``shared``: every video of ../shared/media (nine real clips, at most 854x480);
- the generated classes of ``bench/preprocess_clips.py`` (PyAV, written once into
  ``--clips-dir``, default ../bench-data/preprocess_clips): ``1080p``, ``1440p``,
  ``portrait-1080x1920``, ``360p60-gop10s``, ``5min``, ``bframes`` (720p), ``hevc`` (1080p).

Each clip is copied under several names, each copy made distinct (an MP4 ``free`` box
appended: decoders skip it, the content hash changes), so the cache cannot answer: ``--copies``
copies of each shared video, ``--files`` copies of each generated clip. For each encoder (same
random weights everywhere, seed 0):

- ``decode-bound``: a 1-layer, 32-wide CLIP at 224 px (the encoder costs nothing);
- ``vit-b16``: a ViT-B/16-shaped CLIP at 224 px, features of layer -2.

and each class, four runs, each a subprocess timed from start to exit (imports included, as a
user sees it):

- ``vlm cold``: ``vlm preprocess DATA --recipe tiny-av OVERRIDES --json`` with a fresh VLM_HOME;
- ``video-llava seed``: decord ``get_batch`` of 8 uniform frames -> ``CLIPImageProcessor`` ->
  encoder, clip after clip (Video-LLaVA's loop);
- ``video-llama seed``: decord at 224×224 -> /255, CLIP normalisation -> encoder, clip after clip
  (Video-LLaMA's loop);
- ``vlm warm``: the same ``vlm preprocess`` again (everything cached).

The runs are repeated ``--repeat`` times (default 3), interleaved (run k of every class and
pipeline before run k + 1), each cold run with a fresh VLM_HOME. Prints, per class and overall
(the classes' times summed run by run), the median seconds per clip of each pipeline, vlm's
speed-up over the faster seed loop (medians; targets: >= 1.3x decode-bound, >= 1.0x ViT-B/16)
with the per-run ratios, and warm / cold. Each run also preprocesses every class's files as one
dataset ("whole set"), cold then warm, as a user's dataset of mixed clips would be: its warm /
cold is the cache's figure (target >= 100x). Each run's CPU seconds (user +
system, of the process and all its descendants: on Linux the bench is the subreaper of the
forkserver and decoder workers that vlm kills at exit, so their CPU counts too) are printed
beside: wall times on a machine shared with other work swing by 2x, CPU seconds much less.
``--json FILE`` also writes every time measured.

A warm run costs vlm's start-up (~0.1 s: Python, typer, the recipe's YAML) plus ~0.2 ms per
clip (its hash memo and each entry's header): a class of a few dozen files, whose cold run takes
5-20 s decode-bound, measures mostly the start-up (its warm / cold is printed, not a target);
the whole set (~350 files decode-bound, a cold run of ~100 s) measures the cache.

Usage: .venv/bin/python bench/preprocess_speed.py [--classes shared 1080p ...] [--copies 20 2]
    [--files 24 4] [--workers 2] [--repeat 3] [--only decode-bound|vit-b16] [--clips-dir DIR]
    [--whole-set-only] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess_clips import CLASSES, DEFAULT_DIR, ensure_clips  # noqa: E402

VLM = str(Path(sys.executable).with_name("vlm"))
REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "media",
                     Path("/work/shared/media")) if p.is_dir()), None)

ENCODERS = {
    "decode-bound": ({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "image_size": 224, "patch_size": 16}, -2),
    "vit-b16": ({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "image_size": 224, "patch_size": 16}, -2),
}

#: The seed loops, run as ``python -c SEED DATA CONFIG LAYER OUT``.
SEED = r'''
import json, sys
import numpy as np, torch
from decord import VideoReader, cpu
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
mode, clips, config, layer, out = sys.argv[1], json.loads(open(sys.argv[2]).read()), \
    json.loads(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
model = CLIPVisionModel(CLIPVisionConfig(**config)).eval()
processor = CLIPImageProcessor()
mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
for i, path in enumerate(clips):
    if mode == "video-llava":  # languagebind/video/processing_video.py (decord + CLIP processor)
        vr = VideoReader(path, ctx=cpu(0))
        idx = np.linspace(0, len(vr) - 1, 8, dtype=int)
        frames = vr.get_batch(idx.tolist()).asnumpy()
        pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"]
    else:  # video_llama/processors/video_processor.py: load_video at 224x224, then normalise
        vr = VideoReader(path, height=224, width=224)
        idx = np.linspace(0, len(vr) - 1, 8, dtype=int)
        frames = torch.from_numpy(vr.get_batch(idx.tolist()).asnumpy()).permute(0, 3, 1, 2)
        pixels = (frames.float() / 255 - mean) / std
    with torch.no_grad():
        feats = model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]
    torch.save(feats.clone(), f"{out}/{i}.pt")
'''


PIPELINES = ("vlm cold", "video-llava seed", "video-llama seed", "vlm warm")
TARGETS = {"decode-bound": 1.3, "vit-b16": 1.0}
WARM_TARGET = 100


def distinct_copies(sources: list[Path], copies: int, out: Path) -> list[Path]:
    """``copies`` copies of every file of ``sources``, each with its own content hash."""
    out.mkdir(parents=True)
    made = []
    for src in sources:
        for k in range(copies):
            dst = out / f"{src.stem}-{k}.mp4"
            shutil.copy(src, dst)
            payload = f"vlm-bench copy {k}".encode()
            with dst.open("ab") as f:  # a top-level MP4 'free' box: skipped by every demuxer
                f.write(struct.pack(">I", 8 + len(payload)) + b"free" + payload)
            made.append(dst)
    return made


def _become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``),
    so that the CPU time of vlm's decoder workers and forkserver, which vlm kills at exit instead
    of waiting for them, is counted in :func:`timed`'s ``RUSAGE_CHILDREN``. False elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


SUBREAPER = _become_subreaper()


def _reap_orphans(grace_s: float = 2.0) -> None:
    """Wait for the descendants a run left behind (reparented here), ``grace_s`` at most."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``cmd``: wall seconds, CPU seconds of it and all its descendants (user + system; all
    of them where :data:`SUBREAPER`), and its stdout."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    _reap_orphans()
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return seconds, _children_cpu() - cpu, done.stdout


def run_once(name: str, cls: str, clips: list[Path], tmp: Path, workers: int,
             run: int, seeds: bool = True) -> dict[str, float]:
    """One run of the four pipelines on ``clips`` with encoder ``name`` (without the seed loops:
    ``vlm cold`` and ``vlm warm`` only): wall seconds of each (``PIPELINE``) and CPU seconds
    (``PIPELINE cpu``)."""
    config, layer = ENCODERS[name]
    tag = f"{name}-{cls}"
    data = tmp / f"{tag}.json"
    data.write_text(json.dumps([{"video": str(p)} for p in clips]))
    listing = tmp / f"{tag}-paths.json"
    listing.write_text(json.dumps([str(p) for p in clips]))
    overrides = ["model.vision.arch=clip", "model.vision.select=cls_patch",
                 f"model.vision.feature_layer={layer}", "model.vision.image_mean=null",
                 "model.vision.image_std=null", f"model.vision.config={json.dumps(config)}",
                 "model.audio=null", "model.audio_connector=null"]
    vlm = [VLM, "preprocess", str(data), "--recipe", "tiny-av", *overrides,
           "--workers", str(workers), "--device", "cpu", "--json"]
    n = len(clips)
    times, cpu = {}, {}
    home = tmp / f"home-{tag}-{run}"
    times["vlm cold"], cpu["vlm cold"], out = timed(vlm, {"VLM_HOME": str(home)})
    summary = json.loads(out)
    assert summary["computed"] == n and not summary["failed"], summary
    for mode in ("video-llava", "video-llama") if seeds else ():
        feats = tmp / f"{tag}-{mode}-{run}"
        feats.mkdir()
        times[f"{mode} seed"], cpu[f"{mode} seed"], _ = timed(
            [sys.executable, "-c", SEED, mode, str(listing), json.dumps(config), str(layer),
             str(feats)])
        shutil.rmtree(feats)
    times["vlm warm"], cpu["vlm warm"], out = timed(vlm, {"VLM_HOME": str(home)})
    assert json.loads(out)["hits"] == n
    shutil.rmtree(home)
    return {**times, **{f"{k} cpu": v for k, v in cpu.items()}}


def report(name: str, label: str, n: int, runs: list[dict[str, float]]) -> dict[str, float]:
    """Print one class's (or the total's) medians and ratios; return the medians."""
    med = {k: statistics.median(r[k] for r in runs) for k in PIPELINES}
    faster = min(med["video-llava seed"], med["video-llama seed"])
    per_run = " ".join(f"{min(r['video-llava seed'], r['video-llama seed']) / r['vlm cold']:.2f}"
                       for r in runs)
    print(f"  {label}: {n} clips")
    for k in PIPELINES:
        values = " ".join(f"{r[k]:.2f}" for r in runs)
        cpu = statistics.median(r[f"{k} cpu"] for r in runs)
        print(f"    {k:<17} {med[k] / n:6.3f} s/clip  ({med[k]:.2f} s; runs {values}); "
              f"CPU {cpu / n:.3f} s/clip")
    print(f"    vlm / faster seed: {faster / med['vlm cold']:.2f}x as fast (target >= "
          f"{TARGETS[name]}x; per run {per_run}); warm / cold: "
          f"{med['vlm cold'] / med['vlm warm']:.1f}x as fast (warm: mostly start-up)")
    cpu = {k: statistics.median(r[f"{k} cpu"] for r in runs) for k in PIPELINES}
    least = min(cpu["video-llava seed"], cpu["video-llama seed"])
    print(f"    CPU seconds, all processes: vlm cold {cpu['vlm cold']:.1f}, seeds "
          f"{cpu['video-llava seed']:.1f} / {cpu['video-llama seed']:.1f}: the thriftier seed "
          f"uses {least / cpu['vlm cold']:.2f}x vlm's" + ("" if SUBREAPER else
                                                          " (vlm's workers not counted)"),
          flush=True)
    return med


def report_whole(n: int, runs: list[dict[str, float]]) -> dict[str, float]:
    """Print the whole set's cold and warm medians and their ratio; return the medians."""
    med = {k: statistics.median(r[k] for r in runs) for k in ("vlm cold", "vlm warm")}
    per_run = " ".join(f"{r['vlm cold'] / r['vlm warm']:.0f}" for r in runs)
    print(f"  whole set (every class's files in one dataset): {n} clips")
    for k in med:
        values = " ".join(f"{r[k]:.2f}" for r in runs)
        print(f"    {k:<17} {med[k]:8.2f} s  (runs {values}); "
              f"{1000 * med[k] / n:.2f} ms/clip")
    print(f"    warm / cold: {med['vlm cold'] / med['vlm warm']:.0f}x as fast (target >= "
          f"{WARM_TARGET}x; per run {per_run})", flush=True)
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=["shared", *CLASSES],
                        choices=["shared", *CLASSES], help="size classes to run (default: all)")
    parser.add_argument("--copies", type=int, nargs=2, default=[20, 2], metavar=("DECODE", "VIT"),
                        help="copies of each shared video for the decode-bound and ViT-B/16 runs")
    parser.add_argument("--files", type=int, nargs=2, default=[24, 4], metavar=("DECODE", "VIT"),
                        help="copies of each generated clip for the decode-bound and ViT-B/16 "
                             "runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved runs of each pipeline; medians are compared")
    parser.add_argument("--only", choices=sorted(ENCODERS), help="run one encoder only")
    parser.add_argument("--clips-dir", type=Path, default=DEFAULT_DIR,
                        help="where the generated clips are written once and reused")
    parser.add_argument("--whole-set-only", action="store_true",
                        help="only the whole-set warm / cold runs (no per-class comparison)")
    parser.add_argument("--json", type=Path, help="also write every time measured here")
    args = parser.parse_args()
    if "shared" in args.classes and SHARED_MEDIA is None:
        sys.exit("../shared/media not found")
    generated = ensure_clips(args.clips_dir, [c for c in args.classes if c != "shared"],
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    # Bytecode for vlm's own modules, as `make install` and a wheel install leave it: where
    # none is ever written (PYTHONDONTWRITEBYTECODE) each call would compile them again.
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(REPO / d) for d in
                    ("vlm_cli", "commands"))], check=True)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, copies, files in zip(ENCODERS, args.copies, args.files):
            if args.only not in (None, name):
                continue
            clips = {}
            for cls in args.classes:
                sources = (sorted(SHARED_MEDIA.glob("*.mp4")) if cls == "shared"
                           else [generated[cls]])
                count = copies if cls == "shared" else files
                clips[cls] = distinct_copies(sources, count, tmp / f"clips-{name}-{cls}")
            runs: dict[str, list[dict[str, float]]] = {cls: [] for cls in args.classes}
            whole_clips = [p for cls in args.classes for p in clips[cls]]
            whole: list[dict[str, float]] = []
            classes = [] if args.whole_set_only else args.classes
            for run in range(args.repeat):  # interleaved: a slower spell hits all alike
                for cls in classes:
                    runs[cls].append(run_once(name, cls, clips[cls], tmp, args.workers, run))
                    print(f"[{name} run {run + 1}/{args.repeat}] {cls}: " + ", ".join(
                        f"{k} {runs[cls][-1][k]:.2f} s (CPU {runs[cls][-1][k + ' cpu']:.2f})"
                        for k in PIPELINES), file=sys.stderr, flush=True)
                # What a user's dataset of mixed clips sees: one cold run, one warm run.
                whole.append(run_once(name, "whole", whole_clips, tmp, args.workers, run,
                                      seeds=False))
                print(f"[{name} run {run + 1}/{args.repeat}] whole set: " + ", ".join(
                    f"{k} {whole[-1][k]:.2f} s (CPU {whole[-1][k + ' cpu']:.2f})"
                    for k in ("vlm cold", "vlm warm")), file=sys.stderr, flush=True)
            print(f"{name}: {args.workers} decoder workers, {os.cpu_count()} cores, "
                  f"median of {args.repeat}")
            for cls in classes:
                report(name, cls, len(clips[cls]), runs[cls])
            report_whole(len(whole_clips), whole)
            if len(classes) > 1:
                totals = [{k: sum(runs[c][i][k] for c in args.classes) for k in runs[
                    args.classes[0]][i]} for i in range(args.repeat)]
                report(name, "overall (classes summed)", sum(len(c) for c in clips.values()),
                       totals)
            results[name] = {**{cls: runs[cls] for cls in classes}, "whole set": whole}
            for dirs in clips.values():
                shutil.rmtree(dirs[0].parent)
    if args.json:
        args.json.write_text(json.dumps({"workers": args.workers, "repeat": args.repeat,
                                         "files": {"copies": args.copies, "files": args.files},
                                         "times": results}, indent=1))


if __name__ == "__main__":
    main()
