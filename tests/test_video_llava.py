"""Video-LLaVA-7B-hf interop on a tiny checkpoint in exactly that format (tests/hf_fixtures.py):
our preprocessing equals transformers' VideoLlavaProcessor; our model package gives the logits and
greedy answer of transformers' VideoLlavaForConditionalGeneration; `vlm tune --from` the
checkpoint with LoRA, and `vlm merge-lora` writes a checkpoint that transformers loads back; the
same checkpoint from a (fake, local) hub, then offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from greedy import generate
from hf_fixtures import make_tiny_video_llava
from hub_server import FakeHub, client_env
from media_factory import SHARED_MEDIA, moving_frames, write_png, write_video

VLM = str(Path(sys.executable).with_name("vlm"))
CLIP = SHARED_MEDIA / "dog_barking.mp4"
QUESTION = "what sound is playing?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_video_llava(tmp_path_factory.mktemp("video-llava") / "tiny", seed=0)


@pytest.fixture(autouse=True)
def vlm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_HOME", str(tmp_path / "home"))


def transformers_side(checkpoint: Path, frames: np.ndarray | None = None,
                      image: np.ndarray | None = None):
    from transformers import VideoLlavaForConditionalGeneration, VideoLlavaProcessor

    processor = VideoLlavaProcessor.from_pretrained(checkpoint)
    model = VideoLlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    tag = "<video>" if frames is not None else "<image>"
    inputs = processor(text=f"USER: {tag}\n{QUESTION} ASSISTANT:",
                       videos=[list(frames)] if frames is not None else None,
                       images=[image] if image is not None else None, return_tensors="pt")
    return model, processor, inputs


def ours(checkpoint: Path, media: Path):
    from vlm_cli.cache import FeatureCache
    from vlm_cli.media.kinds import media_kind
    from vlm_cli.features import FeatureStore
    from vlm_cli.model.chat import encode_prompt
    from vlm_cli.model.families import load_model

    loaded = load_model(checkpoint)
    model = loaded.model
    store = FeatureStore(loaded.recipe, FeatureCache(), encoders=loaded.encoders)
    features, _ = store.fetch(media)
    ids = encode_prompt(model.tokenizer, [{"from": "human",
                                           "value": f"<{media_kind(media)}>\n{QUESTION}"}])
    return model, store, features, ids


def logits_of(model, ids, features) -> torch.Tensor:
    with torch.no_grad():
        embeds, mask, _ = model.embed([ids], [[features]])
        return model.llm(inputs_embeds=embeds, attention_mask=mask).logits


@pytest.mark.parametrize("shape", [(240, 320), (300, 200), (224, 224), (100, 150)])
def test_frame_preprocessing_equals_the_processor(checkpoint, shape):
    from transformers import VideoLlavaProcessor

    from vlm_cli.model.encoders import VisionEncoder
    from vlm_cli.model.families.video_llava_hf import recipe

    frames = np.random.default_rng(0).integers(0, 256, (8, *shape, 3), dtype=np.uint8)
    processor = VideoLlavaProcessor.from_pretrained(checkpoint)
    expected = processor.video_processor(videos=[list(frames)], return_tensors="pt")
    spec = recipe(checkpoint, str(checkpoint), None).model.vision
    got = VisionEncoder(spec, lambda p: "x", model=torch.nn.Identity()).preprocess(frames)
    assert torch.equal(got, expected["pixel_values_videos"][0])


def test_video_logits_and_greedy_answer_match_transformers(checkpoint):
    from vlm_cli.media import load_video

    model, store, features, ids = ours(checkpoint, CLIP)
    frames = load_video(CLIP, num_frames=8).frames
    reference, processor, inputs = transformers_side(checkpoint, frames=frames)
    assert ids == [t for i, t in enumerate(inputs["input_ids"][0].tolist())
                   if t != reference.config.video_token_index or
                   inputs["input_ids"][0, i - 1] != reference.config.video_token_index]
    assert torch.equal(store.encoder("vision").preprocess(frames),
                       inputs["pixel_values_videos"][0])
    with torch.no_grad():
        expected = reference(**inputs).logits
    got = logits_of(model, ids, features)
    assert got.shape == expected.shape  # 8 frames x (49 patches + CLS) spliced in
    assert (got - expected).abs().max().item() <= 1e-4
    theirs = reference.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.tokenizer.decode(theirs[0, inputs["input_ids"].shape[1]:],
                                        skip_special_tokens=True).strip()
    assert generate(model, ids, [features], max_new_tokens=8) == \
        theirs[0, inputs["input_ids"].shape[1]:].tolist()
    # The command line, end to end.
    out = subprocess.run([VLM, "ask", str(CLIP), QUESTION, "--model", str(checkpoint), "--json",
                          "--max-new-tokens", "8"], capture_output=True, text=True,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["answer"] == answer and result["frames"]["count"] == 8
    assert result["audio"] == "disabled"  # Video-LLaVA has no audio branch


def test_image_uses_the_image_tower_without_cls(checkpoint, tmp_path):
    rgb = moving_frames(1, 224, 224)[0]
    path = write_png(tmp_path / "still.png", rgb)
    model, _, features, ids = ours(checkpoint, path)
    assert features.vision.shape == (1, 49, 32)  # CLS dropped ("default" strategy)
    reference, _, inputs = transformers_side(checkpoint, image=rgb)
    with torch.no_grad():
        expected = reference(**inputs).logits
    assert (logits_of(model, ids, features) - expected).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_tune_lora_from_checkpoint_and_merge_back(checkpoint, tmp_path):
    from transformers import VideoLlavaForConditionalGeneration

    from vlm_cli.merge import probe_logits
    from vlm_cli.model.families import load_model
    from vlm_cli.model.families.vlm_run import load_run

    clips = tmp_path / "clips"
    clips.mkdir()
    rows = []
    for i in range(4):
        write_video(clips / f"c{i}.mp4", moving_frames(16, 120, 160), fps=8)
        rows.append({"id": str(i), "video": f"c{i}.mp4", "conversations": [
            {"from": "human", "value": "<video>\nwhat is moving?"},
            {"from": "gpt", "value": "a square"}]})
    (clips / "train.json").write_text(json.dumps(rows))
    env = dict(os.environ)
    tune = subprocess.run(
        [VLM, "tune", "video-llava-7b", "--from", str(checkpoint), "--data",
         str(clips / "train.json"), "--out", str(tmp_path / "run"), "--json",
         "train.stage2.lora={rank: 4, alpha: 8, dropout: 0.0}",
         "train.stage2.freeze=[vision, audio, llm]", "train.stage2.batch_size=2",
         "train.stage2.grad_accum=1", "train.stage2.max_steps=3", "train.stage2.lr=1e-2",
         "train.stage2.gradient_checkpointing=false", "train.stage2.max_length=1024"],
        capture_output=True, text=True, env=env)
    assert tune.returncode == 0, tune.stderr[-3000:]
    assert json.loads(tune.stdout)["trained"] == ["video_connector", "lora"]
    merge = subprocess.run([VLM, "merge-lora", str(tmp_path / "run"), "--out",
                            str(tmp_path / "merged"), "--verify", "--json"],
                           capture_output=True, text=True, env=env)
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert json.loads(merge.stdout)["max_abs_logit_diff_saved"] <= 1e-4

    _, unmerged = load_run(tmp_path / "run")
    merged = load_model(tmp_path / "merged").model
    base_probe = probe_logits(load_model(checkpoint).model)
    probe = probe_logits(unmerged)
    assert (probe - base_probe).abs().max().item() > 1e-3  # training changed the model
    assert (probe_logits(merged) - probe).abs().max().item() <= 1e-4

    # transformers' own class loads the merged checkpoint and agrees with our merged model.
    reference = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    _, store, features, ids = ours(tmp_path / "merged", CLIP)
    video = reference.config.video_token_index
    n = features.vision.shape[0] * features.vision.shape[1]
    expanded = []
    for t in ids:
        expanded += [video] * n if t == video else [t]
    from vlm_cli.media import load_video
    from vlm_cli.model.encoders import VisionEncoder

    frames = load_video(CLIP, num_frames=8).frames
    pixels = store.encoder("vision").preprocess(frames)[None]
    assert isinstance(store.encoder("vision"), VisionEncoder)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([expanded]),
                             pixel_values_videos=pixels).logits
    assert (logits_of(merged, ids, features) - expected).abs().max().item() <= 1e-4
    again = subprocess.run([VLM, "merge-lora", str(tmp_path / "run"), "--out",
                            str(tmp_path / "merged"), "--json"], capture_output=True, text=True,
                           env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] is True


@pytest.mark.slow
def test_from_the_hub_then_offline(checkpoint, tmp_path):
    with FakeHub() as hub:
        sha = hub.add_dir("org/tiny-video-llava", checkpoint)
        env = client_env(tmp_path / "hf", hub.url, VLM_HOME=str(tmp_path / "home"))

        def vlm(*args: str, **extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([VLM, *args], capture_output=True, text=True,
                                  env={**env, **extra}, timeout=300)

        missing = vlm("ask", str(CLIP), QUESTION, "--model", "org/tiny-video-llava")
        assert missing.returncode == 1
        assert "run `vlm download org/tiny-video-llava` first" in missing.stderr
        assert not [r for r in hub.requests if "/resolve/" in r[1]]  # nothing fetched

        got = vlm("download", "org/tiny-video-llava", "--json")
        assert got.returncode == 0 and json.loads(got.stdout)["commit"] == sha
        before = len(hub.requests)
        ask = vlm("ask", str(CLIP), QUESTION, "--model", "org/tiny-video-llava", "--json",
                  "--max-new-tokens", "4", HF_HUB_OFFLINE="1")
        assert ask.returncode == 0, ask.stderr[-2000:]
        assert json.loads(ask.stdout)["answer"] is not None
        assert len(hub.requests) == before  # no network access attempted

        other = tmp_path / "hf2"  # --download fetches what is missing, then answers
        fetched = subprocess.run(
            [VLM, "ask", str(CLIP), QUESTION, "--model", "org/tiny-video-llava", "--json",
             "--max-new-tokens", "4", "--download"], capture_output=True, text=True,
            env=client_env(other, hub.url, VLM_HOME=str(tmp_path / "home")), timeout=300)
        assert fetched.returncode == 0, fetched.stderr[-2000:]
        assert json.loads(fetched.stdout)["answer"] == json.loads(ask.stdout)["answer"]


def test_probe_on_the_checkpoint(checkpoint, tmp_path, capsys):
    """`vlm probe` on a Video-LLaVA-hf checkpoint: frame variants from its per-frame tower's
    cached features (nothing re-encoded), and the note that it has no audio branch."""
    from vlm_cli.cache import FeatureCache
    from vlm_cli.cli import run

    clips = [CLIP, SHARED_MEDIA / "boat.mp4"]
    data = tmp_path / "qa.json"
    data.write_text(json.dumps([
        {"id": f"q{i}", "video": str(c), "type": "motion", "conversations": [
            {"from": "human", "value": "<video>\nWhat is moving?"},
            {"from": "gpt", "value": "a dog"}]} for i, c in enumerate(clips)]))
    code = run(["probe", str(data), "--model", str(checkpoint), "--variants",
                "reverse,still,swap-audio", "--max-new-tokens", "3", "--out",
                str(tmp_path / "probe"), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert set(report["summary"]["motion"]) == {"original", "reverse", "still", "swap-audio"}
    assert any("no audio branch" in note for note in report["notes"])
    variants = [e for e in FeatureCache().entries() if "frame_order" in e.metadata]
    assert variants == []  # per-frame CLIP towers: the cached features, reordered
