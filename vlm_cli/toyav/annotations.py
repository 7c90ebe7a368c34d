"""Annotation files of toy-av: ground truth, stage-1 captions, stage-2 conversations, QA splits.

Formats (``../../shared/design.md``): LLaVA / Video-LLaVA JSON for training
(``{"id", "video", "conversations": [{"from": "human"|"gpt", "value"}]}``) and the Video-ChatGPT /
MSVD-QA layout for evaluation (``questions``: ``video_name``, ``question``, ``question_id``;
``answers``: ``question_id``, ``answer``). Answers are exactly the vocabulary words, so exact-match
scoring works. Phrasings are drawn per clip from a seeded RNG, so the files are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from vlm_cli.toyav.world import ClipSpec

#: Question phrasings per attribute type, shared by stage 2 and the QA files.
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "sound": (
        "What sound is playing?",
        "What do you hear?",
        "Which sound can be heard in this video?",
        "What does the audio sound like?",
    ),
    "colour": (
        "What colour is the shape?",
        "What color is the moving object?",
        "Which colour does the shape have?",
    ),
    "shape": (
        "What shape is moving?",
        "What kind of shape do you see?",
        "Which shape is shown in the video?",
    ),
    "direction": (
        "Which direction does the shape move?",
        "Where is the object moving?",
        "In which direction is the shape moving?",
    ),
}
QUESTION_TYPES: tuple[str, ...] = ("sound", "colour", "shape", "direction")

#: Stage-1 caption prompts (human turn after ``<video>\n``).
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe this video.",
    "What happens in this video?",
    "Describe what you see and hear.",
    "Give a short caption for this clip.",
    "Summarize the video and its sound.",
)
VIDEO_TOKEN = "<video>"
_TAG_TEXT = 0x7E47


def caption(spec: ClipSpec) -> str:
    """One-sentence caption, e.g. ``"A red circle moves left while a low tone plays."``."""
    scene = f"A {spec.colour} {spec.shape} moves {spec.direction}"
    if spec.sound == "silence":
        return f"{scene} in silence."
    return f"{scene} while a {spec.sound} plays."


def answer(spec: ClipSpec, qtype: str) -> str:
    """The exact answer word(s) of ``spec`` for a question of ``qtype`` (one of :data:`QUESTION_TYPES`)."""
    values = {"sound": spec.sound, "colour": spec.colour, "shape": spec.shape, "direction": spec.direction}
    return values[qtype]


def _text_rng(seed: int, spec: ClipSpec, purpose: int) -> np.random.Generator:
    return np.random.default_rng([_TAG_TEXT, seed, spec.index, purpose])


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def stage1_records(specs: Iterable[ClipSpec], seed: int) -> list[dict[str, Any]]:
    """Stage-1 caption pairs (one per clip): ``{"id", "video", "conversations": [human, gpt]}``."""
    out = []
    for spec in specs:
        prompt = _choice(_text_rng(seed, spec, 1), CAPTION_PROMPTS)
        out.append(
            {
                "id": spec.id,
                "video": f"media/{spec.id}.mp4",
                "conversations": [
                    {"from": "human", "value": f"{VIDEO_TOKEN}\n{prompt}"},
                    {"from": "gpt", "value": caption(spec)},
                ],
            }
        )
    return out


def stage2_records(specs: Iterable[ClipSpec], seed: int) -> list[dict[str, Any]]:
    """Stage-2 instruction data: 2-4 question/answer rounds per clip, each about a different attribute.

    The first human turn starts with ``"<video>\\n"``; turns alternate human/gpt; answers are the
    attribute words (``"low tone"``, ``"red"``, ``"circle"``, ``"left"``).
    """
    out = []
    for spec in specs:
        rng = _text_rng(seed, spec, 2)
        rounds = int(rng.integers(2, 5))
        types = [QUESTION_TYPES[i] for i in rng.permutation(len(QUESTION_TYPES))[:rounds]]
        turns = []
        for k, qtype in enumerate(types):
            question = _choice(rng, QUESTION_TEMPLATES[qtype])
            prefix = f"{VIDEO_TOKEN}\n" if k == 0 else ""
            turns.append({"from": "human", "value": prefix + question})
            turns.append({"from": "gpt", "value": answer(spec, qtype)})
        out.append({"id": spec.id, "video": f"media/{spec.id}.mp4", "conversations": turns})
    return out


def qa_records(specs: Iterable[ClipSpec], seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Video-ChatGPT style (questions, answers): one question per type per clip, ids ``<id>-<type>``."""
    questions, answers = [], []
    for spec in specs:
        rng = _text_rng(seed, spec, 3)
        for qtype in QUESTION_TYPES:
            qid = f"{spec.id}-{qtype}"
            questions.append(
                {
                    "video_name": spec.id,
                    "question": _choice(rng, QUESTION_TEMPLATES[qtype]),
                    "question_id": qid,
                    "type": qtype,
                }
            )
            answers.append({"question_id": qid, "answer": answer(spec, qtype), "type": qtype})
    return questions, answers


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as UTF-8 JSON (indent 1, trailing newline), creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_annotations(root: Path, specs: Sequence[ClipSpec], seed: int) -> list[str]:
    """Write ``clips.jsonl``, ``stage1.json``, ``stage2.json`` and ``qa/<split>_{questions,answers}.json``.

    ``specs`` are all clips; the training files use the train split, QA files val/test/probe.
    Returns the written paths relative to ``root`` (POSIX style), in a fixed order.
    """
    lines = "".join(json.dumps(s.record(), ensure_ascii=False) + "\n" for s in specs)
    (root / "clips.jsonl").write_text(lines, encoding="utf-8")
    written = ["clips.jsonl"]
    train = [s for s in specs if s.split == "train"]
    write_json(root / "stage1.json", stage1_records(train, seed))
    write_json(root / "stage2.json", stage2_records(train, seed))
    written += ["stage1.json", "stage2.json"]
    for split in ("val", "test", "probe"):
        questions, answers = qa_records([s for s in specs if s.split == split], seed)
        write_json(root / "qa" / f"{split}_questions.json", questions)
        write_json(root / "qa" / f"{split}_answers.json", answers)
        written += [f"qa/{split}_questions.json", f"qa/{split}_answers.json"]
    return written
