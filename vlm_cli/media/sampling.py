"""Frame sampling: which frames of a clip to take, from its real frame timestamps.

- :func:`sample_frame_indices`: uniform sampling, exactly as Video-LLaVA
  (``np.linspace(0, total - 1, num_frames, dtype=int)``);
- :func:`segment_start_indices`: the first frame of each of ``num_frames`` equal segments, as
  Video-LLaMA (``np.arange(0, total, total / num_frames)``);
- :func:`fps_frame_indices`: a fixed rate in frames per second of video time, with a cap;
- :func:`qwen_frame_indices`: Qwen2-VL / Qwen2.5-Omni's (qwen-vl-utils' ``smart_nframes``: an
  even frame count from the clip's average rate, spread with ``linspace(...).round()``);
- :func:`transformers_frame_indices`: transformers' default (``arange(n) * total // n``), which
  Gemma 4's processors use.

No decoding here, so the rules are testable on timestamp arrays alone; numpy only, except
:func:`qwen_frame_indices` (torch's float32 ``linspace``, imported when it is called).
"""

from __future__ import annotations

import math

import numpy as np

# A frame is "on screen" at target time t when its timestamp is <= t + _TS_EPS (seconds); absorbs
# float rounding of timestamps stored as float32 by decord.
_TS_EPS = 1e-4


def _counts(total: int, num_frames: int) -> tuple[int, int]:
    """``(total, num_frames)`` as ints. Raises ValueError: either is below 1."""
    total, num_frames = int(total), int(num_frames)
    if total < 1:
        raise ValueError(f"total must be >= 1 frame, got {total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return total, num_frames


def sample_frame_indices(total: int, num_frames: int) -> np.ndarray:
    """Uniform frame sampling as Video-LLaVA: ``np.linspace(0, total - 1, num_frames, dtype=int)``.

    Deterministic; the first and last frames are always taken; positions are truncated toward
    zero (numpy's float-to-int cast, as Video-LLaVA's ``dtype=int``), not rounded. When
    ``total < num_frames`` indices repeat, so exactly ``num_frames`` indices come back.

    Args:
        total: number of decodable frames (>= 1).
        num_frames: number of frames to take (>= 1).

    Returns:
        ``[num_frames] int64``, non-decreasing, in ``[0, total - 1]``.

    Raises:
        ValueError: ``total < 1`` or ``num_frames < 1``.
    """
    total, num_frames = _counts(total, num_frames)
    return np.linspace(0, total - 1, num_frames).astype(np.int64)


def segment_start_indices(total: int, num_frames: int) -> np.ndarray:
    """Video-LLaMA's frame sampling (``load_video(sampling="uniform")`` in its
    ``processors/video_processor.py``): ``np.arange(0, total, total / n).astype(int)`` with
    ``n = min(num_frames, total)``: the first frame of each of ``n`` equal segments. A video
    with fewer frames than ``num_frames`` gives each of its frames once (no repeats).

    Args:
        total: number of decodable frames (>= 1). num_frames: frames wanted (>= 1).

    Returns:
        ``[n] int64`` increasing indices in ``[0, total - 1]`` (numpy's float ``arange`` may
        give one more for some lengths, as the original does).

    Raises:
        ValueError: ``total < 1`` or ``num_frames < 1``.
    """
    total, num_frames = _counts(total, num_frames)
    n = min(num_frames, total)
    return np.arange(0, total, total / n).astype(np.int64)


def fps_frame_indices(
    timestamps: np.ndarray,
    fps: float,
    max_frames: int | None = None,
    *,
    end: float | None = None,
) -> np.ndarray:
    """Frames at ``1 / fps`` second spacing, picked from the real frame timestamps.

    Target times are ``t0 + k / fps`` for ``k = 0, 1, ...`` (``t0``: the first timestamp), up
    to but excluding ``end`` -- or up to and including the last timestamp when ``end`` is not
    given. The frame taken for a target is the one on screen at that time (the last frame whose
    timestamp is <= the target). A frame is taken at most once, so asking for more than the
    video's own rate returns every frame. If more than ``max_frames`` frames are picked, they
    are subsampled uniformly (:func:`sample_frame_indices`) down to ``max_frames``. Runs in
    O(N) time and memory whatever ``fps`` is.

    Args:
        timestamps: ``[N] float`` seconds, presentation times of all decodable frames,
            non-decreasing (e.g. ``decord.VideoReader.get_frame_timestamp(range(N))[:, 0]``).
        fps: sampling rate in Hz (> 0).
        max_frames: cap on the number of frames returned (>= 1), or ``None`` for no cap.
        end: seconds, when the last frame stops being shown (the video's end, on the same
            clock as ``timestamps``), or ``None``.

    Returns:
        ``[K] int64`` strictly increasing indices into ``timestamps``, ``1 <= K``.

    Raises:
        ValueError: empty or decreasing timestamps, ``fps <= 0``, ``max_frames < 1``, or
            ``end`` before the last timestamp.
    """
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if ts.size < 1:
        raise ValueError("timestamps must hold at least one frame")
    if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) < 0):
        raise ValueError("timestamps must be finite and non-decreasing")
    fps = float(fps)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    step = 1.0 / fps
    t0 = ts[0]
    if end is None:
        num_targets = math.floor((ts[-1] - t0) / step + 1e-9) + 1
    else:
        if not end >= ts[-1]:
            raise ValueError(f"end ({end}) must not precede the last timestamp ({ts[-1]})")
        num_targets = max(1, math.ceil((end - t0) / step - 1e-9))
    # Frame i is on screen over [ts[i], ts[i+1]); it is taken iff some target falls in there.
    # The first target at or after ts[i] (with tolerance) has index k_min:
    k_min = np.maximum(np.ceil((ts - _TS_EPS - t0) / step), 0.0)
    upper = np.append(ts[1:] - _TS_EPS, np.inf)
    taken = (k_min < num_targets) & (t0 + k_min * step < upper)
    idx = np.flatnonzero(taken).astype(np.int64)
    if max_frames is not None and idx.size > max_frames:
        idx = idx[sample_frame_indices(idx.size, int(max_frames))]
    return idx


#: qwen-vl-utils' frame count is a multiple of this (``FRAME_FACTOR``: the vision tower merges
#: two frames into one temporal patch).
QWEN_FRAME_FACTOR = 2


def qwen_frame_indices(
    total_frames: int,
    video_fps: float,
    *,
    fps: float | None = 2.0,
    nframes: int | None = None,
    min_frames: int = 4,
    max_frames: int = 768,
) -> tuple[np.ndarray, float]:
    """Frame sampling of Qwen2-VL / Qwen2.5-Omni's reference preprocessing: qwen-vl-utils'
    ``smart_nframes`` and the index rule of its decord reader (``_read_video_decord``), as
    ``qwen_omni_utils.v2_5.vision_process`` (0.0.9) runs them for ``process_mm_info``.

    The frame count ``n`` is even (a multiple of :data:`QWEN_FRAME_FACTOR`):

    - with ``nframes``: ``nframes`` rounded to the nearest even number (Python's ``round``,
      half to even: 9 -> 8, 11 -> 12);
    - else ``total_frames / video_fps * fps`` clamped to ``[min_frames rounded up to even,
      max_frames rounded down to even]``, then to ``total_frames``, then rounded down to even.

    Indices are ``torch.linspace(0, total_frames - 1, n)`` (float32, as the reference: numpy's
    float64 linspace rounds to other frames on long clips, e.g. 100 000 frames, ``n = 768``)
    rounded half to even, and ``sample_fps = n / total_frames * video_fps``: the rate the
    frames stand for, which the processor turns into ``video_second_per_grid``.

    Args:
        total_frames: frames the clip really has (decord's ``len(vr)``), >= 1.
        video_fps: the stream's average frame rate in Hz (decord's ``get_avg_fps()``), > 0.
        fps: frames per second of video time to take, when ``nframes`` is None.
        nframes: a fixed frame count instead of ``fps`` (give ``fps=None`` with it).
        min_frames, max_frames: bounds of the ``fps`` count.

    Returns:
        ``(indices [n] int64 non-decreasing in [0, total_frames - 1], sample_fps)``.

    Raises:
        ValueError: both or neither of ``fps`` and ``nframes``, ``fps`` or ``video_fps`` not
            > 0, ``total_frames < 1``, or a frame count outside ``[2, total_frames]`` (a clip
            of fewer than 2 frames, or ``nframes`` above the clip's frame count).
    """
    total_frames = int(total_frames)
    video_fps = float(video_fps)
    if (fps is None) == (nframes is None):
        raise ValueError("give exactly one of fps and nframes (pass fps=None with nframes)")
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if not (math.isfinite(video_fps) and video_fps > 0):
        raise ValueError(f"video_fps must be > 0, got {video_fps}")
    factor = QWEN_FRAME_FACTOR
    if nframes is not None:
        n = round(nframes / factor) * factor
    else:
        if not (math.isfinite(float(fps)) and float(fps) > 0):
            raise ValueError(f"fps must be > 0, got {fps}")
        low = math.ceil(min_frames / factor) * factor
        high = math.floor(min(max_frames, total_frames) / factor) * factor
        wanted = total_frames / video_fps * float(fps)
        n = math.floor(min(max(wanted, low), high, total_frames) / factor) * factor
    if not factor <= n <= total_frames:
        raise ValueError(
            f"Qwen sampling needs an even frame count in [{factor}, {total_frames}] "
            f"(the clip's frames), got {n}"
            + (f" from nframes={nframes}" if nframes is not None else f" at fps={fps}"))
    import torch  # the reference's float32 linspace: float64 rounds differently on long clips

    indices = torch.linspace(0, total_frames - 1, n).round().to(torch.int64).numpy()
    return indices, n / total_frames * video_fps


def transformers_frame_indices(total_frames: int, video_fps: float, *,
                               num_frames: int | None = 32, fps: float | None = None,
                               max_frames: int | None = None) -> np.ndarray:
    """transformers' default frame sampling (``video_utils.default_sample_indices_fn``, which
    Gemma 4's video processors run with their ``num_frames`` of 32): ``arange(n) * total // n``
    (integer floor), the first frame always taken, never the same frame twice.

    ``n`` is ``num_frames``; with ``fps`` instead (``num_frames=None``: transformers' rule for a
    rate, ``max(1, int(total / video_fps * fps))``), capped at ``max_frames``.

    Args:
        total_frames: frames the clip really has (>= 1). video_fps: its average rate, Hz.
        num_frames: frames to take, or None with ``fps``. fps: frames per second of video time.
        max_frames: cap of the ``fps`` count.

    Returns:
        ``[n] int64`` increasing indices in ``[0, total_frames - 1]``.

    Raises:
        ValueError: both or neither of ``num_frames`` and ``fps``; ``n`` above ``total_frames``
            (transformers refuses it too: "the requested number of frames exceeds ...").
    """
    total_frames = int(total_frames)
    if (num_frames is None) == (fps is None):
        raise ValueError("give exactly one of num_frames and fps (pass num_frames=None with fps)")
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if num_frames is None:
        if not (math.isfinite(float(video_fps)) and float(video_fps) > 0):
            raise ValueError(f"video_fps must be > 0 to sample by rate, got {video_fps}")
        num_frames = max(1, int(total_frames / float(video_fps) * float(fps)))
        if max_frames is not None:
            num_frames = min(num_frames, int(max_frames))
    num_frames = int(num_frames)
    if not 1 <= num_frames <= total_frames:
        raise ValueError(f"{num_frames} frames requested but the clip has {total_frames}: "
                         "pass a lower --frames")
    return np.arange(num_frames, dtype=np.int64) * total_frames // num_frames
