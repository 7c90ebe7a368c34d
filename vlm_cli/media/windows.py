"""Frames sampled at a rate from a (long) video, decoded one window at a time.

:func:`load_video` returns every sampled frame at once: ``[T, H, W, 3] uint8``, which for an
hour sampled at 1 Hz is 3600 frames (830 MB at 320×240, 22 GB at 1080p). :func:`video_windows`
samples the same frames (the same rule, :func:`~vlm_cli.media.sampling.fps_frame_indices`, over
the same frame index) but hands them out ``window`` at a time, so a consumer that encodes a
window and drops it holds at most ``window`` frames whatever the length of the file.

Decoding (rate sampling) is :func:`load_video`'s PyAV seeking decoder
(:func:`~vlm_cli.media.video._seek_frames`): the packets are indexed without decoding, then for
each sampled frame the demuxer seeks to the key frame before it (or decoding goes on within the
group of pictures) and the non-reference frames on the way are skipped (H.264), each sampled
frame handed out as soon as it is decoded. The frames and times are those of decoding every frame
in order (what this module did before), bit for bit, for less CPU (bench/RESULTS.md). Not
decord: its reader goes on decoding ahead in a thread of its own while the consumer encodes a
window, buffering frames (dmlc/decord#157, #208), so its memory grows with the file (measured:
2.2 GB after 80 windows of a 2-hour file, against 0.8 GB with PyAV). A file whose index cannot
be used for seeking (packets without times, a damaged index) is decoded by :func:`load_video`'s
other decoders, all sampled frames at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import numpy as np

from vlm_cli.errors import MediaError
from vlm_cli.media.kinds import media_kind
from vlm_cli.media.probe import check_media_path, is_image_container, open_container
from vlm_cli.media.sampling import fps_frame_indices
from vlm_cli.media.video import (_check_sampling, _seek_frames, _seek_index, _SeekFailed,
                                 _video_stream, load_video)

log = logging.getLogger(__name__)


class VideoWindows:
    """The sampled frames of one video, as an iterable of windows.

    Iterating yields ``[w, H, W, 3] uint8`` RGB arrays, ``1 <= w <= window``, in presentation
    order; together they are the frames :func:`load_video` returns for the same sampling. The
    attributes below are final once iteration has finished (a PyAV fallback or a truncated file
    changes them during it); they match :class:`~vlm_cli.media.video.VideoFrames`'s.

    Attributes:
        timestamps: ``[T] float64`` seconds of the frames yielded, from the first frame.
        decoder: ``"pyav-seek"`` (rate sampling), else :func:`load_video`'s: ``"pyav-seek"``,
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
        self.decoder, self.num_decodable, self.duration, self.fps = "pyav-seek", 0, 0.0, 0.0
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
    still = media_kind(p) == "image"
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

    def fallback(out: VideoWindows) -> Iterator[np.ndarray]:
        return _sliced(out, num_frames=None, fps=fps, max_frames=max_frames, size=size)

    return VideoWindows(path, lambda out: _seeking_windows(out, select, size, fallback), window)


def _sliced(out: VideoWindows, **kwargs) -> Iterator[np.ndarray]:
    video = load_video(out.path, **kwargs)
    out.timestamps, out.decoder = video.timestamps, video.decoder
    out.num_decodable, out.duration, out.fps = video.num_decodable, video.duration, video.fps
    for start in range(0, video.frames.shape[0], out.window):
        yield video.frames[start:start + out.window]


def _seeking_windows(out: VideoWindows, select: Callable[[np.ndarray, float], np.ndarray],
                     size: tuple[int, int] | None,
                     fallback: Callable[[VideoWindows], Iterator[np.ndarray]]
                     ) -> Iterator[np.ndarray]:
    """Index the packets, pick the frames (``select(times, end)``), decode them by seeking
    (:func:`~vlm_cli.media.video._seek_frames`) and hand them out a window at a time.

    The times are those of decoding every frame in order: each packet's ``pts * time_base``
    less the first one's; the video ends one frame (at the stream's rate) after the last one.
    An index that cannot be used for seeking hands over to ``fallback`` before any frame is
    decoded.

    Raises:
        MediaError: a sampled frame that does not decode once windows have been handed out.
    """
    with open_container(out.path) as container:
        stream = _video_stream(container, out.path)
        try:
            index = _seek_index(container, stream)
        except _SeekFailed as exc:
            log.info("%s: cannot decode by seeking (%s); sampling with load_video", out.path,
                     exc)
            index = None
        if index is not None:
            times = index.pts.astype(np.float64) * index.time_base
            times -= times[0]
            avg_fps = index.stream_rate
            if not avg_fps:
                span = times[-1] - times[0]
                avg_fps = (times.size - 1) / span if span > 0 else 0.0
            frame_seconds = 1.0 / avg_fps if avg_fps else 0.0
            idx = select(times, times[-1] + frame_seconds)
            buffer: list[np.ndarray] = []
            try:
                for _, frame in _seek_frames(container, stream, index.pts[idx], index.keys,
                                             size=size):
                    buffer.append(frame)
                    if len(buffer) == out.window:
                        yield np.stack(buffer)
                        buffer = []
            except _SeekFailed as exc:
                raise MediaError(out.path, f"the sampled frames cannot be decoded ({exc})"
                                 ) from None
            if buffer:
                yield np.stack(buffer)
            out.decoder, out.num_decodable, out.fps = "pyav-seek", int(index.pts.size), avg_fps
            out.duration = float(times[-1] + frame_seconds)
            out.timestamps = times[idx]
            return
    yield from fallback(out)
