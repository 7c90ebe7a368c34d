"""CLIP's deterministic resize and centre crop of decoded frames, on uint8.

One function, :func:`clip_resize_crop`, used in two places so that they cannot drift apart: by
:meth:`vlm_cli.model.encoders.VisionEncoder.preprocess` (before normalising), and inside the decode
worker (:func:`vlm_cli.features.decode_media`) so that only encoder-sized frames cross the process
boundary (a 1080p frame is 6 MB, a 224 px one 150 kB). Applying it to frames it has already
resized is a no-op, so the features are the same bit for bit whichever side ran it.
"""

from __future__ import annotations

import numpy as np


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
    x = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if target != (h, w):
        x = F.interpolate(x.contiguous(), size=target, mode="bicubic", antialias=True,
                          align_corners=False)  # uint8 in, uint8 out (rounded, clamped)
    top, left = int((target[0] - s) / 2), int((target[1] - s) / 2)
    x = x[:, :, top:top + s, left:left + s]
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
