"""What a decode worker does for one media file: :class:`DecodeRequest` in, plain arrays out.

:func:`decode_media` runs in a worker process (:func:`vlm_cli.workers.run_isolated`: decoding may
crash or hang on a corrupt file) and returns numpy arrays only: the sampled frames (resized there
to the vision encoder's input when it allows) and the sampled audio clips' spectrograms. Which
frames and clips, and how, is the :class:`DecodeRequest` the feature store
(:meth:`vlm_cli.features.FeatureStore.request`) builds from the recipe's sampling and the
encoders' sources. Importing this module is cheap (the decoders load on first use).
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: The modalities a file's features come in (one cache entry each).
VISION, AUDIO = "vision", "audio"


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
            crop, see :attr:`vlm_cli.model.families.EncoderSource.worker_resize`), so only small
            frames travel back; None sends the decoded size.
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
        "duration": s, "num_decodable": int, "sample_fps": Hz | None}, "audio":
        {"spectrogram": [K,F,M] or [K,M,F] float32, "starts": [K] float64 s, "duration": s} |
        {"absent": reason}}``, with only the requested modalities.

    Raises:
        MediaError: the file is missing or cannot be decoded.
    """
    from vlm_cli.errors import MediaError
    from vlm_cli.media import AUDIO_FRONTENDS, NoAudio, load_audio, load_video

    out: dict[str, Any] = {}
    if request.frames is not None:
        resize = None
        if request.resize is not None:  # each frame as it is decoded: no full-size stack
            from vlm_cli.media.resize import clip_resize_crop

            def resize(frame: Any, size: int = request.resize) -> Any:
                return clip_resize_crop(frame[None], size)[0]
        try:
            video = load_video(request.path, **request.frames, each_frame=resize)
        except ValueError as err:  # e.g. too few frames for a reference rule's frame count
            raise MediaError(request.path, str(err)) from None
        out[VISION] = {"frames": video.frames, "timestamps": video.timestamps,
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
