"""The feature cache: frozen-encoder outputs, content-addressed, one safetensors file per key.

Layout under the cache root (``$VLM_HOME``, else ``$XDG_CACHE_HOME/vlm``, else ``~/.cache/vlm``)::

    features/<kk>/<key>.safetensors   one entry per key; provenance in the safetensors metadata
    locks/<key>.lock                  filelock per key, so concurrent writers never interleave
    hashes/<hh>/<path-hash>.json      memo of media-file sha256, keyed by (path, size, mtime_ns)

Model weights are never copied here: they stay in the Hugging Face hub cache (HF_HOME /
HF_HUB_CACHE). A key is the sha256 of the canonical JSON of a :class:`vlm_cli.keys.FeatureKey`
(media sha256, encoder key, sampling settings), so anything that changes the features changes the
key and a trainable part can never read a stale entry. Methods taking a key take its 64 hex chars
or the :class:`~vlm_cli.keys.FeatureKey` itself.

Integrity: every entry records the sha256 of its tensor payload in its metadata. A truncated or
corrupted file fails to parse or fails that check on read; :meth:`FeatureCache.get` then reports it
through ``on_corrupt``, deletes it and returns ``None`` so the caller recomputes. Writes go to a
temporary name in the same directory and are renamed into place under the key's lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vlm_cli.atomic import atomic_write_bytes
from vlm_cli.errors import CacheError, MediaError
# canonical_json and feature_key are defined with the typed keys, and named here too.
from vlm_cli.keys import FeatureKey, canonical_json, feature_key  # noqa: F401

#: The version of the entry format (``format_version`` in an entry's metadata).
FORMAT_VERSION = "1"
_HASH_CHUNK = 1 << 20


def cache_root() -> Path:
    """The cache root: ``$VLM_HOME``, else ``$XDG_CACHE_HOME/vlm``, else ``~/.cache/vlm``."""
    if os.environ.get("VLM_HOME"):
        return Path(os.environ["VLM_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vlm"
    return Path.home() / ".cache" / "vlm"


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a safetensors byte string into its header (dict) and its data section.

    Raises:
        ValueError: too short, a header length past the end, bad JSON, or tensor offsets that do not
            cover the data section exactly (a truncated or padded file).
    """
    if len(data) < 8:
        raise ValueError("file shorter than the safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length exceeds file size")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    _check_data_size(header, len(body))
    return header, body


def _check_data_size(header: Any, size: int) -> None:
    """Check that the tensors of a parsed safetensors ``header`` end exactly at ``size`` bytes
    into the data section.

    Raises:
        ValueError: not a JSON object, a tensor without ``data_offsets``, or another size (a
            truncated or padded file).
    """
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    try:
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0)
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"no data offsets ({err})") from None
    if end != size:
        raise ValueError(f"data section is {size} bytes, tensors need {end}")


def _metadata_problem(header: dict[str, Any]) -> str | None:
    """Why an entry's header lacks vlm's metadata (format version, provenance), or None."""
    meta = header.get("__metadata__") or {}
    if meta.get("format_version") != FORMAT_VERSION or "provenance" not in meta:
        return "missing provenance metadata"
    return None


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """A cache entry as listed by :meth:`FeatureCache.entries`.

    Attributes:
        key: 64 hex chars. path: the safetensors file. size: bytes. mtime: last write or use
        (seconds since the epoch; reads touch it, so pruning is least-recently-used).
        metadata: the provenance dict stored with the entry ({} when the header is unreadable).
    """

    key: str
    path: Path
    size: int
    mtime: float
    metadata: dict[str, Any]


class FeatureCache:
    """Content-addressed store of frozen-encoder features (safetensors), safe under concurrency.

    Args:
        root: cache root; default :func:`cache_root`.
        on_corrupt: called with (entry path, reason) when a corrupt entry is found and removed;
            default: no report (the CLI passes a function that prints a warning line).

    Raises:
        CacheError: the root cannot be created or written.
    """

    def __init__(self, root: Path | None = None,
                 on_corrupt: Callable[[Path, str], None] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()
        self.on_corrupt = on_corrupt
        try:
            for sub in ("features", "locks", "hashes"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(f"cannot use cache directory {self.root}: {err.strerror}") from err

    # --- media hashing -------------------------------------------------------------------------

    def file_digest(self, path: str | os.PathLike) -> str:
        """sha256 (hex) of a media file's bytes, memoised by (absolute path, size, mtime_ns).

        A large file is read once; later calls only ``stat`` it until it changes.

        Raises:
            MediaError: the file is missing, not a regular file, or unreadable.
        """
        p = Path(path)
        try:
            st = p.stat()
        except OSError as err:
            raise MediaError(path, "file not found" if isinstance(err, FileNotFoundError)
                             else err.strerror) from err
        if not p.is_file():
            raise MediaError(path, "not a regular file")
        abspath = str(p.resolve())
        memo_name = hashlib.sha256(abspath.encode()).hexdigest()
        memo = self.root / "hashes" / memo_name[:2] / f"{memo_name}.json"
        try:
            rec = json.loads(memo.read_text())
            if (rec.get("path"), rec.get("size"), rec.get("mtime_ns")) == (abspath, st.st_size,
                                                                           st.st_mtime_ns):
                return rec["sha256"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # no memo yet, or an unreadable one: hash the file again below
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    h.update(chunk)
        except OSError as err:
            raise MediaError(path, f"cannot read: {err.strerror}") from err
        digest = h.hexdigest()
        rec = {"path": abspath, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        atomic_write_bytes(memo, canonical_json(rec).encode(), durable=False)  # checked on read
        return digest

    # --- entries -------------------------------------------------------------------------------

    def path_for(self, key: str | FeatureKey) -> Path:
        """Where the entry for ``key`` lives (it may not exist)."""
        key = str(key)
        return self.root / "features" / key[:2] / f"{key}.safetensors"

    def lock_for(self, key: str | FeatureKey):
        """A :class:`filelock.FileLock` serialising writers of ``key`` across processes."""
        from filelock import FileLock

        return FileLock(str(self.root / "locks" / f"{key}.lock"))

    def get(self, key: str | FeatureKey) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Read and verify an entry.

        Returns:
            ``(tensors, provenance)``: a dict of CPU torch tensors and the provenance dict; or
            ``None`` when there is no entry or the entry was corrupt (truncated, unparsable, or its
            payload checksum does not match). A corrupt entry is re-checked under the key's lock,
            reported through ``on_corrupt``, and deleted, so the caller recomputes it.
        """
        data = self._read_valid(key)
        if data is None:
            return None
        from safetensors.torch import load

        return load(data), json.loads(_split(data)[0]["__metadata__"]["provenance"])

    def verify(self, key: str | FeatureKey) -> bool:
        """True if an entry exists whose header is whole: a safetensors header with vlm's
        metadata (format version, provenance, payload checksum) and tensors that end exactly at
        the end of the file. Its header alone is read (~1 KiB; no tensor data, no torch), so
        that a warm ``vlm preprocess`` over a large dataset does not read every entry back; the
        payload checksum is checked when the entry is read (:meth:`get`). A file that fails is
        reported and deleted, as by :meth:`get`."""
        return self._read_valid(key, _read_header_checked) is not None

    def _read_valid(self, key: str | FeatureKey,
                    read: Callable[[Path], Any] | None = None) -> Any:
        read = read or _read_verified
        path = self.path_for(key)
        result = read(path)
        if isinstance(result, str):
            with self.lock_for(key):
                result = read(path)  # a concurrent writer may have just replaced it
                if isinstance(result, str):
                    path.unlink(missing_ok=True)
            if isinstance(result, str):
                if self.on_corrupt is not None:
                    self.on_corrupt(path, result)
                return None
        if result is not None:
            try:
                os.utime(path)  # mark as recently used for LRU pruning
            except OSError:
                pass  # a read-only cache still serves hits
        return result

    def put(self, key: str | FeatureKey, tensors: Mapping[str, Any],
            provenance: Mapping[str, Any]) -> Path:
        """Write an entry atomically (temporary name, rename) under the key's file lock; no fsync:
        a torn entry fails its payload checksum on read and is recomputed.

        Args:
            key: a :class:`~vlm_cli.keys.FeatureKey` (or its hex).
            tensors: name -> torch tensor (any dtype/shape; may be empty, e.g. for "no audio").
            provenance: JSON-serialisable description (media path and sha256, encoder, sampling,
                decoder, ...), stored in the safetensors metadata.

        Returns:
            The entry's path. If a valid entry appeared meanwhile (another process), it is kept.
        """
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        # The data section does not depend on the metadata, so hash it from a first serialisation.
        _, body = _split(save(tensors))
        meta = {
            "format_version": FORMAT_VERSION,
            "payload_sha256": hashlib.sha256(body).hexdigest(),
            "provenance": canonical_json({**provenance, "created": time.time()}),
        }
        path = self.path_for(key)
        with self.lock_for(key):
            atomic_write_bytes(path, save(tensors, metadata=meta), durable=False)  # checksummed
        return path

    def entries(self) -> Iterator[CacheEntry]:
        """Every entry on disk (temporary files of in-flight writes are skipped)."""
        for path in sorted((self.root / "features").glob("*/*.safetensors")):
            try:
                st = path.stat()
            except FileNotFoundError:  # removed by a concurrent prune
                continue
            yield CacheEntry(key=path.stem, path=path, size=st.st_size, mtime=st.st_mtime,
                             metadata=_entry_metadata(path))

    def remove(self, entry: CacheEntry) -> None:
        """Delete one entry and its lock file."""
        with self.lock_for(entry.key):
            entry.path.unlink(missing_ok=True)
        (self.root / "locks" / f"{entry.key}.lock").unlink(missing_ok=True)

    def prune(self, *, max_size: int | None = None, older_than_s: float | None = None,
              now: float | None = None) -> list[CacheEntry]:
        """Remove least-recently-used entries until the total is ≤ ``max_size`` bytes, and/or
        entries unused for more than ``older_than_s`` seconds. Returns the removed entries."""
        now = time.time() if now is None else now
        entries = sorted(self.entries(), key=lambda e: e.mtime)  # oldest first
        removed: list[CacheEntry] = []
        if older_than_s is not None:
            keep = []
            for e in entries:
                (removed if now - e.mtime > older_than_s else keep).append(e)
            entries = keep
        if max_size is not None:
            total = sum(e.size for e in entries)
            while entries and total > max_size:
                e = entries.pop(0)
                total -= e.size
                removed.append(e)
        for e in removed:
            self.remove(e)
        return removed

    def clear(self) -> list[CacheEntry]:
        """Remove every entry and the media-hash memo. Returns the removed entries."""
        removed = list(self.entries())
        for e in removed:
            self.remove(e)
        for memo in (self.root / "hashes").glob("*/*.json"):
            memo.unlink(missing_ok=True)
        return removed


def _read_verified(path: Path) -> bytes | str | None:
    """The bytes of a valid entry, ``None`` if absent, else the reason it is corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"cannot read ({err.strerror})"
    try:
        header, body = _split(data)
    except ValueError as err:
        return f"unreadable safetensors ({err})"
    problem = _metadata_problem(header)
    if problem:
        return problem
    if header["__metadata__"].get("payload_sha256") != hashlib.sha256(body).hexdigest():
        return "payload checksum mismatch"
    return data


def _read_header(path: Path) -> tuple[Any, int]:
    """An entry's parsed safetensors header, read alone (8 + its length bytes), and the size
    of the data section after it in bytes.

    Raises:
        OSError: the file cannot be read (FileNotFoundError: there is none).
        ValueError: the header length runs past the file's end, or the header is not JSON.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 <= n <= size - 8:
            raise ValueError("header length exceeds file size")
        return json.loads(f.read(n)), size - 8 - n


def _read_header_checked(path: Path) -> dict[str, Any] | str | None:
    """The vlm metadata of an entry from its header alone, ``None`` if absent, else the reason
    its header or size is wrong (what :func:`_read_verified` checks, except the payload
    checksum)."""
    try:
        header, data_size = _read_header(path)
        _check_data_size(header, data_size)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"cannot read ({err.strerror})"
    except ValueError as err:
        return f"unreadable safetensors ({err})"
    problem = _metadata_problem(header)
    if problem or "payload_sha256" not in header["__metadata__"]:
        return problem or "missing provenance metadata"
    return header["__metadata__"]


def _entry_metadata(path: Path) -> dict[str, Any]:
    """Provenance of an entry from its header only (no tensor data read); {} if unreadable."""
    try:
        header, _ = _read_header(path)
        return json.loads((header.get("__metadata__") or {}).get("provenance", "{}"))
    except (OSError, ValueError, AttributeError):
        return {}


def parse_size(text: str) -> int:
    """Parse a size such as ``500M``, ``2G``, ``1.5GiB``, ``1024`` into bytes (powers of 1024).

    Raises:
        CacheError: the text is not a size.
    """
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    num = s.rstrip("KMGT")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if value < 0 or unit not in units:
        raise CacheError(f"--max-size: {text!r} is not a size (examples: 500M, 2G, 1024)")
    return int(value * units[unit])
