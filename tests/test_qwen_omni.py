"""Qwen2.5-Omni (thinker) through the transformers-native family, on a tiny random checkpoint in
exactly the hub layout (tests/omni_fixtures.py), against the model card's own pipeline: PyPI's
``qwen-omni-utils`` ``process_mm_info`` (decord frames, its resize, librosa + soxr audio), the card's
system turn, the processor and greedy ``generate``. The greedy tokens of ``vlm ask`` equal it on
clips with and without sound, a picture and an audio file, at the default and other frame rates;
cached tower outputs give the same tokens and a second ask encodes nothing; an over-long clip is
refused before decoding; from a (fake, local) hub without the talker's shard, then offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from media_factory import SHARED_MEDIA, moving_frames, write_png
from micro import check_chat_reuses_its_cache, run_in_home, tune_and_merge, vlm_home
from omni_fixtures import card_answer as omni_card_answer
from omni_fixtures import load_reference, make_tiny_qwen_omni

VLM = str(Path(sys.executable).with_name("vlm"))
QUESTION = "What sound is playing?"
WITH_AUDIO = SHARED_MEDIA / "boat.mp4"  # 6 s, 592 x 336, AAC
SILENT = SHARED_MEDIA / "output_v_3V9tzjyr51I.mp4"  # 5 s, no audio track
AUDIO_FILE = SHARED_MEDIA / "dog_audio.wav"
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_qwen_omni(tmp_path_factory.mktemp("omni") / "tiny", seed=0)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return load_reference(checkpoint, "Qwen2_5OmniProcessor", "Qwen2_5OmniThinkerForConditionalGeneration")


def card_answer(reference, omni_utils, path: Path, kind: str, **kwargs) -> list[int]:
    """The model card's greedy answer (:func:`omni_fixtures.card_answer`) with the card's system
    turn."""
    from vlm_cli.model.families.native_table import QWEN_SYSTEM

    return omni_card_answer(reference, omni_utils, path, kind, system=QWEN_SYSTEM,
                            question=kwargs.pop("question", QUESTION),
                            new_tokens=kwargs.pop("new_tokens", NEW_TOKENS), **kwargs)


@pytest.fixture(scope="module")
def ask(checkpoint, tmp_path_factory):
    """``vlm ask FILE QUESTION --json ARGS`` in this process, one VLM_HOME for the module."""
    home = tmp_path_factory.mktemp("omni-ask-home")

    def run(path: Path, *args: str) -> dict:
        code, out = run_in_home(str(home), ["ask", str(path), QUESTION, "--model",
                                            str(checkpoint), "--json", "--max-new-tokens",
                                            str(NEW_TOKENS), *args])
        assert code == 0
        return json.loads(out)

    return run


@pytest.fixture(scope="module")
def family(checkpoint, tmp_path_factory):
    from vlm_cli.cache import FeatureCache
    from vlm_cli.features import FeatureStore
    from vlm_cli.model.families import load_model

    with vlm_home(tmp_path_factory.mktemp("omni-home")):
        loaded = load_model(checkpoint)
        assert loaded.family == "qwen2.5-omni"
        store = FeatureStore(loaded.recipe, FeatureCache(), encoders=loaded.encoders)
        yield loaded, store


def decoded(reference, ids: list[int]) -> str:
    return reference[0].tokenizer.decode(ids, skip_special_tokens=True).strip()


@pytest.mark.parametrize("path, kind, args, card, audio", [
    (WITH_AUDIO, "video", (), {}, "used"),
    (WITH_AUDIO, "video", ("--fps", "1", "--frames", "16"), {"fps": 1.0, "max_frames": 16},
     "used"),
    (WITH_AUDIO, "video", ("--fps", "2"), {"fps": 2.0}, "used"),
    (SHARED_MEDIA / "sample_demo_3.mp4", "video", (), {}, "used"),
    (SILENT, "video", (), {}, "absent"),
    (AUDIO_FILE, "audio", (), {}, "used"),
], ids=["boat", "boat-fps1-16", "boat-fps2", "demo3", "silent", "wav"])
def test_ask_answers_as_the_model_card(ask, reference, omni_utils, path, kind, args, card,
                                       audio):
    got = ask(path, *args)
    expected = card_answer(reference, omni_utils, path, kind, **card)
    assert got["audio"] == audio
    assert got["answer"] == decoded(reference, expected)
    assert got["timings"]["tokens"] == len(expected)
    again = ask(path, *args)  # the tower outputs from the cache: nothing encoded
    assert again["cache"] == "hit" and again["timings"]["encode"] == 0.0
    assert again["answer"] == got["answer"]


def test_ask_about_a_picture_as_the_model_card(ask, reference, omni_utils, tmp_path):
    picture = write_png(tmp_path / "still.png", moving_frames(1, 120, 200)[0])
    got = ask(picture)
    assert got["answer"] == decoded(reference, card_answer(reference, omni_utils, picture,
                                                           "image"))


def test_tokens_and_a_batch_equal_the_model_card(family, reference, omni_utils):
    """Token for token, one by one and in a left-padded batch that mixes a clip with its audio
    and one without (answered in two calls: their rope index takes one audio-in-video setting)."""
    from vlm_cli.model.families.native_table import QWEN_SYSTEM

    loaded, store = family
    turns = [{"from": "system", "value": QWEN_SYSTEM},
             {"from": "human", "value": f"<video>\n{QUESTION}"}]
    ids = loaded.model.encode_prompt(turns)
    media, _ = store.fetch(WITH_AUDIO)
    silent, _ = store.fetch(SILENT)
    expected = card_answer(reference, omni_utils, WITH_AUDIO, "video", new_tokens=8)
    assert loaded.model.generate_batch([ids], [[media]], max_new_tokens=8)[0] == expected
    both = loaded.model.generate_batch([ids, ids], [[media], [silent]], max_new_tokens=8)
    assert both[0] == expected
    assert both[1] == card_answer(reference, omni_utils, SILENT, "video", new_tokens=8)


def test_a_chat_keeps_its_cache_and_answers_as_a_fresh_prefill(family):
    """A follow-up question passes the conversation's KV cache to ``generate``
    (``past_key_values``): only its own tokens are prefilled, and its answer is the one a fresh
    prefill of the whole conversation gives."""
    loaded, store = family
    media, _ = store.fetch(WITH_AUDIO)
    check_chat_reuses_its_cache(loaded.model, media, [QUESTION, "Is it loud?"])


def test_an_over_long_clip_is_refused_before_decoding(family):
    from vlm_cli.errors import UsageError

    loaded, _ = family
    budget = loaded.check(WITH_AUDIO, fps=2.0, frames=768, audio=True)
    assert (budget.frames, budget.video) == (12, 6 * 12 * 21)  # the grids the processor makes
    assert abs(budget.audio - 152) <= 2  # from the header's duration (AAC adds a few ms)
    model = loaded.model
    model.context, saved = budget.total + 100, model.context
    try:
        with pytest.raises(UsageError, match="lower --fps or --frames or pass --no-audio"):
            loaded.check(WITH_AUDIO, fps=2.0, frames=768, audio=True)
    finally:
        model.context = saved


@pytest.mark.slow
def test_from_the_hub_without_the_talker_then_offline_ask(checkpoint, tmp_path):
    from hub_server import FakeHub, client_env

    with FakeHub() as hub:
        hub.add_dir("Qwen/Qwen2.5-Omni-3B", checkpoint)
        env = client_env(tmp_path / "hf", hub.url, VLM_HOME=str(tmp_path / "home"))
        got = subprocess.run([VLM, "download", "Qwen/Qwen2.5-Omni-3B", "--json"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert got.returncode == 0, got.stderr
        files = json.loads(got.stdout)["files"]
        assert "model-00003-of-00003.safetensors" not in files  # talker + token2wav only
        assert "spk_dict.pt" not in files
        fetched = [r[1] for r in hub.requests if "/resolve/" in r[1]]
        assert not any("model-00003-of" in r or "spk_dict" in r for r in fetched)
        ask = subprocess.run([VLM, "ask", str(WITH_AUDIO), QUESTION, "--model",
                              "Qwen/Qwen2.5-Omni-3B", "--json", "--max-new-tokens", "4"],
                             capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"},
                             timeout=300)
        assert ask.returncode == 0, ask.stderr[-2000:]
        result = json.loads(ask.stdout)
        assert result["audio"] == "used" and result["frames"]["count"] == 12
        assert "weights licence: qwen-research" in ask.stderr
        assert "[transformers]" not in ask.stderr
        silent = subprocess.run([VLM, "ask", str(SILENT), QUESTION, "--model",
                                 "Qwen/Qwen2.5-Omni-3B", "--max-new-tokens", "4"],
                                capture_output=True, text=True,
                                env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)
        assert silent.returncode == 0 and "no audio track" in silent.stderr


def test_conversation_labels_are_the_answers_and_im_end(family):
    from vlm_cli.model.chat import IGNORE_INDEX

    model = family[0].model
    turns = [{"from": "human", "value": "<video>\nWhat sound is playing?"},
             {"from": "gpt", "value": "a boat engine"},
             {"from": "human", "value": "Loud?"}, {"from": "gpt", "value": "yes"}]
    ids, labels = model.encode_conversation(turns, 4096)
    assert len(ids) == len(labels)
    spans = model.tokenizer.decode([t for t, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert spans == "a boat engine<|im_end|>yes<|im_end|>"
    prompt = model.encode_prompt(turns[:1])
    assert ids[:len(prompt)] == prompt  # the prompt is a prefix of the training conversation


@pytest.mark.slow
def test_tune_lora_then_merge_loads_in_transformers(checkpoint, omni_utils, tmp_path):
    """From the (fake) hub: `vlm download`, then offline `vlm tune --from` the hub id (LoRA on
    the language model, towers frozen, features from the cache; the talker's shard never
    fetched), `vlm merge-lora` into a thinker checkpoint that transformers' own classes load and
    that gives our merged model's logits; `vlm ask` on the merge."""
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from vlm_cli.merge import probe_logits
    from vlm_cli.model.families import load_model

    from hub_server import FakeHub, client_env

    with FakeHub() as hub:  # download (the thinker's shards), then everything offline
        hub.add_dir("Qwen/Qwen2.5-Omni-3B", checkpoint)
        env = client_env(tmp_path / "hf", hub.url, VLM_HOME=str(tmp_path / "home"))
        got = subprocess.run([VLM, "download", "Qwen/Qwen2.5-Omni-3B"], capture_output=True,
                             text=True, env=env, timeout=300)
        assert got.returncode == 0, got.stderr
    env["HF_HUB_OFFLINE"] = "1"
    tune, merge = tune_and_merge(env, "qwen2.5-omni-3b", "Qwen/Qwen2.5-Omni-3B", [WITH_AUDIO, SILENT],
                                 tmp_path, steps=3)
    assert tune["trained"] == ["lora"]
    assert merge["max_abs_logit_diff_saved"] <= 1e-4

    with vlm_home(env["VLM_HOME"]):  # in-process loads below: local directories
        base = load_model(checkpoint).model
        merged = load_model(tmp_path / "merged")
        assert merged.family == "qwen2.5-omni"
        assert (probe_logits(merged.model) - probe_logits(base)).abs().max().item() > 1e-3
        # transformers' own classes load the merge and agree with our merged model on a clip.
        processor = Qwen2_5OmniProcessor.from_pretrained(tmp_path / "merged")
        thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            tmp_path / "merged", dtype=torch.float32).eval()
        from vlm_cli.cache import FeatureCache
        from vlm_cli.features import FeatureStore
        from vlm_cli.model.families.native_table import QWEN_SYSTEM

        store = FeatureStore(merged.recipe, FeatureCache(), encoders=merged.encoders)
        media, _ = store.fetch(WITH_AUDIO)
        ids = merged.model.encode_prompt([{"from": "system", "value": QWEN_SYSTEM},
                                          {"from": "human", "value": f"<video>\n{QUESTION}"}])
        expected = card_answer((processor, thinker), omni_utils, WITH_AUDIO, "video",
                               new_tokens=8)
        assert merged.model.generate_batch([ids], [[media]], max_new_tokens=8)[0] == expected
    ask = subprocess.run([VLM, "ask", str(WITH_AUDIO), QUESTION, "--model",
                          str(tmp_path / "merged"), "--json", "--max-new-tokens", "4"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ask.returncode == 0, ask.stderr[-2000:]
    assert json.loads(ask.stdout)["audio"] == "used"


@pytest.mark.slow
def test_eval_then_rerun_encodes_nothing(checkpoint, tmp_path):
    data = tmp_path / "qa.json"
    data.write_text(json.dumps([
        {"id": "q1", "video": str(WITH_AUDIO), "type": "sound", "conversations": [
            {"from": "human", "value": "<video>\nWhat sound is playing?"},
            {"from": "gpt", "value": "engine"}]},
        {"id": "q2", "audio": str(AUDIO_FILE), "type": "sound", "conversations": [
            {"from": "human", "value": "<audio>\nWhat animal is it?"},
            {"from": "gpt", "value": "dog"}]}]))
    env = {**os.environ, "VLM_HOME": str(tmp_path / "home")}
    args = [VLM, "eval", "--data", str(data), "--model", str(checkpoint), "--max-new-tokens", "3",
            "--json"]
    first = subprocess.run([*args, "--out", str(tmp_path / "e1")], capture_output=True,
                           text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["n"] == 2
    cached = lambda: {p.name: p.stat().st_ino  # a rewrite is a new file; a read only touches it
                      for p in (tmp_path / "home").rglob("*.safetensors")}  # noqa: E731
    entries = cached()
    assert len(entries) == 3  # the clip's frames and audio, the audio file
    again = subprocess.run([*args, "--out", str(tmp_path / "e2")], capture_output=True,
                           text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert cached() == entries  # nothing encoded (nor rewritten) again
    assert json.loads(again.stdout)["accuracy"] == json.loads(first.stdout)["accuracy"]


@pytest.mark.slow
def test_probe_runs_on_the_family(checkpoint, tmp_path):
    """`vlm probe` works for Qwen2.5-Omni: frame variants re-encoded (its 2-frame patches see the
    order) and cached under keys of their own; the soundtrack swapped and muted."""
    data = tmp_path / "qa.json"
    data.write_text(json.dumps([
        {"id": f"q{i}", "video": str(clip), "type": "sound", "conversations": [
            {"from": "human", "value": "<video>\nWhat sound is playing?"},
            {"from": "gpt", "value": "engine"}]}
        for i, clip in enumerate((WITH_AUDIO, SHARED_MEDIA / "sample_demo_3.mp4"))]))
    env = {**os.environ, "VLM_HOME": str(tmp_path / "home")}
    out = subprocess.run([VLM, "probe", str(data), "--model", str(checkpoint), "--variants",
                          "reverse,swap-audio,mute", "--max-new-tokens", "3", "--out",
                          str(tmp_path / "probe"), "--json"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert set(report["summary"]["sound"]) == {"original", "reverse", "swap-audio", "mute"}
    rows = [json.loads(line) for line in (tmp_path / "probe" / "probe.jsonl").read_text()
            .splitlines()]
    assert {r["audio"] for r in rows if r["variant"] == "swap-audio"} == {"swapped"}
    assert {r["audio"] for r in rows if r["variant"] == "mute"} == {"muted"}


def test_bad_combinations_are_one_clear_error(family, checkpoint, tmp_path):
    """A placeholder of another kind than its file, a picture the processor refuses, and
    --frames with the family's rate sampling (the cap on the frames, not ignored)."""
    from vlm_cli.errors import DataError, MediaError
    from vlm_cli.pipeline import Pipeline

    loaded, store = family
    video, _ = store.fetch(WITH_AUDIO)
    ids = loaded.model.encode_prompt([{"from": "human", "value": f"<image>\n{QUESTION}"}])
    with pytest.raises(DataError, match="<image> placeholder for a video"):
        loaded.model.expand(ids, [video])
    strip = write_png(tmp_path / "strip.png", moving_frames(1, 10, 4000)[0])
    with pytest.raises(MediaError, match="refuses this picture"):
        loaded.check(strip, fps=2.0, frames=768, audio=True)
    with vlm_home(tmp_path / "home"):
        capped = Pipeline.load(str(checkpoint), frames=6)
    assert capped.store.sampling["vision"] == {"strategy": "fps", "fps": 2.0, "max_frames": 6}


def test_a_slow_video_is_placed_at_its_own_rate(family, tmp_path):
    """Frames 1 s apart (a 1 fps clip, every frame taken at --fps 2) are placed 1 s apart in
    TMRoPE time, not at the requested 2 fps."""
    from media_factory import write_video

    loaded, store = family
    clip = write_video(tmp_path / "slides.mp4", moving_frames(6, 64, 64), fps=1)
    media, info = store.fetch(clip)
    assert info["frames"]["count"] == 6
    assert float(media.vision_meta["second_per_grid"]) == pytest.approx(2.0, rel=0.05)


def test_preprocess_refuses_an_over_long_clip_before_decoding(family, tmp_path):
    """`vlm eval` / `probe` / `tune` preprocess first: a clip over the context is one failure
    record there, and nothing is decoded or cached for it."""
    from vlm_cli.cache import FeatureCache
    from vlm_cli.features import FeatureStore
    from vlm_cli.preprocess import preprocess

    loaded, _ = family
    model = loaded.model
    model.context, saved = 600, model.context
    try:
        with vlm_home(tmp_path / "home"):
            store = FeatureStore(loaded.recipe, FeatureCache(), encoders=loaded.encoders,
                                 check=loaded.check)
            summary = preprocess([WITH_AUDIO], store, workers=1)
            assert summary.computed == 0 and len(summary.failed) == 1
            assert "over the model's context" in summary.failed[0].reason
            assert not list(FeatureCache().entries())
    finally:
        model.context = saved


def test_a_training_batch_mixing_clips_with_and_without_audio_is_exact(family):
    """The loss of a batch that mixes a clip with its audio and one without equals the losses
    of the rows one by one (the rope index takes one audio-in-video setting per forward: the
    rows are run in groups)."""
    loaded, store = family
    model = loaded.model
    turns = [{"from": "human", "value": f"<video>\n{QUESTION}"},
             {"from": "gpt", "value": "a boat engine"}]
    ids, labels = model.encode_conversation(turns, 4096)
    with_audio, _ = store.fetch(WITH_AUDIO)
    silent, _ = store.fetch(SILENT)
    with torch.no_grad():
        both = model.forward([ids, ids], [labels, labels], [[with_audio], [silent]])
        one = model.forward([ids], [labels], [[with_audio]])
        other = model.forward([ids], [labels], [[silent]])
    assert both[1] == one[1] + other[1]
    assert torch.allclose(both[0], one[0] + other[0], rtol=1e-6)
