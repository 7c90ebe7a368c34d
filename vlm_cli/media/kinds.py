"""Which kind of media a file is (video, still image, audio-only): one rule, :func:`kind_of`.

A still picture is an ``image``, sound alone is ``audio``, anything else ``video``. What tells is
the name (:func:`media_kind`, by extension: what routes a file to its encoders and placeholder,
without opening it) or the container (:func:`vlm_cli.media.probe_media`, from its streams).
Kept free of heavy imports so that data loading and the command line can classify paths without
loading decoders. The decoders still verify the contents: a ``.mp4`` that is really text fails to
decode with a clear error, whatever its extension says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".gif", ".mpg",
                              ".mpeg", ".ts", ".flv", ".wmv", ".3gp"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus"})
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS | AUDIO_EXTENSIONS

MediaKind = Literal["video", "image", "audio"]


def kind_of(*, still: bool, sound_only: bool) -> MediaKind:
    """The kind of a file that is a still picture (``image``), holds sound alone (``audio``),
    or anything else (``video``: moving pictures, with or without sound)."""
    if still:
        return "image"
    return "audio" if sound_only else "video"


def media_kind(path: str | os.PathLike[str]) -> MediaKind:
    """:func:`kind_of` by the extension (case-insensitive): ``image`` for
    :data:`IMAGE_EXTENSIONS`, ``audio`` for :data:`AUDIO_EXTENSIONS`, else ``video``."""
    suffix = Path(path).suffix.lower()
    return kind_of(still=suffix in IMAGE_EXTENSIONS, sound_only=suffix in AUDIO_EXTENSIONS)
