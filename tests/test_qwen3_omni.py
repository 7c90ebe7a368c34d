"""Qwen3-Omni's thinker as a table entry of the transformers-native family, on tiny random
checkpoints in exactly the hub layout (tests/qwen3_omni_fixtures.py), against the model card's
pipeline (qwen-omni-utils ``process_mm_info`` + the processor + greedy ``generate``): the greedy
tokens of ``vlm ask`` equal it on a clip with sound, a clip without, a picture and an audio file;
DeepStack features are cached with the tower outputs and a second ask encodes nothing; the
Thinking variant's reasoning is kept out of the answer; from a (fake) hub without the talker and
code2wav shards, then offline; tune with LoRA, merge, and transformers loads the merge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from media_factory import SHARED_MEDIA, moving_frames, write_png
from micro import run_in_home, tune_and_merge, vlm_home
from omni_fixtures import card_answer, load_reference
from qwen3_omni_fixtures import make_tiny_qwen3_omni

VLM = str(Path(sys.executable).with_name("vlm"))
QUESTION = "What sound is playing?"
WITH_AUDIO = SHARED_MEDIA / "boat.mp4"
SILENT = SHARED_MEDIA / "output_v_3V9tzjyr51I.mp4"
AUDIO_FILE = SHARED_MEDIA / "dog_audio.wav"
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_qwen3_omni(tmp_path_factory.mktemp("q3") / "instruct", seed=0)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return load_reference(checkpoint, "Qwen3OmniMoeProcessor", "Qwen3OmniMoeThinkerForConditionalGeneration")


def expected(reference, omni_utils, path: Path, kind: str, **kwargs) -> list[int]:
    """The card's greedy answer: no system turn (Qwen3-Omni's card sends none)."""
    return card_answer(reference, omni_utils, path, kind, system=None, question=QUESTION,
                       new_tokens=kwargs.pop("new_tokens", NEW_TOKENS), **kwargs)


@pytest.fixture(scope="module")
def ask(checkpoint, tmp_path_factory):
    home = tmp_path_factory.mktemp("q3-home")

    def run(path: Path, *args: str, model: Path | None = None) -> dict:
        code, out = run_in_home(str(home), ["ask", str(path), QUESTION, "--model",
                                            str(model or checkpoint), "--json",
                                            "--max-new-tokens", str(NEW_TOKENS), *args])
        assert code == 0
        return json.loads(out)

    return run


@pytest.mark.parametrize("path, kind, audio", [
    (WITH_AUDIO, "video", "used"),
    (SILENT, "video", "absent"),
    (AUDIO_FILE, "audio", "used"),
], ids=["boat", "silent", "wav"])
def test_ask_answers_as_the_model_card(ask, reference, omni_utils, path, kind, audio):
    got = ask(path)
    ids = expected(reference, omni_utils, path, kind)
    assert got["audio"] == audio
    assert got["answer"] == reference[0].tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert got["timings"]["tokens"] == len(ids)
    again = ask(path)
    assert again["cache"] == "hit" and again["timings"]["encode"] == 0.0
    assert again["answer"] == got["answer"]


def test_a_picture_and_deepstack_features_are_cached(ask, checkpoint, reference, omni_utils,
                                                     tmp_path):
    from vlm_cli.cache import FeatureCache
    from vlm_cli.features import FeatureStore
    from vlm_cli.model.families import load_model

    picture = write_png(tmp_path / "still.png", moving_frames(1, 120, 200)[0])
    got = ask(picture)
    ids = expected(reference, omni_utils, picture, "image")
    assert got["answer"] == reference[0].tokenizer.decode(ids, skip_special_tokens=True).strip()
    with vlm_home(tmp_path / "home"):
        loaded = load_model(checkpoint)
        assert loaded.family == "qwen3-omni"
        store = FeatureStore(loaded.recipe, FeatureCache(), encoders=loaded.encoders)
        media, info = store.fetch(WITH_AUDIO)
        assert info["cache"] == "miss"
        layers = len(reference[1].config.vision_config.deepstack_visual_indexes)
        assert media.vision_meta["deepstack"].shape == (layers, *media.vision.shape)
        again, info = store.fetch(WITH_AUDIO)
        assert info["cache"] == "hit" and torch.equal(again.vision_meta["deepstack"],
                                                      media.vision_meta["deepstack"])


def test_thinking_variant_keeps_its_reasoning_out_of_the_answer(tmp_path):
    from vlm_cli.pipeline import split_reasoning

    assert split_reasoning("<think>\nthe boat\n</think>\n\nAn engine.") == ("An engine.",
                                                                           "the boat")
    assert split_reasoning("An engine.") == ("An engine.", None)
    thinking = make_tiny_qwen3_omni(tmp_path / "thinking", seed=0, variant="thinking")
    code, out = run_in_home(str(tmp_path / "home"), ["ask", str(AUDIO_FILE), QUESTION,
                                                     "--model", str(thinking), "--json",
                                                     "--max-new-tokens", "8"])
    assert code == 0
    result = json.loads(out)
    assert "<think>" not in result["answer"] and "thinking" in result


@pytest.mark.slow
def test_from_the_hub_without_speech_shards_then_tune_merge_and_load(checkpoint, omni_utils,
                                                                    tmp_path):
    """download (the talker and code2wav shards never requested) -> offline ask -> tune LoRA on
    the language model (towers frozen, features from the cache) -> merge -> transformers loads
    the merge and matches -> ask on the merge."""
    from transformers import Qwen3OmniMoeProcessor, Qwen3OmniMoeThinkerForConditionalGeneration

    from hub_server import FakeHub, client_env
    from vlm_cli.cache import FeatureCache
    from vlm_cli.features import FeatureStore
    from vlm_cli.model.families import load_model

    repo = "Qwen/Qwen3-Omni-30B-A3B-Instruct"
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    speech = {shard for key, shard in index["weight_map"].items()
              if key.startswith(("talker.", "code2wav."))}
    with FakeHub() as hub:
        hub.add_dir(repo, checkpoint)
        env = client_env(tmp_path / "hf", hub.url, VLM_HOME=str(tmp_path / "home"))
        got = subprocess.run([VLM, "download", repo, "--json"], capture_output=True, text=True,
                             env=env, timeout=300)
        assert got.returncode == 0, got.stderr
        fetched = [r[1] for r in hub.requests if "/resolve/" in r[1]]
        assert speech and not any(shard in r for shard in speech for r in fetched)
    env["HF_HUB_OFFLINE"] = "1"
    ask = subprocess.run([VLM, "ask", str(WITH_AUDIO), QUESTION, "--model", repo, "--json",
                          "--max-new-tokens", "4"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert ask.returncode == 0, ask.stderr[-2000:]
    assert json.loads(ask.stdout)["audio"] == "used"
    tune_and_merge(env, "qwen3-omni-30b-a3b", repo, [WITH_AUDIO, SILENT], tmp_path)
    with vlm_home(env["VLM_HOME"]):
        merged = load_model(tmp_path / "merged")
        assert merged.family == "qwen3-omni"
        processor = Qwen3OmniMoeProcessor.from_pretrained(tmp_path / "merged")
        thinker = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(
            tmp_path / "merged", dtype=torch.float32).eval()
        store = FeatureStore(merged.recipe, FeatureCache(), encoders=merged.encoders)
        media, _ = store.fetch(WITH_AUDIO)
        ids = merged.model.encode_prompt([{"from": "human", "value": f"<video>\n{QUESTION}"}])
        assert merged.model.generate_batch([ids], [[media]], max_new_tokens=8)[0] == expected(
            (processor, thinker), omni_utils, WITH_AUDIO, "video", new_tokens=8)
    ask = subprocess.run([VLM, "ask", str(WITH_AUDIO), QUESTION, "--model",
                          str(tmp_path / "merged"), "--json", "--max-new-tokens", "4"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ask.returncode == 0, ask.stderr[-2000:]
