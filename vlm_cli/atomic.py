"""Atomic file writes: a temporary name in the same directory, fsync (unless the file verifies
itself), then ``os.replace``.

Readers never see a partial file, and an interrupted write leaves at most a hidden ``.*.tmp`` file,
never a truncated file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *,
                       durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (parent directories are created).

    Args:
        durable: fsync the data before the rename, so that the file survives a power loss
            whole. Files that verify themselves when read (cache entries: a payload checksum;
            hash memos) pass False: readers still never see a partial file, and the rare one
            torn by a power loss is detected and recomputed; a cache write then costs no
            disk flush (~0.6 ms each, 3 per clip in ``vlm preprocess``).

    Raises:
        OSError: the directory cannot be created or written (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
