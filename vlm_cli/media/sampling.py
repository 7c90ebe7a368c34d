"""Frame sampling: which frames of a clip to take, from its real frame timestamps.

- :func:`sample_frame_indices`: uniform sampling, exactly as Video-LLaVA
  (``np.linspace(0, total - 1, num_frames, dtype=int)``);
- :func:`segment_start_indices`: the first frame of each of ``num_frames`` equal segments, as
  Video-LLaMA (``np.arange(0, total, total / num_frames)``);
- :func:`fps_frame_indices`: a fixed rate in frames per second of video time, with a cap.

Pure numpy: no decoding here, so the rules are testable on timestamp arrays alone.
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
