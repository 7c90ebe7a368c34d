"""Which kind of media a path is (video, still image, audio-only), from its extension.

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


def media_kind(path: str | os.PathLike[str]) -> MediaKind:
    """``image`` or ``audio`` for those extensions (case-insensitive), else ``video``."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    return "video"
