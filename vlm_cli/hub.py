"""The Hugging Face hub: what a weight file is, resolving hub ids to local snapshots, downloads.

One module below the model layer. Weights stay in the Hugging Face hub cache (``HF_HOME`` /
``HF_HUB_CACHE``) or in a local directory; they are never copied into the vlm cache.

- :func:`resolve_snapshot` finds a hub id's complete snapshot in the cache, once per process
  (memoised), and downloads only when the caller passes ``download=True`` (a command's
  ``--download``): otherwise a hub id that is not cached is an error naming the ``vlm download``
  command to run. Nothing downloads behind the user's back.
- :func:`download` (``vlm download REPO_ID``): huggingface_hub's ``snapshot_download`` does the
  transfer, into the standard cache, blobs shared between revisions; ``HF_TOKEN``,
  ``HF_ENDPOINT`` (a mirror) and ``HF_HUB_OFFLINE`` are its own settings. What we add is the
  choice of files: a model repository often ships the same weights several times (safetensors and
  pickled ``.bin``, sharded and ``consolidated``, TensorFlow / Flax / ONNX / GGUF exports), and a
  model needs one copy. :func:`select_files` keeps every non-weight file and one format of
  weights: safetensors when there are any, else PyTorch ``.bin``; when a weight index
  (``*.safetensors.index.json``) names the shards, only those shards. A research release whose
  top level holds only ``.pth`` checkpoints (Video-LLaMA's ``VL_*.pth``, ``imagebind_huge.pth``)
  keeps them. A model that needs only part of a checkpoint (Video-LLaMA takes BLIP-2's vision
  tower and Q-Former, not its 11B T5) names the weight-key ``prefixes`` it loads: only the
  shards holding such keys are fetched, and the snapshot counts as complete without the rest.

Interrupted transfers: huggingface_hub retries a dropped connection itself and continues a large
file with an HTTP Range request; files already complete are kept, so running the command again
fetches only what is missing. A file whose size does not match the server's is discarded, never
left in the snapshot.

Identity of local weights (:func:`resolve_pretrained`, part of a frozen encoder's cache key): the
sha256 of every weight file, or, when the caller names the weight-key prefixes its features depend
on (Qwen2.5-Omni's ``thinker.visual.`` and ``thinker.audio_tower.``), :func:`vlm_cli.weights.tensors_digest` over
just those tensors, read by byte range from the safetensors shards: a 3 GB talker shard is never
read, and changing it keeps the cached features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from vlm_cli.errors import VlmError

#: Weight files in every format a hub model repository may ship.
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack",
                "*.onnx", "*.onnx_data", "*.gguf", "*.ot", "*.tflite", "*.mlmodel", "*.npz")
#: Pickled training-state side files: not weights, and never needed to run a model.
_NOT_WEIGHTS = ("training_args.bin", "optimizer.bin", "scheduler.bin")


def is_weight_file(name: str) -> bool:
    """Whether ``name`` (a repository path) holds model weights, in any format."""
    base = PurePosixPath(name).name
    return base not in _NOT_WEIGHTS and any(fnmatch.fnmatch(base, g) for g in WEIGHT_GLOBS)


#: ``skip_for(config) -> prefixes``: the weight-key prefixes a checkpoint's family never loads
#: (e.g. Qwen2.5-Omni's talker), from its ``config.json``. This module knows no family: the model
#: layer registers its rule (:func:`set_skip_for`, from ``vlm_cli.model``'s package import, so
#: before any checkpoint is resolved) and every function below uses it unless given one.
SkipFor = Callable[[dict[str, Any]], tuple[str, ...]]
_SKIP_FOR: list[SkipFor] = []


def set_skip_for(rule: SkipFor) -> None:
    """Register the model layer's :data:`SkipFor` rule (replacing any earlier one)."""
    _SKIP_FOR[:] = [rule]


def _skipped(skip_for: SkipFor | None, config_text: str | None) -> tuple[str, ...]:
    """What ``skip_for`` (default: the registered rule) says of a ``config.json``'s text
    (nothing without either)."""
    skip_for = skip_for or (_SKIP_FOR[0] if _SKIP_FOR else None)
    if skip_for is None or config_text is None:
        return ()
    try:
        config = json.loads(config_text)
    except ValueError:
        return ()
    return skip_for(config) if isinstance(config, dict) else ()


def index_shards(text: str, prefixes: tuple[str, ...] | None = None,
                 skip: tuple[str, ...] = ()) -> set[str] | None:
    """The shard file names a weight index (``*.safetensors.index.json``, ``weight_map``) names
    for weights we load, or None when ``text`` is not such an index.

    Args:
        prefixes: the weight-key prefixes the model loads (e.g. ``("vision_model.", "qformer.")``);
            None: every key but those starting with ``skip``.
        skip: weight-key prefixes never loaded (a family's speech output, say).
    """
    try:
        weight_map = json.loads(text).get("weight_map")
    except (ValueError, AttributeError):
        return None
    if not isinstance(weight_map, dict):
        return None
    if prefixes is not None:
        return {shard for key, shard in weight_map.items() if str(key).startswith(prefixes)}
    return {shard for key, shard in weight_map.items() if not str(key).startswith(skip)}


def select_files(files: list[str], index_text: dict[str, str] | None = None,
                 prefixes: tuple[str, ...] | None = None,
                 skip: tuple[str, ...] = ()) -> list[str]:
    """The files a model needs from a repository listing: all non-weight files, plus one format
    of weights (safetensors, else PyTorch ``.bin``), restricted to the shards named by weight
    index files when there are any; and the top-level ``.pth`` checkpoints of a release whose
    top level has no safetensors or ``.bin`` weights (Video-LLaMA's ``VL_*.pth``, ``AL_*.pth``,
    ``imagebind_huge.pth`` beside ``llama-2-7b-chat-hf/*.bin``).

    Args:
        files: every path in the repository (forward slashes).
        index_text: contents of the weight index files (``*.index.json``) by path, when known;
            shards not named by an index in the same folder are left out (e.g. a
            ``consolidated.safetensors`` beside ``model-0000x-of-0000n.safetensors``).
        prefixes: only the shards holding weight keys with these prefixes (see
            :func:`index_shards`); None for the whole model.
        skip: weight-key prefixes the model never loads: shards holding only those are left
            out.

    Returns:
        The selected paths, sorted. Only non-weight files when the repository has no safetensors
        or ``.bin`` weights (the caller decides whether that is an error).
    """
    weights = [f for f in files if is_weight_file(f)]
    fmt = ".safetensors" if any(f.endswith(".safetensors") for f in weights) else ".bin"
    chosen = [f for f in weights if f.endswith(fmt)]
    named: dict[str, set[str]] = {}  # folder -> shards its index names
    for path, text in (index_text or {}).items():
        shards = (index_shards(text, prefixes, skip) if path.endswith(fmt + ".index.json")
                  else None)
        if shards is None:
            continue
        folder = PurePosixPath(path).parent
        named.setdefault(str(folder), set()).update(str(folder / s) for s in shards)
    chosen = [f for f in chosen if str(PurePosixPath(f).parent) not in named
              or str(PurePosixPath(f)) in named[str(PurePosixPath(f).parent)]]
    other_index = [f for f in files if f.endswith(".index.json") and not f.endswith(
        fmt + ".index.json") and is_weight_file(f[: -len(".index.json")])]
    keep = [f for f in files if not is_weight_file(f) and f not in other_index
            and PurePosixPath(f).name not in _NOT_WEIGHTS]  # pickled training state: unneeded
    top = [f for f in weights if "/" not in f]
    if top and not any(f.endswith((".safetensors", ".bin")) for f in top):
        chosen += [f for f in top if f.endswith(".pth")]
    return sorted(keep + chosen)


@dataclasses.dataclass
class Downloaded:
    """What ``vlm download`` fetched: the repository, the commit it resolved to, the snapshot
    directory in the hub cache, the selected files and their size in bytes (None when offline)."""

    repo_id: str
    repo_type: str
    revision: str | None
    commit: str
    path: str
    files: list[str]
    bytes: int | None
    offline: bool


def download_snapshot(repo_id: str, *, revision: str | None = None, repo_type: str = "model",
             include: list[str] | None = None, exclude: list[str] | None = None,
             on_bytes: Callable[[int, int], None] | None = None,
             prefixes: tuple[str, ...] | None = None,
             skip_for: SkipFor | None = None) -> Downloaded:
    """Download a snapshot of ``repo_id`` into the Hugging Face hub cache.

    Args:
        repo_id: ``org/name``. revision: branch, tag or commit (None = the default branch).
        repo_type: ``model`` or ``dataset``.
        include, exclude: glob patterns (huggingface_hub's ``allow_patterns`` /
            ``ignore_patterns``); with ``include`` the default file selection
            (:func:`select_files`, models only) is replaced by it.
        on_bytes: called about once a second during the transfer as ``on_bytes(done, total)``:
            bytes written to the repository's cache folder since the start, and the size of the
            selected files (huggingface_hub's own progress bars are off; see
            :func:`vlm_cli.runtime.quiet_third_party`).
        prefixes: only the weight shards holding keys with these prefixes
            (:func:`select_files`); None for the whole model.
        skip_for: the family's weights never loaded, from the repository's ``config.json``
            (:data:`SkipFor`; default the registered rule): shards holding only those are not
            fetched.

    Returns:
        A :class:`Downloaded`. With ``HF_HUB_OFFLINE=1`` nothing is fetched: the snapshot is
        resolved from the cache (``offline`` True).

    Raises:
        VlmError: one line naming the repository: not found (or private / gated without
            ``HF_TOKEN``), unknown revision, endpoint unreachable, offline and not cached, a
            model repository with no safetensors or ``.bin`` weights, or a transfer that failed
            (e.g. a truncated file; completed files are kept).
    """
    from huggingface_hub import HfApi, constants, snapshot_download

    label = f"{repo_id}@{revision}" if revision else repo_id
    if constants.HF_HUB_OFFLINE:
        with _hub_errors(label, repo_type):
            if repo_type == "model" and not include and not exclude:
                path = str(resolve_snapshot(repo_id, revision, prefixes=prefixes,
                                            skip_for=skip_for))
            else:
                path = snapshot_download(repo_id, revision=revision, repo_type=repo_type,
                                         allow_patterns=include, ignore_patterns=exclude,
                                         local_files_only=True)
        files = sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())
        return Downloaded(repo_id, repo_type, revision, PurePosixPath(path).name, path, files,
                          None, True)
    api = HfApi()
    with _hub_errors(label, repo_type):
        info = api.repo_info(repo_id, repo_type=repo_type, revision=revision, files_metadata=True)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        files = list(sizes)
        if include:
            files = [f for f in files if any(fnmatch.fnmatch(f, g) for g in include)]
        elif repo_type == "model":
            indexes = {f: _read_text(repo_id, info.sha, f) for f in files
                       if f.endswith(".index.json")}
            skip = _skipped(skip_for, _read_text(repo_id, info.sha, "config.json")
                            if "config.json" in files else None)
            files = select_files(files, indexes, prefixes, skip)
            if not any(f.endswith((".safetensors", ".bin")) for f in files):
                raise VlmError(f"{label}: no safetensors or PyTorch .bin weights in this "
                               "repository; pass --include to choose files explicitly")
        if exclude:
            files = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in exclude)]
        if not files:
            raise VlmError(f"{label}: no file matches the --include / --exclude patterns")
        # By name, not by info.sha, so that the cache records the branch (refs/main) for
        # later offline use; the snapshot directory says which commit was downloaded.
        with _watch_bytes(repo_id, repo_type, sum(sizes.get(f, 0) for f in files), on_bytes):
            path = snapshot_download(repo_id, revision=revision, repo_type=repo_type,
                                     allow_patterns=files)
    return Downloaded(repo_id, repo_type, revision, PurePosixPath(path).name, path,
                      sorted(files), sum(sizes.get(f, 0) for f in files), False)


def _read_text(repo_id: str, commit: str, filename: str) -> str:
    """A small file of the repository (a weight index), through the hub cache."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=commit)).read_text()


@contextlib.contextmanager
def _watch_bytes(repo_id: str, repo_type: str, total: int,
                 on_bytes: Callable[[int, int], None] | None) -> Iterator[None]:
    """Report the growth of the repository's ``blobs/`` folder in the hub cache (complete and
    ``.incomplete`` files) to ``on_bytes`` from a background thread, once a second, then once
    more at the end."""
    if on_bytes is None:
        yield
        return
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    blobs = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id,
                                                             repo_type=repo_type) / "blobs"

    def size() -> int:
        return sum(p.stat().st_size for p in blobs.glob("*") if p.is_file()) \
            if blobs.is_dir() else 0

    start, stop = size(), threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            on_bytes(min(max(size() - start, 0), total), total)

    thread = threading.Thread(target=watch, name="vlm-download-progress", daemon=True)
    thread.start()
    try:
        yield
        on_bytes(total, total)
    finally:
        stop.set()
        thread.join()


class _hub_errors:
    """Turn huggingface_hub / transport exceptions into one-line :class:`VlmError` messages."""

    def __init__(self, label: str, repo_type: str) -> None:
        self.label, self.repo_type = label, repo_type

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> bool:
        if err is None or isinstance(err, VlmError) or not isinstance(err, Exception):
            return False
        from huggingface_hub import constants, errors

        where = constants.ENDPOINT
        if isinstance(err, errors.GatedRepoError):
            msg = (f"gated repository on {where}: accept its terms on the hub and set HF_TOKEN")
        elif isinstance(err, errors.RepositoryNotFoundError):
            msg = (f"{self.repo_type} repository not found on {where} (if it is private or "
                   "gated, set HF_TOKEN)")
        elif isinstance(err, errors.RevisionNotFoundError):
            msg = f"revision not found on {where}"
        elif isinstance(err, errors.LocalEntryNotFoundError):
            msg = ("HF_HUB_OFFLINE is set and it is not (completely) in the Hugging Face cache; "
                   "unset HF_HUB_OFFLINE to download it")
        elif isinstance(err, errors.HfHubHTTPError):
            msg = f"the hub at {where} answered: {str(err).splitlines()[0]}"
        elif isinstance(err, OSError) or type(err).__module__.startswith(("httpx", "httpcore")):
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            msg = (f"download failed ({first}); files already complete are kept in the cache: "
                   f"run the command again to fetch the rest (endpoint {where})")
        else:
            return False
        raise VlmError(f"{self.label}: {msg}") from err


def recipe_repos(recipe: Any) -> list[tuple[str, str | None]]:
    """The hub repositories a recipe references: ``(repo_id, revision)`` of its vision and audio
    encoders, LLM and tokenizer, without duplicates; local directories, random initialisations
    and the built-in toy-av tokenizer need nothing."""
    model = recipe.model
    refs = [(s.pretrained, s.revision) for s in (model.vision, model.image, model.audio,
                                                   model.llm)
            if s is not None and s.pretrained]
    if model.llm is not None and model.llm.tokenizer not in (None, "toy-av"):
        refs.append((model.llm.tokenizer, None))
    return list(dict.fromkeys((name, rev) for name, rev in refs
                              if not Path(name).expanduser().is_dir()))


def resolve_pretrained(name: str, revision: str | None, digest: Callable[[Path], str],
                       prefixes: tuple[str, ...] | None = None) -> tuple[Path, dict[str, Any]]:
    """Find pretrained weights locally and describe exactly which weights they are.

    Args:
        name: a local directory, or a hub repo id (``org/name``) already in the hub cache.
        revision: hub branch, tag or commit; None = the cached default branch. Ignored for a
            local directory.
        digest: sha256 function for files (``FeatureCache.file_digest``, which memoises it).
        prefixes: the weight-key prefixes the caller's features depend on (e.g.
            ``("thinker.visual.", "thinker.audio_tower.")``): a local directory with safetensors
            weights is then pinned by :func:`vlm_cli.weights.tensors_digest` of those tensors only, memoised
            beside ``digest``'s memos (the ``hashes/`` folder of its ``FeatureCache``, else of
            the default cache root). None: every weight file, as before.

    Returns:
        ``(directory, fingerprint)``: the directory to pass to ``from_pretrained``, and a dict that
        pins the weights: the resolved commit hash for a hub id (huggingface_hub's
        ``snapshot_download(local_files_only=True)``); for a local directory (not its path, so a
        moved copy has the same fingerprint) ``{"tensors": {"prefixes", "sha256"}}`` with
        ``prefixes``, else the sha256 of every weight file.

    Raises:
        VlmError: the directory has no weight files, or no tensor with ``prefixes``; the hub
            id/revision is not cached.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        if prefixes is not None and any(local.glob("*.safetensors")):
            from vlm_cli.weights import tensors_digest

            memo_root = _memo_root(digest)
            return local, {"tensors": {"prefixes": sorted(set(prefixes)),
                                       "sha256": tensors_digest(local, prefixes, memo_root)}}
        files = sorted(p for p in local.rglob("*") if p.is_file() and is_weight_file(p.name))
        if not files:
            raise VlmError(f"{name}: no weight files (safetensors, .bin, .pt, ...) in directory")
        # Content only, not the path: a copied or moved model keeps its cache entries.
        return local, {"weights": {str(p.relative_to(local)): digest(p) for p in files}}
    snapshot = resolve_snapshot(name, revision, prefixes=prefixes)  # those shards at least
    return snapshot, {"repo_id": name, "revision": snapshot.name}


def _memo_root(digest: Callable[[Path], str]) -> Path:
    """Where :func:`vlm_cli.weights.tensors_digest` keeps its memos: the ``hashes/`` folder of the
    ``FeatureCache`` whose ``file_digest`` is ``digest``, else of the default cache root."""
    from vlm_cli.cache import FeatureCache, cache_root

    owner = getattr(digest, "__self__", None)
    return (owner.root if isinstance(owner, FeatureCache) else cache_root()) / "hashes"


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a hub repository id (``org/name``) rather than a local path: it has
    that shape and no such file or directory exists."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).expanduser().exists()


def local_path(name: str, revision: str | None, *, download: bool = False) -> Path:
    """``name`` as a local directory: itself when it is one, else its hub snapshot
    (:func:`resolve_snapshot`)."""
    local = Path(name).expanduser()
    return local if local.is_dir() else resolve_snapshot(name, revision, download=download)


#: (hub cache, repo id, revision) -> its complete snapshot directory, resolved once per process.
_SNAPSHOTS: dict[tuple[Any, ...], Path] = {}


def resolve_snapshot(name: str, revision: str | None, *, download: bool = False,
                     prefixes: tuple[str, ...] | None = None,
                     skip_for: SkipFor | None = None) -> Path:
    """The local snapshot directory of hub repo ``name`` at ``revision``, complete: every
    non-weight file of the cached listing, and the weights (every shard a weight index names, or
    at least one weight file). Resolved once per process.

    Args:
        download: fetch what is missing (``vlm download``'s default file selection) instead of
            failing; a command's ``--download``.
        prefixes: the weight-key prefixes the caller loads: shards holding none of them need
            not be there (see :func:`select_files`).
        skip_for: the family's weights never loaded (:data:`SkipFor`; default the registered
            rule): their shards need not be there.

    Raises:
        VlmError: not in the Hugging Face cache, or only partly (an interrupted download); the
            message names the ``vlm download`` to run.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    key = (str(constants.HF_HUB_CACHE), name, revision, prefixes, skip_for)
    if key in _SNAPSHOTS:
        return _SNAPSHOTS[key]
    rev = f" --revision {revision}" if revision else ""
    label = f"{name}{'@' + revision if revision else ''}"
    fetch = download and not constants.HF_HUB_OFFLINE
    try:  # non-weight files: all of those in the cached listing (vlm download fetches them all)
        path = Path(snapshot_download(name, revision=revision, local_files_only=True,
                                      ignore_patterns=list(WEIGHT_GLOBS)))
        missing = missing_weights(path, prefixes, skip_for)
    except (LocalEntryNotFoundError, OSError, ValueError) as err:
        if not fetch:
            offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
            raise VlmError(f"{label}: not found locally nor in the Hugging Face cache{offline}; "
                           f"run `vlm download {name}{rev}` first (or pass --download)") from err
        missing = "not cached"
    if missing and fetch:
        from vlm_cli import console

        console.info(f"--download: fetching {label}")
        path = Path(download_snapshot(name, revision=revision, prefixes=prefixes,
                                      skip_for=skip_for).path)
    elif missing:
        raise VlmError(f"{label}: incomplete in the Hugging Face cache ({missing}); run "
                       f"`vlm download {name}{rev}` to complete it (or pass --download)")
    _SNAPSHOTS[key] = path
    return path


def fetch_missing(repos: Iterable[tuple[str, str | None]], download: bool) -> None:
    """With ``download`` (a command's ``--download``), fetch each ``(repo id, revision)`` that is
    not complete in the Hugging Face cache, before anything loads; without it, do nothing (a
    missing part is reported where it is needed, with the ``vlm download`` command to run)."""
    if download:
        for name, revision in repos:
            resolve_snapshot(name, revision, download=True)


def missing_weights(path: Path, prefixes: tuple[str, ...] | None = None,
                    skip_for: SkipFor | None = None) -> str | None:
    """What is missing from the weights of a snapshot directory (those holding keys with
    ``prefixes`` only, when given; none that ``skip_for`` says its family never loads), or None
    when they are whole."""
    config = path / "config.json"
    skip = _skipped(skip_for, config.read_text() if config.is_file() else None)
    indexes = sorted(path.rglob("*.index.json"))
    for index in indexes:
        shards = index_shards(index.read_text(), prefixes, skip) or set()
        absent = sorted(s for s in shards if not (index.parent / s).is_file())
        if absent:
            return f"{len(absent)} weight shard(s) missing, e.g. {absent[0]}"
    if not indexes and (path / "config.json").is_file() and not any(
            p.is_file() and is_weight_file(p.name) for p in path.rglob("*")):
        return "no weight files"
    return None
