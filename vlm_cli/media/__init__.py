"""Media decoding: video/image frames, mono 16 kHz audio, frame sampling and fbank features.

- :mod:`vlm_cli.media.video`: :func:`load_video` (PyAV or decord seeking, PyAV in order as
  the last resort, still images),
  :func:`sample_frame_indices` (Video-LLaVA uniform sampling), :func:`fps_frame_indices`.
- :mod:`vlm_cli.media.windows`: :func:`video_windows` (the same sampling, decoded a window of
  frames at a time: memory bounded by the window, not the length of the file).
- :mod:`vlm_cli.media.audio`: :func:`load_audio` (PyAV, downmix, resample to 16 kHz),
  :func:`sample_audio_clips` (Video-LLaMA: 8 clips of 2 s), :func:`kaldi_fbank`
  (ImageBind / AST front end), :func:`audio_clip_fbanks`, :func:`imagebind_clip_fbanks`
  (ImageBind's own, quirks included, for Video-LLaMA's released audio branch).
- :mod:`vlm_cli.media.probe`: :func:`probe_media` (container header only, no decoding).
- Qwen2-VL / Qwen2.5-Omni's reference preprocessing (qwen-omni-utils): ``load_video(...,
  sampling="qwen")`` (:func:`qwen_frame_indices`), :func:`qwen_resize_frames`,
  :func:`qwen_load_image` (:mod:`vlm_cli.media.resize`), ``load_audio(..., resampler="soxr")``.

Importing this package is cheap: the decoders (numpy, PyAV, torch; decord on first use) load
when one of their names is first used.
"""

from __future__ import annotations

from typing import Any

from vlm_cli.media.kinds import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

#: Public name -> defining submodule; imported on first access (PEP 562) so that importing
#: ``vlm_cli.media.kinds`` or this package stays cheap (no numpy / PyAV / torch).
_LAZY = {
    **dict.fromkeys(("AST_FBANK_MEAN", "AST_FBANK_STD", "IMAGEBIND_FBANK_MEAN",
                     "IMAGEBIND_FBANK_STD", "SAMPLE_RATE", "AudioClips", "AudioTrack", "NoAudio",
                     "AUDIO_FRONTENDS", "audio_clip_fbanks", "audio_clip_log_mels",
                     "audio_track_log_mel",
                     "imagebind_clip_fbanks", "kaldi_fbank", "load_audio",
                     "sample_audio_clips", "whisper_log_mel"),
                    "vlm_cli.media.audio"),
    **dict.fromkeys(("MediaInfo", "probe_media"), "vlm_cli.media.probe"),
    **dict.fromkeys(("qwen_load_image", "qwen_resize_frames"), "vlm_cli.media.resize"),
    "qwen_frame_indices": "vlm_cli.media.sampling",
    **dict.fromkeys(("VideoFrames", "fps_frame_indices", "load_video", "sample_frame_indices"),
                    "vlm_cli.media.video"),
    **dict.fromkeys(("VideoWindows", "video_windows"), "vlm_cli.media.windows"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUDIO_FRONTENDS",
    "AST_FBANK_MEAN",
    "AST_FBANK_STD",
    "AUDIO_EXTENSIONS",
    "IMAGEBIND_FBANK_MEAN",
    "IMAGEBIND_FBANK_STD",
    "IMAGE_EXTENSIONS",
    "SAMPLE_RATE",
    "VIDEO_EXTENSIONS",
    "AudioClips",
    "AudioTrack",
    "MediaInfo",
    "NoAudio",
    "VideoFrames",
    "VideoWindows",
    "audio_clip_fbanks",
    "audio_clip_log_mels",
    "audio_track_log_mel",
    "fps_frame_indices",
    "imagebind_clip_fbanks",
    "kaldi_fbank",
    "load_audio",
    "load_video",
    "probe_media",
    "qwen_frame_indices",
    "qwen_load_image",
    "qwen_resize_frames",
    "sample_audio_clips",
    "sample_frame_indices",
    "video_windows",
    "whisper_log_mel",
]
