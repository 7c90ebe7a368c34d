"""recipes/video-llama-7b.yaml built from hub parts, end to end, with tiny random checkpoints of
the same classes and layouts served under the real repository ids by a local fake hub:
`vlm download --recipe` -> `vlm preprocess` -> `vlm pretrain` (a few steps) -> offline `vlm ask`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hf_fixtures import make_tiny_ast, make_tiny_clip_vision, make_tiny_llama
from hub_server import FakeHub, client_env

VLM = str(Path(sys.executable).with_name("vlm"))
PARTS = {"openai/clip-vit-large-patch14": "vision", "MIT/ast-finetuned-audioset-10-10-0.4593":
         "audio", "lmsys/vicuna-7b-v1.5": "llm"}


@pytest.mark.slow
def test_video_llama_recipe_from_hub_parts(tmp_path):
    from vlm_cli.toyav import generate_toy_av

    parts = tmp_path / "parts"
    make_tiny_clip_vision(parts / "vision", full_clip=True)  # openai's layout: a whole CLIPModel
    make_tiny_ast(parts / "audio", max_length=1024, num_labels=527)  # MIT's: a classifier, 10 s
    make_tiny_llama(parts / "llm")
    generate_toy_av(tmp_path / "toy", clips=6, seed=2, workers=1)
    small = ["train.stage1.batch_size=2", "train.stage1.grad_accum=1", "train.stage1.max_steps=2",
             "train.stage1.max_length=512", "model.video_connector.hidden_size=64",
             "model.video_connector.num_heads=2", "model.video_connector.intermediate_size=128",
             "model.audio_connector.hidden_size=64", "model.audio_connector.num_heads=2",
             "model.audio_connector.intermediate_size=128", "data.frames=4", "data.audio_clips=1"]
    with FakeHub() as hub:
        commits = {repo: hub.add_dir(repo, parts / name) for repo, name in PARTS.items()}
        env = client_env(tmp_path / "hf", hub.url, VLM_HOME=str(tmp_path / "home"))

        def vlm(*args: str, offline: bool = False) -> dict:
            out = subprocess.run([VLM, *args, "--json"], capture_output=True, text=True,
                                 env={**env, **({"HF_HUB_OFFLINE": "1"} if offline else {})},
                                 timeout=600)
            assert out.returncode == 0, out.stderr[-3000:]
            return json.loads(out.stdout.strip().splitlines()[-1])

        got = vlm("download", "--recipe", "video-llama-7b")
        assert {r["repo_id"]: r["commit"] for r in got["repos"]} == commits
        assert "pytorch_model.bin" not in sum((r["files"] for r in got["repos"]), [])
        before = len(hub.requests)
        data = str(tmp_path / "toy" / "stage1.json")
        pre = vlm("preprocess", data, "--recipe", "video-llama-7b", *small, offline=True)
        assert pre["failed"] == [] and pre["computed"] > 0
        run = vlm("pretrain", "video-llama-7b", "--data", data, "--out",
                  str(tmp_path / "run"), *small, offline=True)
        assert run["steps"] == 2 and run["trained"] == ["video_connector", "audio_connector"]
        clip = str(next((tmp_path / "toy" / "media").glob("*.mp4")))
        answer = vlm("ask", clip, "What sound is playing?", "--model", str(tmp_path / "run"),
                     "--max-new-tokens", "4", offline=True)
        assert answer["audio"] == "used" and answer["frames"]["count"] == 4
        assert len(hub.requests) == before  # after the download, nothing touched the network
