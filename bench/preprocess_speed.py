"""`vlm preprocess` against the two seed pipelines, in one run, on the same clips and encoders.

Clips: every video of ../shared/media copied under several names, each copy made distinct (an
MP4 ``free`` box appended: decoders skip it, the content hash changes), so the cache cannot
answer. For each encoder (same random weights everywhere, seed 0):

- ``decode-bound``: a 1-layer, 32-wide CLIP at 224 px (the encoder costs nothing);
- ``vit-b16``: a ViT-B/16-shaped CLIP at 224 px, features of layer -2.

runs, each as a subprocess timed from start to exit (imports included, as a user sees it):

- ``vlm cold``: ``vlm preprocess DATA --recipe tiny-av OVERRIDES --json`` with a fresh VLM_HOME;
- ``video-llava seed``: decord ``get_batch`` of 8 uniform frames -> ``CLIPImageProcessor`` ->
  encoder, clip after clip (Video-LLaVA's loop);
- ``video-llama seed``: decord at 224×224 -> /255, CLIP normalisation -> encoder, clip after clip
  (Video-LLaMA's loop);
- ``vlm warm``: the same ``vlm preprocess`` again (everything cached).

The four runs are repeated ``--repeat`` times (default 3), interleaved, each cold run with a fresh
VLM_HOME; prints the median seconds per clip of each, vlm's speed-up over the faster seed loop
(medians; targets: >= 1.3x decode-bound, >= 1.0x ViT-B/16) with the per-run ratios, and warm /
cold (target >= 50x).

Usage: .venv/bin/python bench/preprocess_speed.py [--copies 7 2] [--workers 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def distinct_copies(media: Path, copies: int, out: Path) -> list[Path]:
    """``copies`` copies of every video under ``media``, each with its own content hash."""
    out.mkdir(parents=True)
    made = []
    for src in sorted(media.glob("*.mp4")):
        for k in range(copies):
            dst = out / f"{src.stem}-{k}.mp4"
            shutil.copy(src, dst)
            payload = f"vlm-bench copy {k}".encode()
            with dst.open("ab") as f:  # a top-level MP4 'free' box: skipped by every demuxer
                f.write(struct.pack(">I", 8 + len(payload)) + b"free" + payload)
            made.append(dst)
    return made


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def measure(name: str, clips: list[Path], tmp: Path, workers: int, repeat: int) -> None:
    config, layer = ENCODERS[name]
    data = tmp / f"{name}.json"
    data.write_text(json.dumps([{"video": str(p)} for p in clips]))
    listing = tmp / f"{name}-paths.json"
    listing.write_text(json.dumps([str(p) for p in clips]))
    overrides = ["model.vision.arch=clip", "model.vision.select=cls_patch",
                 f"model.vision.feature_layer={layer}", "model.vision.image_mean=null",
                 "model.vision.image_std=null", f"model.vision.config={json.dumps(config)}",
                 "model.audio=null", "model.audio_connector=null"]
    vlm = [VLM, "preprocess", str(data), "--recipe", "tiny-av", *overrides,
           "--workers", str(workers), "--device", "cpu", "--json"]
    n = len(clips)
    times: dict[str, list[float]] = {"vlm cold": [], "video-llava seed": [],
                                     "video-llama seed": [], "vlm warm": []}
    for run in range(repeat):  # interleaved, so that a slower spell of the machine hits all alike
        home = tmp / f"home-{name}-{run}"
        cold_s, out = timed(vlm, {"VLM_HOME": str(home)})
        summary = json.loads(out)
        assert summary["computed"] == n and not summary["failed"], summary
        times["vlm cold"].append(cold_s)
        for mode in ("video-llava", "video-llama"):
            feats = tmp / f"{name}-{mode}-{run}"
            feats.mkdir()
            seconds, _ = timed([sys.executable, "-c", SEED, mode, str(listing),
                                json.dumps(config), str(layer), str(feats)])
            times[f"{mode} seed"].append(seconds)
        warm_s, out = timed(vlm, {"VLM_HOME": str(home)})
        assert json.loads(out)["hits"] == n
        times["vlm warm"].append(warm_s)
    med = {k: statistics.median(v) for k, v in times.items()}
    faster = min(med["video-llava seed"], med["video-llama seed"])
    target = 1.3 if name == "decode-bound" else 1.0
    print(f"{name}: {n} clips, {workers} decoder workers, {os.cpu_count()} cores, "
          f"median of {repeat}")
    for label, values in times.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"  {label:<17} {med[label] / n:6.3f} s/clip  ({med[label]:.2f} s; runs {runs})")
    per_run = " ".join(f"{min(a, b) / c:.2f}" for a, b, c in
                       zip(times["video-llava seed"], times["video-llama seed"], times["vlm cold"]))
    print(f"  vlm / faster seed: {faster / med['vlm cold']:.2f}x as fast (target >= {target}x; "
          f"per run {per_run}); warm / cold: {med['vlm cold'] / med['vlm warm']:.1f}x as fast "
          f"(target >= 50x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs=2, default=[7, 2], metavar=("DECODE", "VIT"),
                        help="copies of each shared video for the decode-bound and ViT-B/16 runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved runs of each pipeline; medians are compared")
    parser.add_argument("--only", choices=sorted(ENCODERS), help="run one encoder only")
    args = parser.parse_args()
    if SHARED_MEDIA is None:
        sys.exit("../shared/media not found")
    # Bytecode for vlm's own modules, as `make install` and a wheel install leave it: where
    # none is ever written (PYTHONDONTWRITEBYTECODE) each call would compile them again.
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(REPO / d) for d in
                    ("vlm_cli", "commands"))], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, copies in zip(ENCODERS, args.copies):
            if args.only in (None, name):
                clips = distinct_copies(SHARED_MEDIA, copies, tmp / f"clips-{name}")
                measure(name, clips, tmp, args.workers, args.repeat)


if __name__ == "__main__":
    main()
