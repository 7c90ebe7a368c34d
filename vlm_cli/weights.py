"""Safetensors checkpoints read by their headers, never loaded: the identity of some of their
tensors (:func:`tensors_digest`, what pins a frozen tower inside a larger local checkpoint for
the feature cache) and the size and dtype of what is stored (:func:`stored_weights`, what
``--dtype auto`` decides from). Below the hub layer; imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlm_cli.errors import VlmError

#: A weight index naming the shard of each key (transformers' ``save_pretrained`` layout).
SAFETENSORS_INDEX = "model.safetensors.index.json"
#: safetensors' own limit on the JSON header of a file.
_MAX_HEADER = 100_000_000
_READ_CHUNK = 8 << 20


def tensors_digest(directory: Path, prefixes: tuple[str, ...],
                   memo_root: Path | None = None) -> str:
    """sha256 (hex) of the tensors of a checkpoint directory whose key starts with ``prefixes``.

    Hashed, for each such tensor in sorted key order: its key, dtype and shape (as JSON, with
    the byte count) and its raw data bytes, read by the byte range the safetensors header gives
    (``data_offsets``), never a whole shard. The top-level ``*.safetensors`` files are read; with
    a ``model.safetensors.index.json`` only the shards its ``weight_map`` names for matching keys
    (the others may be missing). Paths, file names and the other tensors do not count: a moved
    copy, a resharded copy or a changed ``talker.*`` tensor has the same digest.

    Args:
        prefixes: weight-key prefixes, e.g. ``("thinker.visual.", "thinker.audio_tower.")``.
        memo_root: a folder (the vlm cache's ``hashes/``) for a JSON memo per (directory,
            prefixes), valid while the files read keep their name, size and mtime_ns: a later
            call only lists and stats them. None: no memo.

    Raises:
        VlmError: no safetensors file or no tensor matching ``prefixes`` (one line naming the
            directory); a shard holding a matching key missing, truncated or unreadable.
    """
    if isinstance(prefixes, str):
        raise TypeError("prefixes must be a tuple of strings, not a string")
    prefixes = tuple(sorted(set(prefixes)))
    directory = Path(directory)
    memo = None
    if memo_root is not None:
        where = json.dumps([str(directory.resolve()), prefixes])
        name = hashlib.sha256(f"tensors:{where}".encode()).hexdigest()
        memo = Path(memo_root) / name[:2] / f"{name}.json"
        found = _read_tensors_memo(memo, directory, prefixes)
        if found is not None:
            return found
    files, sha256 = _hash_tensors(directory, prefixes)
    if memo is not None:
        from vlm_cli.atomic import atomic_write_bytes

        rec = {"directory": str(directory.resolve()), "prefixes": list(prefixes),
               "files": files, "sha256": sha256}
        with contextlib.suppress(OSError):  # a read-only cache only costs the memo
            atomic_write_bytes(memo, json.dumps(rec, sort_keys=True).encode(), durable=False)
    return sha256


def _stat_files(directory: Path, names: Iterable[str]) -> list[list[Any]] | None:
    """``[name, size, mtime_ns]`` of each file, or None when one is missing."""
    out: list[list[Any]] = []
    for name in names:
        try:
            st = (directory / name).stat()
        except OSError:
            return None
        out.append([name, st.st_size, st.st_mtime_ns])
    return out


def _read_tensors_memo(memo: Path, directory: Path, prefixes: tuple[str, ...]) -> str | None:
    """The memoised digest, when the files it read are still those files (name, size,
    mtime_ns): the index and the shards it named, or, with no index, every top-level
    ``*.safetensors`` file (so an added shard is noticed)."""
    try:
        rec = json.loads(memo.read_text())
        files, sha256 = rec["files"], rec["sha256"]
        if rec["prefixes"] != list(prefixes) or not isinstance(sha256, str):
            return None
        names = [f[0] for f in files]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # no memo yet, or an unreadable one: hash again
    if (directory / SAFETENSORS_INDEX).is_file():
        if not names or names[0] != SAFETENSORS_INDEX:
            return None
    elif names != sorted(p.name for p in directory.glob("*.safetensors")):
        return None
    return sha256 if _stat_files(directory, names) == files else None


def _hash_tensors(directory: Path, prefixes: tuple[str, ...]) -> tuple[list[list[Any]], str]:
    """``(files read as [name, size, mtime_ns], sha256)``: see :func:`tensors_digest`."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            wanted = {str(k): str(v) for k, v in weight_map.items() if str(k).startswith(prefixes)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise VlmError(f"{index}: not a readable weight index ({err})") from err
        for key, shard in sorted(wanted.items()):
            if not (directory / shard).is_file():
                raise VlmError(f"{directory / shard}: weight shard missing; it holds {key} "
                               f"(named by {SAFETENSORS_INDEX})")
        shards = sorted(set(wanted.values()))
        read = [SAFETENSORS_INDEX, *shards]
    else:
        shards = sorted(p.name for p in directory.glob("*.safetensors"))
        read = list(shards)
    if not shards and not index.is_file():
        raise VlmError(f"{directory}: no safetensors weights to identify tensors "
                       f"{', '.join(prefixes)} by")
    stats = _stat_files(directory, read)  # before reading: a file changed meanwhile re-hashes
    tensors: dict[str, tuple[str, int, dict[str, Any]]] = {}  # key -> (shard, data start, info)
    for shard in shards:
        header, start = _safetensors_header(directory / shard)
        for key, info in header.items():
            if key == "__metadata__" or not key.startswith(prefixes):
                continue
            if key in tensors:
                raise VlmError(f"{directory}: tensor {key} is in both {tensors[key][0]} and "
                               f"{shard}; remove one copy or add a {SAFETENSORS_INDEX}")
            tensors[key] = (shard, start, info)
    if index.is_file():
        for key, shard in sorted(wanted.items()):
            if key not in tensors:
                raise VlmError(f"{directory / shard}: has no tensor {key}, which "
                               f"{SAFETENSORS_INDEX} places there")
    if not tensors:
        raise VlmError(f"{directory}: no tensor whose key starts with "
                       f"{' or '.join(repr(p) for p in prefixes)} in its safetensors weights")
    h = hashlib.sha256()
    buf = memoryview(bytearray(_READ_CHUNK))
    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}
        for key in sorted(tensors):
            shard, start, info = tensors[key]
            try:
                begin, end = (int(x) for x in info["data_offsets"])
                h.update(json.dumps([key, str(info["dtype"]), [int(n) for n in info["shape"]],
                                     end - begin]).encode() + b"\n")
            except (KeyError, TypeError, ValueError) as err:
                raise VlmError(f"{directory / shard}: bad header entry for {key}") from err
            if shard not in handles:
                handles[shard] = stack.enter_context(open(directory / shard, "rb"))
            _hash_range(handles[shard], start + begin, end - begin, h, buf, directory / shard)
    if stats is None:
        raise VlmError(f"{directory}: a weight file vanished while it was being read")
    return stats, h.hexdigest()


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (8-byte little-endian length, then JSON) and the offset at
    which its data section starts."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= _MAX_HEADER:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        raise VlmError(f"{path}: not a readable safetensors file ({err})") from err
    if not isinstance(header, dict):
        raise VlmError(f"{path}: not a readable safetensors file (header is not an object)")
    return header, 8 + n


def stored_weights(directory: Path, skip: tuple[str, ...] = ()) -> tuple[int, str | None]:
    """The bytes of a checkpoint's safetensors tensors (all files below ``directory``) whose key
    does not start with ``skip``, and their most common dtype (``BF16``, ``F32``, ...; None when
    there is no safetensors file). Reads the headers only.

    Raises:
        VlmError: a safetensors file whose header cannot be read.
    """
    total, by_dtype = 0, {}
    for path in sorted(directory.rglob("*.safetensors")):
        header, _ = _safetensors_header(path)
        for key, entry in header.items():
            if key == "__metadata__" or key.startswith(skip) or not isinstance(entry, dict):
                continue
            start, end = entry.get("data_offsets", (0, 0))
            total += end - start
            by_dtype[entry.get("dtype")] = by_dtype.get(entry.get("dtype"), 0) + end - start
    return total, max(by_dtype, key=by_dtype.get) if by_dtype else None


def _hash_range(f: Any, offset: int, size: int, h: Any, buf: memoryview, path: Path) -> None:
    """Feed ``size`` bytes of the open file ``f`` from ``offset`` into ``h``."""
    if size < 0:
        raise VlmError(f"{path}: bad data_offsets in its header")
    try:
        f.seek(offset)
        while size:
            n = f.readinto(buf[:min(size, len(buf))])
            if not n:
                raise VlmError(f"{path}: truncated (a tensor's data_offsets run past its end)")
            h.update(buf[:n])
            size -= n
    except OSError as err:
        raise VlmError(f"{path}: cannot read: {err.strerror}") from err
