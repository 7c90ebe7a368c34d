"""Qwen2.5-Omni (thinker) on a tiny random checkpoint in exactly the hub layout
(tests/omni_fixtures.py): our family's logits equal transformers' own processor + thinker forward
for a video with its audio interleaved, a video without audio, an image and an audio file; cached
tower outputs give the same logits; an over-long clip is refused before decoding; from a (fake,
local) hub without the talker's shard, then offline `vlm ask --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from media_factory import SHARED_MEDIA, moving_frames, write_png
from micro import vlm_home
from omni_fixtures import make_tiny_qwen_omni

VLM = str(Path(sys.executable).with_name("vlm"))
QUESTION = "What sound is playing?"
WITH_AUDIO = SHARED_MEDIA / "boat.mp4"  # 6 s, 592 x 336, AAC
SILENT = SHARED_MEDIA / "output_v_3V9tzjyr51I.mp4"  # 5 s, no audio track
AUDIO_FILE = SHARED_MEDIA / "dog_audio.wav"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_qwen_omni(tmp_path_factory.mktemp("omni") / "tiny", seed=0)


@pytest.fixture(scope="module")
def reference(checkpoint):
    import transformers
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    transformers.logging.set_verbosity_error()
    processor = Qwen2_5OmniProcessor.from_pretrained(checkpoint)
    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float32).eval()
    return processor, thinker


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


def expected_logits(reference, kind: str, path: Path | None = None, frames=None, fps=2.0,
                    image=None, audio: bool = True) -> torch.Tensor:
    """transformers' own route: the processor on the frames (and the clip's own audio track,
    interleaved), then the thinker's forward."""
    from vlm_cli.media import NoAudio, load_audio

    processor, thinker = reference
    conversation = [{"role": "user", "content": [{"type": kind},
                                                 {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True,
                                           tokenize=False)
    kwargs: dict = {}
    track = load_audio(path) if path is not None and kind != "image" and audio else None
    wave = None if track is None or isinstance(track, NoAudio) else track.waveform.numpy()
    if kind == "video":
        kwargs.update(videos=[frames], videos_kwargs={"fps": fps, "cap_pixels_per_frame": True})
        if wave is not None:
            kwargs.update(audio=[wave], audio_from_video_indices=[0], load_audio_from_video=True)
    elif kind == "image":
        kwargs.update(images=[image])
    else:
        kwargs.update(audio=[wave])
    inputs = processor(text=prompt, return_tensors="pt", **kwargs)
    with torch.no_grad():
        return thinker(**inputs, use_audio_in_video=kind == "video" and wave is not None
                       ).logits[0].float()


def our_logits(family, path: Path, kind: str, audio: bool = True):
    loaded, store = family
    media, info = store.fetch(path, audio=audio)
    ids = loaded.model.encode_prompt([{"from": "human", "value": f"<{kind}>\n{QUESTION}"}])
    return loaded.model.logits(ids, [media]), info


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_video_with_its_audio_interleaved(family, reference):
    from vlm_cli.media import load_video

    frames = load_video(WITH_AUDIO, num_frames=None, fps=2.0, max_frames=768).frames
    expected = expected_logits(reference, "video", WITH_AUDIO, frames=frames)
    got, info = our_logits(family, WITH_AUDIO, "video")
    assert info["cache"] == "miss" and info["audio"] == "used"
    assert close(got, expected) <= 1e-4
    again, info = our_logits(family, WITH_AUDIO, "video")  # tower outputs from the cache
    assert info["cache"] == "hit" and torch.equal(again, got)


def test_video_without_audio_and_no_audio(family, reference):
    from vlm_cli.media import load_video

    frames = load_video(SILENT, num_frames=None, fps=2.0, max_frames=768).frames
    got, info = our_logits(family, SILENT, "video")
    assert info["audio"] == "absent"
    assert close(got, expected_logits(reference, "video", SILENT, frames=frames)) <= 1e-4
    frames = load_video(WITH_AUDIO, num_frames=None, fps=2.0, max_frames=768).frames
    got, info = our_logits(family, WITH_AUDIO, "video", audio=False)
    assert info["audio"] == "disabled"
    assert close(got, expected_logits(reference, "video", WITH_AUDIO, frames=frames,
                                      audio=False)) <= 1e-4


def test_image_and_audio_file(family, reference, tmp_path):
    rgb = moving_frames(1, 120, 200)[0]
    path = write_png(tmp_path / "still.png", rgb)
    got, _ = our_logits(family, path, "image")
    assert close(got, expected_logits(reference, "image", image=rgb)) <= 1e-4
    got, info = our_logits(family, AUDIO_FILE, "audio")
    assert info["audio"] == "used"
    assert close(got, expected_logits(reference, "audio", AUDIO_FILE)) <= 1e-4


def test_greedy_answer_matches_generate(family, reference):
    from vlm_cli.media import load_video

    loaded, store = family
    processor, thinker = reference
    media, _ = store.fetch(WITH_AUDIO)
    ids = loaded.model.encode_prompt([{"from": "human", "value": f"<video>\n{QUESTION}"}])
    frames = load_video(WITH_AUDIO, num_frames=None, fps=2.0, max_frames=768).frames
    from vlm_cli.media import load_audio

    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, videos=[frames],
                       videos_kwargs={"fps": 2.0, "cap_pixels_per_frame": True},
                       audio=[load_audio(WITH_AUDIO).waveform.numpy()],
                       audio_from_video_indices=[0], load_audio_from_video=True,
                       return_tensors="pt")
    theirs = thinker.generate(**inputs, use_audio_in_video=True, max_new_tokens=6,
                              do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    eos = processor.tokenizer.eos_token_id
    theirs = theirs[: theirs.index(eos)] if eos in theirs else theirs
    assert loaded.model.generate_batch([ids], [[media]], max_new_tokens=6)[0] == theirs
    # A batch mixing a clip with audio and one without gives each its own answer.
    silent, _ = store.fetch(SILENT)
    both = loaded.model.generate_batch([ids, ids], [[media], [silent]], max_new_tokens=6)
    assert both[0] == theirs
    assert both[1] == loaded.model.generate_batch([ids], [[silent]], max_new_tokens=6)[0]


def test_an_over_long_clip_is_refused_before_decoding(family):
    from vlm_cli.errors import UsageError

    loaded, _ = family
    budget = loaded.check(WITH_AUDIO, fps=2.0, frames=768, audio=True)
    assert (budget.frames, budget.video) == (13, 7 * 12 * 21)  # the grids the processor makes
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
        assert result["audio"] == "used" and result["frames"]["count"] == 13
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
def test_tune_lora_then_merge_loads_in_transformers(checkpoint, tmp_path):
    """From the (fake) hub: `vlm download`, then offline `vlm tune --from` the hub id (LoRA on
    the language model, towers frozen, features from the cache; the talker's shard never
    fetched), `vlm merge-lora` into a thinker checkpoint that transformers' own classes load and
    that gives our merged model's logits; `vlm ask` on the merge."""
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from vlm_cli.merge import probe_logits
    from vlm_cli.model.families import load_model

    from hub_server import FakeHub, client_env

    data = tmp_path / "train.json"
    data.write_text(json.dumps([
        {"id": str(i), "video": str(clip), "conversations": [
            {"from": "human", "value": "<video>\nWhat sound is playing?"},
            {"from": "gpt", "value": "a boat engine"}]}
        for i, clip in enumerate((WITH_AUDIO, SILENT))]))
    with FakeHub() as hub:  # download (the thinker's shards), then everything offline
        hub.add_dir("Qwen/Qwen2.5-Omni-3B", checkpoint)
        env = client_env(tmp_path / "hf", hub.url, VLM_HOME=str(tmp_path / "home"))
        got = subprocess.run([VLM, "download", "Qwen/Qwen2.5-Omni-3B"], capture_output=True,
                             text=True, env=env, timeout=300)
        assert got.returncode == 0, got.stderr
    env["HF_HUB_OFFLINE"] = "1"
    tune = subprocess.run(
        [VLM, "tune", "qwen2.5-omni-3b", "--from", "Qwen/Qwen2.5-Omni-3B", "--data", str(data),
         "--out", str(tmp_path / "run"), "--json",
         "train.stage2.lora={rank: 4, alpha: 8, dropout: 0.0}", "train.stage2.batch_size=2",
         "train.stage2.max_steps=3", "train.stage2.lr=1e-2", "train.stage2.max_length=4096"],
        capture_output=True, text=True, env=env, timeout=600)
    assert tune.returncode == 0, tune.stderr[-3000:]
    assert json.loads(tune.stdout)["trained"] == ["lora"]
    merge = subprocess.run([VLM, "merge-lora", str(tmp_path / "run"), "--out",
                            str(tmp_path / "merged"), "--verify", "--json"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert json.loads(merge.stdout)["max_abs_logit_diff_saved"] <= 1e-4

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
        from vlm_cli.media import load_video

        store = FeatureStore(merged.recipe, FeatureCache(), encoders=merged.encoders)
        frames = load_video(WITH_AUDIO, num_frames=None, fps=2.0, max_frames=768).frames
        expected = expected_logits((processor, thinker), "video", WITH_AUDIO, frames=frames)
        got, _ = our_logits((merged, store), WITH_AUDIO, "video")
        assert close(got, expected) <= 1e-4
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
