"""Checkpoint families: one module per way a checkpoint is laid out and run.

Each family module (``families/<name>.py``) has

- ``detect(directory) -> bool``: is this checkpoint mine? (config.json, file names; no weights);
- ``load(directory, *, device, dtype, name, revision, download) -> Loaded``: the recipe that
  describes it, the :class:`~vlm_cli.model.vlm.VideoLanguageModel` (connectors + LLM + tokenizer)
  and the sources of its frozen encoders;
- ``save(model, out, *, base, dtype, max_shard_size, recipe)``: a merged model
  (``vlm merge-lora``) in the family's own format (``recipe``: the run's, e.g. its sampling);
- ``KEY_MAP``: its weight-key conversions as data, used by ``load`` and ``save`` alike.

:func:`load_model` is a dispatch over :data:`FAMILIES` (as mlx-vlm's ``get_model_and_args``);
nothing outside a family module knows the family's quirks.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from vlm_cli.errors import UsageError
from vlm_cli.keys import EncoderKey

if TYPE_CHECKING:
    from vlm_cli.model.vlm import VideoLanguageModel
    from vlm_cli.recipe import Recipe

#: Family name -> module; tried in this order by :func:`family_of`.
FAMILIES: dict[str, str] = {
    "video-llava-hf": "vlm_cli.model.families.video_llava_hf",
    "transformers-native": "vlm_cli.model.families.native",
    "video-llama": "vlm_cli.model.families.video_llama",
    "vlm-run": "vlm_cli.model.families.vlm_run",
}


@dataclasses.dataclass
class EncoderSource:
    """A frozen encoder of a loaded model, before it is built: its cache key, how to build it,
    and what the feature store needs to know about it without building it (declared here,
    never read back from the key).

    Attributes:
        key: everything that changes its features (:class:`~vlm_cli.keys.EncoderKey`, the
            encoder part of a feature-cache key); computed without loading weights. A family
            may give the key's fields as a mapping (the transformers-native table does).
        build: builds the encoder (:class:`~vlm_cli.model.encoders.VisionEncoder` or
            ``AudioEncoder``, or a family's own with ``encode_frames`` / ``encode_clips``),
            called on the first cache miss only.
        decode: for an audio encoder, the decode settings of its input (``frontend`` and that
            function's keyword arguments, ``mix``; see :func:`vlm_cli.decode.decode_media`)
            when they are not the recipe's; for a vision encoder, extra keyword arguments of
            :func:`vlm_cli.media.load_video` (e.g. ``size``: frames scaled in the decoder;
            ``sampling``: a model card's own frame rule); None otherwise. (What changes the
            features among them is in ``key`` too.)
        per_frame: a vision encoder that encodes each frame on its own (CLIP, SigLIP, BLIP-2's
            per-frame Q-Former): the features of reordered frames are its cached ones,
            reordered (``vlm probe``).
        batched: the frames of several files may share one forward (same size, per frame:
            ``vlm preprocess`` on an accelerator).
        worker_resize: S px when the decode worker may bring the frames to ``[T, S, S, 3]``
            with the encoder's own resize and crop
            (:func:`vlm_cli.media.resize.clip_resize_crop`, which the encoder then skips), so
            only small frames travel back; None otherwise.
    """

    key: EncoderKey
    build: Callable[[], Any]
    decode: dict[str, Any] | None = None
    per_frame: bool = False
    batched: bool = False
    worker_resize: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.key, Mapping):
            self.key = EncoderKey(**self.key)


@dataclasses.dataclass
class Loaded:
    """A loaded checkpoint.

    Attributes:
        recipe: what the model is and how it samples media (frames, audio clips, prompt format).
        model: the :class:`~vlm_cli.model.vlm.VideoLanguageModel`, in eval mode on its device.
        family: the family name (a key of :data:`FAMILIES`).
        encoders: the frozen encoders by feature name (``vision``, ``image``, ``audio``) when the
            family provides them itself; None when they are built from ``recipe``.
        check: ``check(path, *, fps, frames, audio)`` raises ``UsageError`` when a media file
            would not fit the model (e.g. over its context), from the file's header, before any
            decoding; None when there is nothing to check.
        licence: the weights' licence as the model card states it (:func:`read_licence`), or
            None when the checkpoint has no card that says.
    """

    recipe: Recipe
    model: VideoLanguageModel
    family: str
    encoders: dict[str, EncoderSource] | None = None
    check: Callable[..., Any] | None = None
    licence: str | None = None


def read_config(directory: str | Path) -> dict[str, Any]:
    """``directory/config.json`` as a dict, or {} when it is missing or not a JSON object (what
    a family's ``detect`` reads)."""
    import json

    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def read_licence(directory: str | Path) -> str | None:
    """The licence a checkpoint's model card (``README.md``, YAML front matter) declares:
    ``license_name`` (e.g. ``qwen-research``) or ``license`` (e.g. ``apache-2.0``,
    ``cc-by-nc-sa-4.0``), with ``license_link`` when given; None without a card or a licence."""
    import yaml

    from vlm_cli.schema import load_yaml

    try:
        text = (Path(directory) / "README.md").read_text(errors="replace")
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    try:
        card = load_yaml(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return None
    if not isinstance(card, dict):
        return None
    name = card.get("license_name") or card.get("license")
    if not name or name == "other":
        return None
    link = card.get("license_link")
    return f"{name} ({link})" if link else str(name)


def family_module(name: str) -> ModuleType:
    """The module of family ``name``: a key of :data:`FAMILIES`, or the name of an entry of the
    transformers-native table (``qwen2.5-omni``: run directories record it as their base)."""
    if name not in FAMILIES:
        from vlm_cli.model.families.native_table import MODELS

        if name in {spec.name for spec in MODELS}:
            name = "transformers-native"
    return importlib.import_module(FAMILIES[name])


def skipped_for_config(config: dict[str, Any]) -> tuple[str, ...]:
    """Weight-key prefixes a checkpoint's family never loads (e.g. Qwen2.5-Omni's talker and
    token2wav), from its ``config.json``: what ``vlm download`` does not fetch and a snapshot
    may lack (:data:`vlm_cli.hub.SkipFor`)."""
    from vlm_cli.model.families.native_table import spec_for

    spec = spec_for(config)
    return spec.skip_prefixes if spec is not None else ()


def skipped_weights(directory: str | Path) -> tuple[str, ...]:
    """:func:`skipped_for_config` of ``directory/config.json``."""
    return skipped_for_config(read_config(directory))


def supported_titles() -> str:
    """The checkpoints :func:`load_model` takes besides vlm's own, for help and error texts."""
    from vlm_cli.model.families.native_table import MODELS

    return ", ".join(["Video-LLaVA-hf", *(spec.title for spec in MODELS), "Video-LLaMA"])


def family_of(directory: Path) -> str | None:
    """The name of the family whose ``detect`` accepts ``directory``, or None."""
    for name in FAMILIES:
        if family_module(name).detect(directory):
            return name
    return None


def load_model(directory: Path, *, device: str = "cpu", dtype: Any = None,
               name: str | None = None, revision: str | None = None,
               download: bool = False) -> Loaded:
    """Load the checkpoint in ``directory`` with its family's ``load``.

    Args:
        directory: a local directory (a hub id is resolved by the caller, e.g.
            :func:`vlm_cli.hub.resolve_snapshot`).
        device: torch device. dtype: the LLM dtype; default: the family's choice for ``device``.
        name, revision: the hub id ``directory`` was resolved from, recorded instead of the
            directory so that cached features are keyed by the hub commit.
        download: fetch hub parts the checkpoint references that are not cached (``--download``).

    Raises:
        UsageError: no family recognises the directory. VlmError: a referenced part is missing.
    """
    family = family_of(directory)
    if family is None:
        raise UsageError(f"{directory}: not a vlm run directory, a merged vlm model nor a "
                         f"supported checkpoint ({supported_titles()})")
    loaded = family_module(family).load(directory, device=device, dtype=dtype, name=name,
                                        revision=revision, download=download)
    loaded.licence = loaded.licence or read_licence(directory)
    return loaded
