"""``vlm eval``: greedy answers to a QA set, written as predictions keyed by question id, and a
report with the accuracy and every setting that affects it.

- Resumable: predictions are appended to ``predictions.jsonl`` as they are made; a re-run skips
  the question ids already there (a line cut short by a crash is dropped and redone).
- Batched: questions are answered ``batch_size`` at a time (left padding; same answers as one
  by one).
- Distributed: under ``accelerate launch`` process r answers questions r, r + N, ... into its own
  ``predictions.rank<r>.jsonl``; the main process merges them *by question id* (never by
  position, the bug of Video-LLaVA's multi-GPU eval) into ``predictions.jsonl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm_cli.atomic import atomic_write_text
from vlm_cli.eval.qa import QAItem, score


def read_predictions(path: Path, key: str = "question_id",
                     keep: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, dict[str, Any]]:
    """Rows of a JSONL file written one by one (predictions, verdicts, batch answers), by
    ``key``, for resuming: a truncated last line is dropped, and so are rows ``keep`` rejects
    (e.g. errors to retry); the file is rewritten (atomically) without them."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    good = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if keep is not None and not keep(row):
            continue
        done[str(row[key])] = row
        good.append(line)
    atomic_write_text(path, "".join(g + "\n" for g in good))
    return done


def answer_items(pipeline: Any, items: list[QAItem], out: Path, *, batch_size: int,
                 max_new_tokens: int, skip: set[str] = frozenset(),
                 on_done: Any = None) -> dict[str, dict[str, Any]]:
    """Answer ``items`` not yet in ``out`` (JSONL) nor in ``skip`` with a
    :class:`vlm_cli.pipeline.Pipeline` (greedy, batched), appending each prediction as it is
    made. The prompt is one user turn, :data:`vlm_cli.pipeline.PROMPT`.

    Returns:
        All predictions in ``out`` by question id.
    """
    done = read_predictions(out)
    todo = [item for item in items if item.question_id not in done and item.question_id not in skip]
    with open(out, "a") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            for item, pred in zip(batch, _answers(pipeline, batch, max_new_tokens)):
                row = {"question_id": item.question_id, "question": item.question,
                       "answer": item.answer, "pred": pred, "type": item.type}
                f.write(json.dumps(row) + "\n")
                done[item.question_id] = row
            f.flush()
            if on_done is not None:
                on_done(len(batch))
    return done


def predict(pipeline: Any, items: list[QAItem], *, max_new_tokens: int = 16,
            batch_size: int = 16) -> dict[str, str]:
    """Greedy answers to ``items`` by question id (as :func:`answer_items`, without a file)."""
    out = {}
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        out.update((i.question_id, p) for i, p in zip(batch, _answers(pipeline, batch,
                                                                      max_new_tokens)))
    return out


def _answers(pipeline: Any, items: list[QAItem], max_new_tokens: int) -> list[str]:
    """One batch of answers: each item's features (cached, else computed and cached), then one
    batched greedy generation."""
    questions = []
    for item in items:
        ref = pipeline.media(item.media)
        questions.append((pipeline.features(ref)[0], ref, item.question))
    return pipeline.answer_batch(questions, max_new_tokens=max_new_tokens)


def merge_predictions(out_dir: Path, items: list[QAItem]) -> dict[str, dict]:
    """Merge ``predictions.jsonl`` and every per-process file into ``predictions.jsonl``, in
    question order, by question id; the per-process files are then removed."""
    merged = read_predictions(out_dir / "predictions.jsonl")
    parts = sorted(out_dir.glob("predictions.rank*.jsonl"))
    for part in parts:
        merged.update(read_predictions(part))
    rows = [merged[i.question_id] for i in items if i.question_id in merged]
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    for part in parts:
        part.unlink()
    return {r["question_id"]: r for r in rows}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def model_identity(model_dir: Path) -> dict[str, Any]:
    """Which weights were evaluated: the sha256 of the run's own weight files, and the path /
    revision of what it references (encoders, base LLM); for a hub snapshot, its commit (which
    pins every file; a release's weights are not hashed again)."""
    from vlm_cli.model.families import read_config

    config = read_config(model_dir)
    if model_dir.parent.name == "snapshots":
        return {"path": str(model_dir.resolve()), "revision": model_dir.name}
    files = sorted(p for p in model_dir.rglob("*.safetensors") if "checkpoints" not in p.parts)
    return {"path": str(model_dir.resolve()),
            "weights_sha256": {str(p.relative_to(model_dir)): _sha256(p) for p in files},
            "llm_weights": config.get("llm_weights"), "llm_revision": config.get("llm_revision")}


def write_report(out_dir: Path, items: list[QAItem], predictions: dict[str, dict],
                 settings: dict[str, Any]) -> dict[str, Any]:
    """``report.json``: accuracy (exact, contains) overall and per type, n, and the settings."""
    answered = [i for i in items if i.question_id in predictions]
    report = {"accuracy": score(answered, {q: r["pred"] for q, r in predictions.items()}),
              "n": len(answered), "questions": len(items), **settings}
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


@dataclasses.dataclass
class EvalSettings:
    """Everything besides the model that changes the score."""

    data: str
    data_sha256: str
    frames: dict[str, Any]
    audio: dict[str, Any]
    prompt: str
    chat_template_sha256: str
    decoding: dict[str, Any]
