"""Write frames + soundtrack as an mp4 (h264 yuv420p + mono AAC) with PyAV, byte-deterministically.

x264 runs single-threaded (the generator parallelises across clips instead) and the muxer runs with
``fflags=+bitexact``, so the same arrays always give the same bytes: no creation time, no threads
racing in the encoder. x264's macroblock-tree rate control is off (``mbtree=0``): on frames this
small its assembly reads uninitialised heap memory, which made the output depend on what the
process had allocated before (seen with x264 in PyAV 18 wheels; reproduced by dirtying the heap).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

#: libx264 options: quality high enough that the 4 colours survive 4:2:0 chroma subsampling;
#: single-threaded and without mbtree so that the bytes are deterministic (see module docstring).
X264_OPTIONS = {
    "preset": "fast",
    "crf": "18",
    "threads": "1",
    "x264-params": "threads=1:sliced-threads=0:mbtree=0",
}
AAC_BIT_RATE = 48_000


def write_mp4(path: str | Path, frames: np.ndarray, audio: np.ndarray, *, fps: int, sample_rate: int) -> None:
    """Encode ``frames`` and ``audio`` into the mp4 file ``path`` (overwritten).

    Args:
        frames: ``[T, H, W, 3]`` uint8 RGB; ``H`` and ``W`` even (yuv420p).
        audio: ``[S]`` float32 in [-1, 1], mono, at ``sample_rate`` Hz. All zeros gives a silent
            (present but silent) AAC track.
        fps: frame rate (frames per second); frame ``i`` has pts ``i / fps`` s.
        sample_rate: audio sample rate in Hz.

    Raises:
        ValueError: wrong array shape/dtype or odd frame size.
        av.error.FFmpegError: the encoder or muxer failed (e.g. the path is not writable).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame size must be even for yuv420p, got {frames.shape[2]}x{frames.shape[1]}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be [S] mono, got shape {audio.shape}")
    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        video = container.add_stream("libx264", rate=fps, options=dict(X264_OPTIONS))
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        video.codec_context.thread_count = 1
        sound = container.add_stream("aac", rate=sample_rate)
        sound.layout = "mono"
        sound.bit_rate = AAC_BIT_RATE
        sound.codec_context.thread_count = 1
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        chunk = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(audio, dtype=np.float32)[None, :], format="fltp", layout="mono"
        )
        chunk.sample_rate = sample_rate
        chunk.pts = 0
        chunk.time_base = Fraction(1, sample_rate)
        container.mux(sound.encode(chunk))
        container.mux(sound.encode(None))
