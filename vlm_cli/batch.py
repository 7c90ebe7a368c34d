"""``vlm ask --batch requests.jsonl``: many questions about many files, in one process.

Each line of the requests file is ``{"id", "media", "question"}`` (media relative to the file's
folder). Each answer is one JSON line, written as soon as its batch is done:
``{"id", "media", "question", "answer", "audio", "cache"}``, or ``{"id", "media", "question",
"error"}`` for a file that is missing or cannot be decoded, and the others go on. With an output
file the run is resumable: ids already answered are skipped, ids that failed are tried again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm_cli.errors import MediaError, UsageError

if TYPE_CHECKING:
    from vlm_cli.pipeline import Pipeline

KEYS = ("id", "media", "question")


def read_requests(path: Path) -> list[dict[str, str]]:
    """The requests of a JSONL file: ``id``, ``media`` (as written) and ``question``.

    Raises:
        UsageError: the file is missing, a line is not a JSON object with string ``id``,
            ``media`` and ``question``, or an id repeats (the message names the line).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--batch {path}: cannot read ({err})") from err
    requests, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}:{number}: invalid JSON ({err.msg})") from err
        if not isinstance(row, dict) or not all(isinstance(row.get(k), (str, int)) for k in KEYS):
            raise UsageError(f"{path}:{number}: expected an object with id, media and question")
        rid = str(row["id"])
        if rid in seen:
            raise UsageError(f"{path}:{number}: id {rid!r} appears twice")
        seen.add(rid)
        requests.append({"id": rid, "media": str(row["media"]), "question": str(row["question"])})
    return requests


def answer_requests(pipeline: Pipeline, requests: list[dict[str, str]], root: Path,
                    out: Path | None, *, audio: bool = True, batch_size: int = 8,
                    max_new_tokens: int = 64, text: bool = False) -> dict[str, int]:
    """Answer ``requests`` (:func:`read_requests`; media relative to ``root``) with
    ``pipeline`` (greedy, ``batch_size`` at a time), writing one JSON line per request to
    ``out`` (appended; resumable) or stdout. Progress goes to stderr. With ``text`` (several
    files on the command line, no ``--json``) each answer is one ``media: answer`` line on
    stdout instead, and an error one ``media: error: reason`` line on stderr.

    Returns:
        Counts: ``answered``, ``failed`` and ``skipped`` (answered by an earlier run).
    """
    from vlm_cli import console
    from vlm_cli.eval.run import read_predictions

    done = read_predictions(out, key="id", keep=lambda row: "answer" in row) if out else {}
    todo = [r for r in requests if r["id"] not in done]
    counts = {"answered": 0, "failed": 0, "skipped": len(requests) - len(todo)}
    sink = open(out, "a", encoding="utf-8") if out else sys.stdout
    try:
        with console.progress_bar("answers") as bar:
            task = bar.add_task("ask", total=len(todo))
            for start in range(0, len(todo), batch_size):
                rows = _answer(pipeline, todo[start:start + batch_size], root, audio,
                               max_new_tokens)
                for row in rows:
                    if not text:
                        sink.write(json.dumps(row) + "\n")
                    elif "error" in row:
                        console.warn(f"{row['media']}: error: {row['error']}")
                    else:
                        sink.write(f"{row['media']}: {row['answer']}\n")
                    counts["failed" if "error" in row else "answered"] += 1
                sink.flush()
                bar.advance(task, len(rows))
    finally:
        if out:
            sink.close()
    console.info(f"ask: {counts['answered']} answered, {counts['failed']} failed, "
                 f"{counts['skipped']} already answered" + (f"; answers in {out}" if out else ""))
    return counts


def _answer(pipeline: Pipeline, requests: list[dict[str, str]], root: Path, audio: bool,
            max_new_tokens: int) -> list[dict[str, Any]]:
    """One batch: features per file (a failure becomes that request's error record), then one
    batched generation for the rest, in request order."""
    ready, rows = [], {}
    for request in requests:
        try:
            ref = pipeline.media(root / request["media"])
            features, info = pipeline.features(ref, audio=audio)
        except (MediaError, UsageError) as err:  # unreadable, or over the model's limits
            rows[request["id"]] = {**request, "error": str(err)}
            continue
        ready.append((request, features, ref, info))
    answers = pipeline.answer_batch([(f, ref, r["question"]) for r, f, ref, _ in ready],
                                    max_new_tokens=max_new_tokens) if ready else []
    for (request, _, _, info), answer in zip(ready, answers):
        rows[request["id"]] = {**request, "answer": answer, "audio": info.audio,
                               "branches": info.branches, "cache": info.cache}
    return [rows[r["id"]] for r in requests]
