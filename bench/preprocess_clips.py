"""Video clips of the sizes, rates and codecs that real datasets hold, generated with PyAV.

For ``bench/preprocess_speed.py``: nothing is downloaded. Each class is one clip, written once
into a clips directory (default ``../bench-data/preprocess_clips`` beside the repository) under a
name that carries a hash of its settings, so a changed setting writes a new file and an
unchanged one is reused.

What a frame holds (so that the codecs work as on camera footage, not on flat colour, which
decodes unrealistically fast): a still "scene" 1.5x the frame in each direction (colour
gradients plus smoothed noise at 64, 16, 4 and 1 px scales), seen through a window that pans
slowly over it; a textured object moving across it on its own path; and sensor noise (+-2
levels, a new pattern each frame of a cycle of 4). At CRF 23 this gives ~8 Mbit/s at 1080p
H.264 (a phone records 10-17), and H.264 decodes it at ~200 frames/s on one core at 1080p
(measured on this machine), as camera footage does. Audio, where a class has it: AAC, 44.1 kHz
stereo, 128 kbit/s, a tone swept over noise.

Everything is seeded: the same settings give the same pictures and sound. The encoders'
bitstreams are the same on the same machine and library versions (not guaranteed across x264 /
x265 builds), which does not matter here: the bench only times them.

Usage: python bench/preprocess_clips.py [--clips-dir DIR] [--classes 1080p hevc ...]
(writes what is missing and prints one line per clip).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

#: Bumped when the pictures or sound change, so that older clips are not reused.
CONTENT_VERSION = 1

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "bench-data" / "preprocess_clips"


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One generated clip: ``width`` x ``height`` px at ``fps`` Hz for ``seconds``, encoded
    by ``codec`` (``libx264`` or ``libx265``) at ``crf`` with a key frame every ``gop`` frames
    (no scene-cut key frames) and ``bframes`` B-frames at most in a row; ``audio``: an AAC
    track. ``preset``: the encoder's (how hard it searches; the bitstream's features)."""

    width: int
    height: int
    fps: int
    seconds: float
    codec: str = "libx264"
    gop: int = 60
    bframes: int = 0
    audio: bool = False
    crf: int = 23
    preset: str = "veryfast"
    what: str = ""

    def digest(self) -> str:
        fields = dataclasses.asdict(self) | {"content": CONTENT_VERSION}
        fields.pop("what")
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]

    def filename(self, name: str) -> str:
        return f"{name}-{self.digest()}.mp4"


#: The size classes, besides ``shared`` (the videos of ``../shared/media``).
CLASSES: dict[str, ClipSpec] = {
    "1080p": ClipSpec(1920, 1080, 30, 6.0, gop=60, audio=True,
                      what="camera/phone landscape: H.264 High, 2 s GOP, no B-frames, AAC"),
    "1440p": ClipSpec(2560, 1440, 30, 5.0, gop=60,
                      what="2560x1440 landscape (screen/camera): H.264, 2 s GOP, no audio"),
    "portrait-1080x1920": ClipSpec(1080, 1920, 30, 6.0, gop=30, audio=True,
                                   what="phone portrait, coded upright: H.264, 1 s GOP, AAC"),
    "360p60-gop10s": ClipSpec(640, 360, 60, 20.0, gop=600,
                              what="game/screen capture: 60 fps, 10 s key-frame interval (two "
                                   "GOPs), every frame a reference (no B-frames)"),
    "5min": ClipSpec(854, 480, 30, 300.0, gop=250, bframes=3, audio=True,
                     what="5 min at 854x480 (ActivityNet-like): x264 defaults (GOP 250, "
                          "3 B-frames), AAC"),
    "bframes": ClipSpec(1280, 720, 30, 8.0, gop=250, bframes=3, audio=True,
                        what="720p, 3 B-frames (pyramid), one 250-frame GOP: web video"),
    "hevc": ClipSpec(1920, 1080, 30, 5.0, codec="libx265", gop=60, bframes=4, audio=True,
                     crf=26, preset="superfast",
                     what="HEVC 1080p (a recent phone's default), 2 s GOP, 4 B-frames, AAC"),
}


def _smoothed_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """``[h, w, 3] float32`` noise of unit-ish variance varying over ``scale`` px."""
    small = rng.standard_normal((h // scale + 2, w // scale + 2, 3)).astype(np.float32)
    big = np.repeat(np.repeat(small, scale, 0), scale, 1)[:h, :w]
    if scale > 1:  # a box blur of the blocks in each direction: no block edges
        for axis in (0, 1):
            c = np.cumsum(big, axis)
            big = (np.take(c, range(scale, c.shape[axis]), axis)
                   - np.take(c, range(0, c.shape[axis] - scale), axis)) / scale
            pad = [(0, 0)] * 3
            pad[axis] = (scale // 2, scale - scale // 2)
            big = np.pad(big, pad, mode="edge")
    return big


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """``[h, w, 3] uint8``: colour gradients plus smoothed noise at several scales, in
    [8, 247] (so that +-2 of sensor noise never wraps)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = (xx / w * 120)[..., None] * np.array([1.0, 0.6, 0.2], np.float32)
    out += (yy / h * 100)[..., None] * np.array([0.2, 0.5, 1.0], np.float32)
    for scale, amp in ((64, 50), (16, 30), (4, 20), (1, 12)):
        out += _smoothed_noise(rng, h, w, scale) * amp
    return np.clip(out + 20, 8, 247).astype(np.uint8)


def _frames(spec: ClipSpec, seed: int):
    """Yield the clip's ``[H, W, 3] uint8`` RGB frames."""
    w, h = spec.width, spec.height
    backdrop = scene(h + h // 2, w + w // 2, seed)
    thing = scene(max(16, h // 4), max(16, w // 5), seed + 1)
    rng = np.random.default_rng(seed + 2)
    noise = [rng.integers(-2, 3, (h, w, 3), dtype=np.int8).view(np.uint8) for _ in range(4)]
    for i in range(round(spec.fps * spec.seconds)):
        t = i / spec.fps
        y0 = int((h // 2) * (0.5 + 0.5 * np.sin(t * 0.7)))
        x0 = int((w // 2) * (0.5 + 0.5 * np.sin(t * 0.4 + 1)))
        frame = backdrop[y0:y0 + h, x0:x0 + w].copy()
        oy = int((h - thing.shape[0]) * (0.5 + 0.5 * np.sin(t * 1.3)))
        ox = int((w - thing.shape[1]) * (0.5 + 0.5 * np.cos(t * 0.9)))
        frame[oy:oy + thing.shape[0], ox:ox + thing.shape[1]] = thing
        frame += noise[i % 4]  # uint8 arithmetic: adds -2..2 (two's complement wraps back)
        yield frame


def _audio_chunks(seconds: float, rate: int = 44100, chunk: int = 1024, seed: int = 0):
    """Yield ``[2, chunk] float32`` planar stereo: a tone swept 200-2000 Hz over quiet noise."""
    rng = np.random.default_rng(seed)
    total = int(seconds * rate)
    phase = 0.0
    for start in range(0, total, chunk):
        n = chunk  # AAC takes whole frames; the last one is padded with silence
        t = (start + np.arange(n)) / rate
        freq = 200 + 1800 * (0.5 + 0.5 * np.sin(2 * np.pi * t / 7.0))
        phases = phase + 2 * np.cumsum(np.pi * freq / rate)
        phase = float(phases[-1])
        tone = 0.3 * np.sin(phases) + 0.05 * rng.standard_normal(n)
        live = (start + np.arange(n)) < total
        left = (tone * live).astype(np.float32)
        right = (0.8 * np.roll(tone, 7) * live).astype(np.float32)
        yield np.stack([left, right])


def write_clip(path: Path, spec: ClipSpec, seed: int = 0) -> None:
    """Encode ``spec`` into ``path`` (an MP4), through a temporary name."""
    tmp = path.with_name(path.name + ".part")
    keys = f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0"
    with av.open(str(tmp), "w", format="mp4") as out:
        video = out.add_stream(spec.codec, rate=Fraction(spec.fps))
        video.width, video.height, video.pix_fmt = spec.width, spec.height, "yuv420p"
        if spec.codec == "libx264":
            video.options = {"preset": spec.preset, "crf": str(spec.crf),
                             "bf": str(spec.bframes), "x264-params": keys}
        else:
            video.codec_tag = "hvc1"  # what phones write; players (and decord) read both
            video.options = {"preset": spec.preset, "crf": str(spec.crf),
                             "x265-params": f"{keys}:bframes={spec.bframes}:log-level=error"}
        sound = None
        if spec.audio:
            sound = out.add_stream("aac", rate=44100, layout="stereo")
            sound.bit_rate = 128_000
        chunks = _audio_chunks(spec.seconds, seed=seed) if sound is not None else iter(())
        audio_s = 0.0
        for i, rgb in enumerate(_frames(spec, seed)):
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
            while sound is not None and audio_s <= (i + 1) / spec.fps:
                samples = next(chunks, None)
                if samples is None:
                    break
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
                frame.sample_rate = 44100
                for packet in sound.encode(frame):
                    out.mux(packet)
                audio_s += samples.shape[1] / 44100
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            for samples in chunks:
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
                frame.sample_rate = 44100
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    os.replace(tmp, path)


def ensure_clips(clips_dir: Path, names: list[str], log=print) -> dict[str, Path]:
    """The clip of each class in ``names`` (of :data:`CLASSES`), written into ``clips_dir``
    if it is not there yet; ``log`` gets one line per clip written."""
    clips_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        spec = CLASSES[name]
        path = clips_dir / spec.filename(name)
        if not path.exists():
            start = time.perf_counter()
            write_clip(path, spec)
            log(f"wrote {path.name}: {describe(path)} in {time.perf_counter() - start:.1f} s")
        paths[name] = path
    return paths


def describe(path: Path) -> str:
    """One line: codec, size, rate, duration, GOP and bitrate of a clip, as PyAV reads it."""
    with av.open(str(path)) as container:
        v = container.streams.video[0]
        keys = frames = 0
        for packet in container.demux(v):
            if packet.size:
                frames += 1
                keys += bool(packet.is_keyframe)
        seconds = container.duration / 1e6 if container.duration else 0.0
        audio = ", ".join(f"{a.codec_context.name} {a.rate} Hz" for a in container.streams.audio)
    mbps = path.stat().st_size * 8 / seconds / 1e6 if seconds else 0.0
    return (f"{v.codec_context.name} {v.width}x{v.height} {float(v.average_rate):g} fps "
            f"{seconds:.1f} s, {frames} frames, {keys} key frames, {mbps:.1f} Mbit/s, "
            f"{path.stat().st_size / 2**20:.1f} MiB" + (f", {audio}" if audio else ", no audio"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--classes", nargs="+", choices=sorted(CLASSES), default=list(CLASSES))
    args = parser.parse_args()
    paths = ensure_clips(args.clips_dir, args.classes, log=lambda s: print(s, file=sys.stderr))
    for name, path in paths.items():
        print(f"{name:<20} {path.name}: {describe(path)}")


if __name__ == "__main__":
    main()
