"""`vlm download` against a local fake hub (tests/hub_server.py): the real huggingface_hub client,
no network. File selection, revision pinning, offline mode, interrupted and truncated transfers,
error lines, `--recipe`, and the `--download` flag of the other commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub_server import FakeHub, client_env
from vlm_cli.hub import select_files

VLM = str(Path(sys.executable).with_name("vlm"))
REPO = "org/tiny"


def vlm(home: Path, url: str | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([VLM, *args], capture_output=True, text=True, timeout=120,
                          env=client_env(home, url, VLM_HOME=str(home / "vlm"), **env))


def vlm_json(home: Path, url: str | None, *args: str, **env: str) -> dict:
    out = vlm(home, url, *args, "--json", **env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def gets(hub: FakeHub) -> list[str]:
    """Files the server sent (GET .../resolve/...), in order."""
    return [p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p, _ in hub.requests
            if m == "GET" and "/resolve/" in p]


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


def test_select_files_keeps_one_format_of_weights():
    files = ["config.json", "tokenizer.json", "README.md", "model.safetensors.index.json",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "consolidated.safetensors", "pytorch_model.bin", "pytorch_model.bin.index.json",
             "tf_model.h5", "flax_model.msgpack", "model.onnx", "training_args.bin",
             "original/consolidated.00.pth", "original/params.json"]
    index = {"model.safetensors.index.json": json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})}
    assert select_files(files, index) == [
        "README.md", "config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "original/params.json", "tokenizer.json"]
    # Only pickled weights: those (never the training state), and their index.
    assert select_files(["config.json", "pytorch_model.bin", "tf_model.h5",
                         "training_args.bin"]) == ["config.json", "pytorch_model.bin"]


def test_download_selects_files_and_prints_commit_and_path(hub, tmp_path):
    weights = os.urandom(50_000)
    sha = hub.add_commit(REPO, {"config.json": b"{}", "model.safetensors": weights,
                                "pytorch_model.bin": b"pickle" * 100, "tf_model.h5": b"h5",
                                "tokenizer.json": b"{\"t\": 1}"})
    got = vlm_json(tmp_path, hub.url, "download", REPO)
    assert got["commit"] == sha and got["offline"] is False
    assert got["files"] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sorted(gets(hub)) == got["files"]
    path = Path(got["path"])
    assert path == tmp_path / "hub" / "models--org--tiny" / "snapshots" / sha
    assert (path / "model.safetensors").read_bytes() == weights
    assert got["bytes"] == len(weights) + 2 + 8
    plain = vlm(tmp_path, hub.url, "download", REPO)
    assert plain.returncode == 0 and sha in plain.stdout and str(path) in plain.stdout

    # --include replaces the selection; --exclude filters it.
    got = vlm_json(tmp_path, hub.url, "download", REPO, "--include", "*.bin",
                   "--include", "*.json", "--exclude", "tokenizer*")
    assert got["files"] == ["config.json", "pytorch_model.bin"]


def test_revision_pinning(hub, tmp_path):
    old = hub.add_commit(REPO, {"config.json": b'{"v": 1}', "model.safetensors": b"one" * 100})
    new = hub.add_commit(REPO, {"config.json": b'{"v": 2}', "model.safetensors": b"two" * 100})
    pinned = vlm_json(tmp_path, hub.url, "download", REPO, "--revision", old)
    assert pinned["commit"] == old
    assert (Path(pinned["path"]) / "config.json").read_text() == '{"v": 1}'
    latest = vlm_json(tmp_path, hub.url, "download", REPO)
    assert latest["commit"] == new and (Path(latest["path"]) / "config.json").read_text() == \
        '{"v": 2}'


def test_offline_after_download_makes_no_request(hub, tmp_path):
    sha = hub.add_commit(REPO, {"config.json": b"{}", "model.safetensors": b"w" * 1000})
    vlm_json(tmp_path, hub.url, "download", REPO)
    before = len(hub.requests)
    out = vlm(tmp_path, hub.url, "download", REPO, "--json", HF_HUB_OFFLINE="1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["commit"] == sha and json.loads(out.stdout)["offline"] is True
    assert "HF_HUB_OFFLINE" in out.stderr and len(hub.requests) == before
    missing = vlm(tmp_path, hub.url, "download", "org/other", HF_HUB_OFFLINE="1")
    assert missing.returncode == 1 and len(hub.requests) == before
    assert missing.stderr.strip().count("\n") == 0 and "HF_HUB_OFFLINE" in missing.stderr


def test_interrupted_transfer_resumes_with_range(hub, tmp_path):
    big = os.urandom(12 * 1024 * 1024)  # > huggingface_hub's 10 MiB chunk: resumed, not redone
    hub.add_commit(REPO, {"config.json": b"{}", "model.safetensors": big})
    hub.interrupt_next("model.safetensors", 11 * 1024 * 1024)
    got = vlm_json(tmp_path, hub.url, "download", REPO)
    assert (Path(got["path"]) / "model.safetensors").read_bytes() == big
    ranges = [h.get("range") for m, p, h in hub.requests
              if m == "GET" and p.endswith("/model.safetensors")]
    assert ranges == [None, "bytes=10485760-"]


def test_truncated_file_fails_cleanly_then_completes(hub, tmp_path):
    weights = os.urandom(100_000)
    hub.add_commit(REPO, {"config.json": b"{}", "model.safetensors": weights})
    hub.truncate_next("model.safetensors", 30_000)
    out = vlm(tmp_path, hub.url, "download", REPO)
    assert out.returncode == 1
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {REPO}: download failed")
    blobs = tmp_path / "hub" / "models--org--tiny" / "blobs"
    assert all(p.stat().st_size != 30_000 for p in blobs.iterdir())  # no partial blob kept
    assert not any(p.name.endswith(".incomplete") for p in blobs.iterdir())
    # What is there does not pass for a model: the toolkit reports it as incomplete.
    offline = vlm(tmp_path, hub.url, "ask", "x.mp4", "q", "--model", REPO, HF_HUB_OFFLINE="1")
    assert offline.returncode != 0 and "\n" not in offline.stderr.strip()
    # Running the command again fetches only what is missing.
    sent = len(gets(hub))
    got = vlm_json(tmp_path, hub.url, "download", REPO)
    assert gets(hub)[sent:] == ["model.safetensors"]
    assert (Path(got["path"]) / "model.safetensors").read_bytes() == weights


def test_errors_are_one_line(hub, tmp_path):
    hub.add_commit(REPO, {"config.json": b"{}", "model.safetensors": b"w"})
    cases = [(("download", "org/missing"), "repository not found"),
             (("download", REPO, "--revision", "nope"), "revision not found"),
             (("download", "org/dataset", "--repo-type", "dataset"), "dataset repository not found"),
             (("download", REPO, "--include", "*.gguf"), "no file matches")]
    for args, message in cases:
        out = vlm(tmp_path, hub.url, *args)
        assert out.returncode == 1, args
        assert "\n" not in out.stderr.strip() and message in out.stderr, out.stderr
    hub.add_commit("org/pickles", {"config.json": b"{}", "tf_model.h5": b"h5"})
    out = vlm(tmp_path, hub.url, "download", "org/pickles")
    assert out.returncode == 1 and "no safetensors" in out.stderr
    hub.close()
    out = vlm(tmp_path, hub.url, "download", REPO)
    assert out.returncode == 1 and "\n" not in out.stderr.strip() and hub.url in out.stderr


def test_dataset_repo(hub, tmp_path):
    sha = hub.add_commit("org/qa", {"test_q.json": b"[]", "test_a.json": b"[]",
                                    "data.bin": b"x"}, repo_type="dataset")
    got = vlm_json(tmp_path, hub.url, "download", "org/qa", "--repo-type", "dataset")
    assert got["commit"] == sha and got["files"] == ["data.bin", "test_a.json", "test_q.json"]
    assert Path(got["path"]).is_relative_to(tmp_path / "hub" / "datasets--org--qa")
