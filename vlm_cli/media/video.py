"""Video and still-image decoding with frame sampling.

Frame sampling follows the two model families this toolkit builds:

- uniform sampling of ``num_frames`` frames over the whole clip, exactly as Video-LLaVA
  (``np.linspace(0, total - 1, num_frames, dtype=int)`` over decord's frame index), see
  :func:`sample_frame_indices`;
- sampling at a fixed rate (``fps`` frames per second of video time) with an optional cap, see
  :func:`fps_frame_indices`;
- Qwen2-VL / Qwen2.5-Omni's reference sampling (qwen-vl-utils, ``sampling="qwen"``): an even
  frame count from the average frame rate, see :func:`qwen_frame_indices`;
- transformers' default sampling (``sampling="transformers"``, what Gemma 4's processors run
  on frames torchcodec decodes): ``arange(n) * total // n``, see
  :func:`transformers_frame_indices`.

Decoding seeks: only the selected frames are decoded, each from the key frame before it. At the
decoded size the seeking decoder is PyAV's (:func:`_load_by_seeking`), which also skips the
non-reference frames on the way to a selected one (ffmpeg's ``-skip_frame nonref``: no other
frame depends on them), ~30 % less CPU than decord for the same frames, bit for bit. decord
(seek-based too) scales in the decoder when a family asks for a ``size`` and takes over when the
index cannot be trusted; PyAV decoding every frame in order is the last resort (a truncated or
damaged file). No path trusts the container's frame count: the packets are counted as they are
demuxed, and the sequential path counts the frames that really decode. Memory is bounded by the
number of frames *taken*, never by the length of the file.
"""

from __future__ import annotations

import logging
import math
import os
import dataclasses
from dataclasses import dataclass
from types import ModuleType
from collections.abc import Iterator
from typing import Callable, Literal

import av
import numpy as np

from vlm_cli.errors import MediaError
from vlm_cli.media.kinds import IMAGE_EXTENSIONS
from vlm_cli.media.sampling import (fps_frame_indices, qwen_frame_indices,
                                    sample_frame_indices, segment_start_indices,
                                    transformers_frame_indices)
from vlm_cli.media.probe import (
    check_media_path,
    describe_error,
    is_image_container,
    open_container,
)

log = logging.getLogger(__name__)

Decoder = Literal["pyav-seek", "decord", "pyav", "image"]
Sampling = Literal["uniform", "segment_start", "qwen", "transformers"]
SAMPLINGS = ("uniform", "segment_start", "qwen", "transformers")
#: Chooses the frames to decode: ``(timestamps [N] s, end s, average fps) -> indices``.
Selector = Callable[[np.ndarray, float, float], np.ndarray]
#: A function of one decoded frame, ``[H, W, 3] uint8 -> [h, w, 3] uint8`` (see ``load_video``).
FrameMap = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class VideoFrames:
    """Frames taken from one video (or image), with where they came from.

    Attributes:
        frames: ``[T, H, W, 3] uint8`` RGB, in presentation order (``T`` = frames taken).
        timestamps: ``[T] float64`` seconds: presentation time of each frame taken, measured
            from the first frame of the video stream (the first frame is at 0.0); with
            ``sampling="transformers"``, the reference's times instead (transformers'
            ``VideoMetadata.timestamps``: frame index / ``sample_fps``).
        decoder: ``"pyav-seek"`` (:func:`_load_by_seeking`), ``"decord"`` (scaled in the
            decoder, or the index could not be used for seeking), ``"pyav"`` (every frame
            decoded in order: decord could not read the file either) or ``"image"``.
        num_decodable: how many frames the stream really indexes (seeking decoders) or
            decodes (``"pyav"``);
            the sampling was spread over these. 1 for images.
        duration: seconds, from the first frame's start to the last decodable frame's end;
            0.0 for images.
        fps: average frame rate in Hz (frames per second); 0.0 for images.
        sample_fps: with ``sampling="qwen"``, the rate the taken frames stand for
            (qwen-vl-utils' ``sample_fps = T / num_decodable * fps``, which Qwen's processor
            turns into seconds per temporal patch); with ``sampling="transformers"``, the
            clip's average rate as torchcodec measures it in a scan (``num_decodable /
            duration``); None for other samplings and images.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    decoder: Decoder
    num_decodable: int
    duration: float
    fps: float
    sample_fps: float | None = None


# --------------------------------------------------------------------------------------------
# Public entry point


def load_video(
    path: str | os.PathLike[str],
    *,
    num_frames: int | None = 8,
    fps: float | None = None,
    max_frames: int | None = None,
    sampling: Sampling = "uniform",
    size: tuple[int, int] | None = None,
    each_frame: FrameMap | None = None,
) -> VideoFrames:
    """Decode sampled frames of a video (or a still image) as ``[T, H, W, 3] uint8`` RGB.

    Sampling (exactly one of ``num_frames`` / ``fps``; pass ``num_frames=None`` with ``fps``):

    - ``num_frames``: Video-LLaVA uniform sampling over all decodable frames
      (:func:`sample_frame_indices`), ``T == num_frames`` (indices repeat for short clips); with
      ``sampling="segment_start"``, Video-LLaMA's (:func:`segment_start_indices`: ``T`` is at
      most the frame count).
    - ``fps``: one frame every ``1 / fps`` seconds of video time (:func:`fps_frame_indices`),
      at most ``max_frames`` frames.
    - ``sampling="qwen"``: Qwen2-VL / Qwen2.5-Omni's reference (qwen-vl-utils' decord reader,
      :func:`qwen_frame_indices`) over all decodable frames (decord's ``len(vr)``) at the
      stream's average frame rate (libavformat's ``avg_frame_rate``, which decord's
      ``get_avg_fps()`` returns; a stream without one gets the guessed rate, where decord
      would return NaN): ``fps`` (2.0 in the reference; ``max_frames`` 768 unless given) or
      ``num_frames`` (its ``nframes``). ``T`` is even; ``VideoFrames.sample_fps`` carries the
      reference's ``sample_fps``. The frames are decord's ``get_batch(indices)``, bit for bit,
      as for every sampling here.
    - ``sampling="transformers"``: transformers' ``default_sample_indices_fn`` as Gemma 4's
      processors run it on torchcodec's frames (:func:`transformers_frame_indices`:
      ``num_frames``, or ``fps`` capped by ``max_frames``) over all decodable frames at the
      scanned average rate (``sample_fps``); ``timestamps`` are index / rate, as the reference
      writes them into the prompt. A picture is read as transformers' ``load_image`` reads it
      (PIL, EXIF orientation applied, RGB), at its own size. Frames of a clip stored with a
      display rotation are turned upright (``np.rot90``), as torchcodec returns them.

    Decoding: the frame index comes from the packets demuxed, never from the header. Without
    ``size``, PyAV seeks to the key frame before each selected frame and decodes from there,
    skipping the non-reference frames in between (``decoder="pyav-seek"``,
    :func:`_load_by_seeking`; the same frames as decord's, bit for bit, for less CPU). With
    ``size``, or when the index cannot be used for seeking (a packet without a timestamp, no
    key frame, a selected frame that does not come out), decord does the seeking
    (``VideoReader(path, num_threads=1)``, ``get_batch`` on the selected indices only). If
    decord cannot open or read the file either, PyAV decodes in order (``decoder="pyav"``):
    packets are counted without decoding, then frames are decoded in order and only the
    selected ones are converted and kept; if fewer frames decode than packets were counted
    (a truncated file), the sampling is redone over the frames that did decode. Files named
    ``.jpg .jpeg .png .webp .bmp`` (or that libavformat opens as a still picture) are one-frame
    videos (``decoder="image"``, ``timestamps == [0.0]``, ``T == 1`` whatever the sampling).

    Memory is bounded by ``T`` frames: sampling 8 frames from an hour-long file costs the same
    as from a one-minute file.

    Args:
        path: video or image file.
        num_frames: frames to take uniformly (>= 1), or ``None`` when sampling by ``fps``.
        fps: sampling rate in Hz (> 0), or ``None``.
        max_frames: cap for ``fps`` sampling (>= 1); not allowed with ``num_frames``.
        sampling: ``uniform`` or ``segment_start`` (for ``num_frames``), or ``qwen`` or
            ``transformers`` (either).
        size: ``(height, width)`` px to scale every frame to in the decoder (aspect ratio not
            kept), as Video-LLaMA's ``VideoReader(uri, height=224, width=224)``: decord's (and
            PyAV's) libswscale; a still image is resized with PIL's bicubic filter, as BLIP-2's
            ``Resize((224, 224), BICUBIC)``. None keeps the decoded size.
        each_frame: a function of one frame, ``[H, W, 3] uint8 -> [h, w, 3] uint8`` (e.g. the
            vision encoder's resize and crop), applied to every sampled frame as it leaves the
            decoder (after a display rotation is undone), so that only its results are kept
            and stacked: ``frames`` is ``[each_frame(f) for f in frames]``, without the
            decoded size's ``T`` full frames in memory at once (88 MB for 8 frames at 1440p).

    Returns:
        :class:`VideoFrames`.

    Raises:
        ValueError: bad sampling arguments (a programming error, not a file problem).
        MediaError: missing or zero-byte file, not a media file, no video stream, or no frame
            that decodes; with ``sampling="qwen"``, a clip too short for its even frame count
            (fewer than 2 frames, or fewer than ``num_frames`` rounded to even); with
            ``sampling="transformers"``, fewer frames than ``num_frames``.
    """
    _check_sampling(num_frames, fps, max_frames)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    p = check_media_path(path)
    if p.suffix.lower() in IMAGE_EXTENSIONS and sampling == "qwen":
        return _map_frames(_qwen_picture(path), each_frame)
    if p.suffix.lower() in IMAGE_EXTENSIONS and sampling == "transformers":
        return _map_frames(_pil_picture(path), each_frame)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return _map_frames(_resized_image(_load_image(path), size), each_frame)
    qwen_fps: list[float] = []  # sample_fps of the last qwen / transformers selection
    taken: list[np.ndarray] = []  # the indices of the last transformers selection

    scanned, rotation = _scan(path) if sampling == "transformers" else (None, 0.0)

    def select(timestamps: np.ndarray, end: float, avg_fps: float) -> np.ndarray:
        if sampling == "transformers":
            rate = scanned or (timestamps.size / end if end > 0 else avg_fps)
            try:
                idx = transformers_frame_indices(timestamps.size, rate, num_frames=num_frames,
                                                 fps=fps, max_frames=max_frames)
            except ValueError as exc:  # the clip, not the arguments: too few frames
                raise MediaError(path, str(exc)) from None
            qwen_fps[:], taken[:] = [rate], [idx]
            return idx
        if sampling == "qwen":
            limit = {} if max_frames is None else {"max_frames": int(max_frames)}
            try:
                idx, sample_fps = qwen_frame_indices(timestamps.size, avg_fps, fps=fps,
                                                     nframes=num_frames, **limit)
            except ValueError as exc:  # the clip, not the arguments: too few frames
                raise MediaError(path, str(exc)) from None
            qwen_fps[:] = [sample_fps]
            return idx
        if fps is not None:
            return fps_frame_indices(timestamps, fps, max_frames, end=end)
        assert num_frames is not None
        if sampling == "segment_start":
            return segment_start_indices(timestamps.size, num_frames)
        return sample_frame_indices(timestamps.size, num_frames)

    turns = round(rotation / 90) % 4
    video = _decode_selected_frames(path, select, size, None if turns else each_frame)
    if taken:  # the reference's frame times: index / rate, in Python floats as transformers
        video = dataclasses.replace(video, timestamps=np.asarray(
            [int(i) / qwen_fps[0] for i in taken[0]], dtype=np.float64))
    if turns:  # upright, as torchcodec returns a clip stored with a display rotation
        video = dataclasses.replace(video, frames=np.ascontiguousarray(
            np.rot90(video.frames, turns, axes=(1, 2))))
        video = _map_frames(video, each_frame)
    if qwen_fps:
        video = dataclasses.replace(video, sample_fps=qwen_fps[0])
    return video


def _map_frames(video: VideoFrames, each_frame: FrameMap | None) -> VideoFrames:
    """``video`` with ``each_frame`` applied to every frame (as it is without one)."""
    if each_frame is None:
        return video
    return dataclasses.replace(video, frames=np.ascontiguousarray(
        np.stack([each_frame(frame) for frame in video.frames])))


def _decode_selected_frames(path: str | os.PathLike[str], select: Selector,
                            size: tuple[int, int] | None,
                            each_frame: FrameMap | None = None) -> VideoFrames:
    """The frames ``select`` picks, by the first decoder that can read them (see
    :func:`load_video`), each mapped by ``each_frame``: by the seeking decoder as it
    decodes them, by the others once all are decoded."""
    # Files that are not videos at all fail here with a clear MediaError (decord would print its
    # own log line on stderr before failing).
    with open_container(path) as container:
        if is_image_container(container):
            return _map_frames(_resized_image(_decode_image(container, path), size), each_frame)
        stream = _video_stream(container, path)
        if size is None:  # decord's in-decoder scaling differs from PyAV's swscale: decord
            try:
                return _load_by_seeking(container, stream, select, each_frame)
            except _SeekFailed as exc:
                log.info("%s: cannot decode by seeking with PyAV (%s); using decord", path, exc)

    try:
        return _map_frames(_load_with_decord(path, select, size), each_frame)
    except _DecordFailed as exc:
        log.info("decord cannot read %s (%s); decoding with PyAV", path, exc)
    return _map_frames(_resized_image(_load_with_pyav(path, select, size), size), each_frame)


def _check_sampling(num_frames: int | None, fps: float | None, max_frames: int | None) -> None:
    if (num_frames is None) == (fps is None):
        raise ValueError(
            "give exactly one of num_frames and fps (pass num_frames=None to sample by fps)"
        )
    if num_frames is not None and int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and not (math.isfinite(float(fps)) and float(fps) > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames is not None:
        if fps is None:
            raise ValueError("max_frames only applies to fps sampling")
        if int(max_frames) < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")


# --------------------------------------------------------------------------------------------
# Still images


def _resized_image(video: VideoFrames, size: tuple[int, int] | None) -> VideoFrames:
    """A still image (``decoder="image"``) scaled to ``size`` = ``(height, width)`` px with PIL's
    bicubic filter (torchvision's ``Resize`` on a PIL image); anything else unchanged."""
    if size is None or video.decoder != "image" or video.frames.shape[1:3] == tuple(size):
        return video
    from PIL import Image

    picture = Image.fromarray(video.frames[0]).resize((int(size[1]), int(size[0])),
                                                      Image.Resampling.BICUBIC)
    return dataclasses.replace(video, frames=np.asarray(picture, dtype=np.uint8)[None])


def _qwen_picture(path: str | os.PathLike[str]) -> VideoFrames:
    """A picture as qwen-vl-utils' ``fetch_image`` prepares it (PIL, resized within its pixel
    bounds: :func:`vlm_cli.media.resize.qwen_load_image`), as a one-frame video.

    Raises:
        MediaError: PIL cannot read it, or its aspect ratio is over the reference's limit.
    """
    from vlm_cli.media.resize import qwen_load_image

    try:
        frames = qwen_load_image(path)
    except (OSError, ValueError) as err:
        raise MediaError(path, f"not a picture the reference pipeline reads ({err})") from None
    return VideoFrames(frames=frames, timestamps=np.zeros(1), decoder="image", num_decodable=1,
                       duration=0.0, fps=0.0)


def _scan(path: str | os.PathLike[str]) -> tuple[float | None, float]:
    """What torchcodec's scan gives transformers' ``load_video``, in one pass over the packets:

    - the average frame rate (``VideoDecoder(seek_mode="exact").metadata.average_fps``): packets
      counted (those flagged to discard left out), ``n / (end / den - begin / den)`` with
      ``begin`` the smallest pts and ``end`` the largest pts + duration, in time-base ticks,
      divided as its C++ does (a time base of ``1 / den``); None when the packets give no span;
    - the display rotation in degrees, counter-clockwise (the stream's display matrix, as
      libavutil reads it: a phone's portrait clip stored landscape has 90 or -90), from the
      first frame that decodes; 0.0 when none does.
    """
    with open_container(path) as container:
        stream = _video_stream(container, path)
        den = stream.time_base.denominator if stream.time_base is not None else 0
        spans = bool(den) and stream.time_base.numerator == 1
        count, begin, end, rotation = 0, None, None, None
        for packet in container.demux(stream):
            if rotation is None:
                try:
                    rotation = next((float(f.rotation or 0.0) for f in packet.decode()), None)
                except av.FFmpegError:
                    rotation = 0.0
            if not packet.size or packet.is_discard:
                continue
            at = packet.pts if packet.pts is not None else packet.dts
            if at is None:
                spans = False
                continue
            count += 1
            stop = at + (packet.duration or 0)
            begin = at if begin is None else min(begin, at)
            end = stop if end is None else max(end, stop)
    rate = count / (end / den - begin / den) if spans and count and end > begin else None
    return rate, rotation or 0.0


def _pil_picture(path: str | os.PathLike[str]) -> VideoFrames:
    """A picture as transformers' ``load_image`` reads it (``PIL.Image.open``, EXIF orientation
    applied, converted to RGB), at its own size, as a one-frame video.

    Raises:
        MediaError: PIL cannot read it.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as picture:
            frames = np.array(ImageOps.exif_transpose(picture).convert("RGB"))[None]
    except (OSError, ValueError) as err:
        raise MediaError(path, f"not a picture PIL reads ({err})") from None
    return VideoFrames(frames=np.ascontiguousarray(frames), timestamps=np.zeros(1),
                       decoder="image", num_decodable=1, duration=0.0, fps=0.0)


def _load_image(path: str | os.PathLike[str]) -> VideoFrames:
    with open_container(path) as container:
        return _decode_image(container, path)


def _decode_image(container: av.container.InputContainer, path: object) -> VideoFrames:
    if not container.streams.video:
        raise MediaError(path, "no picture in file")
    rgb = None
    try:
        for frame in container.decode(container.streams.video[0]):
            rgb = frame.to_ndarray(format="rgb24")
            break
    except av.FFmpegError as exc:
        raise MediaError(path, f"image cannot be decoded ({describe_error(exc)})") from None
    if rgb is None:
        raise MediaError(path, "image cannot be decoded (no picture data)")
    return VideoFrames(
        frames=np.ascontiguousarray(rgb)[None],
        timestamps=np.zeros(1, dtype=np.float64),
        decoder="image",
        num_decodable=1,
        duration=0.0,
        fps=0.0,
    )


# --------------------------------------------------------------------------------------------
# PyAV, seeking (only the selected frames and the reference frames they need are decoded)


class _SeekFailed(Exception):
    """The index cannot be used for seeking, or a selected frame did not come out; decord and
    then sequential decoding take over."""


#: Codecs whose non-reference frames are skipped on the way to a sampled frame (libavcodec's
#: ``skip_frame = NONREF``, set packet by packet): H.264, where ``nal_ref_idc == 0`` means that
#: no other picture refers to it; HEVC only when its stream has a single temporal sub-layer (see
#: :func:`_skips_nonref`). For any other codec every frame from the key frame on is decoded.
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc"})


def _skips_nonref(context: av.codec.context.CodecContext) -> bool:
    """Whether the seeking decoder may skip this stream's non-reference frames.

    H.264: always (see :data:`_SKIP_NONREF_CODECS`). HEVC: libavcodec skips "sub-layer
    non-reference" pictures (``TRAIL_N``, ``RASL_N``, ...), which a picture of a *higher*
    temporal sub-layer may still refer to; they are unreferenced only when the stream has one
    sub-layer. That is read from the ``hvcC`` record in the extradata (ISO/IEC 14496-15:
    ``configurationVersion`` 1 at byte 0, ``numTemporalLayers`` in bits 5..3 of byte 21; 0
    means unknown). Any other extradata (Annex B in MPEG-TS, none, unknown layers): no skipping.
    """
    name = context.name
    if name not in _SKIP_NONREF_CODECS:
        return False
    if name != "hevc":
        return True
    extradata = context.extradata or b""
    return len(extradata) >= 23 and extradata[0] == 1 and (extradata[21] >> 3) & 7 == 1


@dataclass(frozen=True, eq=False)
class _SeekIndex:
    """A video stream's frame index, from its packets (demuxed, not decoded).

    Attributes:
        pts: ``[N] int64`` presentation times of the frames, sorted (stream time base).
        keys: ``[K] int64`` presentation times of the key frames, sorted.
        time_base: seconds per pts unit.
        stream_rate: the stream's average (else guessed) frame rate in Hz, 0.0 if neither.
        avg_fps: ``stream_rate``, else ``(N - 1) / span``.
        duration: seconds from the first frame's start to the last frame's end (its packet
            duration, or one frame at ``avg_fps`` when the container gives none).
    """

    pts: np.ndarray
    keys: np.ndarray
    time_base: float
    stream_rate: float
    avg_fps: float
    duration: float

    @property
    def starts(self) -> np.ndarray:
        """``[N] float64`` seconds of each frame from the first one (decord's index)."""
        return (self.pts - self.pts[0]) * self.time_base


def _seek_index(container: av.container.InputContainer,
                stream: av.video.VideoStream) -> _SeekIndex:
    """Demux every video packet of ``stream`` (not decoded): its presentation time (pts), its
    duration and whether it is a key frame; frame ``i`` is the ``i``-th packet in pts order.

    Raises:
        _SeekFailed: a packet without pts or flagged corrupt, two packets with the same pts,
            no key frame, a demuxing error.
    """
    pts: list[int] = []
    durations: list[int] = []
    keys: list[int] = []
    try:
        for packet in container.demux(stream):
            if not packet.size:  # the last, empty packet only flushes the decoder
                continue
            if packet.pts is None:
                raise _SeekFailed("a packet has no presentation time")
            if packet.is_corrupt:
                raise _SeekFailed("a packet is damaged")
            pts.append(packet.pts)
            durations.append(packet.duration or 0)
            if packet.is_keyframe:
                keys.append(packet.pts)
    except av.FFmpegError as exc:
        raise _SeekFailed(f"demuxing failed: {describe_error(exc)}") from None
    if not keys or stream.time_base is None:
        raise _SeekFailed("no key frame in the index" if pts else "no video packet")
    demuxed = np.asarray(pts, dtype=np.int64)
    order = np.argsort(demuxed, kind="stable")
    ordered = demuxed[order]
    if np.any(np.diff(ordered) == 0):
        raise _SeekFailed("two packets have the same presentation time")
    time_base = float(stream.time_base)
    starts = (ordered - ordered[0]) * time_base
    rate = stream.average_rate or stream.guessed_rate
    stream_rate = float(rate) if rate else 0.0
    avg_fps = stream_rate
    if not avg_fps:
        avg_fps = (starts.size - 1) / starts[-1] if starts[-1] > 0 else 0.0
    last_end = starts[-1] + durations[int(order[-1])] * time_base
    duration = float(last_end if last_end > starts[-1]
                     else starts[-1] + (1 / avg_fps if avg_fps else 0.0))
    return _SeekIndex(ordered, np.sort(np.asarray(keys, np.int64)), time_base, stream_rate,
                      avg_fps, duration)


def _load_by_seeking(
    container: av.container.InputContainer, stream: av.video.VideoStream,
    select: Selector, each_frame: FrameMap | None = None,
) -> VideoFrames:
    """Sampled frames of ``stream`` at their decoded size, decoded by seeking (``"pyav-seek"``).

    The index (:func:`_seek_index`): frame ``i`` is the ``i``-th packet in pts order, at
    ``(pts - first pts) * time_base`` seconds; the duration runs to the last frame's end (its
    packet duration, or one frame at the average rate when the container gives none) --
    decord's index, computed in float64. The selected frames are decoded by
    :func:`_seek_frames` (skipping the non-reference frames on the way, H.264) and converted to
    RGB by libswscale as decord does: the same ``[H, W, 3] uint8`` values; ``each_frame``, when
    given, maps each as it is decoded (only its result is kept).

    Raises:
        _SeekFailed: see :func:`_seek_index` and :func:`_seek_frames`.
    """
    index = _seek_index(container, stream)
    starts = index.starts
    idx = select(starts, index.duration, index.avg_fps)
    wanted = np.unique(index.pts[idx])
    kept, decoded = _decode_by_seeking(container, stream, wanted, index.keys, each_frame)
    log.debug("%s: %d frames decoded for %d selected of %d", container.name, decoded,
              wanted.size, index.pts.size)
    return VideoFrames(
        frames=np.ascontiguousarray(np.stack([kept[int(p)] for p in index.pts[idx]])),
        timestamps=starts[idx],
        decoder="pyav-seek",
        num_decodable=int(index.pts.size),
        duration=index.duration,
        fps=index.avg_fps,
    )


def _decode_by_seeking(
    container: av.container.InputContainer, stream: av.video.VideoStream,
    wanted: np.ndarray, keys: np.ndarray, each_frame: FrameMap | None = None,
) -> tuple[dict[int, np.ndarray], int]:
    """``{pts: [H, W, 3] uint8 RGB}`` of the frames at the sorted, distinct pts ``wanted``
    (:func:`_seek_frames`; each mapped by ``each_frame`` as it comes), and how many frames came
    out of the decoder.

    Raises:
        _SeekFailed: see :func:`_seek_frames`.
    """
    decoded = [0]
    frames = _seek_frames(container, stream, wanted, keys, decoded=decoded)
    kept = {pts: frame if each_frame is None else each_frame(frame) for pts, frame in frames}
    return kept, decoded[0]


def _seek_frames(
    container: av.container.InputContainer, stream: av.video.VideoStream,
    wanted: np.ndarray, keys: np.ndarray, *, size: tuple[int, int] | None = None,
    decoded: list[int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """The frames at the sorted, distinct pts ``wanted``, in that order, as ``(pts,
    [H, W, 3] uint8 RGB)`` (scaled by libswscale to ``size`` = ``(height, width)`` px when
    given), each handed out as soon as it is decoded and not kept.

    For each selected frame the demuxer seeks to the last key frame (pts in the sorted
    ``keys``) at or before it -- none when the next selected frame is in the same group of
    pictures: decoding goes on -- and the decoder, one thread, decodes forward with
    ``skip_frame = NONREF`` on every packet that is not a selected frame (H.264, HEVC with one
    temporal sub-layer, see :func:`_skips_nonref`: no other frame refers to those).
    ``decoded[0]`` counts the frames that came out of the decoder.

    Raises:
        _SeekFailed: a selected frame before the first key frame or that does not decode, a
            decoded frame without pts, a demuxing or decoding error.
    """
    context = stream.codec_context
    if not context.is_open:  # (opened by the first decode)
        context.thread_count = 1
    skip = _skips_nonref(context)
    pending = set(int(p) for p in wanted)
    scale = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
    count = decoded if decoded is not None else [0]

    def key_before(target: int) -> int:
        at = int(np.searchsorted(keys, target, side="right")) - 1
        if at < 0:
            raise _SeekFailed(f"frame at pts {target} comes before the first key frame")
        return int(keys[at])

    position = 0  # wanted[position] is the next frame to find
    try:
        while position < wanted.size:
            # Each seek goes to a later key frame than the one before (demuxers that land
            # earlier than asked are decoded forward from where they land).
            key = key_before(int(wanted[position]))
            container.seek(key, stream=stream, backward=True, any_frame=False)
            context.flush_buffers()
            for packet in container.demux(stream):
                if skip:
                    context.skip_frame = "DEFAULT" if packet.pts in pending else "NONREF"
                reseek = False
                for frame in packet.decode():
                    count[0] += 1
                    if frame.pts is None:
                        raise _SeekFailed("a decoded frame has no presentation time")
                    if frame.pts == wanted[position]:
                        yield int(frame.pts), frame.to_ndarray(format="rgb24", **scale)
                        position += 1
                    if position == wanted.size:
                        return
                    if frame.pts > wanted[position]:
                        raise _SeekFailed(f"frame at pts {int(wanted[position])} did not decode")
                    # The next frame is past the next key frame: seek there rather than decode
                    # the rest of this group of pictures.
                    later = key_before(int(wanted[position]))
                    reseek = later > frame.pts and later != key
                    if reseek:
                        break
                if reseek:
                    break
            else:
                raise _SeekFailed(f"frame at pts {int(wanted[position])} did not decode")
    except av.FFmpegError as exc:
        raise _SeekFailed(f"decoding failed: {describe_error(exc)}") from None


# --------------------------------------------------------------------------------------------
# decord (seek-based)


class _DecordFailed(Exception):
    """decord could not open or read a file; the caller falls back to PyAV."""


_decord_quieted = False


def _import_decord() -> ModuleType:
    """Import decord and silence its bundled FFmpeg's log (errors reach us as exceptions).

    torchvision's image extension is loaded first: once decord's bundled libraries are in the
    process, a later first load of it makes ``torchvision.io.decode_image`` (which
    transformers' ``load_image`` uses for a picture given by path) fail with "Internal error".
    """
    global _decord_quieted
    import torchvision.io  # noqa: F401  (before decord, see above)

    try:
        import decord
    except ImportError as exc:  # no wheel for this platform: PyAV does the work
        raise _DecordFailed(f"decord is not installed ({exc})") from None
    if not _decord_quieted:
        decord.logging.set_level(decord.logging.QUIET)
        _decord_quieted = True
    return decord


def _decord_reason(exc: BaseException) -> str:
    # decord messages look like "[12:00:00] /src/video/video_reader.cc:486: Error: <what>"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rsplit(": ", 1)[-1][:200]


def _load_with_decord(
    path: str | os.PathLike[str], select: Selector,
    size: tuple[int, int] | None = None,
) -> VideoFrames:
    decord = _import_decord()
    height, width = size if size is not None else (-1, -1)
    try:
        reader = decord.VideoReader(os.fspath(path), num_threads=1, width=int(width),
                                    height=int(height))
    except (decord.DECORDError, RuntimeError) as exc:
        raise _DecordFailed(_decord_reason(exc)) from None
    try:
        total = len(reader)
        if total < 1:
            raise _DecordFailed("no frame in decord's index")
        # [N, 2] float32 (start, end) seconds from the stream's first frame; index only, cheap.
        spans = np.asarray(reader.get_frame_timestamp(np.arange(total).tolist()), np.float64)
        avg_fps = float(reader.get_avg_fps())
        last_start, last_end = spans[-1]
        if not (math.isfinite(avg_fps) and avg_fps > 0):
            avg_fps = (total - 1) / last_start if last_start > 0 else 0.0
        if last_end > last_start:
            duration = float(last_end)
        else:
            duration = float(last_start + (1 / avg_fps if avg_fps else 0.0))
        idx = select(spans[:, 0], duration, avg_fps)
        unique, inverse = np.unique(idx, return_inverse=True)
        batch = reader.get_batch(unique.tolist())
        # Another library may have switched decord's global bridge to torch.
        array = batch.asnumpy() if hasattr(batch, "asnumpy") else batch.numpy()
    except (decord.DECORDError, RuntimeError, IndexError) as exc:
        raise _DecordFailed(_decord_reason(exc)) from None
    finally:
        del reader
    if array.ndim != 4 or array.shape[0] != unique.size or array.shape[-1] != 3:
        raise _DecordFailed(f"unexpected frame batch shape {array.shape}")
    frames = array if unique.size == idx.size else array[inverse.reshape(-1)]
    return VideoFrames(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        timestamps=spans[idx, 0],
        decoder="decord",
        num_decodable=total,
        duration=duration,
        fps=avg_fps,
    )


# --------------------------------------------------------------------------------------------
# PyAV (sequential, only the selected frames kept)


def _video_stream(container: av.container.InputContainer, path: object) -> av.video.VideoStream:
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError(path, "no video stream")


def _count_packets(path: str | os.PathLike[str]) -> tuple[np.ndarray, float, bool]:
    """Demux (no decoding): presentation times of the video packets, sorted, in seconds from
    the first one; the stream's average rate (Hz, 0 if unknown); whether it is a still image."""
    with open_container(path) as container:
        if is_image_container(container):
            return np.zeros(0), 0.0, True
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.guessed_rate
        avg_fps = float(rate) if rate else 0.0
        pts: list[int | None] = []
        try:
            for packet in container.demux(stream):
                if packet.size:  # the last, empty packet only flushes the decoder
                    pts.append(packet.pts if packet.pts is not None else packet.dts)
        except av.FFmpegError as exc:  # truncated or damaged: count what was read
            log.info(
                "%s: demuxing stopped after %d packets (%s)", path, len(pts), describe_error(exc)
            )
        if pts and all(p is not None for p in pts) and stream.time_base is not None:
            seconds = np.sort(np.asarray(pts, dtype=np.float64)) * float(stream.time_base)
            seconds -= seconds[0]
        else:  # no usable timestamps in the container: assume a constant rate
            seconds = np.arange(len(pts), dtype=np.float64) / (avg_fps or 1.0)
        return seconds, avg_fps, False


def _decode_selected(
    path: str | os.PathLike[str], wanted: np.ndarray, stop_after_last: bool,
    size: tuple[int, int] | None = None,
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Decode frames in presentation order; convert and keep only the ``wanted`` ones.

    Returns ({frame index: [H, W, 3] uint8}, [D] float64 seconds from the first decoded frame
    of every frame decoded). Decoding stops at the first packet that fails (truncated or
    damaged file), keeping what decoded before it, or after the last wanted frame when
    ``stop_after_last``.
    """
    want = set(int(i) for i in wanted)
    last_wanted = max(want) if want else -1
    kept: dict[int, np.ndarray] = {}
    times: list[float] = []
    with open_container(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        time_base = float(stream.time_base) if stream.time_base is not None else None

        def take(frame: av.VideoFrame) -> bool:
            index = len(times)
            if frame.pts is not None and time_base is not None:
                times.append(frame.pts * time_base)
            else:
                times.append(math.nan)
            if index in want:
                scale = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
                kept[index] = frame.to_ndarray(format="rgb24", **scale)
            return stop_after_last and index >= last_wanted

        failure: BaseException | None = None
        done = False
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if take(frame):
                        done = True
                        break
                if done:
                    break
        except av.FFmpegError as exc:  # truncated / damaged: keep what decoded so far
            failure = exc
        if failure is not None:
            log.info(
                "%s: decoding stopped after %d frames (%s)",
                path,
                len(times),
                describe_error(failure),
            )
            try:
                for frame in stream.codec_context.decode(None):  # drain frames already inside
                    if take(frame):
                        break
            except av.FFmpegError as exc:
                log.info("%s: decoder could not be drained (%s)", path, describe_error(exc))
    seconds = np.asarray(times, dtype=np.float64)
    if seconds.size and np.all(np.isfinite(seconds)):
        seconds = seconds - seconds[0]
    return kept, seconds


def _timeline(decoded: np.ndarray, packet_times: np.ndarray, avg_fps: float) -> np.ndarray:
    """Seconds of every decoded frame, non-decreasing: the decoded pts where all frames have
    one, else the demuxed packet times, else a constant-rate guess."""
    if np.all(np.isfinite(decoded)):
        times = decoded
    elif decoded.size <= packet_times.size:
        times = packet_times[: decoded.size]
    else:
        times = np.arange(decoded.size, dtype=np.float64) / (avg_fps or 1.0)
    # Decoders emit frames in presentation order; this only guards against pts jitter.
    return np.maximum.accumulate(times)


def _load_with_pyav(
    path: str | os.PathLike[str], select: Selector,
    size: tuple[int, int] | None = None,
) -> VideoFrames:
    packet_times, avg_fps, is_image = _count_packets(path)
    if is_image:
        return _load_image(path)
    if packet_times.size == 0:
        raise MediaError(path, "video stream has no frames")
    if not avg_fps:
        span = packet_times[-1] - packet_times[0]
        avg_fps = (packet_times.size - 1) / span if span > 0 else 0.0
    frame_seconds = 1.0 / avg_fps if avg_fps else 0.0
    idx = select(packet_times, packet_times[-1] + frame_seconds, avg_fps)
    kept, decoded = _decode_selected(path, idx, stop_after_last=False, size=size)
    if decoded.size == 0:
        raise MediaError(path, "no video frame can be decoded")
    timeline = _timeline(decoded, packet_times, avg_fps)
    duration = float(timeline[-1] + frame_seconds)
    if decoded.size != packet_times.size:
        # Fewer (or more) frames decode than packets were demuxed, e.g. a truncated file:
        # sample again over the frames that really decode.
        log.info(
            "%s: %d packets but %d frames decode; resampling", path, packet_times.size, decoded.size
        )
        idx = select(timeline, duration, avg_fps)
        kept, _ = _decode_selected(path, idx, stop_after_last=True, size=size)
        if not all(int(i) in kept for i in idx):
            raise MediaError(path, "video decodes differently on a second pass")
    frames = np.stack([kept[int(i)] for i in idx])
    return VideoFrames(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        timestamps=timeline[idx].astype(np.float64),
        decoder="pyav",
        num_decodable=int(timeline.size),
        duration=duration,
        fps=float(avg_fps),
    )
