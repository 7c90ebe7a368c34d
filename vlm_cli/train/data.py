"""Training samples: tokenized conversations + frozen-encoder features read from the cache.

Every media file is preprocessed first (:func:`vlm_cli.preprocess.preprocess`, in crash-isolated
workers); a file that cannot be decoded is an error naming it — a sample is never silently
dropped or replaced. Features are then read from the cache per sample (an LRU keeps the most
recent in memory), so the encoders are never loaded during training.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlm_cli.data.records import Record
from vlm_cli.errors import DataError, VlmError
from vlm_cli.features import FeatureStore
from vlm_cli.model.chat import IGNORE_INDEX, MEDIA_TOKENS
from vlm_cli.model.vlm import MediaInput


@dataclasses.dataclass
class Sample:
    """One training sample: ids and labels (assistant tokens only), and one media input per
    placeholder. ``targets`` counts the labels that carry loss after the next-token shift."""

    input_ids: list[int]
    labels: list[int]
    media: list[MediaInput]
    targets: int


class FeatureDataset:
    """Conversations over cached features.

    Args:
        records: from :func:`vlm_cli.data.load_records` (each with conversations).
        model: what tokenises a conversation (``encode_conversation``) and knows its media
            tokens (``media_token_ids``): a ``VideoLanguageModel`` or a family's own model.
        store: feature store of the recipe (its cache must already hold every file's features).
        max_length: token limit per sample.
        memory_items: media files kept in memory (LRU).

    Raises:
        DataError: a record without conversations or assistant turns, or whose placeholder count
            differs from its media count (the message names the record id).
    """

    def __init__(self, records: Sequence[Record], model: Any, store: FeatureStore,
                 max_length: int, memory_items: int = 4096) -> None:
        self.store = store
        media_ids = set(model.media_token_ids)
        self._features = functools.lru_cache(maxsize=memory_items)(store.media_input)
        self.items: list[tuple[list[int], list[int], list[Path]]] = []
        for record in records:
            if not record.conversations:
                raise DataError(f"record {record.id!r}: no conversations")
            media = ([self._features(ref.path) for ref in record.media]
                     if getattr(model, "prompt_uses_media", False) else None)
            try:
                ids, labels = model.encode_conversation(record.conversations, max_length, media)
            except DataError as err:
                raise DataError(f"record {record.id!r}: {err}") from err
            placeholders = sum(i in media_ids for i in ids)
            # A model that words its prompt after the media checked the count on the text (one
            # file may fill several soft-prompt slots there: Video-LLaMA's audio, then video).
            if media is None and placeholders != len(record.media):
                raise DataError(f"record {record.id!r}: {placeholders} media placeholders "
                                f"({', '.join(MEDIA_TOKENS)}) but {len(record.media)} media files")
            self.items.append((ids, labels, [ref.path for ref in record.media]))

    def __len__(self) -> int:
        return len(self.items)

    def targets(self, index: int) -> int:
        """Loss-carrying tokens of sample ``index`` (known without loading features)."""
        return sum(label != IGNORE_INDEX for label in self.items[index][1][1:])

    def __getitem__(self, index: int) -> Sample:
        ids, labels, paths = self.items[index]
        return Sample(ids, labels, [self._features(p) for p in paths], self.targets(index))


def ensure_features(records: Sequence[Record], store: FeatureStore, *, workers: int = 2,
                    on_clip: Any = None) -> None:
    """Preprocess every media file of ``records`` that is not cached yet.

    Raises:
        VlmError: a media file failed to decode (the first failure, with its path and reason).
    """
    from vlm_cli.preprocess import preprocess

    paths = list(dict.fromkeys(ref.path for r in records for ref in r.media))
    summary = preprocess(paths, store, workers=workers,
                         on_clip=on_clip)
    if summary.failed:
        first = summary.failed[0]
        raise VlmError(f"{first.path}: {first.reason} ({len(summary.failed)} media files failed; "
                       "fix or remove them from the data)")
