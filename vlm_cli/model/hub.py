"""Resolving pretrained weights without hidden downloads.

Weights stay in the Hugging Face hub cache (HF_HOME / HF_HUB_CACHE) or in a local directory; they
are never copied into the vlm cache. Nothing here downloads: a hub id that is not in the cache is an
error that names the ``vlm download`` command to run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlm_cli.errors import VlmError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def resolve_pretrained(name: str, revision: str | None,
                       digest: Callable[[Path], str]) -> tuple[Path, dict[str, object]]:
    """Find pretrained weights locally and describe exactly which weights they are.

    Args:
        name: a local directory, or a hub repo id (``org/name``) already in the hub cache.
        revision: hub branch, tag or commit; None = the cached default branch. Ignored for a
            local directory.
        digest: sha256 function for files (``FeatureCache.file_digest``, which memoises it).

    Returns:
        ``(directory, fingerprint)``: the directory to pass to ``from_pretrained``, and a dict that
        pins the weights: the resolved commit hash for a hub id (huggingface_hub's
        ``snapshot_download(local_files_only=True)``), or the sha256 of every weight file of a
        local directory (not its path, so a moved copy has the same fingerprint).

    Raises:
        VlmError: the directory has no weight files, or the hub id/revision is not cached.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        if not files:
            raise VlmError(f"{name}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) in directory")
        # Content only, not the path: a copied or moved model keeps its cache entries.
        return local, {"weights": {str(p.relative_to(local)): digest(p) for p in files}}
    snapshot = resolve_snapshot(name, revision)
    return snapshot, {"repo_id": name, "revision": snapshot.name}


def resolve_snapshot(name: str, revision: str | None) -> Path:
    """The local snapshot directory of hub repo ``name`` at ``revision`` (no download).

    Raises:
        VlmError: not in the Hugging Face cache; the message names the ``vlm download`` to run.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        rev = f" --revision {revision}" if revision else ""
        raise VlmError(f"{name}{'@' + revision if revision else ''}: not found locally nor in the "
                       f"Hugging Face cache; run `vlm download {name}{rev}` first") from err
