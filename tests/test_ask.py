"""`vlm ask`: answers, --json fields, cache hits, files without audio, audio-only files, chat."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from media_factory import SHARED_MEDIA, moving_frames, write_png, write_video
from micro import micro_recipe, trained_run
from vlm_cli.cli import run

VLM = str(Path(sys.executable).with_name("vlm"))

MICRO = micro_recipe(
    video_connector="{type: mlp, tokens_per_frame: 1}",
    train="  stage1: {freeze: [vision, audio], batch_size: 4, max_steps: 3, max_length: 128}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory, "ask", MICRO, clips=8, seed=4)


@pytest.fixture
def home(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VLM_MODEL", raising=False)
    return trained


def ask_json(capsys, *args) -> tuple[int, dict, str]:
    code = run(["ask", *args, "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else {}), out.err


def test_json_fields_and_cache_hit(home, capsys):
    clip = str(home / "toy" / "media" / "toyav-00001.mp4")
    model = ["--model", str(home / "run")]
    code, first, _ = ask_json(capsys, clip, "What sound is playing?", *model)
    assert code == 0
    assert {"answer", "model", "media", "frames", "audio", "cache", "timings"} <= set(first)
    assert first["frames"]["count"] == 4 and len(first["frames"]["timestamps"]) == 4
    assert first["audio"] == "used" and first["cache"] == "miss"
    # 4 CLIP frames, one token each (tokens_per_frame: 1): well within the budget.
    assert first["budget"] == {"frames_sampled": 4, "frames_used": 4, "pooled": "none",
                               "tokens": 4, "max_tokens": 128, "clip_windows": None,
                               "clip_frames": None, "padded_frames": 0}
    assert {"decode", "encode", "prefill", "generate", "tokens_per_s"} <= set(first["timings"])
    code, second, _ = ask_json(capsys, clip, "What colour is the shape?", *model)
    assert second["cache"] == "hit"
    spent = lambda r: r["timings"]["decode"] + r["timings"]["encode"]  # noqa: E731
    assert spent(second) * 5 < spent(first)
    code, third, _ = ask_json(capsys, clip, "What sound is playing?", *model, "--no-audio")
    assert third["audio"] == "disabled"
    # Greedy decoding is deterministic.
    assert ask_json(capsys, clip, "What sound is playing?", *model)[1]["answer"] == first["answer"]


def test_a_cached_clip_is_named_once_on_a_short_route(home, capsys, monkeypatch):
    """Following `vlm ask` on a cached clip (a profile of its calls): the file is hashed once
    and its kind decided once, and its features come from at most 8 files, commands/ask.py
    included (pipeline, features, keys, cache, media kinds, the token budget)."""
    from collections import Counter

    import vlm_cli
    from vlm_cli.pipeline import Pipeline

    clip = str(home / "toy" / "media" / "toyav-00004.mp4")
    args = ["ask", clip, "What sound is playing?", "--model", str(home / "run"), "--json"]
    assert run(args) == 0  # cached now
    capsys.readouterr()
    root = Path(vlm_cli.__file__).parent
    calls, route, following = Counter(), set(), [False]

    def profile(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(str(root)):
            calls[code.co_name] += 1
            if following[0]:
                route.add(Path(code.co_filename).relative_to(root).as_posix())

    def follow(method):
        def wrapped(*a, **k):
            following[0] = method is Pipeline.media or following[0]
            try:
                return method(*a, **k)
            finally:
                following[0] = method is Pipeline.media
        return wrapped

    monkeypatch.setattr(Pipeline, "media", follow(Pipeline.media))
    monkeypatch.setattr(Pipeline, "features", follow(Pipeline.features))
    sys.setprofile(profile)
    try:
        code = run(args)
    finally:
        sys.setprofile(None)
    assert code == 0 and json.loads(capsys.readouterr().out)["cache"] == "hit"
    assert calls["file_digest"] == 1 and calls["media_kind"] == 1
    assert len(route) + 1 <= 8, sorted(route)  # + commands/ask.py


def test_streams_plain_text(home, capsys):
    clip = str(home / "toy" / "media" / "toyav-00002.mp4")
    assert run(["ask", clip, "What shape is moving?", "--model", str(home / "run")]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and not out.startswith("{")


def test_file_without_audio_and_images_and_audio_only(home, tmp_path, capsys):
    write_video(tmp_path / "mute.mp4", moving_frames(12), fps=8)
    write_png(tmp_path / "still.png", moving_frames(1)[0])
    model = ["--model", str(home / "run")]
    code, mute, err = ask_json(capsys, str(tmp_path / "mute.mp4"), "What do you hear?", *model)
    assert code == 0 and mute["audio"] == "absent" and "no audio track" in err
    code, still, _ = ask_json(capsys, str(tmp_path / "still.png"), "What shape?", *model)
    assert code == 0 and still["frames"]["count"] == 1
    code, wav, _ = ask_json(capsys, str(SHARED_MEDIA / "dog_audio.wav"), "What sound?", *model)
    assert code == 0 and wav["audio"] == "used" and wav["frames"] is None


def test_no_model_and_bad_media(home, tmp_path, capsys):
    clip = str(home / "toy" / "media" / "toyav-00001.mp4")
    assert run(["ask", clip, "What?"]) == 2
    assert "make demo" in capsys.readouterr().err
    assert run(["ask", str(tmp_path / "nope.mp4"), "What?", "--model", str(home / "run")]) == 1
    err = capsys.readouterr().err
    assert err.strip().startswith("error:") and "file not found" in err and "\n" not in err.strip()


def test_chat_from_stdin(home, monkeypatch, capsys):
    clip = str(home / "toy" / "media" / "toyav-00003.mp4")
    monkeypatch.setattr(sys, "stdin", io.StringIO("What colour is the shape?\n/reset\n"
                                                  "What sound is playing?\n/quit\nignored\n"))
    assert run(["ask", clip, "--model", str(home / "run"), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["question"] for x in lines] == ["What colour is the shape?",
                                              "What sound is playing?"]


def eval_args(home: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(home / "run"), "--data",
            str(home / "toy" / "qa" / "test_questions.json"), "--out", str(out), "--json",
            "--batch-size", "3", *extra]


@pytest.mark.slow
def test_eval_report_resume_and_two_processes(home, tmp_path, capsys):
    assert run(eval_args(home, tmp_path / "one")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == report["questions"] == 4  # 1 test clip (8-clip set) x 4 types
    assert set(report["accuracy"]) == {"all", "sound", "colour", "shape", "direction"}
    for key in ("model", "data_sha256", "frames", "audio", "prompt", "chat_template_sha256",
                "decoding"):
        assert key in report, key
    assert report["decoding"] == {"strategy": "greedy", "max_new_tokens": 16}
    lines = (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {"question_id", "question", "answer", "pred"} <= set(
        json.loads(lines[0]))

    # Interrupted: 3 answers written, the 4th cut mid-line. The re-run completes the rest.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "predictions.rank0.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    assert run(eval_args(home, resumed)) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["accuracy"]
    assert (resumed / "predictions.jsonl").read_text().splitlines() == lines

    two = subprocess.run([str(Path(sys.executable).with_name("accelerate")), "launch",
                          "--multi_gpu", "--num_processes", "2", "--main_process_port", "29533",
                          "-m", "vlm_cli.cli", *eval_args(home, tmp_path / "two")],
                         capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "two" / "predictions.jsonl").read_text().splitlines() == lines


def test_eval_with_judge(home, tmp_path, capsys):
    from judge_factory import YES, make_constant_judge, make_random_judge

    judge = make_constant_judge(tmp_path / "judge", YES)
    assert run(eval_args(home, tmp_path / "judged", "--judge", str(judge))) == 0
    report = json.loads(capsys.readouterr().out)
    section = report["judge"]
    assert section["model"]["name"] == str(judge) and section["model"]["weights"]
    assert section["decoding"] == {"strategy": "greedy", "max_new_tokens": 32}
    assert len(section["prompt_sha256"]) == 64
    assert section["accuracy"]["all"] == {"n": 4, "invalid": 0, "yes": 1.0, "score": 5.0}
    preds = {json.loads(x)["question_id"]: json.loads(x)["pred"]
             for x in (tmp_path / "judged" / "predictions.jsonl").read_text().splitlines()}
    verdicts = [json.loads(x) for x in
                (tmp_path / "judged" / "judgements.jsonl").read_text().splitlines()]
    assert {v["question_id"]: v["pred"] for v in verdicts} == preds

    # Replies that are not JSON verdicts: counted as invalid, with a warning.
    noisy = make_random_judge(tmp_path / "noisy")
    assert run(eval_args(home, tmp_path / "judged", "--judge", str(noisy))) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["judge"]["accuracy"]["all"]["invalid"] == 4
    assert "not a valid JSON verdict" in out.err

    # A judge without a chat template: one line, exit 2.
    plain = make_random_judge(tmp_path / "plain", chat_template=False)
    assert run(eval_args(home, tmp_path / "judged", "--judge", str(plain))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no chat template" in err[0]


def test_batch_answers_good_files_reports_bad_ones_and_resumes(home, tmp_path, capsys):
    """`vlm ask --batch`: good clips answered, a missing and a corrupt file one error record
    each, and a re-run with --out answers nothing twice."""
    import shutil

    for i in (1, 2, 3):
        shutil.copy(home / "toy" / "media" / f"toyav-0000{i}.mp4", tmp_path / f"c{i}.mp4")
    (tmp_path / "corrupt.mp4").write_text("not a video")
    requests = [{"id": "a", "media": "c1.mp4", "question": "What sound is playing?"},
                {"id": "b", "media": "missing.mp4", "question": "What sound is playing?"},
                {"id": "c", "media": "c2.mp4", "question": "What colour is the shape?"},
                {"id": "d", "media": "corrupt.mp4", "question": "What shape is it?"},
                {"id": 5, "media": "c3.mp4", "question": "Which direction does it move?"}]
    batch = tmp_path / "requests.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in requests))
    model = ["--model", str(home / "run")]
    assert run(["ask", "--batch", str(batch), "--batch-size", "2", *model]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d", "5"]
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"b", "d"} and "missing.mp4" in errors["b"]
    answered = [r for r in rows if "answer" in r]
    assert all(r["audio"] == "used" and r["cache"] in ("hit", "miss") for r in answered)
    # One by one through the chat path: the same answers as the batch.
    for r in answered:
        code, single, _ = ask_json(capsys, str(tmp_path / r["media"]), r["question"], *model,
                                   "--max-new-tokens", "64")
        assert code == 0 and single["answer"] == r["answer"]

    out = tmp_path / "answers.jsonl"
    assert run(["ask", "--batch", str(batch), "--out", str(out), *model]) == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 5 and capsys.readouterr().out == ""
    (tmp_path / "missing.mp4").write_bytes((tmp_path / "c1.mp4").read_bytes())  # now present
    assert run(["ask", "--batch", str(batch), "--out", str(out), *model]) == 0
    assert "3 already answered" in capsys.readouterr().err
    again = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in again]
    assert sorted(ids) == ["5", "a", "b", "c", "d"]  # each id once: answered ones not redone
    assert "answer" in next(r for r in again if r["id"] == "b")  # the fixed file was retried
    assert "error" in next(r for r in again if r["id"] == "d")


def test_batch_file_errors_are_one_line(home, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "media": "x.mp4"}\n')
    assert run(["ask", "--batch", str(bad), "--model", str(home / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "bad.jsonl:1" in err[-1]
    assert run(["ask", "--batch", str(bad), "clip.mp4", "--model", str(home / "run")]) == 2


def test_several_clips_one_question_in_one_process(home, tmp_path, capsys):
    """`vlm ask a.mp4 b.mp4 ... QUESTION`: one line per clip, in order, the answers of one by
    one; --json gives one object per line; a bad file is reported and the exit code says so."""
    clips = [str(home / "toy" / "media" / f"toyav-0000{i}.mp4") for i in (1, 2, 3)]
    model = ["--model", str(home / "run")]
    assert run(["ask", *clips, "What sound is playing?", *model]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == clips
    for clip, line in zip(clips, lines):
        code, single, _ = ask_json(capsys, clip, "What sound is playing?", *model)
        assert code == 0 and line.split(": ", 1)[1] == single["answer"]
    assert run(["ask", *clips[:2], "What sound is playing?", "--json", *model]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["media"] for r in rows] == clips[:2] and all("answer" in r for r in rows)
    assert run(["ask", clips[0], str(tmp_path / "missing.mp4"), "What sound?", *model]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(clips[0] + ": ")
    assert "missing.mp4: error: " in captured.err and "1 of 2 files" in captured.err
    assert run(["ask", *clips, *model]) == 2  # several files and no question
    assert "put the question last" in capsys.readouterr().err


def test_an_audio_file_with_no_audio_is_one_clear_error(home, capsys):
    model = ["--model", str(home / "run")]
    assert run(["ask", str(SHARED_MEDIA / "dog_audio.wav"), "What do you hear?", "--no-audio",
                *model]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "nothing to answer from" in err[-1]
    clip = str(home / "toy" / "media" / "toyav-00001.mp4")  # in a batch: one error line, the rest go on
    assert run(["ask", clip, str(SHARED_MEDIA / "dog_audio.wav"), "What?", "--no-audio",
                *model]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(clip + ": ") and "nothing to answer from" in captured.err
