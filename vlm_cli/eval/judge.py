"""LLM-as-judge scoring of open-ended answers, after Video-ChatGPT's quantitative evaluation
(Maaz et al. 2023, §4 and ``quantitative_evaluation/evaluate_activitynet_qa.py``).

A local chat LLM reads the question, the reference answer and the prediction, and returns a
verdict: whether they match meaningfully (``yes`` / ``no``) and a 0-5 score. Where Video-ChatGPT
asks GPT-3.5 for a Python dict and ``ast.literal_eval``-s it, we ask for JSON and parse it strictly
(:func:`parse_verdict`): a reply that is not exactly such an object is recorded as *invalid* and
reported as such, never counted as a ``no``. Decoding is greedy (temperature 0), so a verdict is
reproducible for a given judge.

Judgements are appended to ``judgements.jsonl`` (one line per question id, with the prediction
judged and the judge's identity hash), so a re-run only judges what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from vlm_cli.atomic import atomic_write_text
from vlm_cli.errors import UsageError
from vlm_cli.eval.qa import QAItem

SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative "
    "outputs for question-answer pairs. Your task is to compare the predicted answer with the "
    "correct answer and determine if they match meaningfully. Here's how you can accomplish "
    "the task:\n------\n##INSTRUCTIONS:\n"
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer.")
USER_PROMPT = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\nCorrect Answer: {answer}\nPredicted Answer: {pred}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value "
    "between 0 and 5, with 5 indicating the highest meaningful match. Reply with a JSON object "
    "with keys \"pred\" and \"score\", where the value of \"pred\" is the string \"yes\" or "
    "\"no\" and the value of \"score\" is an integer. DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR "
    "EXPLANATION. For example, your response should look like this: "
    "{{\"pred\": \"yes\", \"score\": 4}}")
MAX_NEW_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A judge's verdict: ``match`` (the ``pred`` yes/no) and ``score`` (integer 0-5)."""

    match: bool
    score: int


def parse_verdict(text: str) -> Verdict:
    """Parse a judge reply strictly: a JSON object with exactly the keys ``pred`` (``"yes"`` or
    ``"no"``) and ``score`` (an integer 0-5), surrounded by nothing but whitespace.

    Raises:
        ValueError: anything else; the message says what is wrong.
    """
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg})") from None
    if not isinstance(obj, dict) or set(obj) != {"pred", "score"}:
        raise ValueError("expected an object with exactly the keys 'pred' and 'score'")
    pred, score = obj["pred"], obj["score"]
    if pred not in ("yes", "no"):
        raise ValueError(f"'pred' must be \"yes\" or \"no\", got {pred!r}")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 5:
        raise ValueError(f"'score' must be an integer from 0 to 5, got {score!r}")
    return Verdict(pred == "yes", score)


def judge_turns(question: str, answer: str, pred: str) -> list[dict[str, str]]:
    """The judge's conversation (LLaVA turns: a system message and one user message)."""
    return [{"from": "system", "value": SYSTEM_PROMPT},
            {"from": "human", "value": USER_PROMPT.format(question=question, answer=answer,
                                                          pred=pred)}]


class Judge:
    """A local chat LLM loaded for judging, and what identifies it in a report.

    Args:
        name: a vlm run or merged directory (its LLM and chat template are used, text only), or
            a local directory / cached hub id of a transformers causal LM whose tokenizer has a
            chat template. Nothing is downloaded.
        revision: hub revision for a hub id.
        device: torch device. dtype: torch dtype (default float32).

    Raises:
        UsageError: the model has no chat template. VlmError: a hub id not in the local cache.
    """

    def __init__(self, name: str, revision: str | None = None, *, device: str = "cpu",
                 dtype: Any = None) -> None:
        from vlm_cli.cache import FeatureCache
        from vlm_cli.hub import resolve_pretrained
        from vlm_cli.pipeline import Pipeline

        path = Path(name).expanduser()
        if (path / "recipe.yaml").is_file():  # a vlm run / merged directory
            from vlm_cli.eval.run import model_identity

            self.pipeline = Pipeline.load(str(path), device=device, dtype=dtype)
            self.identity: dict[str, Any] = {"name": name, **model_identity(path)}
        else:
            from transformers import AutoTokenizer

            from vlm_cli.model.families import Loaded
            from vlm_cli.model.llm import build_llm
            from vlm_cli.model.vlm import VideoLanguageModel
            from vlm_cli.recipe import LLMSpec, ModelSpec, Recipe

            directory, pinned = resolve_pretrained(name, revision, FeatureCache().file_digest)
            tokenizer = AutoTokenizer.from_pretrained(directory)
            if not tokenizer.chat_template:
                raise UsageError(f"--judge {name}: its tokenizer has no chat template; the judge "
                                 "must be a chat (instruction-tuned) model")
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            spec = LLMSpec(pretrained=str(directory))
            llm = build_llm(spec, tokenizer, weights=directory, dtype=dtype)
            model = VideoLanguageModel(ModelSpec(llm=spec), llm, tokenizer, {})
            model.to(device).eval()
            loaded = Loaded(Recipe(name=name, model=ModelSpec(llm=spec)), model, "causal-lm")
            self.pipeline = Pipeline(loaded, None, name, directory)
            self.identity = {"name": name, **pinned}
        self.model = self.pipeline.model
        template = self.model.tokenizer.chat_template or ""
        self.identity["chat_template_sha256"] = hashlib.sha256(template.encode()).hexdigest()
        self.settings = {"prompt_sha256": hashlib.sha256(
            (SYSTEM_PROMPT + USER_PROMPT).encode()).hexdigest(),
            "decoding": {"strategy": "greedy", "max_new_tokens": MAX_NEW_TOKENS}}
        self.key = hashlib.sha256(json.dumps([self.identity, self.settings],
                                             sort_keys=True).encode()).hexdigest()[:16]

    def replies(self, rows: list[tuple[str, str, str]]) -> list[str]:
        """Greedy replies to ``(question, answer, pred)`` triples, in order."""
        return self.pipeline.replies([judge_turns(*row) for row in rows],
                                     max_new_tokens=MAX_NEW_TOKENS)


def judge_predictions(judge: Judge, items: list[QAItem], predictions: dict[str, dict],
                      out: Path, *, batch_size: int, on_done: Any = None) -> dict[str, dict]:
    """Judge every answered item; rows already in ``out`` for the same prediction and judge are
    kept. ``out`` is rewritten atomically after each batch.

    Returns:
        question id -> ``{"question_id", "pred", "judge", "reply", "match", "score"}``, with
        ``match``/``score`` None and an ``error`` for a reply that is not a valid verdict.
    """
    from vlm_cli.eval.run import read_predictions

    done = read_predictions(out)  # any JSONL keyed by question id; a cut-off line is dropped
    todo = [i for i in items if i.question_id in predictions and not (
        i.question_id in done and done[i.question_id]["judge"] == judge.key
        and done[i.question_id]["pred"] == predictions[i.question_id]["pred"])]
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        replies = judge.replies([(i.question, i.answer, predictions[i.question_id]["pred"])
                                 for i in batch])
        for item, reply in zip(batch, replies):
            row = {"question_id": item.question_id, "pred": predictions[item.question_id]["pred"],
                   "judge": judge.key, "reply": reply, "match": None, "score": None}
            try:
                verdict = parse_verdict(reply)
                row.update(match=verdict.match, score=verdict.score)
            except ValueError as err:
                row["error"] = str(err)
            done[item.question_id] = row
        atomic_write_text(out, "".join(json.dumps(done[i.question_id]) + "\n" for i in items
                                       if i.question_id in done))
        if on_done is not None:
            on_done(len(batch))
    return {i.question_id: done[i.question_id] for i in items if i.question_id in done}


def judge_summary(items: list[QAItem], judgements: dict[str, dict]) -> dict[str, Any]:
    """Per question type (and ``all``): ``n`` judged, ``invalid`` replies, ``yes`` (share of
    valid verdicts that are ``yes``: Video-ChatGPT's accuracy) and mean ``score`` (of valid
    verdicts; None when there is none)."""
    per_type: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        if item.question_id in judgements:
            per_type[item.type].append(judgements[item.question_id])
            if item.type != "all":
                per_type["all"].append(judgements[item.question_id])

    def summary(rows: list[dict]) -> dict[str, Any]:
        valid = [r for r in rows if r["match"] is not None]
        return {"n": len(rows), "invalid": len(rows) - len(valid),
                "yes": sum(r["match"] for r in valid) / len(valid) if valid else None,
                "score": sum(r["score"] for r in valid) / len(valid) if valid else None}

    return {name: summary(rows) for name, rows in sorted(per_type.items())}
