"""The frozen encoders of a feature store: built on first use, then run on decoded media.

:class:`FrozenEncoders` holds the encoders' sources (:class:`~vlm_cli.model.families.EncoderSource`:
keys and capabilities known without weights) by feature name (``vision``, ``image``, ``audio``)
and builds each on the device the first time one of its features is missing from the cache.
Decoded media (:func:`vlm_cli.decode.decode_media`) reach them three ways, each giving an
:class:`Encoded` (a cache entry's tensors and what the decoding said about the file):

- one file's sampled frames at once, or its audio clips (:meth:`FrozenEncoders.encode`);
- a long video window by window (:class:`vlm_cli.media.windows.VideoWindows`: one window of
  frames held at a time), also through :meth:`FrozenEncoders.encode`;
- several files' frames in one forward (:meth:`FrozenEncoders.encode_vision_batch`).

Shapes: ``T`` frames sampled, ``T'`` feature groups (``T`` for a per-frame encoder, clips ×
groups for a per-clip one), ``N`` tokens per group, ``D`` feature width, ``K`` audio clips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vlm_cli.decode import AUDIO, VISION

if TYPE_CHECKING:
    import torch

    from vlm_cli.media.windows import VideoWindows
    from vlm_cli.model.families import EncoderSource


@dataclasses.dataclass
class Encoded:
    """One modality's features of one file, as a cache entry holds them.

    Attributes:
        tensors: vision ``{"features": [T', N, D], "timestamps": [T] float64 s}`` (plus
            ``"still": [1] bool`` for a picture, and a family's own tensors such as
            ``grid_thw``); audio ``{"features": [K, D] or [K, N, D], "starts": [K] float64 s}``,
            or ``{}`` for a file without an audio track.
        provenance: what the decoding said (``decoder``, ``duration`` s, ``num_decodable``; or
            ``audio``: ``present`` / ``absent`` with ``duration`` or ``reason``), recorded with
            the entry.
    """

    tensors: dict[str, torch.Tensor]
    provenance: dict[str, Any]


def frame_rate(timestamps: Any, duration: float | None,
               sampling: Mapping[str, Any]) -> float | None:
    """The nominal rate of sampled frames, in frames per second, for encoders that take one
    (a transformers-native tower's temporal patches).

    The sampling's ``fps`` when the frames are that far apart, else their real rate (a video
    slower than ``fps``, whose every frame is taken; frames thinned out by ``max_frames``;
    uniform sampling): ``count / duration``, or the timestamps' mean spacing when the duration
    is unknown. None for a still image.

    Args:
        timestamps: ``[T]`` seconds of the frames. duration: the video's, in seconds (0 or None
            when unknown). sampling: :meth:`vlm_cli.recipe.DataSpec.frame_sampling`.
    """
    count = len(timestamps)
    if count < 2 and not duration:
        return None
    real = count / duration if duration else (count - 1) / max(
        float(timestamps[-1]) - float(timestamps[0]), 1e-6)
    if sampling["strategy"] == "fps":
        return min(sampling["fps"], real) if real < 0.95 * sampling["fps"] else sampling["fps"]
    return real


class FrozenEncoders:
    """The frozen encoders of one feature store, by feature name, built on first use.

    Args:
        sources: feature name (``vision``, ``image``, ``audio``) -> its source.
        device: torch device, or ``auto`` (CUDA when available, else CPU; decided when the
            first encoder is built, so that a cache hit never imports torch).
        frame_sampling: the store's vision sampling settings
            (:meth:`vlm_cli.recipe.DataSpec.frame_sampling`): rate sampling pads a per-clip
            encoder's last clip.
    """

    def __init__(self, sources: Mapping[str, EncoderSource], device: str = "auto",
                 frame_sampling: Mapping[str, Any] | None = None) -> None:
        self.sources = dict(sources)
        self.device = device
        self.frame_sampling = dict(frame_sampling or {"strategy": "uniform"})
        self._built: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The encoder ``name``, built and moved to the device on first use.

        Raises:
            VlmError: its weights are not available locally.
        """
        if name not in self._built:
            from vlm_cli.runtime import pick_device

            self.device = pick_device(self.device)
            self._built[name] = self.sources[name].build().to(self.device)
        return self._built[name]

    def clip_frames(self, name: str) -> int | None:
        """Frames per clip of a per-clip vision encoder (ViViT's ``num_frames``), 1 for a
        per-frame encoder of ours, None for a family's own encoder (which takes all the frames
        of a file at once). Builds the encoder."""
        return getattr(self.get(name), "clip_frames", None)

    def encode(self, name: str, modality: str, item: dict[str, Any], *,
               features: torch.Tensor | None = None) -> Encoded:
        """Encode one file's decoded ``modality`` with encoder ``name``.

        Args:
            item: :func:`vlm_cli.decode.decode_media`'s output for the modality, or
                ``{"windows": VideoWindows}`` for frames decoded a window at a time.
            features: vision features of these frames already computed
                (:meth:`encode_vision_batch`), used instead of running the encoder.
        """
        import torch

        if modality == AUDIO and "absent" in item:
            return Encoded({}, {"audio": "absent", "reason": item["absent"]})
        if modality == AUDIO:
            tensors = _as_entry(self.get(name).encode_clips(item["spectrogram"]))
            tensors["starts"] = torch.as_tensor(item["starts"], dtype=torch.float64)
            return Encoded(tensors, {"audio": "present", "duration": item["duration"]})
        if "windows" in item:
            return self._encode_windows(name, item["windows"])
        stamps = torch.as_tensor(item["timestamps"], dtype=torch.float64)
        if features is None:
            encoder = self.get(name)
            pad = {"pad": True} if self.frame_sampling["strategy"] == "fps" and \
                getattr(encoder, "clip_frames", 1) > 1 else {}
            rate = item.get("sample_fps") or frame_rate(stamps, item["duration"],
                                                        self.frame_sampling)
            features = encoder.encode_frames(item["frames"], fps=rate, **pad)
        tensors = _as_entry(features)
        tensors["timestamps"] = stamps
        if item["decoder"] == "image":  # a still picture, not a one-frame video
            tensors["still"] = torch.ones(1, dtype=torch.bool)
        return Encoded(tensors, {"decoder": item["decoder"], "duration": item["duration"],
                                 "num_decodable": item["num_decodable"]})

    def _encode_windows(self, name: str, windows: VideoWindows) -> Encoded:
        """Encode a video window by window (each window is dropped once encoded: peak memory is
        one window of frames plus the features), or, for an encoder without ``clip_frames`` (a
        family's own, e.g. Qwen2.5-Omni's, which sees all frames together), gather the windows
        and encode once."""
        import numpy as np
        import torch

        encoder = self.get(name)
        if getattr(encoder, "clip_frames", None) is None:
            frames = np.concatenate(list(windows))
            stamps = torch.as_tensor(windows.timestamps, dtype=torch.float64)
            tensors = _as_entry(encoder.encode_frames(
                frames, fps=frame_rate(stamps, windows.duration, self.frame_sampling)))
        else:
            # Rate sampling: the frame count follows the file's length, so a last clip short
            # of frames is filled (reported as padded_frames by vlm_cli.model.budget).
            pad = self.frame_sampling["strategy"] == "fps"
            parts = [encoder.encode_frames(frames, pad=pad) for frames in windows]
            tensors = {"features": torch.cat(parts)}
            stamps = torch.as_tensor(windows.timestamps, dtype=torch.float64)
        tensors["timestamps"] = stamps
        return Encoded(tensors, {"decoder": windows.decoder, "duration": windows.duration,
                                 "num_decodable": windows.num_decodable})

    def encode_vision_batch(self, items: list[tuple[str, dict[str, Any] | None]]
                            ) -> list[torch.Tensor | None]:
        """Vision features of several files' decoded frames in one encoder forward per group,
        for :meth:`encode`'s ``features``.

        Files whose frames the same batchable encoder (:attr:`EncoderSource.batched`) takes at
        the same size (frames resized in the worker, :attr:`EncoderSource.worker_resize`) are
        encoded together: their frames concatenated ``[sum T, S, S, 3] uint8``, the features
        ``[sum T, N, D]`` split back per file. A frame's features do not depend on the other
        frames in the batch (CPU fp32 checked bit for bit by ``tests/test_preprocess.py``).
        Any other file gets None (encoded on its own).

        Args:
            items: ``(encoder name, decoded)`` pairs, ``decoded`` from
                :func:`vlm_cli.decode.decode_media` (its ``vision`` item, if any, is used).

        Returns:
            One ``[T, N, D]`` tensor or None per item, in order.
        """
        import numpy as np
        import torch

        groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for i, (name, decoded) in enumerate(items):
            item = (decoded or {}).get(VISION)
            if item is None or not self.sources[name].batched:
                continue
            groups.setdefault((name, item["frames"].shape[1:]), []).append(i)
        out: list[Any] = [None] * len(items)
        for (name, _), members in groups.items():
            if len(members) < 2:
                continue
            frames = [items[i][1][VISION]["frames"] for i in members]
            features = self.get(name).encode_frames(np.concatenate(frames))
            for i, part in zip(members, torch.split(features, [len(f) for f in frames])):
                out[i] = part.clone()  # its own storage, as a per-file forward gives
        return out


def _as_entry(encoded: Any) -> dict[str, Any]:
    """An encoder's output as cache-entry tensors: ``{"features": ...}`` for a tensor; a dict
    (features plus a family's own tensors, e.g. ``grid_thw``) as it is."""
    return dict(encoded) if isinstance(encoded, dict) else {"features": encoded}
