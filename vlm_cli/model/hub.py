"""Resolving pretrained weights without hidden downloads.

Weights stay in the Hugging Face hub cache (HF_HOME / HF_HUB_CACHE) or in a local directory; they
are never copied into the vlm cache. Nothing here downloads unless the user asked for it (the
``--download`` flag of ``ask``, ``eval``, ``pretrain``, ``tune`` and ``preprocess`` calls
:func:`allow_downloads`): a hub id that is not in the cache is an error that names the
``vlm download`` command to run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlm_cli.errors import VlmError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_DOWNLOADS = {"allowed": False}


def allow_downloads(allowed: bool = True) -> None:
    """Let :func:`resolve_snapshot` fetch what is missing (``vlm download``'s default file
    selection) instead of failing; set by a command's ``--download`` flag, for this process."""
    _DOWNLOADS["allowed"] = allowed


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


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a hub repository id (``org/name``) rather than a local path: it has
    that shape and no such file or directory exists."""
    import re

    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).expanduser().exists()


def local_path(name: str, revision: str | None) -> Path:
    """``name`` as a local directory: itself when it is one, else its hub snapshot
    (:func:`resolve_snapshot`)."""
    local = Path(name).expanduser()
    return local if local.is_dir() else resolve_snapshot(name, revision)


def resolve_snapshot(name: str, revision: str | None) -> Path:
    """The local snapshot directory of hub repo ``name`` at ``revision``, complete: every
    non-weight file of the cached listing, and the weights (every shard a weight index names, or
    at least one weight file). Downloads only after :func:`allow_downloads`.

    Raises:
        VlmError: not in the Hugging Face cache, or only partly (an interrupted download); the
            message names the ``vlm download`` to run.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from vlm_cli.download import WEIGHT_GLOBS

    rev = f" --revision {revision}" if revision else ""
    label = f"{name}{'@' + revision if revision else ''}"
    try:  # non-weight files: all of those in the cached listing (vlm download fetches them all)
        path = Path(snapshot_download(name, revision=revision, local_files_only=True,
                                      ignore_patterns=list(WEIGHT_GLOBS)))
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        if _DOWNLOADS["allowed"] and not _offline():
            return _fetch(name, revision)
        offline = " (HF_HUB_OFFLINE is set)" if _offline() else ""
        raise VlmError(f"{label}: not found locally nor in the Hugging Face cache{offline}; run "
                       f"`vlm download {name}{rev}` first (or pass --download)") from err
    missing = _missing_weights(path)
    if missing:
        if _DOWNLOADS["allowed"] and not _offline():
            return _fetch(name, revision)
        raise VlmError(f"{label}: incomplete in the Hugging Face cache ({missing}); run "
                       f"`vlm download {name}{rev}` to complete it (or pass --download)")
    return path


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _missing_weights(path: Path) -> str | None:
    """What is missing from the weights of a snapshot directory, or None when they are whole."""
    import json

    indexes = sorted(path.rglob("*.index.json"))
    for index in indexes:
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        absent = sorted(s for s in shards if not (index.parent / s).is_file())
        if absent:
            return f"{len(absent)} weight shard(s) missing, e.g. {absent[0]}"
    if not indexes and (path / "config.json").is_file() and not any(
            p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in path.rglob("*")):
        return "no weight files"
    return None


def _fetch(name: str, revision: str | None) -> Path:
    from vlm_cli import console
    from vlm_cli.download import download

    console.info(f"--download: fetching {name}{'@' + revision if revision else ''}")
    return Path(download(name, revision=revision).path)
