"""Open-ended video QA scoring (MSVD-QA / MSRVTT-QA / TGIF-QA / ActivityNet-QA style).

Questions come in the Video-ChatGPT layout: a questions file (``video_name``, ``question``,
``question_id``, optionally ``type``) and an answers file (``question_id``, ``answer``). Answers are
scored by normalised exact match (lower case, punctuation and articles removed, whitespace
collapsed, as in the SQuAD / VQA evaluation scripts) and by contains-match (the normalised answer
appears in the normalised prediction), overall and per question ``type``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from collections import defaultdict
from pathlib import Path
from typing import Any

from vlm_cli.errors import DataError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


@dataclasses.dataclass(frozen=True)
class QAItem:
    """One question: id, media path, question text, reference answer, type (or "all")."""

    question_id: str
    media: Path
    question: str
    answer: str
    type: str = "all"


def load_qa(questions: Path, answers: Path | None = None,
            media_root: Path | None = None) -> list[QAItem]:
    """Read a QA set: Video-ChatGPT-layout files, or LLaVA-style JSON.

    Args:
        questions: ``[{"video_name", "question", "question_id", "type"?}]`` with a separate
            answers file; or LLaVA-style records ``{"id", "video", "conversations": [human,
            gpt, ...], "type"?}``, whose first human turn (placeholders removed) is the question
            and the gpt turn after it the answer.
        answers: ``[{"question_id", "answer"}]``; default: ``questions`` with ``questions``
            replaced by ``answers`` in its file name. Not read for LLaVA-style records.
        media_root: directory of the videos; default: a ``media/`` directory beside the
            questions' directory when there is one (the toy-av layout), else the questions'
            directory. Names without an extension are tried with the extensions of
            :data:`vlm_cli.data.records.VIDEO_NAME_EXTENSIONS`.

    Raises:
        DataError: unreadable files, missing keys, or a question without an answer.
    """
    from vlm_cli.data.records import load_records

    beside = questions.parent.parent / "media"
    root = media_root or (beside if beside.is_dir() else questions.parent)
    records = load_records(questions, root)
    by_id: dict[str, dict[str, Any]] = {}
    if any(not r.conversations for r in records):
        answers = answers or questions.with_name(questions.name.replace("questions", "answers"))
        try:
            answer_rows = json.loads(answers.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{answers}: cannot read answers ({err})") from err
        by_id = {str(a["question_id"]): a for a in answer_rows if "question_id" in a}
    items = []
    for record in records:
        row = record.raw
        if record.conversations:
            items.append(_llava_item(questions, record))
            continue
        qid = str(row.get("question_id", record.id))
        if qid not in by_id or "answer" not in by_id[qid]:
            raise DataError(f"{answers}: no answer for question_id {qid!r}")
        if "question" not in row or not record.media:
            raise DataError(f"{questions}: question {qid!r} needs 'question' and 'video_name'")
        items.append(QAItem(qid, record.media[0].path, row["question"],
                            str(by_id[qid]["answer"]),
                            str(row.get("type") or by_id[qid].get("type") or "all")))
    return items


def _llava_item(path: Path, record: Any) -> QAItem:
    """The first question and answer of a LLaVA-style record."""
    from vlm_cli.model.chat import MEDIA_TOKENS

    turns = record.conversations
    first = next((k for k, t in enumerate(turns) if t.get("from") == "human"), None)
    if first is None or first + 1 >= len(turns) or turns[first + 1].get("from") != "gpt" \
            or not record.media:
        raise DataError(f"{path}: record {record.id!r} needs a media file and a human turn "
                        "followed by a gpt turn")
    question = str(turns[first]["value"])
    for token in MEDIA_TOKENS:
        question = question.replace(token, "")
    return QAItem(str(record.id), record.media[0].path, question.strip(),
                  str(turns[first + 1]["value"]), str(record.raw.get("type") or "all"))


def score(items: list[QAItem], predictions: dict[str, str]) -> dict[str, Any]:
    """Accuracy of ``predictions`` (question id -> text): overall and per type, exact and
    contains-match, with counts."""
    per_type: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for item in items:
        pred, ref = normalise_answer(predictions[item.question_id]), normalise_answer(item.answer)
        hit = (pred == ref, bool(ref) and ref in pred)
        per_type[item.type].append(hit)
        if item.type != "all":
            per_type["all"].append(hit)

    def summary(rows: list[tuple[bool, bool]]) -> dict[str, Any]:
        return {"n": len(rows), "exact": sum(r[0] for r in rows) / len(rows),
                "contains": sum(r[1] for r in rows) / len(rows)}

    return {name: summary(rows) for name, rows in sorted(per_type.items())}
