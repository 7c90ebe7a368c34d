"""Frozen-encoder features of media files under one recipe, through the feature cache.

One cache entry per (media file, modality): the vision entry holds the per-frame features of the
sampled frames, the audio entry the per-clip features of the sampled 2 s clips, or records that the
file has no audio track (an explicit "absent" entry with no tensors, never zeros). The split of work:

- :func:`decode_media` runs in a worker process (decoding may crash or hang on corrupt files) and
  returns plain numpy arrays: sampled frames and the clips' fbank;
- :class:`FeatureStore` runs in the main process: cache keys (no encoder weights loaded), lookups,
  and :meth:`FeatureStore.encode_and_store` with the frozen encoders, loaded on first use.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vlm_cli.cache import FeatureCache, feature_key
from vlm_cli.media.kinds import media_kind
from vlm_cli.model.fingerprint import audio_frontend
from vlm_cli.recipe import Recipe

VISION, AUDIO = "vision", "audio"
#: Frames decoded at a time when :meth:`FeatureStore.fetch` encodes a video (rounded up to whole
#: clips of a per-clip encoder): peak memory is this many decoded frames, whatever the length.
WINDOW_FRAMES = 32
#: The encoder of still images when the recipe has a separate one (``model.image``).
IMAGE = "image"
#: Vision encoders that run frame by frame: the features of reordered frames are the cached
#: ones reordered. Any other (ViViT's tubelets, Qwen2.5-Omni's 2-frame patches) sees the order
#: and encodes reordered frames again.
PER_FRAME_ENCODERS = frozenset({"clip", "siglip", "blip2-qformer"})
#: Vision encoders whose frames of several files :meth:`FeatureStore.encode_vision_batch` runs
#: in one forward (:class:`vlm_cli.model.encoders.VisionEncoder`'s per-frame towers).
BATCHED_ENCODERS = frozenset({"clip", "siglip"})
#: The ``preprocess`` of vision fingerprints whose resize and crop
#: :func:`vlm_cli.media.resize.clip_resize_crop` computes (that of
#: :class:`vlm_cli.model.encoders.VisionEncoder`): the decode worker runs it, and the encoder's
#: own call is then a no-op, so the features are the same bit for bit.
WORKER_RESIZE = {"resize": "shortest-edge-bicubic-antialias-uint8", "crop": "center"}


@dataclasses.dataclass(frozen=True)
class DecodeRequest:
    """What a worker decodes for one media file (picklable).

    Attributes:
        path: the media file. kind: ``video``, ``image`` or ``audio``.
        frames: keyword arguments of :func:`vlm_cli.media.load_video` (``num_frames`` or
            ``fps`` + ``max_frames``), or None when vision features are not needed.
        audio: clip sampling and spectrogram settings (``frontend``: ``kaldi_fbank`` or
            ``whisper_log_mel``, and that function's keyword arguments; ``mix``: how
            :func:`vlm_cli.media.load_audio` makes mono, default ``mean``), or None.
        resize: S px: the sampled frames are brought to ``[T, S, S, 3]`` in the worker by
            :func:`vlm_cli.media.resize.clip_resize_crop` (the vision encoder's own resize and
            crop, see :data:`WORKER_RESIZE`), so only small frames travel back; None sends the
            decoded size.
    """

    path: str
    kind: str
    frames: dict[str, Any] | None
    audio: dict[str, Any] | None
    resize: int | None = None

    def frame_bytes(self) -> int | None:
        """Upper bound of the decoded frames' size in bytes (0 without vision), or None when
        it depends on the file (frames kept at their decoded size, or fps sampling without
        ``max_frames``)."""
        if self.frames is None:
            return 0
        count = self.frames.get("num_frames") or self.frames.get("max_frames")
        size = self.frames.get("size") or ((self.resize, self.resize) if self.resize else None)
        if count is None or size is None:
            return None
        return int(count) * int(size[0]) * int(size[1]) * 3


def decode_media(request: DecodeRequest) -> dict[str, Any]:
    """Decode one media file for the encoders (runs in a worker process).

    Returns:
        ``{"vision": {"frames": [T,H,W,3] uint8, "timestamps": [T] float64 s, "decoder": str,
        "duration": s, "num_decodable": int}, "audio": {"spectrogram": [K,F,M] or [K,M,F] float32, "starts": [K]
        float64 s, "duration": s} | {"absent": reason}}``, with only the requested modalities.

    Raises:
        MediaError: the file is missing or cannot be decoded.
    """
    from vlm_cli.errors import MediaError
    from vlm_cli.media import AUDIO_FRONTENDS, NoAudio, load_audio, load_video

    out: dict[str, Any] = {}
    if request.frames is not None:
        try:
            video = load_video(request.path, **request.frames)
        except ValueError as err:  # e.g. too few frames for a reference rule's frame count
            raise MediaError(request.path, str(err)) from None
        frames = video.frames
        if request.resize is not None:
            from vlm_cli.media.resize import clip_resize_crop

            frames = clip_resize_crop(frames, request.resize)
        out[VISION] = {"frames": frames, "timestamps": video.timestamps,
                       "decoder": video.decoder, "duration": video.duration,
                       "num_decodable": video.num_decodable, "sample_fps": video.sample_fps}
    if request.audio is not None:
        settings = dict(request.audio)
        mix = settings.pop("mix", "mean")
        resampler = settings.pop("resampler", "torchaudio")
        if settings["frontend"] == "kaldi_fbank" and mix == "mean" and _long_audio(request.path):
            # The clips' samples only, never the whole track (bit for bit the same fbank); a
            # short track is decoded once instead of twice.
            from vlm_cli.media.audio_clips import stream_clip_fbanks

            settings.pop("frontend")
            streamed = stream_clip_fbanks(request.path, **settings)
            if isinstance(streamed, NoAudio):
                out[AUDIO] = {"absent": streamed.reason}
            else:
                out[AUDIO] = {"spectrogram": streamed[0].spectrogram.numpy(),
                              "starts": streamed[0].starts, "duration": streamed[1]}
            return out
        track = load_audio(request.path, mix=mix, resampler=resampler)
        if isinstance(track, NoAudio):
            out[AUDIO] = {"absent": track.reason}
        else:
            frontend = AUDIO_FRONTENDS[settings.pop("frontend")]
            try:
                clips = frontend(track, **settings)
            except ValueError as err:  # e.g. longer than the model's audio front end takes
                raise MediaError(request.path, str(err)) from None
            out[AUDIO] = {"spectrogram": clips.spectrogram.numpy(), "starts": clips.starts,
                          "duration": track.duration}
    return out


#: Tracks longer than this (seconds, from the container header; unknown counts as long) are
#: decoded clip by clip (two passes, memory bounded by the clips) instead of whole (one pass).
LONG_AUDIO_S = 600.0


def _long_audio(path: str) -> bool:
    from vlm_cli.media import probe_media

    duration = probe_media(path).duration
    return duration is None or duration > LONG_AUDIO_S


def recipe_encoders(recipe: Recipe, digest: Any) -> dict[str, Any]:
    """The frozen encoders a recipe names (``model.vision``, ``model.image``, ``model.audio``),
    as :class:`vlm_cli.model.families.EncoderSource` values: fingerprints now (no weights
    loaded), the encoders when first needed."""
    from vlm_cli.model.families import EncoderSource
    from vlm_cli.model.fingerprint import audio_fingerprint, vision_fingerprint

    def vision(spec: Any) -> Any:
        from vlm_cli.model.encoders import VisionEncoder

        return VisionEncoder(spec, digest)

    def audio(spec: Any) -> Any:
        from vlm_cli.model.encoders import AudioEncoder

        return AudioEncoder(spec, digest, clip_seconds=recipe.data.clip_seconds)

    model, sources = recipe.model, {}
    for name, spec in ((VISION, model.vision), (IMAGE, model.image)):
        if spec is not None:
            sources[name] = EncoderSource(vision_fingerprint(spec, digest),
                                          lambda spec=spec: vision(spec))
    if model.audio is not None:
        sources[AUDIO] = EncoderSource(audio_fingerprint(model.audio, digest),
                                       lambda: audio(model.audio))
    return sources


class FeatureStore:
    """Cache keys, lookups and computation of frozen-encoder features for one recipe.

    Args:
        recipe: provides ``model.vision`` / ``model.audio`` (either may be None) and the sampling.
        cache: the feature cache.
        device: torch device for the encoders ("cpu", "cuda", ...), or "auto" (CUDA when
            available, else CPU). Encoders, and torch, load only on first use.
        encoders: the frozen encoders a checkpoint family provides itself
            (:attr:`vlm_cli.model.families.Loaded.encoders`), by feature name; None builds them
            from ``recipe``.
        check: the family's check of a media file against the model's limits
            (:attr:`vlm_cli.model.families.Loaded.check`), run by :meth:`check_media`; or None.

    Raises:
        VlmError: pretrained encoder weights are not available locally.
    """

    def __init__(self, recipe: Recipe, cache: FeatureCache, device: str = "auto",
                 encoders: dict[str, Any] | None = None, check: Any = None) -> None:
        self.recipe = recipe
        self.check = check
        self.cache = cache
        self.device = device
        self.sources = encoders if encoders is not None else recipe_encoders(recipe,
                                                                             cache.file_digest)
        self.fingerprints = {name: source.fingerprint for name, source in self.sources.items()}
        self.sampling = {VISION: recipe.data.frame_sampling(), AUDIO: recipe.data.audio_sampling()}
        self._encoders: dict[str, Any] = {}

    def check_media(self, path: str | Path, *, audio: bool = True) -> None:
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
        self.check(Path(path), fps=fps, frames=data.max_frames if fps else data.frames,
                   audio=audio)

    def modalities(self, path: str | Path) -> list[str]:
        """The modalities this recipe extracts from ``path`` (by its kind: video, image, audio)."""
        kind = media_kind(path)
        wanted = []
        if VISION in self.fingerprints and kind in ("video", "image"):
            wanted.append(VISION)
        if AUDIO in self.fingerprints and kind in ("video", "audio"):
            wanted.append(AUDIO)
        return wanted

    def encoder_name(self, modality: str, path: str | Path) -> str:
        """Which encoder makes ``modality``'s features of ``path``: ``image`` for a still image
        when the recipe has a separate image encoder, else the modality's own."""
        if modality == VISION and IMAGE in self.fingerprints and media_kind(path) == "image":
            return IMAGE
        return modality

    def keys(self, path: str | Path, media_sha256: str) -> dict[str, str]:
        """Cache key of each modality of ``path``."""
        return {m: feature_key(media_sha256, self.fingerprints[self.encoder_name(m, path)],
                               self.sampling[m])
                for m in self.modalities(path)}

    def cached(self, keys: dict[str, str]) -> set[str]:
        """The modalities among ``keys`` whose cache entry is present and valid (verified without
        loading tensors; corrupt entries are reported and removed)."""
        return {modality for modality, key in keys.items() if self.cache.verify(key)}

    def media_input(self, path: str | Path) -> Any:
        """The cached features of ``path`` as a :class:`vlm_cli.model.vlm.MediaInput`
        (``audio`` is None when the file has no audio track).

        Raises:
            VlmError: a modality's features are not in the cache (run ``vlm preprocess``).
        """
        from vlm_cli.errors import VlmError
        from vlm_cli.model.vlm import MediaInput

        out = MediaInput()
        for modality, key in self.keys(path, self.cache.file_digest(path)).items():
            entry = self.cache.get(key)
            if entry is None:
                raise VlmError(f"{path}: no cached {modality} features; run `vlm preprocess` on "
                               "this data with the same recipe")
            tensors, _ = entry
            if modality == VISION:
                out.vision, out.vision_meta = _split_entry(tensors)
            elif "features" in tensors:  # an absent audio track gives no audio input
                out.audio, out.audio_meta = _split_entry(tensors)
        return out

    def fetch(self, path: str | Path, *, audio: bool = True) -> tuple[Any, dict[str, Any]]:
        """Features of one file for inference: from the cache, else decoded and encoded here
        (in this process) and cached, so a second question on the same file skips both.

        Args:
            path: the media file. audio: False to leave the audio features out (``--no-audio``).

        Returns:
            ``(media_input, info)``: a :class:`vlm_cli.model.vlm.MediaInput`, and ``info`` with
            ``cache`` ("hit" or "miss"), ``frames`` (count and timestamps in s), ``audio``
            ("used", "absent" or "disabled"), and ``decode_s`` / ``encode_s`` timings.

        Raises:
            MediaError: the file is missing or cannot be decoded.
        """
        import time

        from vlm_cli.model.vlm import MediaInput

        t0 = time.perf_counter()
        digest = self.cache.file_digest(path)
        keys = self.keys(path, digest)
        if not audio:
            keys.pop(AUDIO, None)
        entries = {m: self.cache.get(k) for m, k in keys.items()}
        missing = {m: keys[m] for m, e in entries.items() if e is None}
        if missing:
            t1 = time.perf_counter()
            # Frames are decoded a window at a time while encoding, except under a reference
            # rule of a transformers-native model (qwen-omni-utils' frame indices, which the
            # window decoder does not take): its tower takes all the frames at once anyway.
            windowed = VISION in missing and not self.reference_sampling(path)
            rest = [m for m in missing if m != VISION or not windowed]
            decoded = decode_media(self.request(path, rest)) if rest else {}
            if windowed:
                decoded = {VISION: {"windows": self.vision_windows(path)}, **decoded}
            t2 = time.perf_counter()
            written = self.encode_and_store(path, digest, missing, decoded)
            window_s = decoded[VISION]["windows"].decode_s if windowed else 0.0
            info: dict[str, Any] = {"cache": "miss", "decode_s": t2 - t1 + window_s,
                                    "encode_s": time.perf_counter() - t2 - window_s}
            entries.update({m: (tensors, {}) for m, tensors in written.items()})
        else:  # a hit: the only cost is reading the cache, reported as decode time
            info = {"cache": "hit", "decode_s": time.perf_counter() - t0, "encode_s": 0.0}
        out = MediaInput()
        if VISION in entries:
            tensors = entries[VISION][0]
            out.vision, out.vision_meta = _split_entry(tensors)
            stamps = [round(float(t), 3) for t in tensors["timestamps"]]
            info["frames"] = {"count": len(stamps), "timestamps": stamps}
        if AUDIO in entries and "features" in entries[AUDIO][0]:
            out.audio, out.audio_meta = _split_entry(entries[AUDIO][0])
        if not audio or AUDIO not in self.fingerprints:
            info["audio"] = "disabled"  # --no-audio, or a recipe without an audio branch
        else:
            info["audio"] = "used" if out.audio is not None else "absent"
        return out, info

    def vision_windows(self, path: str | Path) -> Any:
        """The frames this recipe samples from ``path``, as
        :class:`vlm_cli.media.windows.VideoWindows` of :data:`WINDOW_FRAMES` frames (rounded up
        to a multiple of a per-clip encoder's clip length, so windows are whole clips): what
        :meth:`fetch` encodes window by window, holding one window of frames at a time. Loads
        the vision encoder (to learn its clip length).

        Raises:
            MediaError: the file is missing or not a video / image (more when iterated).
        """
        from vlm_cli.media import video_windows

        clip = self.clip_frames(path) or 1
        frames = self.request(path, [VISION]).frames or {}
        return video_windows(path, window=-(-WINDOW_FRAMES // clip) * clip, **frames)

    def reference_sampling(self, path: str | Path) -> bool:
        """Whether ``path``'s frames follow a model card's own sampling rule (the vision
        source's ``decode`` names a ``sampling`` of :func:`vlm_cli.media.load_video`, e.g.
        ``qwen``), decoded all at once by :func:`decode_media`."""
        decode = self.sources[self.encoder_name(VISION, path)].decode or {}
        return "sampling" in decode

    def clip_frames(self, path: str | Path) -> int | None:
        """Frames per clip of a per-clip vision encoder (ViViT's ``num_frames``), 1 for a
        per-frame encoder of ours, None for a family's own encoder (encoded all at once)."""
        return getattr(self.encoder(self.encoder_name(VISION, path)), "clip_frames", None)

    def reordered_frames(self, path: str | Path, order: list[int], variant: str,
                         base: Any = None) -> Any:
        """Vision features of ``path`` as if its sampled frames came in ``order`` (``vlm probe``'s
        reverse / shuffle / still variants), without writing a media file.

        A per-frame encoder (:data:`PER_FRAME_ENCODERS`: CLIP, SigLIP) gives each frame's
        features independently, so the cached features are indexed (``features[order]``: no
        decoding). Any other (ViViT's tubelets) sees the order: the frames are decoded, put in
        ``order`` (at the original frames' times) and encoded once, and cached under a key of
        their own (the sampling settings plus ``frame_order: variant``), which never equals the
        original's.

        Args:
            path: a video (its features are fetched and cached first if needed).
            order: indices into the sampled frames ``[0, T)``, length ``T``.
            variant: the name of the order, part of the cache key (``reverse``, ``shuffle``...).
            base: the file's :class:`vlm_cli.model.vlm.MediaInput` when the caller has already
                fetched it (not read again); None fetches it.

        Returns:
            ``(features, meta)``: ``[T', N, D]`` features (the dtype of the cached ones) and
            the other tensors of their entry (as :class:`vlm_cli.model.vlm.MediaInput`'s
            ``vision_meta``).

        Raises:
            MediaError: the file cannot be decoded. ValueError: ``order`` does not index the
                sampled frames.
        """
        import torch

        features = base if base is not None else self.fetch(path, audio=False)[0]
        count = len(features.vision_meta["timestamps"])
        if len(order) != count or not all(0 <= i < count for i in order):
            raise ValueError(f"{path}: frame order {order} does not index its {count} frames")
        name = self.encoder_name(VISION, path)
        if self.fingerprints[name].get("arch") in PER_FRAME_ENCODERS:
            return features.vision[torch.as_tensor(order)], features.vision_meta
        digest = self.cache.file_digest(path)
        key = self.variant_key(path, digest, variant)
        entry = self.cache.get(key)
        if entry is not None:
            return _split_entry(entry[0])
        decoded = decode_media(self.request(path, [VISION]))
        item = decoded[VISION]
        item["frames"] = item["frames"][order]
        return _split_entry(self.encode_and_store(path, digest, {VISION: key}, decoded,
                                                  variant=variant)[VISION])

    def frame_rate(self, timestamps: Any, duration: float | None) -> float | None:
        """The nominal rate of the sampled frames (``timestamps`` in seconds), in frames per
        second: the recipe's ``fps`` when the frames are that far apart, else their real rate
        (a video slower than ``fps``, whose every frame is taken; frames thinned out by
        ``max_frames``; uniform sampling): ``count / duration``, or the timestamps' mean spacing
        when the duration is unknown. None for a still image."""
        count = len(timestamps)
        if count < 2 and not duration:
            return None
        real = count / duration if duration else (count - 1) / max(
            float(timestamps[-1]) - float(timestamps[0]), 1e-6)
        sampling = self.sampling[VISION]
        if sampling["strategy"] == "fps":
            return min(sampling["fps"], real) if real < 0.95 * sampling["fps"] \
                else sampling["fps"]
        return real

    def variant_key(self, path: str | Path, media_sha256: str, variant: str) -> str:
        """The cache key of ``path``'s vision features under a frame-order ``variant``."""
        return feature_key(media_sha256, self.fingerprints[self.encoder_name(VISION, path)],
                           {**self.sampling[VISION], "frame_order": variant})

    def request(self, path: str | Path, modalities: list[str]) -> DecodeRequest:
        """The decode request producing the inputs of ``modalities`` for ``path``."""
        data = self.recipe.data
        frames, resize = None, None
        if VISION in modalities:
            frames = ({"num_frames": None, "fps": data.fps, "max_frames": data.max_frames}
                      if data.sampling == "fps" else {"num_frames": data.frames,
                                                       "sampling": data.sampling})
            source = self.sources[self.encoder_name(VISION, path)]
            frames.update(source.decode or {})
            pre = source.fingerprint.get("preprocess") or {}
            if "size" not in frames and all(pre.get(k) == v for k, v in WORKER_RESIZE.items()):
                resize = int(pre["size"])
        audio = None
        if AUDIO in modalities:
            audio = self.sources[AUDIO].decode or {
                "num_clips": data.audio_clips, "clip_seconds": data.clip_seconds,
                **audio_frontend(self.recipe.model.audio)}
        return DecodeRequest(str(path), media_kind(path), frames, audio, resize)

    def encoder(self, modality: str):
        """The frozen encoder named ``modality`` (``vision``, ``image`` or ``audio``), loaded on
        first use."""
        if modality not in self._encoders:
            from vlm_cli.runtime import pick_device

            self.device = pick_device(self.device)
            self._encoders[modality] = self.sources[modality].build().to(self.device)
        return self._encoders[modality]

    def encode_and_store(self, path: str | Path, media_sha256: str, keys: dict[str, str],
                         decoded: dict[str, Any], *, variant: str | None = None,
                         encoded: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Run the frozen encoders on decoded inputs and write one cache entry per modality.

        Args:
            path: the media file (recorded in the provenance).
            media_sha256: its content hash. keys: modality -> cache key (from :meth:`keys`).
            decoded: the output of :func:`decode_media` for those modalities.
            variant: the frame order the decoded frames were put in (recorded in the
                provenance; see :meth:`reordered_frames`), or None.
            encoded: encoder outputs already computed for some modalities (e.g. by
                :meth:`encode_vision_batch`), used instead of running the encoder again.

        Returns:
            modality -> tensors written: vision ``{"features": [T,N,D], "timestamps": [T]}``
            (plus ``"still": [1] bool`` for a picture); audio
            ``{"features": [K,D] or [K,N,D], "starts": [K]}``, or ``{}`` for an absent track.
        """
        import torch

        written = {}
        for modality, item in decoded.items():
            name = self.encoder_name(modality, path)
            provenance = {"modality": modality, "media": str(path), "media_sha256": media_sha256,
                          "encoder": self.fingerprints[name],
                          "sampling": self.sampling[modality]}
            if variant is not None:
                provenance["frame_order"] = variant
            if modality == VISION and "windows" in item:
                tensors, item = self._encode_windows(name, item["windows"])
                provenance.update(decoder=item["decoder"], duration=item["duration"],
                                  num_decodable=item["num_decodable"])
            elif modality == VISION:
                stamps = torch.as_tensor(item["timestamps"], dtype=torch.float64)
                features = (encoded or {}).get(VISION)  # batched across clips already
                if features is None:
                    encoder = self.encoder(name)
                    pad = {"pad": True} if self.sampling[VISION]["strategy"] == "fps" and \
                        getattr(encoder, "clip_frames", 1) > 1 else {}
                    rate = item.get("sample_fps") or self.frame_rate(stamps, item["duration"])
                    features = encoder.encode_frames(item["frames"], fps=rate, **pad)
                tensors = _as_entry(features)
                tensors["timestamps"] = stamps
                if item["decoder"] == "image":  # a still picture, not a one-frame video
                    tensors["still"] = torch.ones(1, dtype=torch.bool)
                provenance.update(decoder=item["decoder"], duration=item["duration"],
                                  num_decodable=item["num_decodable"])
            elif "absent" in item:
                tensors = {}
                provenance.update(audio="absent", reason=item["absent"])
            else:
                tensors = _as_entry(self.encoder(AUDIO).encode_clips(item["spectrogram"]))
                tensors["starts"] = torch.as_tensor(item["starts"], dtype=torch.float64)
                provenance.update(audio="present", duration=item["duration"])
            self.cache.put(keys[modality], tensors, provenance)
            written[modality] = tensors
        return written

    def _encode_windows(self, name: str, windows: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Encode :class:`~vlm_cli.media.windows.VideoWindows` window by window (each window is
        dropped once encoded: peak memory is one window of frames plus the features), or, for
        an encoder without ``clip_frames`` (a family's own, e.g. Qwen2.5-Omni's, which sees all
        frames together), gather the windows and encode once.

        Returns:
            ``(tensors, item)``: ``{"features": [T', N, D], "timestamps": [T] float64 s}`` and
            ``{"decoder", "duration", "num_decodable"}`` of the video.
        """
        import numpy as np
        import torch

        encoder = self.encoder(name)
        if getattr(encoder, "clip_frames", None) is None:
            frames = np.concatenate(list(windows))
            stamps = torch.as_tensor(windows.timestamps, dtype=torch.float64)
            tensors = _as_entry(encoder.encode_frames(
                frames, fps=self.frame_rate(stamps, windows.duration)))
        else:
            # Rate sampling: the frame count follows the file's length, so a last clip short
            # of frames is filled (reported as padded_frames by vlm_cli.model.budget).
            pad = self.sampling[VISION]["strategy"] == "fps"
            parts = [encoder.encode_frames(frames, pad=pad) for frames in windows]
            tensors = {"features": torch.cat(parts)}
            stamps = torch.as_tensor(windows.timestamps, dtype=torch.float64)
        tensors["timestamps"] = stamps
        return tensors, {"decoder": windows.decoder, "duration": windows.duration,
                         "num_decodable": windows.num_decodable}


    def encode_vision_batch(self, items: list[tuple[str | Path, dict[str, Any]]]) -> list[Any]:
        """Vision features of several files' decoded frames in one encoder forward per group,
        for :meth:`encode_and_store`'s ``encoded``.

        Files whose frames the same batchable encoder (:data:`BATCHED_ENCODERS`) takes at the
        same size (frames resized in the worker, :attr:`DecodeRequest.resize`) are encoded
        together: their frames concatenated ``[sum T, S, S, 3] uint8``, the features ``[sum T,
        N, D]`` split back per file. A frame's features do not depend on the other frames in
        the batch (CPU fp32 checked bit for bit by ``tests/test_preprocess.py``). Any other
        file gets None (encoded on its own by :meth:`encode_and_store`).

        Args:
            items: ``(path, decoded)`` pairs, ``decoded`` from :func:`decode_media`.

        Returns:
            One ``[T, N, D]`` tensor or None per item, in order.
        """
        import numpy as np
        import torch

        groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for i, (path, decoded) in enumerate(items):
            item = decoded.get(VISION)
            name = self.encoder_name(VISION, path)
            if item is None or self.fingerprints[name].get("arch") not in BATCHED_ENCODERS:
                continue
            groups.setdefault((name, item["frames"].shape[1:]), []).append(i)
        out: list[Any] = [None] * len(items)
        for (name, _), members in groups.items():
            if len(members) < 2:
                continue
            frames = [items[i][1][VISION]["frames"] for i in members]
            features = self.encoder(name).encode_frames(np.concatenate(frames))
            for i, part in zip(members, torch.split(features, [len(f) for f in frames])):
                out[i] = part.clone()  # its own storage, as a per-file forward gives
        return out


def _as_entry(encoded: Any) -> dict[str, Any]:
    """An encoder's output as cache-entry tensors: ``{"features": ...}`` for a tensor; a dict
    (features plus a family's own tensors, e.g. ``grid_thw``) as it is."""
    return dict(encoded) if isinstance(encoded, dict) else {"features": encoded}


def _split_entry(tensors: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A cache entry's ``features`` and its other tensors."""
    return tensors["features"], {k: v for k, v in tensors.items() if k != "features"}
