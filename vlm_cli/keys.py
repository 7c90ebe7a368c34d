"""Feature-cache keys: frozen, typed values whose canonical JSON is hashed into an entry's key.

A :class:`FeatureKey` names everything that changes the features of one media file: the file's
content hash, the frozen encoder (:class:`EncoderKey`: its weights' identity, how it runs and how
its input is preprocessed) and the sampling settings (which frames, which audio clips; the
probe's ``frame_order``). Its canonical JSON (sorted keys, no whitespace)::

    {"v": "1", "media": <sha256>, "encoder": <EncoderKey>, "sampling": {...}}

is hashed (sha256, 64 hex chars) into the name of the entry (:class:`vlm_cli.cache.FeatureCache`).
Each family builds its encoders' keys in one place, from data: the recipe's encoders in
:mod:`vlm_cli.model.fingerprint`, a checkpoint family's in its ``load``. Nothing decides
behaviour by reading a key back; what the store needs to know about an encoder is declared on
its :class:`~vlm_cli.model.families.EncoderSource`.

Adding a field to every key is a change here: a field of :class:`FeatureKey` (or of
:class:`EncoderKey`, with a default) enters :meth:`FeatureKey.as_json` by itself. A field left at
None is not written, so keys that do not have it keep their bytes (and their entries).

Imports nothing beyond the standard library.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

#: The version of the key layout (``"v"`` in the canonical JSON).
KEY_VERSION = "1"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed into cache keys
    (typed values are written as their :func:`as_json`)."""
    return json.dumps(as_json(obj), sort_keys=True, separators=(",", ":"), default=str)


def as_json(value: Any) -> Any:
    """``value`` as plain JSON data: a typed key part through its ``as_json()``, a (frozen)
    mapping as a dict, a tuple as a list; anything else as it is."""
    if hasattr(value, "as_json"):
        return value.as_json()
    if isinstance(value, Mapping):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    return value


def frozen(value: Any) -> Any:
    """A read-only copy of JSON-like data: mappings as ``MappingProxyType``, lists as tuples
    (written back by :func:`as_json` as the same JSON)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


class _KeyPart:
    """A typed part of a key: its JSON is its fields that are not None, by name (written once,
    when the value is made: the same for every file the encoder sees)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, field.name, frozen(getattr(self, field.name)))
        object.__setattr__(self, "_json", self._fields_json())

    def _fields_json(self) -> dict[str, Any]:
        return {f.name: as_json(getattr(self, f.name))
                for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if getattr(self, f.name) is not None}

    def as_json(self) -> dict[str, Any]:
        """The fields that are set, as JSON data (what the key hashes; not to be changed)."""
        return self._json  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderKey(_KeyPart):
    """Everything that changes one frozen encoder's features: the encoder part of a key.

    A family gives the fields its encoders have; the others stay None and are left out of the
    JSON. A family with a field of its own subclasses this one (e.g. Video-LLaMA's vision tower:
    its ``ln_vision_eps``).

    Attributes:
        modality: ``vision`` or ``audio``.
        source: the weights' identity (:func:`vlm_cli.hub.resolve_pretrained`: hub commit or
            sha256 of local files; or ``{"config", "init_seed", "torch"}`` of a seeded random
            initialisation).
        dtype: weights / compute dtype name (``float32``, ``bfloat16``...).
        arch: the encoder class (``clip``, ``siglip``, ``vivit``, ``ast``, ``whisper``,
            ``blip2-qformer``...). family: the checkpoint family of a tower it provides.
        tower: which tower of a checkpoint (``video``, ``image``, ``audio``).
        feature_layer: the hidden state used (-1: the last). select: which tokens are kept.
        reference: a model card's reference pipeline (the transformers-native family).
        preprocess: how decoded media become the encoder's input (resize, normalisation,
            spectrogram front end), as JSON data or a typed value with ``as_json()``.
    """

    modality: str
    source: Mapping[str, Any]
    dtype: str | None = None
    arch: str | None = None
    family: str | None = None
    tower: str | None = None
    feature_layer: int | None = None
    select: str | None = None
    reference: Mapping[str, Any] | None = None
    preprocess: Any = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodedKey(_KeyPart):
    """The decoded inputs of the encoders (frames and spectrograms, before any encoder), which
    the encoder alignment keeps in the cache: the decode settings of
    :class:`vlm_cli.decode.DecodeRequest`."""

    frames: Mapping[str, Any] | None
    audio: Mapping[str, Any] | None
    modality: str = "decoded"

    def _fields_json(self) -> dict[str, Any]:
        """``{"modality": "decoded", "frames", "audio"}`` (None values kept)."""
        return {"modality": self.modality, "frames": as_json(self.frames),
                "audio": as_json(self.audio)}


@dataclasses.dataclass(frozen=True)
class FeatureKey:
    """The cache key of one media file's features under one encoder and sampling.

    Attributes:
        media: sha256 (hex) of the file's bytes (:meth:`vlm_cli.cache.FeatureCache.file_digest`).
        encoder: the encoder's key (or, for a caller with its own, the same as JSON data).
        sampling: which frames / clips are taken (:meth:`vlm_cli.recipe.DataSpec.frame_sampling`
            or ``audio_sampling``).
        frame_order: the probe's order of the frames (``reverse``, ``shuffle``, ``still``), or
            None for the file's own order.
    """

    media: str
    encoder: EncoderKey | DecodedKey | Mapping[str, Any]
    sampling: Mapping[str, Any]
    frame_order: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampling", frozen(self.sampling))
        if isinstance(self.encoder, Mapping):
            object.__setattr__(self, "encoder", frozen(self.encoder))

    def as_json(self) -> dict[str, Any]:
        """The canonical form's data: ``{"v", "media", "encoder", "sampling"}`` (the frame
        order is a sampling setting)."""
        sampling = as_json(self.sampling)
        if self.frame_order is not None:
            sampling["frame_order"] = self.frame_order
        return {"v": KEY_VERSION, "media": self.media, "encoder": as_json(self.encoder),
                "sampling": sampling}

    @functools.cached_property
    def hex(self) -> str:
        """The key: sha256 (64 hex chars) of the canonical JSON."""
        return hashlib.sha256(canonical_json(self.as_json()).encode()).hexdigest()

    def __str__(self) -> str:
        return self.hex


def feature_key(media_sha256: str, encoder: Any, sampling: Mapping[str, Any]) -> str:
    """The key (64 hex chars) of one media file under one encoder and sampling setting:
    ``FeatureKey(media_sha256, encoder, sampling).hex``.

    Args:
        media_sha256: sha256 of the media file's bytes.
        encoder: an :class:`EncoderKey`, or the same as JSON data.
        sampling: the sampling settings (frames, strategy, fps, audio clips).
    """
    return FeatureKey(media_sha256, encoder, sampling).hex
