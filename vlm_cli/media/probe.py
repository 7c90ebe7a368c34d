"""Media probing: what a file holds (video / image / audio), read from the container only.

Also home of the two helpers every decoder in :mod:`vlm_cli.media` starts with:
:func:`check_media_path` (missing, directory or zero-byte files) and :func:`open_container`
(PyAV open with its errors turned into :class:`~vlm_cli.errors.MediaError`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
import av

from vlm_cli.errors import MediaError
from vlm_cli.media.kinds import MediaKind, kind_of

# libavformat demuxers that read one still picture (``image2`` for files named *.png/*.jpg/...,
# ``*_pipe`` when the format is guessed from the bytes).
_IMAGE_DEMUXERS = frozenset({"image2", "image2pipe"})


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe_media` found in a file.

    Attributes:
        kind: by :func:`vlm_cli.media.kinds.kind_of` from the streams: ``"video"`` (a
            moving-picture stream, with or without audio), ``"image"`` (a still picture) or
            ``"audio"`` (audio streams only; cover art does not count as video).
        has_video: the file has a video (or still picture) stream.
        has_audio: the file has an audio stream.
        duration: seconds from the container header, ``None`` for images or when unknown.
        width: picture width in px, ``None`` without video.
        height: picture height in px, ``None`` without video.
        fps: the video stream's average frame rate in Hz (what decord's ``get_avg_fps``
            reports), ``None`` without video or when unknown.
    """

    kind: MediaKind
    has_video: bool
    has_audio: bool
    duration: float | None
    width: int | None
    height: int | None
    fps: float | None = None


def check_media_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` after cheap checks before any decoder runs.

    Raises:
        MediaError: the path does not exist, is a directory, cannot be stat-ed, or is a
            zero-byte file.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaError(path, "no such file") from None
    except OSError as exc:
        raise MediaError(path, f"cannot read file ({exc.strerror or exc})") from None
    if p.is_dir():
        raise MediaError(path, "is a directory, not a media file")
    if st.st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    return p


def open_container(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open ``path`` for demuxing with PyAV (libavformat); the caller closes it.

    Raises:
        MediaError: the file is missing/empty (see :func:`check_media_path`) or libavformat does
            not recognise it as a media file (e.g. a text file named ``.mp4``, an mp4 cut before
            its index).
    """
    p = check_media_path(path)
    try:
        return av.open(str(p), mode="r")
    except av.FFmpegError as exc:
        raise MediaError(path, f"not a readable media file ({describe_error(exc)})") from None
    except (UnicodeDecodeError, ValueError) as exc:  # malformed metadata PyAV cannot decode
        raise MediaError(path, f"not a readable media file ({exc})") from None


def is_image_container(container: av.container.InputContainer) -> bool:
    """True when libavformat opened ``container`` as a single still picture (png, jpeg, webp,
    bmp, ...), judged from the demuxer name, not from the file name."""
    names = set(container.format.name.split(","))
    return bool(names & _IMAGE_DEMUXERS) or any(n.endswith("_pipe") for n in names)


def _is_cover_art(stream: av.stream.Stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def probe_media(path: str | os.PathLike[str]) -> MediaInfo:
    """Describe a media file from its container header and stream list, without decoding.

    Frame counts are deliberately not reported: headers often lie about them (several real mp4
    files report 0 frames); :func:`vlm_cli.media.load_video` counts what really decodes.

    Raises:
        MediaError: missing, zero-byte or non-media file, or a file with neither video nor audio.
    """
    with open_container(path) as container:
        videos = [s for s in container.streams.video if not _is_cover_art(s)]
        audios = list(container.streams.audio)
        if not videos and not audios:
            raise MediaError(path, "no video or audio stream")
        image = bool(videos) and is_image_container(container)
        kind = kind_of(still=image, sound_only=not videos)
        duration: float | None = None
        if not image:
            if container.duration is not None and container.duration > 0:
                duration = container.duration / av.time_base
            else:
                spans = [
                    float(s.duration * s.time_base)
                    for s in (*videos, *audios)
                    if s.duration is not None and s.time_base is not None
                ]
                duration = max(spans) if spans else None
        width = height = fps = None
        if videos:
            width = int(videos[0].codec_context.width) or None
            height = int(videos[0].codec_context.height) or None
            rate = videos[0].average_rate
            fps = float(rate) if rate else None
        return MediaInfo(
            kind=kind,
            has_video=bool(videos),
            has_audio=bool(audios),
            duration=duration,
            width=width,
            height=height,
            fps=fps,
        )


def describe_error(exc: BaseException) -> str:
    """A one-line description of a decoder exception (no file path, no errno noise)."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
