"""Write small media files for tests with PyAV (no network, no ffmpeg binary).

- :func:`write_video`: h264 (libx264, yuv420p) in mp4 (or any container PyAV can mux h264 into),
  optionally with an AAC audio track.
- :func:`write_wav`: PCM s16 wav, mono or multi-channel.
- :func:`write_png`: one RGB image.
- :func:`moving_frames`: a cheap synthetic clip whose frames differ from each other.

Functions are general on purpose: other test modules use them to build fixtures.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from fractions import Fraction
from typing import Any
from pathlib import Path

import av
import numpy as np



def _shared_media() -> Path:
    """The real sample clips: ``$VLM_SAMPLE_MEDIA``, else ``shared/media`` beside the checkout
    (where CI puts it), else ``/work/shared/media``."""
    import os

    if os.environ.get("VLM_SAMPLE_MEDIA"):
        return Path(os.environ["VLM_SAMPLE_MEDIA"])
    beside = Path(__file__).resolve().parents[2] / "shared" / "media"
    return beside if beside.is_dir() else Path("/work/shared/media")


#: Directory of the real sample media (read-only; copy a file before changing it).
SHARED_MEDIA = _shared_media()


def shared_sample(name: str) -> Path:
    """``../shared/media/NAME``, or the test is skipped when the file is not there."""
    import pytest

    path = SHARED_MEDIA / name
    if not path.is_file():
        pytest.skip(f"missing sample {path}")
    return path


def moving_frames(num_frames: int, height: int = 64, width: int = 96) -> np.ndarray:
    """A synthetic clip: a bright bar moving left to right over a gradient.

    Returns ``[T, H, W, 3] uint8``; frame ``t`` has its red channel's mean growing with ``t``
    so tests can tell frames apart after lossy encoding.
    """
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    x = np.arange(width, dtype=np.float32)[None, None, :]
    y = np.arange(height, dtype=np.float32)[None, :, None]
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    level = (t / max(num_frames - 1, 1)) * 200.0 + 20.0
    frames[..., 0] = np.broadcast_to(level, (num_frames, height, width)).astype(np.uint8)
    frames[..., 1] = np.broadcast_to(y / height * 255.0, (num_frames, height, width)).astype(
        np.uint8
    )
    bar = (np.abs(x - (t * 3.0) % width) < 4).astype(np.float32) * 255.0
    frames[..., 2] = np.broadcast_to(bar, (num_frames, height, width)).astype(np.uint8)
    return frames


def write_video(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
    *,
    faststart: bool = False,
    x264: dict[str, str] | None = None,
) -> Path:
    """Encode ``frames [T, H, W, 3] uint8 RGB`` as h264 at ``fps`` frames per second.

    Args:
        path: output file; the container follows the suffix (``.mp4``, ``.mkv``, ...).
        frames: ``[T, H, W, 3] uint8``, or an iterable of ``[H, W, 3] uint8`` frames (to write
            long clips without holding them in memory); H and W must be even (yuv420p).
        fps: frame rate in Hz (fractional rates such as 29.97 are kept as a fraction).
        audio: optional mono waveform ``[S] float32`` in [-1, 1], encoded as AAC.
        sample_rate: sample rate of ``audio`` in Hz.
        faststart: write the mp4 index (moov) at the start of the file, as web videos do.
        x264: libx264 options instead of ``preset=ultrafast crf=23`` (one reference frame, no
            B-frames), e.g. ``{"preset": "medium", "g": "12"}`` for B-frames and short groups
            of pictures as phones and web videos have them.

    Returns the path.
    """
    path = Path(path)
    frame_iter = iter(frames)
    first = next(frame_iter, None)
    if first is None:
        raise ValueError("no frames to write")
    first = np.asarray(first)
    if first.ndim != 3 or first.shape[-1] != 3 or first.dtype != np.uint8:
        raise ValueError(f"frames must be [H, W, 3] uint8, got {first.shape} {first.dtype}")
    options = {"movflags": "faststart"} if faststart else {}
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", options=options) as container:
        vstream = container.add_stream("libx264", rate=rate)
        vstream.width = first.shape[1]
        vstream.height = first.shape[0]
        vstream.pix_fmt = "yuv420p"
        vstream.options = x264 or {"preset": "ultrafast", "crf": "23"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        for image in itertools.chain([first], frame_iter):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if astream is not None:
            samples = np.asarray(audio, dtype=np.float32).reshape(-1)
            chunk = 1024
            for start in range(0, samples.size, chunk):
                piece = samples[start : start + chunk]
                aframe = av.AudioFrame.from_ndarray(piece[None, :], format="flt", layout="mono")
                aframe.sample_rate = sample_rate
                aframe.pts = start
                aframe.time_base = Fraction(1, sample_rate)
                container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    return path


def write_wav(
    path: str | Path, audio: np.ndarray, sample_rate: int, channels: int | None = None
) -> Path:
    """Write PCM s16 wav.

    Args:
        audio: ``[S] float32`` (mono) or ``[C, S] float32`` in [-1, 1] (clipped).
        sample_rate: Hz.
        channels: number of channels; a mono ``[S]`` signal with ``channels > 1`` is copied to
            every channel. Defaults to the number of rows of ``audio``.
    """
    path = Path(path)
    data = np.asarray(audio, dtype=np.float32)
    if data.ndim == 1:
        data = data[None, :]
    if channels is None:
        channels = data.shape[0]
    if data.shape[0] == 1 and channels > 1:
        data = np.repeat(data, channels, axis=0)
    if data.shape[0] != channels:
        raise ValueError(f"audio has {data.shape[0]} channels, asked for {channels}")
    pcm = (np.clip(data, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    with av.open(str(path), mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=sample_rate)
        stream.layout = layout
        chunk = 4096
        for start in range(0, pcm.shape[1], chunk):
            piece = pcm[:, start : start + chunk]
            # packed s16: one row of interleaved samples
            packed = np.ascontiguousarray(piece.T).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write ``rgb [H, W, 3] uint8`` as a PNG file."""
    path = Path(path)
    rgb = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width = rgb.shape[1]
        stream.height = rgb.shape[0]
        stream.pix_fmt = "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def tone(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A sine tone ``[S] float32`` of ``freq`` Hz lasting ``seconds`` at ``sample_rate`` Hz."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def use_decoder(monkeypatch: Any, decoder: str) -> None:
    """Make :func:`vlm_cli.media.load_video`'s decoders tried before ``decoder``
    (``"pyav-seek"``, ``"decord"``, ``"pyav"``) fail on every file, as on a file they cannot
    read (``monkeypatch``: pytest's fixture)."""
    from vlm_cli.media import video

    if decoder in ("decord", "pyav"):
        def no_seeking(*args: object) -> None:
            raise video._SeekFailed("disabled by test")

        monkeypatch.setattr(video, "_load_by_seeking", no_seeking)
    if decoder == "pyav":
        def refuse(path: object, select: object, size: object = None) -> None:
            raise video._DecordFailed("disabled by test")

        monkeypatch.setattr(video, "_load_with_decord", refuse)
