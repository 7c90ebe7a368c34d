"""``vlm preprocess``: fill the feature cache for every media file of a dataset.

Per media file: hash it (memoised), derive one cache key per modality, and skip it if every entry
is present and valid. The rest are decoded in crash-isolated worker processes
(:func:`vlm_cli.workers.run_isolated`; frames resized to the encoder's input there), which decode
ahead while the frozen encoders in this process encode what is ready (several files per forward,
the cores given to the bottleneck), and written to the cache atomically. A file that fails is
reported with its path and reason; nothing is ever substituted for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vlm_cli.atomic import atomic_write_bytes
from vlm_cli.decode import decode_media
from vlm_cli.errors import MediaError, UsageError
from vlm_cli.features import VISION, FeatureStore, MediaFile
from vlm_cli.keys import FeatureKey
from vlm_cli.media.kinds import media_kind


@dataclasses.dataclass(frozen=True)
class ClipFailure:
    """A media file that could not be preprocessed: its path and a one-line reason."""

    path: str
    reason: str


@dataclasses.dataclass
class PreprocessSummary:
    """What a preprocess run did. ``clips`` counts distinct media files in this shard."""

    clips: int = 0
    hits: int = 0
    computed: int = 0
    failed: list[ClipFailure] = dataclasses.field(default_factory=list)
    shard: str = "0/1"
    seconds: float = 0.0

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"clips": self.clips, "hits": self.hits, "computed": self.computed,
                "failed": [dataclasses.asdict(f) for f in self.failed], "shard": self.shard,
                "seconds": round(self.seconds, 3), "clips_per_s": round(self.clips_per_s, 2)}


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``I/N`` (0 ≤ I < N) into ``(I, N)``.

    Raises:
        UsageError: anything else.
    """
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise UsageError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def select_shard(paths: Sequence[Path], index: int, count: int) -> list[Path]:
    """The deterministic ``index``-th of ``count`` shards of ``paths``: every ``count``-th path of
    the sorted list, so separate processes or machines cover the dataset exactly once."""
    ordered = sorted(dict.fromkeys(paths), key=str)
    return ordered[index::count]


def _limit_worker_threads() -> None:
    """Worker initialiser: one compute thread per decoder process (the main process encodes)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


class _CoreShare:
    """The encoder's share of the cores, set before each encoder forward to whichever side is
    the bottleneck (a frame's features do not depend on the thread count on CPU).

    When decoded files piled up while the encoder ran (it took several at once, or more are
    waiting), the encoder is the bottleneck: it gets every core, and the decoders, briefly busy
    refilling the queue, share them. When it had to wait for a file, the decoders are: it gets
    only the cores they leave idle (at least one), so that they never wait for a core.
    """

    def __init__(self) -> None:
        self.cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else os.cpu_count() or 1)
        self.decoding = 0
        self._initial: int | None = None

    def running(self, count: int) -> None:
        """``run_isolated``'s ``on_running``: how many files are being decoded."""
        self.decoding = count

    def apply(self, encoder_bound: bool) -> None:
        import torch

        if self._initial is None:
            self._initial = torch.get_num_threads()
        free = self.cores if encoder_bound else self.cores - self.decoding
        threads = max(1, min(self._initial, free))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def restore(self) -> None:
        if self._initial is not None:
            import torch

            torch.set_num_threads(self._initial)


#: What the decoder workers import, once for all of them (see :func:`run_isolated`).
WORKER_PRELOAD = ("torch", "numpy", "av", "decord", "vlm_cli.decode", "vlm_cli.media.video",
                  "vlm_cli.media.audio", "vlm_cli.media.resize")


def decode_in_workers(requests: Sequence[Any], *, workers: int,
                      **options: Any) -> Iterator[tuple[int, Any]]:
    """:func:`vlm_cli.decode.decode_media` of every request in crash-isolated workers forked
    from a server that imported :data:`WORKER_PRELOAD` once, one compute thread each
    (:func:`_limit_worker_threads`); ``options`` go to :func:`vlm_cli.workers.run_isolated`,
    whose ``(index, result or TaskFailure)`` pairs this yields."""
    from vlm_cli.workers import run_isolated  # multiprocessing: not needed on a warm run

    return run_isolated(decode_media, requests, workers=workers, preload=WORKER_PRELOAD,
                        initializer=_limit_worker_threads, **options)

#: Files whose decoded frames are encoded in one forward on an accelerator (when the encoder
#: allows it); on CPU each file has its own forward.
ENCODE_BATCH = 4

#: How much decoded media the workers may keep ready ahead of the encoder, in bytes: 256 MiB
#: is ~210 files of 8 frames at 224 px, so that the workers go on decoding while this process
#: imports and builds the encoders (seconds) instead of stopping after a few files.
READ_AHEAD_BYTES = 256 * 2**20


def read_ahead(requests: Sequence[Any], workers: int) -> int:
    """How many decoded files may wait for the encoder: :data:`READ_AHEAD_BYTES` over the
    largest file's frames (1 MiB at least, e.g. audio only), or ``max(ENCODE_BATCH,
    2 * workers)`` when a file's decoded size is not known in advance (frames kept at their
    decoded size, fps sampling without ``max_frames``)."""
    least = max(ENCODE_BATCH, 2 * workers)
    sizes = [request.frame_bytes() for request in requests]
    if any(size is None for size in sizes):
        return least
    return max(least, READ_AHEAD_BYTES // max(2**20, *sizes))


def preprocess(paths: Sequence[Path], store: FeatureStore, *, workers: int = 2,
               timeout_s: float | None = 300.0, shard: tuple[int, int] = (0, 1),
               on_clip: Callable[[str, str], None] | None = None) -> PreprocessSummary:
    """Decode, encode and cache the features of ``paths`` (this shard of them).

    Args:
        paths: media files (duplicates are ignored).
        store: the encoders, sampling and cache (a recipe's, or a loaded model's); its device.
        workers: decoder processes (≥ 1).
        timeout_s: per-file decode limit in seconds; a file taking longer fails.
        shard: ``(I, N)``: process only the I-th of N deterministic shards.
        on_clip: called with (path, "hit" | "computed" | "failed") after each file.

    Returns:
        A :class:`PreprocessSummary`; failures carry the path and reason.
    """
    started = time.monotonic()
    mine = select_shard([Path(p).absolute() for p in paths], *shard)
    summary = PreprocessSummary(clips=len(mine), shard=f"{shard[0]}/{shard[1]}")
    report = on_clip or (lambda path, status: None)

    def fail(path: Path, reason: str) -> None:
        summary.failed.append(ClipFailure(str(path), reason))
        report(str(path), "failed")

    todo: list[tuple[MediaFile, dict[str, FeatureKey]]] = []
    for path in mine:
        kind = media_kind(path)
        if not store.modalities(kind):
            fail(path, f"recipe {store.recipe.name!r} has no encoder for this kind of file")
            continue
        try:
            media = MediaFile(path, kind, store.cache.file_digest(path))
        except MediaError as err:
            fail(path, err.reason)
            continue
        keys = store.keys(media)
        found = store.cached(keys)
        missing = {m: k for m, k in keys.items() if m not in found}
        if missing:
            try:  # a file over the model's limits fails here, before it is decoded
                store.check_media(media)
            except (MediaError, UsageError) as err:
                fail(path, str(err).removeprefix(f"{path}: "))
                continue
            if not todo:  # the decoders' server imports while the other files are hashed
                from vlm_cli.workers import start_forkserver

                start_forkserver(WORKER_PRELOAD)
            todo.append((media, missing))
        else:
            summary.hits += 1
            report(str(path), "hit")

    if todo:
        _decode_and_encode(store, todo, workers, timeout_s, summary, fail, report)
    summary.seconds = time.monotonic() - started
    return summary


def _decode_and_encode(store: FeatureStore, todo: list[tuple[MediaFile, dict[str, FeatureKey]]],
                       workers: int, timeout_s: float | None, summary: PreprocessSummary,
                       fail: Callable[[Path, str], None],
                       report: Callable[[str, str], None]) -> None:
    """Decode ``todo`` in crash-isolated workers that work ahead (:func:`read_ahead` files
    ready) while this process builds the encoders and then encodes what is ready (several files
    per forward on an accelerator), with the cores given to the bottleneck (:class:`_CoreShare`).
    """
    from vlm_cli.workers import TaskFailure, prefetched

    requests = [store.request(media, list(missing)) for media, missing in todo]
    cores = _CoreShare()

    def pool(cancelled: Callable[[], bool]) -> Iterator[tuple[int, Any]]:
        return decode_in_workers(requests, workers=workers, timeout_s=timeout_s,
                                 on_running=cores.running, cancelled=cancelled)

    try:
        with prefetched(pool, depth=read_ahead(requests, workers)) as ahead:
            for name in dict.fromkeys(store.encoder_name(m, media.kind)  # while workers start
                                      for media, missing in todo for m in missing):
                store.encoder(name)
            # On CPU one file's frames per forward is faster than several (ViT-B/16: ~8 % per
            # frame; the activations of 32 frames outgrow the caches); accelerators batch.
            most = 1 if str(store.device).startswith("cpu") else ENCODE_BATCH
            while batch := ahead.take(most):
                done = []
                for index, decoded in batch:
                    media, _ = todo[index]
                    if isinstance(decoded, TaskFailure):
                        fail(media.path, decoded.reason)
                    else:
                        done.append((media, decoded))
                cores.apply(encoder_bound=len(batch) > 1 or ahead.ready() > 0)
                vision = store.encoders.encode_vision_batch(
                    [(store.encoder_name(VISION, media.kind), decoded) for media, decoded in done])
                for (media, decoded), features in zip(done, vision):
                    store.encode_and_store(media, decoded, encoded=None if features is None
                                           else {VISION: features})
                    summary.computed += 1
                    report(str(media.path), "computed")
    finally:
        cores.restore()


def write_error_log(path: Path, failures: Sequence[ClipFailure]) -> None:
    """Write failures as JSONL (``{"path", "reason"}`` per line), atomically."""
    lines = "".join(json.dumps(dataclasses.asdict(f)) + "\n" for f in failures)
    atomic_write_bytes(path, lines.encode())
