"""Stages 1 and 2 on a micro recipe: run directories, LoRA, resume after kill -9, 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from micro import TRAIN_RECIPE, micro_world, run_in_home, run_killed_at
from vlm_cli.cli import run

VLM = str(Path(sys.executable).with_name("vlm"))
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]  # also where no script is

MICRO = TRAIN_RECIPE


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 12-clip toy-av set, preprocessed once under its own VLM_HOME, and the micro recipe."""
    root, env = micro_world(tmp_path_factory, "train", MICRO, clips=12, seed=1)
    code, _ = run_in_home(env["VLM_HOME"], ["preprocess", str(root / "toy" / "clips.jsonl"),
                                            "--recipe", str(root / "micro.yaml")])
    assert code == 0
    return root, env


def pretrain_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", str(root / "micro.yaml"), "--data", str(root / "toy" / "stage1.json"),
            "--out", str(out), "--json", *extra]


def weights(run_dir: Path) -> dict:
    out = {f"connectors.{k}": v for k, v in load_file(run_dir / "connectors.safetensors").items()}
    if (run_dir / "llm" / "model.safetensors").exists():
        out.update({f"llm.{k}": v for k, v in load_file(run_dir / "llm" / "model.safetensors")
                    .items()})
    return out


def test_stage1_then_lora_stage2(world, tmp_path, monkeypatch, capsys):
    root, env = world
    monkeypatch.setenv("VLM_HOME", env["VLM_HOME"])
    assert run(pretrain_args(root, tmp_path / "s1")) == 0
    s1 = json.loads(capsys.readouterr().out)
    assert s1["steps"] == 6 and s1["trained"] == ["video_connector", "audio_connector", "llm"]
    rows = [json.loads(x) for x in (tmp_path / "s1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["loss"] == pytest.approx(4.40, abs=0.15)  # pinned: ~ln(vocab) at init
    assert rows[-1]["loss"] < rows[0]["loss"]
    for name in ("recipe.yaml", "config.json", "tokenizer", "connectors.safetensors", "llm",
                 "loss.png", "checkpoints"):
        assert (tmp_path / "s1" / name).exists(), name

    assert run(["tune", str(root / "micro.yaml"), "--from", str(tmp_path / "s1"), "--data",
                str(root / "toy" / "stage2.json"), "--out", str(tmp_path / "s2"), "--json"]) == 0
    s2 = json.loads(capsys.readouterr().out)
    assert s2["trained"] == ["video_connector", "audio_connector", "lora"]
    adapter = json.loads((tmp_path / "s2" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and adapter["peft_type"] == "LORA"
    assert (tmp_path / "s2" / "adapter" / "adapter_model.safetensors").exists()
    config = json.loads((tmp_path / "s2" / "config.json").read_text())
    assert config["adapter"] and not (tmp_path / "s2" / "llm").exists()  # referenced, not copied
    assert config["llm_weights"] == str((tmp_path / "s1" / "llm").resolve())

    from vlm_cli.eval.qa import load_qa
    from vlm_cli.eval.run import predict
    from vlm_cli.pipeline import Pipeline

    items = load_qa(root / "toy" / "qa" / "test_questions.json")[:2]
    preds = predict(Pipeline.load(str(tmp_path / "s2")), items, max_new_tokens=3)
    assert set(preds) == {i.question_id for i in items}


def test_existing_run_needs_resume(world, tmp_path, monkeypatch, capsys):
    root, env = world
    monkeypatch.setenv("VLM_HOME", env["VLM_HOME"])
    assert run(pretrain_args(root, tmp_path / "r")) == 0
    assert run(pretrain_args(root, tmp_path / "r")) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert run(pretrain_args(tmp_path, tmp_path / "x")) == 2  # no such recipe file
    assert run(pretrain_args(root, tmp_path / "r2", "train.stage1.freeze=[audio]")) == 2
    assert "must include 'vision'" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_kill_9_is_bit_exact(world, tmp_path):
    root, env = world
    steps = ["train.stage1.max_steps=40", "train.stage1.log_every=10"]
    reference = subprocess.run([VLM, *pretrain_args(root, tmp_path / "ref", *steps)],
                               capture_output=True, text=True, env=env)
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "killed"
    code = run_killed_at(8, pretrain_args(root, killed, *steps, "train.stage1.save_every=1"), env)
    assert code == -9, "the run was not killed at step 8"
    assert not (killed / "config.json").exists()  # killed midway: no final artefacts
    resumed = subprocess.run([VLM, *pretrain_args(root, killed, *steps, "--resume")],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == 8
    ref, got = weights(tmp_path / "ref"), weights(killed)
    assert ref.keys() == got.keys()
    assert all((ref[k] == got[k]).all() for k in ref), "resumed weights differ"
    steps_logged = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text()
                    .splitlines()]
    assert steps_logged == sorted(set(steps_logged))  # no duplicate lines after the resume


@pytest.mark.slow
def test_two_processes_match_one(world, tmp_path):
    root, env = world
    extra = ["train.stage1.max_steps=20"]
    one = subprocess.run([VLM, *pretrain_args(root, tmp_path / "one", *extra)],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([*ACCELERATE, "--multi_gpu", "--num_processes", "2",
                          "--main_process_port", "29517", "-m", "vlm_cli.cli",
                          *pretrain_args(root, tmp_path / "two", *extra)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads(two.stdout.strip().splitlines()[-1])["processes"] == 2
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_gradient_checkpointing_gives_the_same_step(world, tmp_path, monkeypatch, capsys):
    root, env = world
    monkeypatch.setenv("VLM_HOME", env["VLM_HOME"])
    extra = ["train.stage1.max_steps=2", "train.stage1.log_every=1"]
    assert run(pretrain_args(root, tmp_path / "plain", *extra)) == 0
    assert run(pretrain_args(root, tmp_path / "ckpt", *extra,
                             "train.stage1.gradient_checkpointing=true")) == 0
    capsys.readouterr()
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ckpt")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_siglip_vision_encoder(tmp_path):
    import numpy as np

    from vlm_cli.cache import FeatureCache
    from vlm_cli.model.encoders import VisionEncoder
    from vlm_cli.recipe import VisionEncoderSpec

    spec = VisionEncoderSpec(arch="siglip", config={
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 32, "patch_size": 16})
    encoder = VisionEncoder(spec, FeatureCache(tmp_path).file_digest)
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 60, 3), dtype=np.uint8)
    assert tuple(encoder.encode_frames(frames).shape) == (3, 4, 32)  # no CLS token to drop


def lora_run(root: Path, tmp_path: Path) -> Path:
    """Stage 1 into tmp_path/s1, then a LoRA stage 2 into tmp_path/s2 (returned)."""
    assert run(pretrain_args(root, tmp_path / "s1")) == 0
    assert run(["tune", str(root / "micro.yaml"), "--from", str(tmp_path / "s1"), "--data",
                str(root / "toy" / "stage2.json"), "--out", str(tmp_path / "s2")]) == 0
    return tmp_path / "s2"


def test_merge_lora_is_self_contained_and_matches(world, tmp_path, monkeypatch, capsys):
    import shutil

    root, env = world
    monkeypatch.setenv("VLM_HOME", env["VLM_HOME"])
    lora_run(root, tmp_path)
    assert run(["merge-lora", str(tmp_path / "s1"), "--out", str(tmp_path / "x")]) == 2
    capsys.readouterr()
    assert run(["merge-lora", str(tmp_path / "s2"), "--out", str(tmp_path / "merged"),
                "--verify", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_logit_diff_fp32"] < 1e-4 and not summary["skipped"]
    assert run(["merge-lora", str(tmp_path / "s2"), "--out", str(tmp_path / "merged"),
                "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"]  # a second merge is a no-op
    merged = tmp_path / "merged"
    assert not (merged / "adapter").exists() and (merged / "README.md").exists()
    assert json.loads((merged / "config.json").read_text())["llm_weights"] == "llm"
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(merged, moved)  # self-contained: works after a move
    questions = str(root / "toy" / "qa" / "test_questions.json")
    preds = {}
    for name, model in (("adapter", tmp_path / "s2"), ("merged", moved)):
        assert run(["eval", "--model", str(model), "--data", questions, "--out",
                    str(tmp_path / f"eval-{name}"), "--json"]) == 0
        capsys.readouterr()
        preds[name] = [json.loads(x)["pred"] for x in
                       (tmp_path / f"eval-{name}" / "predictions.jsonl").read_text().splitlines()]
    assert preds["adapter"] == preds["merged"]


def test_merge_refuses_a_changed_base(world, tmp_path, monkeypatch, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    root, env = world
    monkeypatch.setenv("VLM_HOME", env["VLM_HOME"])
    lora_run(root, tmp_path)
    config = json.loads((tmp_path / "s2" / "config.json").read_text())
    assert set(config["llm_sha256"]) == {"model.safetensors"}
    weights = tmp_path / "s1" / "llm" / "model.safetensors"
    state = load_file(weights)
    first = next(iter(state))
    state[first] = state[first] + torch.ones_like(state[first])  # the base changes afterwards
    save_file(state, weights, metadata={"format": "pt"})
    capsys.readouterr()
    assert run(["merge-lora", str(tmp_path / "s2"), "--out", str(tmp_path / "m")]) == 2
    assert "not the one the adapter was trained on" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("arch", ["clip", "siglip"])
def test_vision_encoder_stops_at_its_feature_layer(tmp_path, arch):
    """The tower runs only the layers its feature layer needs: the same features, bit for bit,
    as the whole tower's ``hidden_states[layer]``, and all its layers are back afterwards."""
    import dataclasses

    import numpy as np
    import torch

    from vlm_cli.cache import FeatureCache
    from vlm_cli.model.encoders import VisionEncoder
    from vlm_cli.recipe import VisionEncoderSpec

    spec = VisionEncoderSpec(arch=arch, select="cls_patch", config={
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 2, "image_size": 32, "patch_size": 16})
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 60, 3), dtype=np.uint8)
    for layer in (-2, -3, 1, 3, 0, -1, 4):
        encoder = VisionEncoder(dataclasses.replace(spec, feature_layer=layer),
                                FeatureCache(tmp_path).file_digest)
        layers = encoder.model.encoder.layers
        ran = []
        for k, block in enumerate(layers):
            block.register_forward_hook(lambda *_, k=k: ran.append(k))
        got = encoder.encode_frames(frames)
        needed = layer % 5 if layer not in (-1, 0) else 4
        assert ran == list(range(needed)), (layer, ran)
        assert encoder.model.encoder.layers is layers
        with torch.no_grad():
            out = encoder.model(pixel_values=encoder.preprocess(frames), output_hidden_states=True)
        assert len(out.hidden_states) == 5  # the whole tower again, every layer recorded
        want = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        assert torch.equal(got, want), layer
