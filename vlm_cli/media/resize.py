"""Resizing decoded frames as the reference preprocessing of each model family does it.

- :func:`clip_resize_crop`: CLIP's deterministic resize and centre crop, on uint8, used in two
  places so that they cannot drift apart: by
  :meth:`vlm_cli.model.encoders.VisionEncoder.preprocess` (before normalising), and inside the
  decode worker (:func:`vlm_cli.features.decode_media`) so that only encoder-sized frames cross
  the process boundary (a 1080p frame is 6 MB, a 224 px one 150 kB). Applying it to frames it
  has already resized is a no-op, so the features are the same bit for bit whichever side ran it.
- Qwen2-VL / Qwen2.5-Omni as their model cards feed them (qwen-vl-utils, vendored in
  ``qwen-omni-utils`` 0.0.9 as ``qwen_omni_utils.v2_5.vision_process``): :func:`smart_resize`
  (the size rule), :func:`qwen_resize_frames` (``fetch_video``'s resize of sampled frames) and
  :func:`qwen_load_image` (``fetch_image``).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: Qwen2-VL's vision patch (14 px) times its 2x2 spatial merge: one LLM token per 28x28 px.
QWEN_FACTOR = 28
#: qwen-vl-utils' pixel bounds in tokens (``IMAGE_MIN_TOKEN_NUM`` ...; times ``factor ** 2`` px).
QWEN_IMAGE_MIN_TOKENS, QWEN_IMAGE_MAX_TOKENS = 4, 16384
QWEN_VIDEO_MIN_TOKENS, QWEN_VIDEO_MAX_TOKENS = 128, 768
#: qwen-vl-utils' ``MODEL_SEQ_LEN`` (its environment variable's default): all frames of a video
#: together get at most 90 % of it in tokens (``total_pixels``).
QWEN_MODEL_SEQ_LEN = 128_000
#: Most ``max(h, w) / min(h, w)`` that :func:`smart_resize` accepts (``MAX_RATIO``).
QWEN_MAX_RATIO = 200


def clip_resize_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Frames ``[T, H, W, 3] uint8`` RGB -> ``[T, S, S, 3] uint8``, S = ``size`` px.

    CLIP's processing as transformers' torchvision image and video processors do it on CPU
    (``CLIPImageProcessor``, ``VideoLlavaVideoProcessor``): resize the shortest edge to S px
    keeping the aspect ratio (long edge ``int(S * long / short)``, truncated), bicubic with
    antialiasing on uint8 (``torch.nn.functional.interpolate``: rounded, clamped); centre-crop
    S×S (offsets ``int((size - S) / 2)``). Frames already S×S are returned as they are.

    Raises:
        ValueError: ``frames`` is not ``[T, H, W, 3]``.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {frames.shape}")
    h, w = frames.shape[1:3]
    s = int(size)
    if (h, w) == (s, s):
        return frames
    import torch
    import torch.nn.functional as F

    long = int(s * max(h, w) / min(h, w))
    target = (s, long) if h <= w else (long, s)
    # A channels-last view, not made contiguous: torch's uint8 antialiased bicubic has a fast
    # kernel for channels-last input (about 7x faster at 1080p; the same values bit for bit).
    x = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if target != (h, w):
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True,
                          align_corners=False)  # uint8 in, uint8 out (rounded, clamped)
    top, left = int((target[0] - s) / 2), int((target[1] - s) / 2)
    x = x[:, :, top:top + s, left:left + s]
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


# --------------------------------------------------------------------------------------------
# Qwen2-VL / Qwen2.5-Omni (qwen-vl-utils)


def smart_resize(height: int, width: int, *, factor: int = QWEN_FACTOR,
                 min_pixels: float | None = None,
                 max_pixels: float | None = None) -> tuple[int, int]:
    """The output size qwen-vl-utils' ``smart_resize`` gives a ``height`` x ``width`` picture.

    Both sides are rounded to the nearest multiple of ``factor`` (at least ``factor``, Python's
    ``round``: half to even); if the area is then above ``max_pixels``, both sides are scaled
    by ``sqrt(max_pixels / area)`` of the *original* size and rounded down to multiples of
    ``factor``; if below ``min_pixels``, scaled up by ``sqrt(min_pixels / area)`` and rounded
    up. Defaults: ``4 * factor ** 2`` and ``16384 * factor ** 2`` px (images).

    Not transformers' ``qwen2_vl`` ``smart_resize`` (what the processor itself applies): that
    one lets a side round to 0 before the bounds (then the ``min_pixels`` branch decides) and
    keeps ``factor`` after rounding down, where this one does the reverse, so very thin
    pictures come out differently (13 x 2000 at the image bounds: 28 x 1988 here, 28 x 700
    there).

    Raises:
        ValueError: ``max_pixels < min_pixels``, or an aspect ratio above
            :data:`QWEN_MAX_RATIO`.
    """
    if max_pixels is None:
        max_pixels = QWEN_IMAGE_MAX_TOKENS * factor ** 2
    if min_pixels is None:
        min_pixels = QWEN_IMAGE_MIN_TOKENS * factor ** 2
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    ratio = max(height, width) / min(height, width)
    if ratio > QWEN_MAX_RATIO:
        raise ValueError(f"aspect ratio must be at most {QWEN_MAX_RATIO}, got {ratio}"
                         f" ({width}x{height} px)")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = math.floor(height / scale / factor) * factor
        w = math.floor(width / scale / factor) * factor
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


def qwen_video_max_pixels(num_frames: int, *, factor: int = QWEN_FACTOR,
                          min_pixels: float | None = None, max_pixels: float | None = None,
                          total_pixels: float | None = None) -> float:
    """The per-frame pixel cap of qwen-vl-utils' ``fetch_video`` for a clip of ``num_frames``:
    ``max(min(768 * factor ** 2, total_pixels / num_frames * 2), int(min_pixels * 1.05))``,
    lowered to ``max_pixels`` if that is given and smaller. ``total_pixels`` defaults to
    ``128000 * factor ** 2 * 0.9`` (the reference reads ``MODEL_SEQ_LEN`` from the environment
    when imported; pass ``total_pixels`` instead), ``min_pixels`` to ``128 * factor ** 2``.
    A float where the reference computes one (it only bounds :func:`smart_resize`)."""
    if min_pixels is None:
        min_pixels = QWEN_VIDEO_MIN_TOKENS * factor ** 2
    if total_pixels is None:
        total_pixels = QWEN_MODEL_SEQ_LEN * factor ** 2 * 0.9
    cap = max(min(QWEN_VIDEO_MAX_TOKENS * factor ** 2, total_pixels / num_frames * 2),
              int(min_pixels * 1.05))
    return cap if max_pixels is None else min(max_pixels, cap)


def qwen_resize_frames(frames: np.ndarray, *, factor: int = QWEN_FACTOR,
                       min_pixels: float | None = None, max_pixels: float | None = None,
                       total_pixels: float | None = None) -> torch.Tensor:
    """Sampled frames ``[T, H, W, 3] uint8`` -> ``[T, 3, h, w] float32``, as qwen-vl-utils'
    ``fetch_video`` resizes what its decord reader returns.

    ``(h, w)`` is :func:`smart_resize` of ``(H, W)`` between ``min_pixels`` (default
    ``128 * factor ** 2``) and :func:`qwen_video_max_pixels` for ``T`` frames (a long clip's
    frames share ``total_pixels``). The resize is torchvision's
    ``transforms.functional.resize(..., BICUBIC, antialias=True)`` on the uint8 ``TCHW`` view
    (torchvision interpolates in float32, clamps to [0, 255], rounds and casts back to uint8;
    the same size returns the frames untouched), then ``.float()``: integer values 0..255.

    Raises:
        ValueError: ``frames`` is not ``[T, H, W, 3]`` with ``T >= 1``, or see
            :func:`smart_resize`.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected frames [T, H, W, 3] with T >= 1, got shape {frames.shape}")
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    num_frames, height, width = frames.shape[:3]
    if min_pixels is None:
        min_pixels = QWEN_VIDEO_MIN_TOKENS * factor ** 2
    cap = qwen_video_max_pixels(num_frames, factor=factor, min_pixels=min_pixels,
                                max_pixels=max_pixels, total_pixels=total_pixels)
    size = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=cap)
    # A channels-last view, as the reference's torch.tensor(batch).permute(0, 3, 1, 2).
    video = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.uint8)).permute(0, 3, 1, 2)
    return resize(video, list(size), interpolation=InterpolationMode.BICUBIC,
                  antialias=True).float()


def qwen_load_image(path: str | os.PathLike[str], *, factor: int = QWEN_FACTOR,
                    min_pixels: float | None = None,
                    max_pixels: float | None = None) -> np.ndarray:
    """A picture file as qwen-vl-utils' ``fetch_image`` prepares it: ``[1, h, w, 3] uint8`` RGB.

    PIL opens the file (its first frame; no EXIF rotation); RGBA is composited on white
    through its alpha (``to_rgb``), any other mode converted to RGB (other transparency is
    dropped, not composited); the size is :func:`smart_resize` between ``min_pixels`` (default
    ``4 * factor ** 2``) and ``max_pixels`` (default ``16384 * factor ** 2``), and PIL's
    ``Image.resize`` with its default filter (bicubic for RGB) makes it.

    Raises:
        OSError: PIL cannot read the file. ValueError: see :func:`smart_resize`.
    """
    from PIL import Image

    with Image.open(path) as picture:
        if picture.mode == "RGBA":
            rgb = Image.new("RGB", picture.size, (255, 255, 255))
            rgb.paste(picture, mask=picture.getchannel("A"))
        else:
            rgb = picture.convert("RGB")
    width, height = rgb.size
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels,
                        max_pixels=max_pixels)
    return np.asarray(rgb.resize((w, h)), dtype=np.uint8)[None]
