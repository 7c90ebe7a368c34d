"""The frozen encoders a recipe names, as :class:`~vlm_cli.model.families.EncoderSource` values.

:func:`recipe_sources` gives a recipe's (or a vlm run's) ``vision``, ``image`` and ``audio``
encoders: each one's cache key now (:mod:`vlm_cli.model.fingerprint`, no weights loaded), the
encoder (:mod:`vlm_cli.model.encoders`) when a feature is first missing, and what the feature
store needs to know about it beforehand. A checkpoint family whose tower is such an encoder
(Video-LLaVA-hf) makes its sources with :func:`vision_source` too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm_cli.model.families import EncoderSource
from vlm_cli.model.fingerprint import audio_key, vision_key
from vlm_cli.recipe import AudioEncoderSpec, Recipe, VisionEncoderSpec


def vision_source(spec: VisionEncoderSpec, digest: Callable[[Path], str], *,
                  prefixes: tuple[str, ...] | None = None, tower: str | None = None,
                  model: Callable[[], Any] | None = None) -> EncoderSource:
    """A recipe's vision encoder (:class:`~vlm_cli.model.encoders.VisionEncoder`) as an
    :class:`~vlm_cli.model.families.EncoderSource`: its key now, the encoder when first needed.

    CLIP and SigLIP run frame by frame (``per_frame``, ``batched``); ViViT sees the order of
    its frames. Frames are resized to the encoder's input in the decode worker
    (``worker_resize``: the same resize and crop the encoder runs, which then does nothing).

    Args:
        prefixes, tower: see :func:`vlm_cli.model.fingerprint.vision_key`.
        model: returns an already loaded vision model (a checkpoint family's tower, e.g.
            Video-LLaVA-hf's ``video_tower``); None builds it from ``spec``.
    """
    key = vision_key(spec, digest, prefixes, tower)
    preprocess = key.preprocess

    def build() -> Any:
        from vlm_cli.model.encoders import VisionEncoder

        return VisionEncoder(spec, digest, model=model() if model is not None else None,
                             preprocess=preprocess)

    per_frame = spec.arch in ("clip", "siglip")
    return EncoderSource(key, build, per_frame=per_frame, batched=per_frame,
                         worker_resize=preprocess.size)


def audio_source(spec: AudioEncoderSpec, digest: Callable[[Path], str],
                 clip_seconds: float) -> EncoderSource:
    """A recipe's audio encoder (:class:`~vlm_cli.model.encoders.AudioEncoder` on clips of
    ``clip_seconds`` s) as an :class:`~vlm_cli.model.families.EncoderSource`."""

    def build() -> Any:
        from vlm_cli.model.encoders import AudioEncoder

        return AudioEncoder(spec, digest, clip_seconds=clip_seconds)

    return EncoderSource(audio_key(spec, digest), build)


def recipe_sources(recipe: Recipe, digest: Callable[[Path], str]) -> dict[str, EncoderSource]:
    """The frozen encoders a recipe names, by feature name: ``vision`` (``model.vision``),
    ``image`` (``model.image``, the encoder of still pictures when separate) and ``audio``
    (``model.audio``); keys now (no weights loaded), encoders when first needed."""
    model, sources = recipe.model, {}
    for name, spec in (("vision", model.vision), ("image", model.image)):
        if spec is not None:
            sources[name] = vision_source(spec, digest)
    if model.audio is not None:
        sources["audio"] = audio_source(model.audio, digest, recipe.data.clip_seconds)
    return sources
