"""The ``gemma4`` layout of the transformers-native family: how Gemma 4's media reach its model
(``Gemma4UnifiedForConditionalGeneration``, ``google/gemma-4-12B-it``; ``Gemma4ForConditionalGeneration``,
``google/gemma-4-E2B-it`` / ``-E4B-it``), read by :mod:`vlm_cli.model.families.native`.

What differs from the ``qwen-omni`` layout, all of it transformers' own behaviour:

- placeholders are expanded by the processor's ``replace_video_token`` (per frame ``mm:ss`` and
  ``<|image>`` + soft tokens + ``<image|>``, from the frames' times), ``replace_image_token`` and
  ``replace_audio_token`` (from the feature extractor's mask); a clip's own track is a separate
  ``<|audio|>`` right after its video (transformers' ``load_audio_from_video``), not interleaved;
- ``mm_token_type_ids`` (the processor's ``create_mm_token_type_ids``: 1 image, 2 video, 3 audio)
  go with the ids: the 12B attends bidirectionally within a picture or frame;
- positions are plain (no rope index, nothing stateful between turns);
- cached image / video outputs go back through ``mm_encoder_outputs``; cached audio outputs are
  served by ``get_audio_features`` as ``pooler_output [A, T, H]`` + ``attention_mask [A, T]``,
  which ``forward`` calls whenever ``input_features`` and ``input_features_mask`` are given.

The towers are fed by the processor itself (``processor(text=..., videos=/images=/audio=...)``)
on what the card's decoders give: frames by transformers' default sampling from torchcodec's
frames (:func:`vlm_cli.media.load_video` ``sampling="transformers"``, equal pixels), pictures by
``load_image``, audio resampled by FFmpeg (``load_audio(..., resampler="ffmpeg")``).

Shapes: ``B`` prompts, ``L`` tokens, ``N`` soft tokens, ``H`` the LLM width, ``A`` audios.
"""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Sequence
from typing import Any

import torch

#: Tokens per frame besides its soft tokens (``mm:ss``, a space, ``<|image>``, ``<image|>``):
#: the budget check's estimate, an upper bound for the tokenizers of the released checkpoints.
FRAME_TEXT_TOKENS = 8


def expand_media(model: Any, kind: str, media: Any) -> list[int]:
    """The tokens of one placeholder by the processor's own replacement methods, from the cached
    entry alone: ``video`` (the frames' times and soft tokens per frame), ``image`` (its soft
    tokens), ``audio`` (the feature extractor's mask of the track: an audio file, or a clip's
    own track after its video)."""
    from transformers.video_utils import VideoMetadata

    processor, meta = model.processor, media.vision_meta
    if kind == "video":
        stamps = [float(t) for t in meta["timestamps"]]
        # transformers' timestamps are frames_indices / fps: the cached times divided by 1.0
        metadata = VideoMetadata(total_num_frames=len(stamps), fps=1.0, frames_indices=stamps)
        text = processor.replace_video_token(
            {"num_soft_tokens_per_video": [int(meta["soft_tokens_per_frame"])],
             "video_metadata": [metadata]}, 0)
    elif kind == "image":
        text = processor.replace_image_token(
            {"num_soft_tokens_per_image": [int(media.vision.shape[0])]}, 0)
    else:
        text = processor.replace_audio_token(
            {"input_features_mask": [media.audio_meta["features_mask"].bool()]}, 0)
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def model_inputs(model: Any, ids: torch.Tensor, mask: torch.Tensor, rows: Sequence[list[int]],
                 media: Sequence[Sequence[Any]], side: str) -> tuple[dict[str, Any], Any]:
    """``forward`` / ``generate`` keyword arguments for padded ``ids`` / ``mask`` ``[B, L]``:
    ``mm_token_type_ids [B, L]``, ``mm_encoder_outputs`` (image / video ``pooler_output``, one
    ``[N, H]`` per item), stand-ins for ``input_features`` / ``input_features_mask`` (only their
    presence matters: the tower is served); and the audio outputs to serve (``pooler_output
    [A, T, H]``, ``attention_mask [A, T]`` True where valid), or None."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    device = model.device
    types_ = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        typed = torch.as_tensor(model.processor.create_mm_token_type_ids([row])[0])
        where = slice(ids.shape[1] - len(row), ids.shape[1]) if side == "left" else slice(0, len(row))
        types_[b, where] = typed
    outputs: dict[str, list[torch.Tensor]] = {"image": [], "video": []}
    audio: list[torch.Tensor] = []
    for row_media in media:
        for m in row_media:
            if m.vision is not None:  # a video's entry has its soft tokens per frame
                kind = "video" if "soft_tokens_per_frame" in m.vision_meta else "image"
                outputs[kind].append(m.vision.to(device))
            if m.audio is not None:
                audio.append(m.audio)
    kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                              "mm_token_type_ids": types_.to(device)}
    encoded = {kind: BaseModelOutputWithPooling(pooler_output=tuple(feats))
               for kind, feats in outputs.items() if feats}
    if encoded:
        kwargs["mm_encoder_outputs"] = encoded
    if not audio:
        return kwargs, None
    longest = max(a.shape[0] for a in audio)
    pooled = torch.zeros(len(audio), longest, audio[0].shape[-1], dtype=audio[0].dtype)
    valid = torch.zeros(len(audio), longest, dtype=torch.bool)
    for a, features in enumerate(audio):
        pooled[a, :features.shape[0]] = features
        valid[a, :features.shape[0]] = True
    kwargs["input_features"] = torch.zeros(len(audio), 1, 1, device=device)
    kwargs["input_features_mask"] = valid.to(device)
    served = types.SimpleNamespace(pooler_output=pooled.to(device), attention_mask=valid.to(device))
    return kwargs, served


@torch.no_grad()
def encode_frames(native: Any, kind: str, frames: Any, fps: float | None) -> dict[str, torch.Tensor]:
    """Frames ``[T, H, W, 3] uint8`` (``T`` = 1 for a picture, at its own size) through the
    processor (its aspect-preserving bicubic resize to multiples of patch x pooling, at most
    ``max_soft_tokens`` per picture / frame) and ``get_video_features`` /
    ``get_image_features``.

    Returns:
        ``{"features": [N, H]}`` (a video: ``N`` = frames x soft tokens per frame) plus, for a
        video, ``"soft_tokens_per_frame": [] long``.
    """
    processor, hf = native.processor, native.hf
    if kind == "image":
        inputs = processor(text=[processor.image_token], images=[frames[0]], return_tensors="pt")
        out = hf.model.get_image_features(inputs["pixel_values"].to(native.device, native.dtype),
                                          inputs["image_position_ids"].to(native.device))
        return {"features": out.pooler_output[0].cpu()}
    from transformers.video_utils import VideoMetadata

    count = len(frames)
    metadata = VideoMetadata(total_num_frames=count, fps=fps, frames_indices=list(range(count)))
    inputs = processor(text=[processor.video_token], videos=[frames], video_metadata=[metadata],
                       do_sample_frames=False, return_tensors="pt")
    out = hf.model.get_video_features(
        inputs["pixel_values_videos"].to(native.device, native.dtype),
        inputs["video_position_ids"].to(native.device),
        num_frames_per_video=inputs["num_frames_per_video"])
    per_frame = int(inputs["mm_token_type_ids"].eq(2).sum()) // count
    return {"features": out.pooler_output[0].cpu(),
            "soft_tokens_per_frame": torch.tensor(per_frame)}


@torch.no_grad()
def encode_audio(native: Any, waveform: Any) -> dict[str, torch.Tensor]:
    """A whole 16 kHz mono track ``[1, S]`` through the processor's feature extractor (12B: raw
    640-sample frames; E2B / E4B: a 128-bin log-mel) and ``get_audio_features``.

    Returns:
        ``{"features": [N, H]}`` (the valid outputs) and ``"features_mask": [M] bool`` (the
        extractor's mask, from which the processor counts the placeholder's tokens).
    """
    processor = native.processor
    wave = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1).numpy()
    inputs = processor(text=[processor.audio_token], audio=[wave], return_tensors="pt")
    features, mask = inputs["input_features"], inputs["input_features_mask"]
    out = native.hf.model.get_audio_features(features.to(native.device, native.dtype),
                                             mask.to(native.device))
    valid = out.attention_mask[0].bool()
    return {"features": out.pooler_output[0][valid].cpu(), "features_mask": mask[0].bool()}


def audio_limit_samples(processor: Any) -> int | None:
    """The longest track (16 kHz samples) the feature extractor keeps: the default
    ``max_length`` of its ``__call__`` when it truncates (E2B / E4B: 480 000, 30 s; the card
    would cut the rest without a word), else None (the 12B's takes any length)."""
    call = inspect.signature(type(processor.feature_extractor).__call__).parameters
    limit = call["max_length"].default if "max_length" in call else None
    truncates = call["truncation"].default if "truncation" in call else False
    return int(limit) if limit and truncates is True else None


def budget_tokens(native: Any, *, kind: str, height: int, width: int, frames: int,
                  audio_seconds: float | None) -> tuple[int, int]:
    """``(vision tokens, audio tokens)`` of one file by the processor's own count
    (``_get_num_multimodal_tokens``), frames' text included (:data:`FRAME_TEXT_TOKENS`).

    Raises:
        ValueError: the processor refuses the picture size.
    """
    processor, vision, audio = native.processor, 0, 0
    if kind == "video":
        counts = processor._get_num_multimodal_tokens(video_sizes=[(frames, height, width)])
        vision = int(counts["num_video_tokens"][0]) + frames * FRAME_TEXT_TOKENS
    elif kind == "image":
        vision = int(processor._get_num_multimodal_tokens(image_sizes=[(height, width)])
                     ["num_image_tokens"][0]) + 2
    if audio_seconds is not None:
        samples = math.ceil(audio_seconds * processor.feature_extractor.sampling_rate)
        audio = int(processor._get_num_multimodal_tokens(audio_lengths=[samples])
                    ["num_audio_tokens"][0]) + 2
    return vision, audio


def fingerprints(processor: Any) -> dict[str, dict[str, Any]]:
    """What changes each tower's input besides the weights: the sub-processors' settings."""
    def settings(part: Any) -> dict[str, Any]:
        return {k: v for k, v in sorted(part.to_dict().items())
                if not k.startswith("_") and k not in ("processor_class", "auto_map")}

    return {"vision": settings(processor.video_processor),
            "image": settings(processor.image_processor),
            "audio": settings(processor.feature_extractor)}
