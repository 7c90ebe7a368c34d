"""`vlm eval --judge`: strict verdict parsing, judging with a local LLM, resumable judgements."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judge_factory import NO, YES, make_constant_judge, make_random_judge
from vlm_cli.eval.judge import Judge, judge_predictions, judge_summary, parse_verdict
from vlm_cli.eval.qa import QAItem


@pytest.mark.parametrize("text", ['{"pred": "yes", "score": 4}', ' {"score": 0, "pred": "no"}\n'])
def test_parse_valid_verdicts(text):
    verdict = parse_verdict(text)
    assert (verdict.match, verdict.score) == ((True, 4) if "yes" in text else (False, 0))


@pytest.mark.parametrize("text, reason", [
    ("{'pred': 'yes', 'score': 4}", "not JSON"),           # Video-ChatGPT's Python dict
    ('{"pred": "yes", "score": 4} because', "not JSON"),   # extra text
    ('{"pred": "yes"}', "exactly the keys"),
    ('{"pred": "yes", "score": 4, "why": "x"}', "exactly the keys"),
    ('{"pred": "Yes", "score": 4}', "'pred'"),
    ('{"pred": "yes", "score": 4.8}', "'score'"),           # the example in Video-ChatGPT's prompt
    ('{"pred": "yes", "score": "4"}', "'score'"),
    ('{"pred": "yes", "score": 6}', "'score'"),
    ('{"pred": "yes", "score": true}', "'score'"),
    ('["yes", 4]', "exactly the keys"),
])
def test_parse_rejects_anything_else(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_verdict(text)


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    root = tmp_path_factory.mktemp("judges")
    return {"yes": make_constant_judge(root / "yes", YES), "no": make_constant_judge(root / "no", NO),
            "random": make_random_judge(root / "random")}


ITEMS = [QAItem("q1", Path("a.mp4"), "What colour is the shape?", "red", "colour"),
         QAItem("q2", Path("b.mp4"), "What sound is playing?", "high tone", "sound"),
         QAItem("q3", Path("c.mp4"), "What shape is it?", "star", "shape")]
PREDS = {"q1": {"pred": "red"}, "q2": {"pred": "low tone"}, "q3": {"pred": "star"}}


def test_judgements_summary_and_resume(judges, tmp_path, monkeypatch):
    out = tmp_path / "judgements.jsonl"
    judge = Judge(str(judges["yes"]))
    assert judge.identity["name"] == str(judges["yes"]) and "model.safetensors" in \
        judge.identity["weights"]
    rows = judge_predictions(judge, ITEMS, PREDS, out, batch_size=2)
    assert [r["question_id"] for r in rows.values()] == ["q1", "q2", "q3"]
    assert all(r["match"] is True and r["score"] == 5 and r["reply"] == YES for r in rows.values())
    assert [json.loads(x)["pred"] for x in out.read_text().splitlines()] == ["red", "low tone",
                                                                           "star"]
    summary = judge_summary(ITEMS, rows)
    assert summary["all"] == {"n": 3, "invalid": 0, "yes": 1.0, "score": 5.0}
    assert summary["sound"]["n"] == 1

    # A re-run judges nothing; a changed prediction is judged again, and only it.
    asked = []
    real = judge.replies
    monkeypatch.setattr(judge, "replies", lambda r: asked.extend(r) or real(r))
    judge_predictions(judge, ITEMS, PREDS, out, batch_size=2)
    assert asked == []
    judge_predictions(judge, ITEMS, {**PREDS, "q2": {"pred": "high tone"}}, out, batch_size=2)
    assert asked == [("What sound is playing?", "high tone", "high tone")]

    # Another judge does not reuse these verdicts.
    no = judge_predictions(Judge(str(judges["no"])), ITEMS, PREDS, out, batch_size=8)
    assert judge_summary(ITEMS, no)["all"] == {"n": 3, "invalid": 0, "yes": 0.0, "score": 0.0}


def test_invalid_replies_are_counted_not_scored(judges, tmp_path):
    rows = judge_predictions(Judge(str(judges["random"])), ITEMS, PREDS,
                             tmp_path / "j.jsonl", batch_size=3)
    assert all(r["match"] is None and r["score"] is None and r["error"] for r in rows.values())
    assert judge_summary(ITEMS, rows)["all"] == {"n": 3, "invalid": 3, "yes": None,
                                                 "score": None}
