"""Encoder alignment to caption views, and later stages using the aligned encoders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from micro import VISION_VIVIT, micro_recipe, micro_world, run_in_home
from vlm_cli.recipe import ViewSpec
from vlm_cli.train.align import IGNORE, joint_labels, view_labels

VLM = str(Path(sys.executable).with_name("vlm"))

MICRO_AV = micro_recipe(vision=VISION_VIVIT, audio_clips=1, train="""  encoders:
    views:
      - {name: colour, modality: vision, words: [red, green, blue, yellow]}
      - {name: direction, modality: vision, words: [left, right, up, down]}
      - {name: sound, modality: audio, words: [low tone, high tone, rising chirp, noise burst,
                                               silence]}
    joint: [[colour, direction]]
    batch_size: 4
    steps: 4
  stage1: {freeze: [vision, audio], batch_size: 4, max_steps: 3, max_length: 128}""")


def test_view_labels_match_whole_words_longest_first():
    views = [ViewSpec("sound", "audio", ["tone", "low tone", "silence"]),
             ViewSpec("dir", "vision", ["up", "down"])]
    labels = view_labels(["A low tone plays while it moves up.", "Nothing here, upward.",
                          "IN SILENCE it goes DOWN"], views)
    assert labels["sound"].tolist() == [1, IGNORE, 2]
    assert labels["dir"].tolist() == [0, IGNORE, 1]
    joint = joint_labels(labels, ["sound", "dir"], {"sound": 3, "dir": 2})
    assert joint.tolist() == [1 * 2 + 0, IGNORE, 2 * 2 + 1]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    root, env = micro_world(tmp_path_factory, "align", MICRO_AV, clips=12, seed=2)
    code, out = run_in_home(env["VLM_HOME"], ["pretrain", str(root / "micro.yaml"), "--stage",
                                              "encoders", "--data", str(root / "toy" / "stage1.json"),
                                              "--out", str(root / "enc"), "--json"])
    assert code == 0
    return root, env, json.loads(out)


def test_alignment_run_directory(aligned):
    root, _, summary = aligned
    assert summary["stage"] == "encoders" and summary["steps"] == 4
    assert set(summary["train_accuracy"]) == {"colour", "direction", "sound", "colour+direction"}
    for part in ("vision", "audio"):
        assert (root / "enc" / part / "config.json").exists()
        assert (root / "enc" / part / "model.safetensors").exists()
    assert json.loads((root / "enc" / "config.json").read_text())["stage"] == "encoders"


@pytest.mark.slow
def test_stage1_with_aligned_encoders(aligned, tmp_path):
    root, env, _ = aligned
    out = subprocess.run([VLM, "pretrain", str(root / "micro.yaml"), "--encoders",
                          str(root / "enc"), "--data", str(root / "toy" / "stage1.json"),
                          "--out", str(tmp_path / "s1"), "--json"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    import yaml

    saved = yaml.safe_load((tmp_path / "s1" / "recipe.yaml").read_text())
    assert saved["model"]["vision"]["pretrained"] == str((root / "enc" / "vision").resolve())
    assert saved["model"]["vision"]["config"] is None
    # The cache keys of aligned features name the weights' content hash, not the random init.
    from vlm_cli.cache import FeatureCache

    sources = {json.dumps(e.metadata.get("encoder", {}).get("source"), sort_keys=True)
               for e in FeatureCache(Path(env["VLM_HOME"])).entries()
               if e.metadata.get("modality") == "vision"}
    assert any("weights" in s for s in sources)


def test_alignment_needs_a_fresh_directory_and_views(aligned, tmp_path):
    root, env, _ = aligned
    again = subprocess.run([VLM, "pretrain", str(root / "micro.yaml"), "--stage", "encoders",
                            "--data", str(root / "toy" / "stage1.json"), "--out",
                            str(root / "enc")], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "run directory exists" in again.stderr
    bad = subprocess.run([VLM, "pretrain", "tiny-av", "--encoders", str(tmp_path),
                          "--data", str(root / "toy" / "stage1.json")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "no vision/ encoder" in bad.stderr


@pytest.mark.slow
def test_alignment_resume_after_kill_9_is_bit_exact(aligned, tmp_path):
    """The alignment stage runs on the same engine as stages 1 and 2: checkpoints and --resume."""
    from safetensors.torch import load_file

    from micro import run_killed_at

    root, env, _ = aligned
    args = ["pretrain", str(root / "micro.yaml"), "--stage", "encoders", "--data",
            str(root / "toy" / "stage1.json"), "--json", "train.encoders.steps=6"]
    reference = subprocess.run([VLM, *args, "--out", str(tmp_path / "ref")], capture_output=True,
                               text=True, env=env)
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "killed"
    assert run_killed_at(3, [*args, "--out", str(killed), "train.encoders.save_every=1"],
                         env) == -9
    assert not (killed / "config.json").exists()
    resumed = subprocess.run([VLM, *args, "--out", str(killed), "--resume"], capture_output=True,
                             text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    for part in ("vision", "audio"):
        ref = load_file(tmp_path / "ref" / part / "model.safetensors")
        got = load_file(killed / part / "model.safetensors")
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), part


@pytest.mark.slow
def test_alignment_two_processes_match_one(aligned, tmp_path):
    """Alignment is data-parallel like stages 1 and 2: two processes splitting each batch end
    with the weights of one process running the whole batch."""
    from safetensors.torch import load_file

    root, env, _ = aligned
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    args = ["pretrain", str(root / "micro.yaml"), "--stage", "encoders", "--data",
            str(root / "toy" / "stage1.json"), "--json"]
    one = subprocess.run([VLM, *args, "--out", str(tmp_path / "one")], capture_output=True,
                         text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([*accelerate, "--multi_gpu", "--num_processes", "2",
                          "--main_process_port", "29541", "-m", "vlm_cli.cli", *args, "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads(two.stdout.strip().splitlines()[-1])["processes"] == 2
    for part in ("vision", "audio"):
        a = load_file(tmp_path / "one" / part / "model.safetensors")
        b = load_file(tmp_path / "two" / part / "model.safetensors")
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5, part


def test_aligned_encoders_keep_a_branch_the_recipe_leaves_out(aligned, tmp_path):
    """`--encoders RUN model.audio=null`: the aligned vision encoder, no audio branch (a model
    trained without audio, e.g. to check with `vlm probe` that sound answers come from the
    picture)."""
    from vlm_cli.recipe import load_recipe
    from vlm_cli.train.align import use_aligned_encoders

    root, _, _ = aligned
    recipe = load_recipe(str(root / "micro.yaml"), ["model.audio=null",
                                                   "model.audio_connector=null"])
    got = use_aligned_encoders(recipe, root / "enc")
    assert got.model.audio is None and got.model.audio_connector is None
    assert got.model.vision.pretrained == str((root / "enc" / "vision").resolve())
