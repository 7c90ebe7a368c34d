"""Data records and the media files they reference.

Accepted layouts (see ``../design.md``, Formats):

- LLaVA / Video-LLaVA JSON (a list) or JSONL (one object per line): ``{"id", "video" | "image" |
  "audio": path or [paths], "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}``;
- the Video-ChatGPT QA layout used by MSVD-QA, MSRVTT-QA, TGIF-QA and ActivityNet-QA: a list of
  ``{"video_name", "question", "question_id"}`` where ``video_name`` may lack its extension;
- a single media file given directly (a record of its own).

Media paths are relative to a media root (the recipe's or the command line's), by default the data
file's directory. Missing media files are not an error here: they are reported per clip when the
clip is decoded, so one bad path never hides the rest of a dataset.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from vlm_cli.errors import DataError
from vlm_cli.media.kinds import MEDIA_EXTENSIONS, media_kind

MEDIA_KEYS = ("video", "image", "audio")
#: Extensions tried, in order, for a Video-ChatGPT ``video_name`` given without one.
VIDEO_NAME_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".gif", ".m4v")


@dataclasses.dataclass(frozen=True)
class MediaRef:
    """One media file referenced by a record.

    Attributes:
        key: the record key it came from (``video``, ``image``, ``audio``).
        given: the path as written in the data file.
        path: the resolved path (absolute when the media root is absolute).
    """

    key: Literal["video", "image", "audio"]
    given: str
    path: Path


@dataclasses.dataclass(frozen=True)
class Record:
    """One sample: its id, its media, and (for training data) its conversation turns."""

    id: str
    media: tuple[MediaRef, ...]
    conversations: tuple[dict[str, Any], ...] = ()
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)


def _resolve_video_name(root: Path, name: str) -> Path:
    candidate = root / name
    if candidate.suffix or candidate.exists():
        return candidate
    for ext in VIDEO_NAME_EXTENSIONS:
        if (root / f"{name}{ext}").exists():
            return root / f"{name}{ext}"
    return candidate  # reported as missing when decoded


def _read_items(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as UTF-8 text ({err})") from err
    if path.suffix == ".jsonl":
        items = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
        return items
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of samples (or JSONL)")
    return data


def load_records(path: str | Path, media_root: str | Path | None = None) -> list[Record]:
    """Read a data file (or wrap a single media file) into records.

    Args:
        path: JSON / JSONL annotation file, or a media file (by extension).
        media_root: directory media paths are relative to; None = ``path``'s directory.

    Returns:
        Records in file order; media paths resolved against the media root.

    Raises:
        DataError: the file is missing or not JSON/JSONL, an item is not an object, a media key
            holds something other than a path or a list of paths, or conversations are malformed.
    """
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    if path.suffix.lower() in MEDIA_EXTENSIONS:
        return [Record(id=path.stem, media=(MediaRef(media_kind(path), str(path), path),))]
    records = []
    for index, item in enumerate(_read_items(path)):
        where = f"{path}: item {index}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object, got {type(item).__name__}")
        media: list[MediaRef] = []
        for key in MEDIA_KEYS:
            value = item.get(key)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str) and v for v in values):
                raise DataError(f"{where}: {key!r} must be a path or a list of paths")
            media += [MediaRef(key, v, root / v) for v in values]
        if "video_name" in item:
            name = item["video_name"]
            if not isinstance(name, (str, int)):
                raise DataError(f"{where}: 'video_name' must be a string")
            media.append(MediaRef("video", str(name), _resolve_video_name(root, str(name))))
        conversations = item.get("conversations", [])
        if not isinstance(conversations, list) or not all(
                isinstance(t, dict) and isinstance(t.get("value"), str)
                and t.get("from") in {"human", "gpt", "system"} for t in conversations):
            raise DataError(f"{where}: 'conversations' must be a list of "
                            "{\"from\": \"human\"|\"gpt\", \"value\": str} turns")
        rid = item.get("id", item.get("question_id", index))
        records.append(Record(id=str(rid), media=tuple(media),
                              conversations=tuple(conversations), raw=item))
    return records


def unique_media(records: list[Record]) -> list[MediaRef]:
    """The distinct media files of ``records`` (by resolved path), in order of first use."""
    seen: dict[Path, MediaRef] = {}
    for record in records:
        for ref in record.media:
            seen.setdefault(ref.path, ref)
    return list(seen.values())
