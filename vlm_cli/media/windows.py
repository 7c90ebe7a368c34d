"""Frames sampled at a rate from a (long) video, decoded one window at a time.

:func:`load_video` returns every sampled frame at once: ``[T, H, W, 3] uint8``, which for an
hour sampled at 1 Hz is 3600 frames (830 MB at 320×240, 22 GB at 1080p). :func:`video_windows`
samples the same frames (the same rule, :func:`~vlm_cli.media.sampling.fps_frame_indices`, over
the same frame index) but hands them out ``window`` at a time, so a consumer that encodes a
window and drops it holds at most ``window`` frames whatever the length of the file.

Decoding (rate sampling) is PyAV's, in presentation order: packets are counted without decoding
(the frame index the sampling is spread over, as :func:`load_video`'s PyAV path), then frames
are decoded one after the other and only the sampled ones converted to RGB and kept, a window at
a time. Not decord: its reader goes on decoding ahead in a thread of its own while the consumer
encodes a window, buffering frames (dmlc/decord#157, #208), so its memory grows with the file
(measured: 2.2 GB after 80 windows of a 2-hour file, against 0.8 GB with PyAV; bench/RESULTS.md);
and at a rate of about 1 Hz every frame between two sampled ones is decoded anyway unless key
frames are closer than that. On the files tested, PyAV's frames and times are decord's, bit for
bit (tests/test_long_video.py).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from typing import Callable

import av
import numpy as np

from vlm_cli.errors import MediaError
from vlm_cli.media.kinds import IMAGE_EXTENSIONS
from vlm_cli.media.probe import (check_media_path, describe_error, is_image_container,
                                 open_container)
from vlm_cli.media.sampling import fps_frame_indices
from vlm_cli.media.video import (_check_sampling, _count_packets, _timeline, _video_stream,
                                 load_video)

log = logging.getLogger(__name__)


class VideoWindows:
    """The sampled frames of one video, as an iterable of windows.

    Iterating yields ``[w, H, W, 3] uint8`` RGB arrays, ``1 <= w <= window``, in presentation
    order; together they are the frames :func:`load_video` returns for the same sampling. The
    attributes below are final once iteration has finished (a PyAV fallback or a truncated file
    changes them during it); they match :class:`~vlm_cli.media.video.VideoFrames`'s.

    Attributes:
        timestamps: ``[T] float64`` seconds of the frames yielded, from the first frame.
        decoder: ``"pyav"`` (rate sampling), else :func:`load_video`'s: ``"pyav-seek"``,
            ``"decord"``, ``"pyav"`` or ``"image"``.
        num_decodable: frames the stream indexes (seeking decoders) or decodes (PyAV in
            order).
        duration: seconds; fps: the stream's average rate in Hz.
        window: the most frames one window holds.
        peak_frames: the most decoded frames held at once by this reader (``<= window``).
        decode_s: seconds spent decoding so far (the consumer's time between windows is not
            counted).
    """

    def __init__(self, path: str | os.PathLike[str], source: Callable[[VideoWindows],
                 Iterator[np.ndarray]], window: int) -> None:
        self.path, self.window, self._source = path, int(window), source
        self.timestamps = np.zeros(0, dtype=np.float64)
        self.decoder, self.num_decodable, self.duration, self.fps = "pyav", 0, 0.0, 0.0
        self.peak_frames = 0
        self.decode_s = 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        import time

        source = self._source(self)
        while True:
            start = time.perf_counter()
            try:
                frames = next(source)
            except StopIteration:
                self.decode_s += time.perf_counter() - start
                return
            self.decode_s += time.perf_counter() - start
            self.peak_frames = max(self.peak_frames, int(frames.shape[0]))
            yield frames
            del frames


def video_windows(
    path: str | os.PathLike[str],
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    sampling: str = "uniform",
    size: tuple[int, int] | None = None,
    window: int = 32,
) -> VideoWindows:
    """The frames :func:`load_video` would sample from ``path``, decoded ``window`` at a time.

    With ``fps`` (frames every ``1 / fps`` s, at most ``max_frames``) only ``window`` frames are
    ever held: memory does not grow with the length of the file. With ``num_frames`` (a fixed,
    small count), ``sampling="qwen"`` (at most ``max_frames``, 768 by default) or a still image,
    :func:`load_video` decodes them at once and the windows are slices of its result.

    Args:
        path: video or image file. num_frames, fps, max_frames, sampling, size: as
            :func:`load_video`. window: most frames per window (>= 1).

    Returns:
        :class:`VideoWindows` (nothing is decoded until it is iterated).

    Raises:
        ValueError: bad sampling arguments or ``window < 1``.
        MediaError: missing or unreadable file, no video stream (here); no frame that decodes
            (while iterating).
    """
    _check_sampling(num_frames, fps, max_frames)
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    p = check_media_path(path)
    still = p.suffix.lower() in IMAGE_EXTENSIONS
    if not still:
        with open_container(path) as container:
            still = is_image_container(container)
            if not still:
                _video_stream(container, path)
    if fps is None or still or sampling == "qwen":
        return VideoWindows(path, lambda out: _sliced(out, num_frames=num_frames, fps=fps,
                                                      max_frames=max_frames, sampling=sampling,
                                                      size=size), window)

    def select(timestamps: np.ndarray, end: float) -> np.ndarray:
        return fps_frame_indices(timestamps, float(fps), max_frames, end=end)

    return VideoWindows(path, lambda out: _pyav_windows(out, select, size), window)


def _sliced(out: VideoWindows, **kwargs) -> Iterator[np.ndarray]:
    video = load_video(out.path, **kwargs)
    out.timestamps, out.decoder = video.timestamps, video.decoder
    out.num_decodable, out.duration, out.fps = video.num_decodable, video.duration, video.fps
    for start in range(0, video.frames.shape[0], out.window):
        yield video.frames[start:start + out.window]


def _pyav_windows(out: VideoWindows, select: Callable[[np.ndarray, float], np.ndarray],
                  size: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """Decode in order, keep the sampled frames, hand them out a window at a time. On a file
    where fewer frames decode than packets were counted (truncated), the sampled frames after
    the damage are missing (``timestamps`` says which were taken); :func:`load_video` instead
    samples again over the frames that decode, which needs a second pass."""
    packet_times, avg_fps, _ = _count_packets(out.path)
    if packet_times.size == 0:
        raise MediaError(out.path, "video stream has no frames")
    if not avg_fps:
        span = packet_times[-1] - packet_times[0]
        avg_fps = (packet_times.size - 1) / span if span > 0 else 0.0
    frame_seconds = 1.0 / avg_fps if avg_fps else 0.0
    idx = select(packet_times, packet_times[-1] + frame_seconds)
    want, taken = set(int(i) for i in idx), []
    times: list[float] = []
    buffer: list[np.ndarray] = []
    scale = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
    with open_container(out.path) as container:
        stream = _video_stream(container, out.path)
        stream.thread_type = "AUTO"
        time_base = float(stream.time_base) if stream.time_base is not None else None
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    index = len(times)
                    times.append(frame.pts * time_base if frame.pts is not None
                                 and time_base is not None else math.nan)
                    if index in want:
                        buffer.append(frame.to_ndarray(format="rgb24", **scale))
                        taken.append(index)
                        if len(buffer) == out.window:
                            yield np.stack(buffer)
                            buffer = []
        except av.FFmpegError as exc:  # truncated / damaged: keep what decoded so far
            log.info("%s: decoding stopped after %d frames (%s)", out.path, len(times),
                     describe_error(exc))
    if buffer:
        yield np.stack(buffer)
    if not taken:
        raise MediaError(out.path, "no video frame can be decoded")
    decoded = np.asarray(times, dtype=np.float64)
    if np.all(np.isfinite(decoded)):
        decoded = decoded - decoded[0]
    timeline = _timeline(decoded, packet_times, avg_fps)
    if timeline.size != packet_times.size:
        log.info("%s: %d packets but %d frames decode; %d of %d sampled frames taken", out.path,
                 packet_times.size, timeline.size, len(taken), idx.size)
    out.decoder, out.num_decodable, out.fps = "pyav", int(timeline.size), float(avg_fps)
    out.duration = float(timeline[-1] + frame_seconds)
    out.timestamps = timeline[np.asarray(taken, dtype=np.int64)].astype(np.float64)
