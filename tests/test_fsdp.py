"""FSDP2 through accelerate on two CPU processes (gloo): the same losses as one process for every
stage, sharded checkpoints that resume after kill -9, gathered run directories that merge and
answer, and one-line errors for what FSDP2 cannot do here."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from micro import KILL_AT_STEP, TRAIN_RECIPE, micro_world, run_in_home
from vlm_cli.errors import UsageError, VlmError

FSDP2 = str(Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "fsdp2.yaml")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]

MICRO = TRAIN_RECIPE


# --- helpers ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], env: dict, *extra: str, script: str | None = None,
           timeout: int = 300) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file recipes/accelerate/fsdp2.yaml`` with 2 processes."""
    command = [*LAUNCH, "--config_file", FSDP2, "--num_processes", "2", "--main_process_port",
               str(free_port()), *extra, *([script] if script else ["-m", "vlm_cli.cli"]), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def launched(args: list[str], env: dict) -> dict:
    """Run ``vlm ARGS --json`` under FSDP2 on 2 processes; its summary."""
    done = launch(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 2
    return summary


def one_process(args: list[str], env: dict) -> dict:
    code, out = run_in_home(env["VLM_HOME"], args)
    assert code == 0
    return json.loads(out)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_losses(a: list[float], b: list[float], rel: float = 1e-5) -> None:
    assert len(a) == len(b) and a
    for step, (x, y) in enumerate(zip(a, b), 1):
        assert abs(x - y) <= rel * abs(x), f"step {step}: {x} vs {y}"


def weights(run_dir: Path, *files: str) -> dict:
    out = {}
    for name in files:
        if (run_dir / name).exists():
            out.update({f"{name}:{k}": v for k, v in load_file(run_dir / name).items()})
    return out


def assert_same_weights(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a and a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < tol


RUN_FILES = ("connectors.safetensors", "llm/model.safetensors",
             "adapter/adapter_model.safetensors")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 12-clip toy-av set, preprocessed, and a one-process stage-1 run (``root / "s1"``) that
    stage 2 continues."""
    root, env = micro_world(tmp_path_factory, "fsdp", MICRO, clips=12, seed=1)
    code, _ = run_in_home(env["VLM_HOME"], ["preprocess", str(root / "toy" / "clips.jsonl"),
                                            "--recipe", str(root / "micro.yaml")])
    assert code == 0
    one_process(stage_args(root, "stage1", root / "s1"), env)
    return root, env


def stage_args(root: Path, stage: str, out: Path, *extra: str) -> list[str]:
    if stage == "stage1":
        return ["pretrain", str(root / "micro.yaml"), "--data", str(root / "toy" / "stage1.json"),
                "--out", str(out), "--json", *extra]
    return ["tune", str(root / "micro.yaml"), "--from", str(root / "s1"), "--data",
            str(root / "toy" / "stage2.json"), "--out", str(out), "--json", *extra]


# --- fast: the plan, the plugin, the checkpoint format -----------------------------------------

def test_plugin_from_the_launch_config(monkeypatch):
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from vlm_cli.train.fsdp import fsdp_plugin

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert fsdp_plugin(torch.bfloat16) is None  # not launched with FSDP
    for key, value in {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
                       "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
                       "FSDP_ACTIVATION_CHECKPOINTING": "true",
                       "FSDP_RESHARD_AFTER_FORWARD": "true"}.items():
        monkeypatch.setenv(key, value)
    plugin = fsdp_plugin(torch.bfloat16)
    assert plugin.fsdp_version == 2 and plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.activation_checkpointing and plugin.reshard_after_forward is True
    policy = plugin.mixed_precision_policy  # bf16 parameters, fp32 reductions
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert fsdp_plugin(torch.float32).mixed_precision_policy is None  # CPU: no casting
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(UsageError, match="fsdp_version 1 is not supported"):
        fsdp_plugin(torch.bfloat16)


def tiny_vlm() -> nn.Module:
    """An LLM (tiny Llama, tied embeddings) beside a Q-Former connector (a transformers model
    with its own _no_split_modules), as in a VideoLanguageModel."""
    from transformers import (Blip2QFormerConfig, Blip2QFormerModel, LlamaConfig,
                              LlamaForCausalLM)

    model = nn.Module()
    model.llm = LlamaForCausalLM(LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=50, tie_word_embeddings=True))
    model.connector = Blip2QFormerModel(Blip2QFormerConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        encoder_hidden_size=8))
    return model


def fake_accelerator(names: list[str] | None = None) -> SimpleNamespace:
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = SimpleNamespace(auto_wrap_policy=transformer_auto_wrap_policy,
                             transformer_cls_names_to_wrap=names)
    return SimpleNamespace(is_fsdp2=True, is_main_process=True,
                           state=SimpleNamespace(fsdp_plugin=plugin))


def test_shard_plan_wraps_the_llm_decoder_layers_only():
    from vlm_cli.train.fsdp import layer_classes, shard_plan

    model = tiny_vlm()
    assert "Blip2QFormerMultiHeadAttention" in layer_classes(model)  # the whole model has more
    accelerator = fake_accelerator()
    skeleton = shard_plan(accelerator, model, model.llm)
    # a connector is never its own unit: a batch without its modality skips it on one process
    assert accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert all(p.is_meta for p in skeleton.parameters())  # no memory
    assert skeleton.llm.lm_head.weight is skeleton.llm.model.embed_tokens.weight  # ties kept
    assert not any(p.is_meta for p in model.parameters())
    assert shard_plan(SimpleNamespace(is_fsdp2=False), model, model.llm) is None  # not FSDP


def test_shard_plan_errors_are_one_line():
    from vlm_cli.train.fsdp import shard_plan

    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UsageError, match="Sequential has no decoder layer class to wrap") as err:
        shard_plan(fake_accelerator(), mlp, mlp)
    assert "\n" not in str(err.value) and "ddp.yaml" in str(err.value)
    model = tiny_vlm()
    with pytest.raises(UsageError, match="names GPT2Block, which Module does not have"):
        shard_plan(fake_accelerator(["GPT2Block"]), model, model.llm)


def test_checkpoint_round_trip_is_exact_and_checked(tmp_path):
    from vlm_cli.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    def setup(seed: int) -> tuple:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(2, 2))
        model[0].requires_grad_(False)  # frozen parts are never written
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)

    def steps(model, opt, sched, n: int, idle: bool) -> None:
        inputs = torch.Generator().manual_seed(n + idle)
        for _ in range(n):  # model[2] idle (no gradient, no AdamW state) while `idle`
            out = model[:2](torch.randn(3, 4, generator=inputs))
            (out if idle else model[2](out)).sum().backward()
            opt.step()
            sched.step()
            opt.zero_grad()

    model, opt, sched = setup(0)
    steps(model, opt, sched, 2, idle=True)
    path = save_checkpoint(tmp_path, 2, model, opt, sched, {"loss": 1.5})
    assert path == latest_checkpoint(tmp_path) and not list(tmp_path.glob("checkpoints/.*"))
    assert (path / "state" / ".metadata").exists() and (path / "rng-0.safetensors").exists()
    expected = torch.rand(3)
    fresh, opt2, sched2 = setup(1)
    fresh[0].load_state_dict(model[0].state_dict())
    state = load_checkpoint(path, fresh, opt2, sched2)
    assert state["step"] == 2 and state["loss"] == 1.5
    assert torch.equal(torch.rand(3), expected)  # RNG restored
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert len(opt2.state) == len(opt.state) == 2  # the idle layer has no state in either
    for p, q in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(p[k], q[k]) for k in p)
    steps(model, opt, sched, 2, idle=False)  # it joins later: the same steps in both
    steps(fresh, opt2, sched2, 2, idle=False)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    other, opt3, sched3 = setup(2)
    other[0].requires_grad_(True)  # a different set of trainable parts
    opt3 = torch.optim.AdamW(other.parameters())
    with pytest.raises(VlmError, match="do not match this model's trainable parts"):
        load_checkpoint(path, other, opt3, sched3)


# --- slow: two processes under FSDP2 -----------------------------------------------------------

CASES = {
    "stage1": ("stage1", []),  # connectors + the (random) LLM
    "stage1-accumulating": ("stage1", ["train.stage1.grad_accum=2"]),  # FSDP2's no_sync
    "stage1-frozen-llm": ("stage1", ["train.stage1.freeze=[vision,audio,llm]"]),
    "stage2-full": ("stage2", ["train.stage2.lora=null", "train.stage2.freeze=[vision,audio]"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_fsdp2_processes_match_one(world, tmp_path, case):
    root, env = world
    stage, extra = CASES[case]
    one = one_process(stage_args(root, stage, tmp_path / "one", *extra), env)
    two = launched(stage_args(root, stage, tmp_path / "two", *extra), env)
    assert two["trained"] == one["trained"] and two["trainable_params"] == one["trainable_params"]
    assert_same_losses(losses(tmp_path / "one"), losses(tmp_path / "two"))
    assert_same_weights(weights(tmp_path / "one", *RUN_FILES),
                        weights(tmp_path / "two", *RUN_FILES))
    checkpoint = sorted((tmp_path / "two" / "checkpoints").iterdir())[-1]
    assert sorted(p.name for p in (checkpoint / "state").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]  # each process wrote its shards


@pytest.mark.slow
def test_fsdp2_lora_run_merges_and_answers_as_one_process(world, tmp_path, monkeypatch, capsys):
    from vlm_cli.cli import run

    root, env = world
    one_process(stage_args(root, "stage2", tmp_path / "one"), env)
    summary = launched(stage_args(root, "stage2", tmp_path / "two"), env)
    assert summary["trained"] == ["video_connector", "audio_connector", "lora"]
    assert_same_losses(losses(tmp_path / "one"), losses(tmp_path / "two"))
    assert (tmp_path / "two" / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "two" / "llm").exists()  # the frozen base is referenced, not copied
    monkeypatch.setenv("VLM_HOME", env["VLM_HOME"])
    answers = {}
    for name in ("one", "two"):
        merged = tmp_path / f"merged-{name}"
        assert run(["merge-lora", str(tmp_path / name), "--out", str(merged), "--verify"]) == 0
        capsys.readouterr()
        clip = str(root / "toy" / "media" / "toyav-00000.mp4")
        assert run(["ask", clip, "What sound is playing?", "--model", str(merged),
                    "--json"]) == 0
        answers[name] = json.loads(capsys.readouterr().out)["answer"]
    merged = [weights(tmp_path / f"merged-{n}", "connectors.safetensors") for n in ("one", "two")]
    assert_same_weights(*merged)
    llm = [{k: v for f in sorted((tmp_path / f"merged-{n}" / "llm").glob("*.safetensors"))
            for k, v in load_file(f).items()} for n in ("one", "two")]
    assert_same_weights(*llm)
    assert answers["one"] == answers["two"]


@pytest.mark.slow
def test_fsdp2_resume_after_kill_9_continues_the_same_losses(world, tmp_path):
    root, env = world
    steps = ["train.stage1.max_steps=8", "train.stage1.save_every=1"]
    launched(stage_args(root, "stage1", tmp_path / "ref", *steps), env)
    killed = tmp_path / "killed"
    script = tmp_path / "kill_at_3.py"
    script.write_text(KILL_AT_STEP.format(step=3))  # every process, right after checkpoint 3
    died = launch(stage_args(root, "stage1", killed, *steps), env, script=str(script))
    assert died.returncode != 0
    assert not (killed / "config.json").exists()  # killed midway: no final artefacts
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "step-000001", "step-000002", "step-000003"]  # killed right after the third
    copy = tmp_path / "killed-then-one-process"
    shutil.copytree(killed, copy)
    resumed = launched(stage_args(root, "stage1", killed, *steps, "--resume"), env)
    assert resumed["resumed_from"] == 3
    reference = losses(tmp_path / "ref")
    assert losses(killed) == reference  # every step, bit for bit
    ref, got = weights(tmp_path / "ref", *RUN_FILES), weights(killed, *RUN_FILES)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    # the sharded checkpoint resumes on one process too (DCP reshards on load)
    one_process(stage_args(root, "stage1", copy, *steps, "--resume"), env)
    assert_same_losses(losses(copy), reference)


@pytest.mark.slow
def test_fsdp2_with_a_connector_idle_on_one_process(world, tmp_path):
    """Pictures (video connector only) mixed with clips: some micro-batches leave the audio
    connector idle on one process and not on the other; FSDP2's reduce-scatters still match."""
    root, env = world
    records = json.loads((root / "toy" / "stage1.json").read_text())
    frames = sorted((Path(__file__).parent / "fixtures" / "video_llama" / "frames").glob("*.png"))
    for i in range(1, len(records), 2):
        shutil.copy(frames[i % len(frames)], root / "toy" / "media" / f"picture-{i}.png")
        records[i] = {"id": f"picture-{i}", "image": f"media/picture-{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."},
            {"from": "gpt", "value": records[i]["conversations"][1]["value"]}]}
    data = root / "toy" / "mixed.json"
    data.write_text(json.dumps(records))
    args = ["pretrain", str(root / "micro.yaml"), "--data", str(data), "--json"]
    one_process([*args, "--out", str(tmp_path / "one")], env)
    launched([*args, "--out", str(tmp_path / "two")], env)
    assert_same_losses(losses(tmp_path / "one"), losses(tmp_path / "two"))


@pytest.mark.slow
def test_fsdp2_encoder_alignment_matches_one_process(tmp_path_factory, tmp_path):
    from test_align import MICRO_AV

    root, env = micro_world(tmp_path_factory, "fsdp-align", MICRO_AV, clips=12, seed=2)
    args = ["pretrain", str(root / "micro.yaml"), "--stage", "encoders", "--data",
            str(root / "toy" / "stage1.json"), "--json", "train.encoders.log_every=1"]
    one_process([*args, "--out", str(tmp_path / "one")], env)
    launched([*args, "--out", str(tmp_path / "two")], env)
    assert_same_losses(losses(tmp_path / "one"), losses(tmp_path / "two"))
    for part in ("vision", "audio"):
        assert_same_weights(weights(tmp_path / "one", f"{part}/model.safetensors"),
                            weights(tmp_path / "two", f"{part}/model.safetensors"))


@pytest.mark.slow
def test_fsdp1_is_refused_in_one_line_not_a_hang(world, tmp_path):
    root, env = world
    done = launch(stage_args(root, "stage1", tmp_path / "x"), env, "--fsdp_version", "1",
                  timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("fsdp_version 1 is not supported" in e for e in errors)
    assert "vlm_cli/" not in done.stderr  # no traceback of ours (the launcher prints its own)


def family_checkpoint(family: str, tmp_path: Path) -> tuple[Path, str, list[dict]]:
    """A tiny checkpoint of ``family`` in its released layout, the built-in recipe that tunes it,
    and two training records."""
    from media_factory import SHARED_MEDIA, moving_frames, write_video

    question = [{"from": "human", "value": "<video>\nWhat is in the clip?"}]
    if family == "video-llava-hf":
        from hf_fixtures import make_tiny_video_llava

        clips = []
        for i in range(2):
            clips.append(write_video(tmp_path / f"c{i}.mp4", moving_frames(16, 120, 160), fps=8))
        checkpoint, recipe = make_tiny_video_llava(tmp_path / "tiny", seed=0), "video-llava-7b"
        answers = ["a square", "a moving square"]
    else:
        from omni_fixtures import make_tiny_qwen_omni

        clips = [SHARED_MEDIA / "boat.mp4", SHARED_MEDIA / "output_v_3V9tzjyr51I.mp4"]
        checkpoint, recipe = make_tiny_qwen_omni(tmp_path / "tiny", seed=0), "qwen2.5-omni-3b"
        answers = ["a boat engine", "no sound"]
    records = [{"id": str(i), "video": str(clip), "conversations": [
        *question, {"from": "gpt", "value": answer}]} for i, (clip, answer)
        in enumerate(zip(clips, answers))]
    return checkpoint, recipe, records


@pytest.mark.slow
@pytest.mark.parametrize("family", ["video-llava-hf", "qwen2.5-omni"])
def test_fsdp2_lora_tuning_of_released_checkpoints(family, tmp_path):
    """`vlm tune --from` a checkpoint of another family (its LLM's own decoder layer class is the
    sharded unit): FSDP2 on 2 processes takes the steps of one process."""
    checkpoint, recipe, records = family_checkpoint(family, tmp_path)
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    env = {**os.environ, "VLM_HOME": str(tmp_path / "home")}
    args = ["tune", recipe, "--from", str(checkpoint), "--data", str(data), "--json",
            "train.stage2.lora={rank: 4, alpha: 8, dropout: 0.0}",
            "train.stage2.freeze=[vision, audio, llm]", "train.stage2.batch_size=2",
            "train.stage2.grad_accum=1", "train.stage2.max_steps=3", "train.stage2.lr=1e-2",
            "train.stage2.log_every=1", "train.stage2.gradient_checkpointing=false",
            "train.stage2.max_length=4096"]
    one = one_process([*args, "--out", str(tmp_path / "one")], env)
    two = launched([*args, "--out", str(tmp_path / "two")], env)
    assert two["trained"] == one["trained"]
    assert_same_losses(losses(tmp_path / "one"), losses(tmp_path / "two"))
    assert_same_weights(weights(tmp_path / "one", *RUN_FILES),
                        weights(tmp_path / "two", *RUN_FILES))
