"""``vlm probe``: does a model use the sound and the order of the frames?

Every question is answered on its original clip and on counterfactual *variants* made on the fly
from the clip's features (no media file is written):

- ``reverse``: the sampled frames in reverse order; ``shuffle``: in a fixed random order (the
  same for every clip of a given frame count); ``still``: the middle frame repeated;
- ``swap-audio``: the soundtrack of another clip of the set, chosen by a fixed derangement (no
  clip keeps its own); ``mute``: no audio.

Frame variants of a per-frame encoder (CLIP, SigLIP) index the cached features; a clip encoder
(ViViT) encodes the reordered frames once and caches them under keys of their own
(:func:`reordered_frames`). ``swap-audio`` takes the other clip's cached audio features.

The report gives, per question type and variant, how often the answer changed from the
original's (normalised text), and, where the variant's truth is known from clip labels (toy-av's
``clips.jsonl``: colour, shape, direction, sound), the accuracy against that truth: ``reverse``
flips the direction, ``swap-audio`` takes the other clip's sound, and what a variant destroys
(the direction under ``shuffle`` / ``still``, the sound under ``mute``) has no truth.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm_cli.atomic import atomic_write_bytes, atomic_write_text
from vlm_cli.errors import DataError, UsageError
from vlm_cli.eval.qa import QAItem, normalise_answer

if TYPE_CHECKING:
    from vlm_cli.features import FeatureStore, MediaFile
    from vlm_cli.model.vlm import MediaInput

#: Every variant, in report order.
VARIANTS: tuple[str, ...] = ("reverse", "shuffle", "still", "swap-audio", "mute")
FRAME_VARIANTS = frozenset({"reverse", "shuffle", "still"})
AUDIO_VARIANTS = frozenset({"swap-audio", "mute"})
#: The name of the unchanged clip in ``probe.jsonl``.
ORIGINAL = "original"
#: Seed of the ``shuffle`` order and of the ``swap-audio`` derangement.
SEED = 0
#: Directions that playing the frames backwards turns into each other.
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up",
            "forward": "backward", "backward": "forward", "in": "out", "out": "in",
            "clockwise": "counterclockwise", "counterclockwise": "clockwise"}


def parse_variants(text: str) -> list[str]:
    """``"reverse,swap-audio"`` -> ``["reverse", "swap-audio"]`` (in :data:`VARIANTS` order).

    Raises:
        UsageError: an unknown or repeated name, or none.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names or len(set(names)) != len(names):
        raise UsageError(f"--variants {text}: choose one or more of {', '.join(VARIANTS)}, "
                         "comma-separated, each once")
    return [v for v in VARIANTS if v in names]


def frame_order(variant: str, frames: int) -> list[int]:
    """The order in which a frame ``variant`` shows ``frames`` sampled frames.

    ``reverse``: ``T-1 .. 0``; ``still``: ``T // 2`` repeated; ``shuffle``: a random permutation
    from :data:`SEED` and ``T`` (fixed for a frame count), never the identity when ``T > 1``.

    Raises:
        ValueError: not a frame variant, or ``frames`` < 1.
    """
    if variant not in FRAME_VARIANTS or frames < 1:
        raise ValueError(f"no {variant!r} order of {frames} frames")
    if variant == "reverse":
        return list(range(frames - 1, -1, -1))
    if variant == "still":
        return [frames // 2] * frames
    rng = random.Random(f"{SEED}-{frames}")
    order = list(range(frames))
    while frames > 1 and order == sorted(order):
        rng.shuffle(order)
    return order


def derangement(names: Sequence[str], seed: int = SEED) -> dict[str, str]:
    """Map each name to a different one (a permutation without fixed points): the names in a
    seeded random cyclic order, each to the next. Deterministic for a given set of names.

    Raises:
        ValueError: fewer than two distinct names.
    """
    unique = sorted(set(names))
    if len(unique) < 2:
        raise ValueError("a derangement needs at least two distinct items")
    random.Random(seed).shuffle(unique)
    return {a: b for a, b in zip(unique, unique[1:] + unique[:1])}


def variant_truth(variant: str, qtype: str, labels: dict[str, str] | None,
                  donor: dict[str, str] | None = None) -> str | None:
    """The answer a question of type ``qtype`` should get on a variant, from the clip's labels
    (``{"colour", "shape", "direction", "sound", ...}``) and, for ``swap-audio``, the donor
    clip's; None where it is unknown (no labels, or the variant destroys that attribute)."""
    if labels is None or qtype not in labels:
        return None
    value = labels[qtype]
    if qtype == "direction" and variant in FRAME_VARIANTS:
        return OPPOSITE.get(value) if variant == "reverse" else None
    if qtype == "sound" and variant in AUDIO_VARIANTS:
        return donor.get("sound") if variant == "swap-audio" and donor else None
    return value


def load_labels(path: Path) -> dict[Path, dict[str, str]]:
    """Clip labels from a JSONL file of ``{"video": path relative to the file, <attribute>:
    value, ...}`` rows (toy-av's ``clips.jsonl``), by resolved media path.

    Raises:
        DataError: unreadable file or a row without ``video``.
    """
    labels = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise DataError(f"{path}: cannot read labels ({err.strerror})") from err
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            media = (path.parent / row["video"]).resolve()
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{n}: expected a JSON object with 'video'") from None
        labels[media] = {k: v for k, v in row.items() if isinstance(v, str) and k != "video"}
    return labels


def default_labels(questions: Path) -> Path | None:
    """``clips.jsonl`` beside the QA folder (toy-av's layout: ``qa/<split>_questions.json``)."""
    candidate = questions.resolve().parent.parent / "clips.jsonl"
    return candidate if candidate.is_file() else None


@dataclasses.dataclass(frozen=True)
class Case:
    """One question on one variant: what to feed the model and what to record."""

    item: QAItem
    variant: str
    donor: Path | None = None

    @property
    def key(self) -> str:
        """The row key in ``probe.jsonl``: ``<question_id>:<variant>``."""
        return f"{self.item.question_id}:{self.variant}"


def plan(items: Sequence[QAItem], variants: Sequence[str], kinds: dict[Path, str],
         ) -> tuple[list[Case], list[str]]:
    """Every case to answer: each item on the original, then each variant that applies to its
    file (frame variants to videos; ``swap-audio`` to videos and audio files, ``mute`` to videos:
    a muted audio file leaves nothing to answer from). The ``swap-audio`` donor is :func:`derangement` over the set's video and audio files.

    Returns:
        ``(cases, notes)``: notes say which variants were skipped and why.
    """
    notes = []
    sounding = sorted({i.media for i in items if kinds[i.media] in ("video", "audio")},
                      key=str)
    donors: dict[Path, Path] = {}
    if "swap-audio" in variants:
        if len(sounding) < 2:
            notes.append("swap-audio skipped: the set has fewer than two clips with a soundtrack")
        else:
            by_name = derangement([str(p) for p in sounding])
            donors = {Path(a): Path(b) for a, b in by_name.items()}
    cases = []
    for item in items:
        kind = kinds[item.media]
        cases.append(Case(item, ORIGINAL))
        for variant in variants:
            if variant in FRAME_VARIANTS and kind != "video":
                continue
            if (variant == "swap-audio" and kind == "image") or (variant == "mute"
                                                                 and kind != "video"):
                continue
            if variant == "swap-audio":
                if item.media not in donors:
                    continue
                cases.append(Case(item, variant, donors[item.media]))
            else:
                cases.append(Case(item, variant))
    return cases, notes


def reordered_frames(store: FeatureStore, media: MediaFile, order: list[int], variant: str,
                     base: MediaInput | None = None) -> tuple[Any, dict[str, Any]]:
    """Vision features of ``media`` as if its sampled frames came in ``order`` (the reverse /
    shuffle / still variants), without writing a media file.

    A per-frame encoder (:attr:`~vlm_cli.model.families.EncoderSource.per_frame`: CLIP, SigLIP)
    gives each frame's features independently, so the cached features are indexed
    (``features[order]``: no decoding). Any other (ViViT's tubelets) sees the order: the frames
    are decoded, put in ``order`` (at the original frames' times) and encoded once, and cached
    under a key of their own (the sampling settings plus ``frame_order: variant``), which never
    equals the original's.

    Args:
        store: the feature store of the model. media: a video (its features are fetched and
            cached first if needed).
        order: indices into the sampled frames ``[0, T)``, length ``T``.
        variant: the name of the order, part of the cache key (``reverse``, ``shuffle``...).
        base: the file's :class:`~vlm_cli.model.vlm.MediaInput` when the caller has already
            fetched it (not read again); None fetches it.

    Returns:
        ``(features, meta)``: ``[T', N, D]`` features (the dtype of the cached ones) and the
        other tensors of their entry (as :class:`~vlm_cli.model.vlm.MediaInput`'s
        ``vision_meta``).

    Raises:
        MediaError: the file cannot be decoded. ValueError: ``order`` does not index the
            sampled frames.
    """
    import torch

    from vlm_cli.features import VISION, decode_media, split_entry

    features = base if base is not None else store.fetch(media, audio=False).features
    count = len(features.vision_meta["timestamps"])
    if len(order) != count or not all(0 <= i < count for i in order):
        raise ValueError(f"{media.path}: frame order {order} does not index its {count} frames")
    name = store.encoder_name(VISION, media.kind)
    if store.sources[name].per_frame:
        return features.vision[torch.as_tensor(order)], features.vision_meta
    entry = store.cache.get(store.key(media, VISION, frame_order=variant))
    if entry is not None:
        return split_entry(entry[0])
    item = decode_media(store.request(media, [VISION]))[VISION]
    item["frames"] = item["frames"][order]
    encoded = store.encoders.encode(name, VISION, item)
    store.put(media, VISION, encoded, frame_order=variant)
    return split_entry(encoded.tensors)


def variant_input(pipeline: Any, case: Case) -> tuple[Any, Any, str]:
    """The model input of ``case``: ``(MediaInput, MediaFile, audio)`` where ``audio`` is
    ``used``, ``absent``, ``disabled`` (no audio branch), ``muted`` or ``swapped``."""
    ref = pipeline.media(case.item.media)
    media, info = pipeline.features(ref)
    audio = info.audio
    if case.variant in FRAME_VARIANTS:
        order = frame_order(case.variant, info.frames["count"])
        vision, meta = reordered_frames(pipeline.store, ref, order, case.variant, media)
        media = dataclasses.replace(media, vision=vision, vision_meta=meta)
    elif case.variant == "mute":
        media = dataclasses.replace(media, audio=None, audio_meta={})
        audio = "muted" if audio == "used" else audio
    elif case.variant == "swap-audio" and pipeline.has_audio:
        donor, donor_info = pipeline.features(pipeline.media(case.donor))
        media = dataclasses.replace(media, audio=donor.audio, audio_meta=donor.audio_meta)
        audio = "swapped" if donor_info.audio == "used" else "absent"
    return media, ref, audio


def run_probe(pipeline: Any, items: Sequence[QAItem], variants: Sequence[str], out: Path, *,
              labels: dict[Path, dict[str, str]] | None = None, batch_size: int = 16,
              max_new_tokens: int = 16, on_total: Callable[[int], None] | None = None,
              on_done: Callable[[int], None] | None = None,
              ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Answer every case of :func:`plan` not yet in ``out/probe.jsonl`` (greedy, batched),
    appending a row per answer: ``key``, ``question_id``, ``variant``, ``type``, ``question``,
    ``answer`` (the original's truth), ``truth`` (the variant's, or None), ``pred``, ``media``,
    ``donor``, ``audio``. A bad media file is recorded as an ``error`` row for each of its cases
    (retried by a re-run). ``on_total`` gets the number of cases left, ``on_done`` each batch's.

    Returns:
        ``(rows by key, notes)``.
    """
    from vlm_cli.errors import VlmError
    from vlm_cli.eval.run import read_predictions
    from vlm_cli.media.kinds import media_kind

    labels = labels or {}
    kinds = {i.media: media_kind(i.media) for i in items}
    cases, notes = plan(items, variants, kinds)
    if pipeline.store is None or not pipeline.has_audio:
        notes.append("the model has no audio branch: swap-audio and mute cannot change its input")
    path = out / "probe.jsonl"
    done = read_predictions(path, key="key", keep=lambda row: "error" not in row)
    todo = [c for c in cases if c.key not in done]
    if on_total is not None:
        on_total(len(todo))
    with open(path, "a") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            rows, questions = [], []
            for case in batch:
                item = case.item
                own = labels.get(item.media.resolve())
                donor = labels.get(case.donor.resolve()) if case.donor else None
                row = {"key": case.key, "question_id": item.question_id, "variant": case.variant,
                       "type": item.type, "question": item.question, "answer": item.answer,
                       "truth": item.answer if case.variant == ORIGINAL
                       else variant_truth(case.variant, item.type, own, donor),
                       "media": str(item.media), "donor": str(case.donor) if case.donor else None}
                try:
                    media, ref, audio = variant_input(pipeline, case)
                except VlmError as err:
                    rows.append({**row, "pred": None, "error": str(err)})
                    continue
                row["audio"] = audio
                rows.append(row)
                questions.append((media, ref, item.question))
            answers = iter(pipeline.answer_batch(questions, max_new_tokens=max_new_tokens)
                           if questions else [])
            for row in rows:
                if "error" not in row:
                    row["pred"] = next(answers)
                f.write(json.dumps(row) + "\n")
                done[row["key"]] = row
            f.flush()
            if on_done is not None:
                on_done(len(batch))
    return {c.key: done[c.key] for c in cases if c.key in done}, notes


def summarise(rows: dict[str, dict[str, Any]], variants: Sequence[str]) -> dict[str, Any]:
    """Per question type (and ``all``) and variant: ``n`` answered, ``changed`` (share whose
    normalised answer differs from the original's), ``known`` (cases with a known truth) and
    ``accuracy`` (contains-match against that truth; None when no truth is known). The
    ``original`` entry has the accuracy against the original truth."""
    original = {r["question_id"]: r for r in rows.values()
                if r["variant"] == ORIGINAL and "error" not in r}
    table: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows.values():
        if "error" in row or row["question_id"] not in original:
            continue
        for qtype in {row["type"], "all"}:
            table[qtype][row["variant"]].append(row)

    def summary(variant_rows: list[dict]) -> dict[str, Any]:
        changed = [normalise_answer(r["pred"]) != normalise_answer(
            original[r["question_id"]]["pred"]) for r in variant_rows]
        known = [r for r in variant_rows if r["truth"] is not None]
        hits = [bool(normalise_answer(r["truth"])) and normalise_answer(r["truth"])
                in normalise_answer(r["pred"]) for r in known]
        return {"n": len(variant_rows), "changed": sum(changed) / len(changed),
                "known": len(known), "accuracy": sum(hits) / len(hits) if hits else None}

    order = [ORIGINAL, *variants]
    return {qtype: {v: summary(by_variant[v]) for v in order if by_variant.get(v)}
            for qtype, by_variant in sorted(table.items())}


def write_chart(path: Path, summary: dict[str, Any], variants: Sequence[str]) -> None:
    """A PNG bar chart of the change rate by question type (groups) and variant (bars)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = [t for t in summary if t != "all"] + ["all"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(types), 3.2))
    width = 0.8 / max(len(variants), 1)
    for k, variant in enumerate(variants):
        values = [summary[t].get(variant, {}).get("changed", 0.0) for t in types]
        ax.bar([i + k * width for i in range(len(types))], values, width, label=variant)
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(types))], types)
    ax.set_ylim(0, 1)
    ax.set_ylabel("answers changed")
    ax.legend(fontsize="small", ncols=min(len(variants), 5), loc="upper center",
              bbox_to_anchor=(0.5, 1.18), frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(out: Path, summary: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """``report.json``: the summary of :func:`summarise` and the settings, written atomically."""
    report = {"summary": summary, **settings}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report
