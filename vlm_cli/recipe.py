"""Recipes: the typed schema of a model + data (+ later training) configuration, and its loader.

A recipe is a YAML file (``recipes/<name>.yaml`` ships with the package; any path works too),
validated into the dataclasses below by :mod:`vlm_cli.schema`: unknown keys and wrong types are
errors naming the key. ``key=value`` overrides from the command line are applied before validation.
Every key carries its type and default here, and a comment in the shipped YAML (LitGPT style).
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from vlm_cli.errors import RecipeError
from vlm_cli.schema import apply_overrides, from_dict, to_dict

#: CLIP's image normalisation (OpenAI CLIP; also LanguageBind / Video-LLaVA towers).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_source(spec: Any, prefix: str) -> None:
    if (spec.pretrained is None) == (spec.config is None):
        raise RecipeError(f"recipe key {prefix!r}: set exactly one of 'pretrained' (hub id or "
                          "local directory) and 'config' (random initialisation)")


@dataclasses.dataclass
class VisionEncoderSpec:
    """A frozen image encoder run per frame (Video-LLaMA §2.1; Video-LLaVA §3.1).

    Attributes:
        arch: transformers class: ``clip`` (CLIPVisionModel) or ``siglip`` (SiglipVisionModel).
        pretrained: hub repo id or local directory (``from_pretrained``); or None with ``config``.
        revision: hub revision (branch, tag or commit); None = the cached default branch.
        config: a transformers config dict for a randomly initialised encoder (tiny recipes).
        init_seed: torch seed for that random initialisation.
        feature_layer: hidden-state index whose output is used (Video-LLaVA: -2).
        select: ``patch`` drops the CLS token (Video-LLaVA), ``cls_patch`` keeps it.
        image_size: input size in px (square); None = the config's ``image_size``.
        image_mean, image_std: per-channel normalisation; None = CLIP's.
        dtype: weights/compute dtype of the encoder.
    """

    arch: Literal["clip", "siglip"] = "clip"
    pretrained: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    init_seed: int = 0
    feature_layer: int = -2
    select: Literal["patch", "cls_patch"] = "patch"
    image_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def validate(self, prefix: str) -> None:
        _check_source(self, prefix)


@dataclasses.dataclass
class AudioEncoderSpec:
    """A frozen audio encoder run on 2 s clips (Video-LLaMA §2.1), fed Kaldi fbank features.

    Attributes:
        arch: ``ast`` (transformers ASTModel; the 128-mel fbank front end of AST and ImageBind).
        pretrained, revision, config, init_seed, dtype: as for :class:`VisionEncoderSpec`.
        feature_layer: hidden-state index used when ``select`` is ``all`` (-1 = last).
        select: ``pooled`` gives one vector per clip (AST's pooler: mean of CLS and distillation
            tokens, like ImageBind's one embedding per clip); ``all`` keeps every token.
        num_mel_bins: fbank mel bins (128). target_frames: fbank frames per clip after padding or
            cropping (204 for 2 s at a 10 ms shift, as ImageBind; AST's 10 s checkpoints use 1024).
        fbank_mean, fbank_std: normalisation ``(fbank - mean) / std``. ImageBind: -4.268 / 9.138.
            AST checkpoints divide by twice AudioSet's std (transformers' ASTFeatureExtractor:
            ``(fbank - mean) / (2 * std)``), so for them use -4.2677393 / 9.1379948.
    """

    arch: Literal["ast"] = "ast"
    pretrained: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    init_seed: int = 0
    feature_layer: int = -1
    select: Literal["pooled", "all"] = "pooled"
    num_mel_bins: int = 128
    target_frames: int = 204
    fbank_mean: float = -4.268
    fbank_std: float = 9.138
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def validate(self, prefix: str) -> None:
        _check_source(self, prefix)


@dataclasses.dataclass
class ModelSpec:
    """The model's parts. ``vision`` and ``audio`` are optional: a recipe may use one modality."""

    vision: VisionEncoderSpec | None = None
    audio: AudioEncoderSpec | None = None


@dataclasses.dataclass
class DataSpec:
    """Frame and audio-clip sampling, and where media files are found.

    Attributes:
        frames: frames per video under ``uniform`` sampling (Video-LLaVA: 8).
        sampling: ``uniform`` (linspace over the frames that decode) or ``fps``.
        fps: frames per second under ``fps`` sampling.
        max_frames: cap under ``fps`` sampling (frames are then spread uniformly).
        audio_clips: number of 2 s audio clips per file (Video-LLaMA §2.1: 8).
        clip_seconds: audio clip length in seconds.
        media_root: directory media paths are relative to; None = the data file's directory.
    """

    frames: int = 8
    sampling: Literal["uniform", "fps"] = "uniform"
    fps: float | None = None
    max_frames: int | None = None
    audio_clips: int = 8
    clip_seconds: float = 2.0
    media_root: str | None = None

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.sampling == "fps" and (self.fps is None or self.fps <= 0):
            raise RecipeError(f"recipe key '{p}fps': a positive number is required when "
                              "sampling is 'fps'")
        for name in ("frames", "audio_clips"):
            if getattr(self, name) < 1:
                raise RecipeError(f"recipe key '{p}{name}': must be at least 1")
        if self.clip_seconds <= 0:
            raise RecipeError(f"recipe key '{p}clip_seconds': must be positive")

    def frame_sampling(self) -> dict[str, Any]:
        """The settings that decide which frames are taken (part of the vision cache key)."""
        if self.sampling == "fps":
            return {"strategy": "fps", "fps": self.fps, "max_frames": self.max_frames}
        return {"strategy": "uniform", "frames": self.frames}

    def audio_sampling(self) -> dict[str, Any]:
        """The settings that decide which audio clips are taken (part of the audio cache key)."""
        return {"clips": self.audio_clips, "clip_seconds": self.clip_seconds}


@dataclasses.dataclass
class Recipe:
    """A whole recipe. ``name`` identifies it in run directories and reports."""

    name: str
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (saved into every run directory)."""
        return to_dict(self)


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped in ``vlm_cli.recipes`` (``recipes/`` in the repository)."""
    return sorted(p.name[:-5] for p in resources.files("vlm_cli.recipes").iterdir()
                  if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, override and validate a recipe.

    Args:
        name_or_path: a built-in recipe name (``tiny-av``) or a path to a YAML file.
        overrides: ``dotted.key=value`` strings applied before validation.

    Raises:
        RecipeError: unknown recipe name, unreadable or invalid YAML, or a schema violation.
    """
    import yaml

    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        try:
            text = path.read_text()
        except OSError as err:
            raise RecipeError(f"recipe {name_or_path}: {err.strerror or err}") from err
        where = str(path)
    else:
        if name_or_path not in builtin_recipes():
            raise RecipeError(f"unknown recipe {name_or_path!r}; built-in recipes: "
                              f"{', '.join(builtin_recipes())} (or give a path to a YAML file)")
        text = (resources.files("vlm_cli.recipes") / f"{name_or_path}.yaml").read_text()
        where = f"built-in recipe {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{where}: invalid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level")
    return from_dict(Recipe, apply_overrides(data, list(overrides)))
