"""The cache keys of the frozen encoders a recipe names, built here only.

A recipe's (and a vlm run's) encoders -- ``model.vision``, ``model.image``, ``model.audio`` --
get their :class:`~vlm_cli.keys.EncoderKey` (everything that changes their features:
:func:`vision_key`, :func:`audio_key`) here, with the input preprocessing the encoders run
(:class:`VisionPreprocess`, :func:`audio_frontend`). Computed from the recipe and the weights'
identity only (a resolved hub commit, or the sha256 of local weight files): no weights are loaded
and neither torch nor transformers is imported, so a warm-cache run stays fast and training on
cached features never builds the encoders. :mod:`vlm_cli.model.sources` makes them sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm_cli.errors import VlmError
from vlm_cli.hub import resolve_pretrained
from vlm_cli.keys import EncoderKey
from vlm_cli.recipe import CLIP_MEAN, CLIP_STD, AudioEncoderSpec, VisionEncoderSpec

#: transformers' default ``image_size`` of CLIPVisionConfig and SiglipVisionConfig.
DEFAULT_IMAGE_SIZE = 224


def _torch_version() -> str:
    """The installed torch's version (``importlib.metadata.version("torch")``), without
    importing torch. Read from the name of the ``torch-VERSION.dist-info`` directory beside the
    package when there is exactly one: importing ``importlib.metadata`` alone costs ~45 ms on 2
    cores, a fifth of a cached ``vlm preprocess``."""
    from importlib.util import find_spec

    spec = find_spec("torch")
    if spec is not None and spec.origin:
        found = list(Path(spec.origin).parent.parent.glob("torch-*.dist-info"))
        if len(found) == 1:
            return found[0].name.removeprefix("torch-").removesuffix(".dist-info")
    from importlib.metadata import version

    return version("torch")


def resolve_source(spec: VisionEncoderSpec | AudioEncoderSpec, digest: Callable[[Path], str],
                   prefixes: tuple[str, ...] | None = None) -> tuple[Path | None, dict[str, Any]]:
    """Where an encoder's weights come from, and what pins them (for the cache key).

    Returns ``(None, {"config", "init_seed", "torch"})`` for a seeded random initialisation, or
    ``(directory, {...})`` from :func:`vlm_cli.hub.resolve_pretrained` (``prefixes``: in a
    local checkpoint, only the encoder's tensors are hashed). Loads no weights.
    """
    if spec.config is not None:
        return None, {"config": spec.config, "init_seed": spec.init_seed, "torch": _torch_version()}
    return resolve_pretrained(spec.pretrained, spec.revision, digest, prefixes=prefixes)


def _config_image_size(directory: Path) -> int:
    """``image_size`` from a checkpoint's config.json (a vision config, or a CLIP/LLaVA-style
    config with a ``vision_config``), read as JSON so that fingerprints never import transformers.

    Raises:
        VlmError: config.json is missing or unreadable.
    """
    import json

    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise VlmError(f"{directory}: cannot read config.json ({err})") from err
    vision = config.get("vision_config") or config
    return int(vision.get("image_size", DEFAULT_IMAGE_SIZE))


#: transformers' default ``hidden_size`` of CLIPVisionConfig, SiglipVisionConfig and ASTConfig.
DEFAULT_HIDDEN_SIZE = 768


def encoder_hidden_size(spec: VisionEncoderSpec | AudioEncoderSpec) -> int:
    """Feature width D of an encoder, from its config dict or its checkpoint's config.json
    (a CLIP-style ``vision_config`` is looked into). No weights are loaded.

    Raises:
        VlmError: a pretrained encoder whose config.json is missing from the local cache.
    """
    import json

    if spec.config is not None:
        return _width(spec.config)
    from vlm_cli.hub import local_path

    directory = local_path(spec.pretrained, spec.revision)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise VlmError(f"{directory}: cannot read config.json ({err})") from err
    return _width(config.get("vision_config") or config)


def _width(config: dict[str, Any]) -> int:
    """Hidden size of a config dict (Whisper calls it ``d_model``)."""
    return int(config.get("hidden_size", config.get("d_model", DEFAULT_HIDDEN_SIZE)))


@dataclasses.dataclass(frozen=True)
class VisionPreprocess:
    """How a frame becomes a CLIP-style encoder's input (:meth:`VisionEncoder.preprocess`): the
    shortest-edge bicubic antialiased resize of the uint8 frame and the centre crop to
    ``size`` × ``size`` px (:func:`vlm_cli.media.resize.clip_resize_crop`), then
    ``(x / 255 - mean) / std`` per channel. Part of the encoder's key, and what the encoder and
    the decode worker (:attr:`EncoderSource.worker_resize`) run.

    Attributes:
        size: S px. mean, std: per-channel normalisation of [0, 1] pixels (RGB).
    """

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "shortest-edge-bicubic-antialias-uint8"
    crop: str = "center"

    def as_json(self) -> dict[str, Any]:
        """``{"resize", "crop", "size", "mean", "std"}`` as the key writes it."""
        return {"resize": self.resize, "crop": self.crop, "size": self.size,
                "mean": list(self.mean), "std": list(self.std)}


def vision_preprocess(spec: VisionEncoderSpec, directory: Path | None) -> VisionPreprocess:
    """The preprocessing of ``spec``'s encoder: ``image_size`` from the spec, else from its
    config (a random initialisation: ``directory`` None) or its checkpoint's config.json;
    mean and std from the spec, else CLIP's. Loads no weights.

    Raises:
        VlmError: config.json is missing or unreadable.
    """
    if spec.image_size is not None:
        size = spec.image_size
    elif directory is None:
        size = int(spec.config.get("image_size", DEFAULT_IMAGE_SIZE))
    else:
        size = _config_image_size(directory)
    return VisionPreprocess(size, tuple(spec.image_mean or CLIP_MEAN),
                            tuple(spec.image_std or CLIP_STD))


def vision_key(spec: VisionEncoderSpec, digest: Callable[[Path], str],
               prefixes: tuple[str, ...] | None = None, tower: str | None = None) -> EncoderKey:
    """Everything that changes a vision encoder's features: weights identity (``prefixes``: of
    a tower inside a larger local checkpoint, only its tensors; ``tower``: its name there,
    recorded in the source), feature layer, token selection, dtype and preprocessing
    (:class:`VisionPreprocess`). Loads no weights."""
    directory, source = resolve_source(spec, digest, prefixes)
    if tower is not None:
        source = {**source, "tower": tower}
    return EncoderKey(modality="vision", arch=spec.arch, source=source,
                      feature_layer=spec.feature_layer, select=spec.select, dtype=spec.dtype,
                      preprocess=vision_preprocess(spec, directory))


def audio_frontend(spec: AudioEncoderSpec) -> dict[str, Any]:
    """The spectrogram front end of an audio encoder: Kaldi fbank (AST, ImageBind) or Whisper's
    log-mel, with its settings (the keyword arguments of the matching ``vlm_cli.media``
    function, plus ``frontend``)."""
    if spec.arch == "whisper":
        return {"frontend": "whisper_log_mel", "num_mel_bins": spec.num_mel_bins,
                "target_frames": spec.target_frames}
    return {"frontend": "kaldi_fbank", "num_mel_bins": spec.num_mel_bins,
            "target_frames": spec.target_frames, "mean": spec.fbank_mean, "std": spec.fbank_std}


def audio_key(spec: AudioEncoderSpec, digest: Callable[[Path], str]) -> EncoderKey:
    """Everything that changes an audio encoder's features, its spectrogram front end
    (:func:`audio_frontend`) included. Loads no weights."""
    _, source = resolve_source(spec, digest)
    return EncoderKey(modality="audio", arch=spec.arch, source=source,
                      feature_layer=spec.feature_layer, select=spec.select, dtype=spec.dtype,
                      preprocess=audio_frontend(spec) | {"sample_rate": 16000,
                                                         "clip_first_sample": "int(start * rate)"})
