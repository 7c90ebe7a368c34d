"""Frozen-encoder features of media files under one recipe, through the feature cache.

One cache entry per (media file, modality): the vision entry holds the features of the sampled
frames, the audio entry those of the sampled 2 s clips, or records that the file has no audio
track (an explicit "absent" entry with no tensors, never zeros). The work is split by
responsibility:

- :mod:`vlm_cli.keys`: the typed key of an entry (:class:`~vlm_cli.keys.FeatureKey`);
- :mod:`vlm_cli.decode`: what a worker process decodes (:class:`DecodeRequest`,
  :func:`decode_media`);
- :mod:`vlm_cli.encoding`: the frozen encoders, built on first use, and the ways decoded
  media reach them;
- :class:`FeatureStore` (here): a media file in (:class:`MediaFile`: path, kind and content
  hash, named once), its features out (:meth:`FeatureStore.fetch`: from the cache, else decoded,
  encoded and written by :meth:`FeatureStore.put`), with a typed :class:`FetchInfo`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from vlm_cli.cache import FeatureCache
# The decode side is named here too (vlm_cli.features.decode_media is what workers preload).
from vlm_cli.decode import AUDIO, VISION, DecodeRequest, decode_media  # noqa: F401
from vlm_cli.encoding import Encoded, FrozenEncoders
from vlm_cli.keys import FeatureKey
from vlm_cli.media.kinds import MediaKind, media_kind
from vlm_cli.recipe import Recipe

if TYPE_CHECKING:
    from vlm_cli.media.windows import VideoWindows
    from vlm_cli.model.families import EncoderSource
    from vlm_cli.model.vlm import MediaInput

#: Frames decoded at a time when :meth:`FeatureStore.fetch` encodes a video (rounded up to whole
#: clips of a per-clip encoder): peak memory is this many decoded frames, whatever the length.
WINDOW_FRAMES = 32
#: The encoder of still images when the recipe has a separate one (``model.image``).
IMAGE = "image"


@dataclasses.dataclass(frozen=True)
class MediaFile:
    """A media file named once: its path, its kind (``video``, ``image`` or ``audio``, by
    :func:`vlm_cli.media.kinds.media_kind`) and its content hash (sha256 hex, memoised by the
    cache), from which its cache keys are made."""

    path: Path
    kind: MediaKind
    sha256: str

    @property
    def placeholder(self) -> str:
        """The prompt placeholder of this kind: ``<video>``, ``<image>`` or ``<audio>``."""
        return f"<{self.kind}>"


@dataclasses.dataclass(frozen=True)
class FetchInfo:
    """How a file's features were obtained.

    Attributes:
        cache: ``hit`` (read from the feature cache) or ``miss`` (decoded and encoded now).
        audio: ``used``, ``absent`` (the file has no audio track) or ``disabled`` (``--no-audio``,
            or a model without an audio branch).
        frames: ``{"count", "timestamps"}`` (seconds, rounded to ms) of the sampled frames, or
            None.
        decode_s, encode_s: seconds spent decoding and encoding (a hit: reading, and 0).
        budget: how the video features were fitted to the token budget
            (:class:`vlm_cli.model.budget.VideoBudget` as a dict: ``frames_sampled``,
            ``frames_used``, ``pooled``, ``tokens``, ``max_tokens``, clip windows), or None.

    ``info["cache"]`` reads a field too (the form of the dict it replaces).
    """

    cache: str
    audio: str
    frames: dict[str, Any] | None
    decode_s: float
    encode_s: float
    budget: dict[str, Any] | None = None

    @property
    def branches(self) -> list[str]:
        """The branches whose soft prompts reach the LLM: ``vision`` (frames were sampled) and
        ``audio`` (the track was used)."""
        return [name for name, used in (("vision", self.frames is not None),
                                        ("audio", self.audio == "used")) if used]

    def again(self) -> FetchInfo:
        """This info for a later question on features already in memory: a hit, nothing
        decoded or encoded."""
        return dataclasses.replace(self, cache="hit", decode_s=0.0, encode_s=0.0)

    def __getitem__(self, name: str) -> Any:
        if name not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(name)
        return getattr(self, name)


class Fetched(NamedTuple):
    """What :meth:`FeatureStore.fetch` gives: the features (the model's input) and how they
    were obtained."""

    features: MediaInput
    info: FetchInfo


class FeatureStore:
    """The features of media files under one recipe: keys, lookups, and the frozen encoders
    run (and their entries written) on a miss.

    Args:
        recipe: provides ``model.vision`` / ``model.audio`` (either may be None) and the sampling.
        cache: the feature cache.
        device: torch device for the encoders ("cpu", "cuda", ...), or "auto" (CUDA when
            available, else CPU). Encoders, and torch, load only on first use.
        encoders: the frozen encoders a checkpoint family provides itself
            (:attr:`vlm_cli.model.families.Loaded.encoders`), by feature name; None builds their
            sources from ``recipe`` (:func:`vlm_cli.model.sources.recipe_sources`).
        check: the family's check of a media file against the model's limits
            (:attr:`vlm_cli.model.families.Loaded.check`), run by :meth:`check_media`; or None.

    Raises:
        VlmError: pretrained encoder weights are not available locally.
    """

    def __init__(self, recipe: Recipe, cache: FeatureCache, device: str = "auto",
                 encoders: dict[str, EncoderSource] | None = None, check: Any = None) -> None:
        self.recipe = recipe
        self.check = check
        self.cache = cache
        if encoders is None:
            from vlm_cli.model.sources import recipe_sources

            encoders = recipe_sources(recipe, cache.file_digest)
        #: Feature name (``vision``, ``image``, ``audio``) -> the encoder's source.
        self.sources: dict[str, EncoderSource] = dict(encoders)
        #: Modality -> the sampling settings (part of its entries' keys).
        self.sampling = {VISION: recipe.data.frame_sampling(), AUDIO: recipe.data.audio_sampling()}
        self.encoders = FrozenEncoders(self.sources, device, self.sampling[VISION])

    @property
    def device(self) -> str:
        """The encoders' device (``auto`` until the first one is built)."""
        return self.encoders.device

    def encoder(self, name: str) -> Any:
        """The frozen encoder named ``name`` (``vision``, ``image`` or ``audio``), built on
        first use."""
        return self.encoders.get(name)

    # --- media files and their keys -----------------------------------------------------------

    def media(self, path: str | Path) -> MediaFile:
        """Name a media file once: its kind and its content hash.

        Raises:
            MediaError: the file does not exist or cannot be read.
        """
        from vlm_cli.errors import MediaError

        path = Path(path)
        if not path.is_file():
            raise MediaError(path, "file not found")
        return MediaFile(path, media_kind(path), self.cache.file_digest(path))

    def _media(self, media: MediaFile | str | Path) -> MediaFile:
        return media if isinstance(media, MediaFile) else self.media(media)

    def check_media(self, media: MediaFile | str | Path, *, audio: bool = True) -> None:
        """Refuse a file the model cannot take with this sampling (e.g. more tokens than its
        context), from the file's header, before anything is decoded; nothing to do for models
        without limits to check.

        Raises:
            UsageError: the file would not fit; the message names the setting to lower.
            MediaError: the header cannot be read, or the model refuses the picture.
        """
        if self.check is None:
            return
        data = self.recipe.data
        fps = data.fps if data.sampling == "fps" else None
        path = media.path if isinstance(media, MediaFile) else Path(media)
        self.check(path, fps=fps, frames=data.max_frames if fps else data.frames, audio=audio)

    def modalities(self, kind: MediaKind) -> list[str]:
        """The modalities this recipe extracts from a file of ``kind`` (video, image, audio)."""
        wanted = []
        if VISION in self.sources and kind in ("video", "image"):
            wanted.append(VISION)
        if AUDIO in self.sources and kind in ("video", "audio"):
            wanted.append(AUDIO)
        return wanted

    def encoder_name(self, modality: str, kind: MediaKind) -> str:
        """Which encoder makes ``modality``'s features of a file of ``kind``: ``image`` for a
        still image when the recipe has a separate image encoder, else the modality's own."""
        if modality == VISION and kind == "image" and IMAGE in self.sources:
            return IMAGE
        return modality

    def key(self, media: MediaFile, modality: str, frame_order: str | None = None) -> FeatureKey:
        """The cache key of ``media``'s ``modality`` features (``frame_order``: the probe's
        reordered frames, see :func:`vlm_cli.eval.probe.reordered_frames`)."""
        source = self.sources[self.encoder_name(modality, media.kind)]
        return FeatureKey(media.sha256, source.key, self.sampling[modality], frame_order)

    def keys(self, media: MediaFile) -> dict[str, FeatureKey]:
        """The cache key of each modality this recipe extracts from ``media``."""
        return {m: self.key(media, m) for m in self.modalities(media.kind)}

    def cached(self, keys: dict[str, FeatureKey]) -> set[str]:
        """The modalities among ``keys`` whose cache entry is present and valid (verified without
        loading tensors; corrupt entries are reported and removed)."""
        return {modality for modality, key in keys.items() if self.cache.verify(key)}

    # --- decoding -----------------------------------------------------------------------------

    def request(self, media: MediaFile | str | Path, modalities: list[str]) -> DecodeRequest:
        """The decode request producing the inputs of ``modalities`` for ``media``: the
        recipe's sampling, updated by the encoder source's own decode settings."""
        media = self._media(media)
        data = self.recipe.data
        frames, resize = None, None
        if VISION in modalities:
            frames = ({"num_frames": None, "fps": data.fps, "max_frames": data.max_frames}
                      if data.sampling == "fps" else {"num_frames": data.frames,
                                                       "sampling": data.sampling})
            source = self.sources[self.encoder_name(VISION, media.kind)]
            frames.update(source.decode or {})
            if "size" not in frames:
                resize = source.worker_resize
        audio = None
        if AUDIO in modalities:
            audio = self.sources[AUDIO].decode
            if audio is None:
                from vlm_cli.model.fingerprint import audio_frontend

                audio = {"num_clips": data.audio_clips, "clip_seconds": data.clip_seconds,
                         **audio_frontend(self.recipe.model.audio)}
        return DecodeRequest(str(media.path), media.kind, frames, audio, resize)

    def vision_windows(self, media: MediaFile) -> VideoWindows:
        """The frames this recipe samples from ``media``, as
        :class:`vlm_cli.media.windows.VideoWindows` of :data:`WINDOW_FRAMES` frames (rounded up
        to a multiple of a per-clip encoder's clip length, so windows are whole clips): what
        :meth:`fetch` encodes window by window, holding one window of frames at a time. Builds
        the vision encoder (to learn its clip length).

        Raises:
            MediaError: the file is missing or not a video / image (more when iterated).
        """
        from vlm_cli.media import video_windows

        clip = self.encoders.clip_frames(self.encoder_name(VISION, media.kind)) or 1
        frames = self.request(media, [VISION]).frames or {}
        return video_windows(media.path, window=-(-WINDOW_FRAMES // clip) * clip, **frames)

    def _reference_sampling(self, media: MediaFile) -> bool:
        """Whether ``media``'s frames follow a model card's own sampling rule (the vision
        source's ``decode`` names a ``sampling`` of :func:`vlm_cli.media.load_video`, e.g.
        ``qwen``): decoded all at once by :func:`decode_media`, never a window at a time."""
        return "sampling" in (self.sources[self.encoder_name(VISION, media.kind)].decode or {})

    # --- fetch and put ------------------------------------------------------------------------

    def fetch(self, media: MediaFile | str | Path, *, audio: bool = True) -> Fetched:
        """Features of one file for inference: from the cache, else decoded and encoded here
        (in this process) and cached, so a second question on the same file skips both.

        Args:
            media: the file (a path is named first, :meth:`media`). audio: False to leave the
                audio features out (``--no-audio``).

        Returns:
            ``(features, info)``: a :class:`vlm_cli.model.vlm.MediaInput` and a
            :class:`FetchInfo` (``budget`` None: fitting is the pipeline's).

        Raises:
            MediaError: the file is missing or cannot be decoded.
        """
        import time

        from vlm_cli.model.vlm import MediaInput

        media = self._media(media)
        t0 = time.perf_counter()
        keys = self.keys(media)
        if not audio:
            keys.pop(AUDIO, None)
        entries = {m: self.cache.get(k) for m, k in keys.items()}
        missing = [m for m, e in entries.items() if e is None]
        if missing:
            t1 = time.perf_counter()
            # Frames are decoded a window at a time while encoding, except under a reference
            # rule of a transformers-native model (qwen-omni-utils' frame indices, which the
            # window decoder does not take): its tower takes all the frames at once anyway.
            windowed = VISION in missing and not self._reference_sampling(media)
            rest = [m for m in missing if m != VISION or not windowed]
            decoded = decode_media(self.request(media, rest)) if rest else {}
            if windowed:
                decoded = {VISION: {"windows": self.vision_windows(media)}, **decoded}
            t2 = time.perf_counter()
            written = self.encode_and_store(media, decoded)
            window_s = decoded[VISION]["windows"].decode_s if windowed else 0.0
            cache, decode_s = "miss", t2 - t1 + window_s
            encode_s = time.perf_counter() - t2 - window_s
            entries.update({m: (tensors, {}) for m, tensors in written.items()})
        else:  # a hit: the only cost is reading the cache, reported as decode time
            cache, decode_s, encode_s = "hit", time.perf_counter() - t0, 0.0
        out, frames = MediaInput(), None
        if VISION in entries:
            tensors = entries[VISION][0]
            out.vision, out.vision_meta = split_entry(tensors)
            stamps = [round(float(t), 3) for t in tensors["timestamps"]]
            frames = {"count": len(stamps), "timestamps": stamps}
        if AUDIO in entries and "features" in entries[AUDIO][0]:
            out.audio, out.audio_meta = split_entry(entries[AUDIO][0])
        if not audio or AUDIO not in self.sources:
            used = "disabled"  # --no-audio, or a recipe without an audio branch
        else:
            used = "used" if out.audio is not None else "absent"
        return Fetched(out, FetchInfo(cache, used, frames, decode_s, encode_s))

    def encode_and_store(self, media: MediaFile, decoded: dict[str, Any], *,
                         encoded: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Run the frozen encoders on decoded inputs and write one cache entry per modality.

        Args:
            decoded: the output of :func:`decode_media` for the modalities to write (a vision
                item may be ``{"windows": VideoWindows}``).
            encoded: vision features already computed (``{"vision": [T, N, D]}``, by
                :meth:`vlm_cli.encoding.FrozenEncoders.encode_vision_batch`), used instead of
                running the encoder again.

        Returns:
            modality -> tensors written (:attr:`vlm_cli.encoding.Encoded.tensors`).
        """
        written = {}
        for modality, item in decoded.items():
            name = self.encoder_name(modality, media.kind)
            result = self.encoders.encode(name, modality, item,
                                          features=(encoded or {}).get(modality))
            self.put(media, modality, result)
            written[modality] = result.tensors
        return written

    def put(self, media: MediaFile, modality: str, encoded: Encoded, *,
            frame_order: str | None = None) -> FeatureKey:
        """Write ``media``'s ``modality`` features as a cache entry, with their provenance
        (the file, its hash, the encoder key, the sampling, what the decoding said).

        Args:
            frame_order: the probe's order of the frames the features were encoded in (part of
                the key and the provenance), or None.

        Returns:
            The entry's key.
        """
        key = self.key(media, modality, frame_order)
        provenance = {"modality": modality, "media": str(media.path),
                      "media_sha256": media.sha256, "encoder": key.encoder,
                      "sampling": self.sampling[modality]}
        if frame_order is not None:
            provenance["frame_order"] = frame_order
        self.cache.put(key, encoded.tensors, provenance | encoded.provenance)
        return key

    def media_input(self, path: str | Path) -> MediaInput:
        """The cached features of ``path`` as a :class:`vlm_cli.model.vlm.MediaInput`
        (``audio`` is None when the file has no audio track): what training reads.

        Raises:
            VlmError: a modality's features are not in the cache (run ``vlm preprocess``).
        """
        from vlm_cli.errors import VlmError
        from vlm_cli.model.vlm import MediaInput

        out = MediaInput()
        for modality, key in self.keys(self._media(path)).items():
            entry = self.cache.get(key)
            if entry is None:
                raise VlmError(f"{path}: no cached {modality} features; run `vlm preprocess` on "
                               "this data with the same recipe")
            tensors, _ = entry
            if modality == VISION:
                out.vision, out.vision_meta = split_entry(tensors)
            elif "features" in tensors:  # an absent audio track gives no audio input
                out.audio, out.audio_meta = split_entry(tensors)
        return out


def split_entry(tensors: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A cache entry's ``features`` and its other tensors (a :class:`MediaInput`'s
    ``vision`` / ``vision_meta`` or ``audio`` / ``audio_meta``)."""
    return tensors["features"], {k: v for k, v in tensors.items() if k != "features"}
