"""Tests of tests/hub_server.py: the REAL huggingface_hub client against FakeHub.

The client runs in subprocesses (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE`` are read at import
time), except for the in-process tests at the end that document the ``endpoint=`` / monkeypatch way.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hub_server import FakeHub, client_env

REPO = "org/tiny"
CONFIG = b'{"model_type": "tiny", "hidden_size": 8}\n'


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_client(home: Path, url: str | None, body: str, **extra_env: str) -> dict:
    """Run ``body`` (python that sets ``out``) in a fresh interpreter; return ``out``.

    An exception escaping ``body`` is returned as {"error": type name, "mro": [...], "message": str}.
    """
    script = (
        "import json, os, sys\n"
        "from huggingface_hub import snapshot_download, hf_hub_download\n"
        "out = None\n"
        "try:\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\nexcept Exception as e:\n"
        "    out = {'error': type(e).__name__, 'mro': [c.__name__ for c in type(e).__mro__], 'message': str(e)}\n"
        "print('RESULT=' + json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=client_env(home, url, **extra_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")][-1]
    return json.loads(line[len("RESULT=") :])


def repo_dir(home: Path, repo_id: str = REPO, kind: str = "models") -> Path:
    return home / "hub" / f"{kind}--{repo_id.replace('/', '--')}"


def file_gets(hub: FakeHub, filename: str) -> list[dict]:
    return [h for m, p, h in hub.requests if m == "GET" and "/resolve/" in p and p.endswith("/" + filename)]


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture
def weights() -> bytes:
    return os.urandom(200_000)


def test_snapshot_download_standard_cache_layout(hub, tmp_path, weights):
    sha = hub.add_commit(REPO, {"config.json": CONFIG, "model.safetensors": weights})
    out = run_client(tmp_path, hub.url, f"out = snapshot_download({REPO!r})")

    rd = repo_dir(tmp_path)
    snap = rd / "snapshots" / sha
    assert out == str(snap)
    assert (rd / "refs" / "main").read_text() == sha
    # blobs named by etag: sha256 for the LFS file, git blob sha1 for the small text file
    blobs = {p.name for p in (rd / "blobs").iterdir()}
    assert blobs == {sha256(weights), git_blob_sha1(CONFIG)}
    assert (snap / "model.safetensors").is_symlink()
    assert os.readlink(snap / "model.safetensors") == f"../../blobs/{sha256(weights)}"
    assert (snap / "model.safetensors").read_bytes() == weights
    assert (snap / "config.json").read_bytes() == CONFIG

    calls = [(m, p.split("?")[0]) for m, p, _ in hub.requests]
    assert calls[:2] == [("GET", f"/api/models/{REPO}/revision/main"), ("GET", f"/api/models/{REPO}/tree/{sha}")]
    assert sorted(calls[2:]) == sorted(
        (m, f"/{REPO}/resolve/{sha}/{f}") for m in ("HEAD", "GET") for f in ("config.json", "model.safetensors")
    )
    assert not any("xet" in p.lower() for _, p, _ in hub.requests)  # plain HTTP, no Xet protocol


def test_hf_hub_download_and_error_mapping(hub, tmp_path, weights):
    sha = hub.add_commit(REPO, {"config.json": CONFIG, "model.safetensors": weights})
    out = run_client(
        tmp_path,
        hub.url,
        f"""
        def err(fn):
            try:
                fn()
            except Exception as e:
                return type(e).__name__
        out = {{
            "path": hf_hub_download({REPO!r}, "model.safetensors"),
            "no_repo": err(lambda: hf_hub_download("org/missing", "config.json")),
            "no_rev": err(lambda: hf_hub_download({REPO!r}, "config.json", revision="nope")),
            "no_file": err(lambda: hf_hub_download({REPO!r}, "missing.json")),
            "snap_no_repo": err(lambda: snapshot_download("org/missing")),
            "snap_no_rev": err(lambda: snapshot_download({REPO!r}, revision="nope")),
        }}
        """,
    )
    assert out["path"] == str(repo_dir(tmp_path) / "snapshots" / sha / "model.safetensors")
    assert Path(out["path"]).read_bytes() == weights
    assert out["no_repo"] == "RepositoryNotFoundError"
    assert out["no_rev"] == "RevisionNotFoundError"
    assert out["no_file"] == "RemoteEntryNotFoundError"
    assert out["snap_no_repo"] == "RepositoryNotFoundError"
    assert out["snap_no_rev"] == "RevisionNotFoundError"
    # the client caches the non-existence of the file under .no_exist/<sha>/
    assert (repo_dir(tmp_path) / ".no_exist" / sha / "missing.json").exists()


def test_revision_pinning(hub, tmp_path):
    old = hub.add_commit(REPO, {"config.json": b'{"v": 1}'}, tag="v1")
    new = hub.add_commit(REPO, {"config.json": b'{"v": 2}'})
    assert old != new and len(old) == len(new) == 40
    out = run_client(
        tmp_path,
        hub.url,
        f"""
        out = {{r: snapshot_download({REPO!r}, revision=r) for r in ({old!r}, "main", "v1")}}
        """,
    )
    snaps = repo_dir(tmp_path) / "snapshots"
    assert out == {old: str(snaps / old), "main": str(snaps / new), "v1": str(snaps / old)}
    assert (snaps / old / "config.json").read_bytes() == b'{"v": 1}'
    assert (snaps / new / "config.json").read_bytes() == b'{"v": 2}'
    assert (repo_dir(tmp_path) / "refs" / "main").read_text() == new
    assert (repo_dir(tmp_path) / "refs" / "v1").read_text() == old


def test_allow_and_ignore_patterns(hub, tmp_path, weights):
    sha = hub.add_commit(
        REPO, {"config.json": CONFIG, "model.safetensors": weights, "pytorch_model.bin": b"x" * 1000, "sub/a.txt": b"a"}
    )
    out = run_client(
        tmp_path,
        hub.url,
        f"""
        a = snapshot_download({REPO!r}, allow_patterns=["*.json", "sub/*"])
        files_a = sorted(str(p.relative_to(a)) for p in __import__("pathlib").Path(a).rglob("*") if p.is_file())
        b = snapshot_download({REPO!r}, ignore_patterns=["*.bin", "*.json"])
        files_b = sorted(str(p.relative_to(b)) for p in __import__("pathlib").Path(b).rglob("*") if p.is_file())
        out = [files_a, files_b]
        """,
    )
    assert out == [["config.json", "sub/a.txt"], ["config.json", "model.safetensors", "sub/a.txt"]]
    assert file_gets(hub, "pytorch_model.bin") == []
    assert not (repo_dir(tmp_path) / "snapshots" / sha / "pytorch_model.bin").exists()


def test_offline_after_download(hub, tmp_path, weights):
    sha = hub.add_commit(REPO, {"config.json": CONFIG, "model.safetensors": weights})
    snap = str(repo_dir(tmp_path) / "snapshots" / sha)
    assert run_client(tmp_path, hub.url, f"out = snapshot_download({REPO!r})") == snap
    n = len(hub.requests)

    body = f"out = [snapshot_download({REPO!r}), hf_hub_download({REPO!r}, 'config.json')]"
    expected = [snap, snap + "/config.json"]
    assert run_client(tmp_path, hub.url, body, HF_HUB_OFFLINE="1") == expected
    assert len(hub.requests) == n  # offline: not a single request

    hub.close()
    assert run_client(tmp_path, hub.url, body, HF_HUB_OFFLINE="1") == expected
    # even without HF_HUB_OFFLINE, a dead endpoint (connection refused) falls back to the cache
    assert run_client(tmp_path, hub.url, body) == expected
    # ...but a file that was never downloaded cannot be found offline
    out = run_client(tmp_path, hub.url, f"out = hf_hub_download({REPO!r}, 'other.json')", HF_HUB_OFFLINE="1")
    assert out["error"] == "LocalEntryNotFoundError"


def test_interrupted_small_file_is_downloaded_again_without_range(hub, tmp_path, weights):
    """< 10 MiB: the client buffers whole 10 MiB chunks, so nothing was written when the connection
    dropped; its automatic retry (same call, after 1 s) restarts from byte 0 with no Range header."""
    sha = hub.add_commit(REPO, {"config.json": CONFIG, "model.safetensors": weights})
    hub.interrupt_next("model.safetensors", after_bytes=50_000)
    out = run_client(tmp_path, hub.url, f"out = snapshot_download({REPO!r})")
    assert out == str(repo_dir(tmp_path) / "snapshots" / sha)
    assert (Path(out) / "model.safetensors").read_bytes() == weights
    gets = file_gets(hub, "model.safetensors")
    assert len(gets) == 2
    assert [g.get("range") for g in gets] == [None, None]
    assert not list((repo_dir(tmp_path) / "blobs").glob("*.incomplete"))


def test_interrupted_large_file_resumes_with_range(hub, tmp_path):
    """> 10 MiB: the first full chunk reached the temp file, so the retry asks for the rest with Range."""
    big = os.urandom(12 * 1024 * 1024)
    sha = hub.add_commit(REPO, {"model.safetensors": big})
    hub.interrupt_next("model.safetensors", after_bytes=11 * 1024 * 1024)
    out = run_client(tmp_path, hub.url, f"out = hf_hub_download({REPO!r}, 'model.safetensors')")
    assert out == str(repo_dir(tmp_path) / "snapshots" / sha / "model.safetensors")
    assert Path(out).read_bytes() == big
    assert [g.get("range") for g in file_gets(hub, "model.safetensors")] == [None, "bytes=10485760-"]


def test_truncated_file_raises_and_leaves_no_blob(hub, tmp_path, weights):
    sha = hub.add_commit(REPO, {"config.json": CONFIG, "model.safetensors": weights})
    hub.truncate_next("model.safetensors", keep_bytes=50_000)
    out = run_client(tmp_path, hub.url, f"out = snapshot_download({REPO!r}, max_workers=1)")
    assert out["error"] == "OSError"
    assert out["message"].startswith("Consistency check failed: file should be of size 200000 but has size 50000")

    rd = repo_dir(tmp_path)
    snap = rd / "snapshots" / sha
    assert not (snap / "model.safetensors").exists()
    assert sorted(p.name for p in (rd / "blobs").iterdir()) == [git_blob_sha1(CONFIG)]  # no .incomplete left
    assert (rd / "refs" / "main").read_text() == sha
    assert (rd / "trees" / f"{sha}.json").exists()  # the tree listing is cached before any file download...
    # ...so offline, the half-filled snapshot folder is detected as incomplete rather than returned
    out = run_client(tmp_path, hub.url, f"out = snapshot_download({REPO!r})", HF_HUB_OFFLINE="1")
    assert out["error"] == "IncompleteSnapshotError"

    # the fault is one-shot: the next call completes the snapshot
    assert run_client(tmp_path, hub.url, f"out = snapshot_download({REPO!r})") == str(snap)
    assert (snap / "model.safetensors").read_bytes() == weights


def test_dataset_repo(hub, tmp_path):
    data = os.urandom(30_000)
    sha = hub.add_commit("org/data", {"README.md": b"# data\n", "data/train.parquet": data}, repo_type="dataset")
    hub.add_commit("org/data", {"other": b"model, not dataset"})  # same id as a model: separate repo
    out = run_client(
        tmp_path,
        hub.url,
        """
        out = [snapshot_download("org/data", repo_type="dataset"),
               hf_hub_download("org/data", "data/train.parquet", repo_type="dataset")]
        """,
    )
    snap = repo_dir(tmp_path, "org/data", "datasets") / "snapshots" / sha
    assert out == [str(snap), str(snap / "data" / "train.parquet")]
    assert (snap / "data" / "train.parquet").read_bytes() == data
    assert not (snap / "other").exists()
    paths = [p for _, p, _ in hub.requests]
    assert paths[0] == "/api/datasets/org/data/revision/main"
    assert all(p.startswith(("/api/datasets/org/data/", "/datasets/org/data/resolve/")) for p in paths)


def test_add_dir(hub, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_bytes(CONFIG)
    (src / "sub" / "x.bin").write_bytes(b"\0" * 10)
    sha = hub.add_dir(REPO, src)
    home = tmp_path / "home"
    out = run_client(home, hub.url, f"out = snapshot_download({REPO!r})")
    assert out == str(repo_dir(home) / "snapshots" / sha)
    assert (Path(out) / "sub" / "x.bin").read_bytes() == b"\0" * 10


# ---------------------------------------------------------------- in-process usage (see module docstring)


def test_in_process_with_endpoint_argument(hub, tmp_path, weights):
    from huggingface_hub import HfApi, snapshot_download

    sha = hub.add_commit(REPO, {"config.json": CONFIG, "model.safetensors": weights})
    path = snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path)
    assert path == str(tmp_path / "models--org--tiny" / "snapshots" / sha)
    info = HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True)
    assert info.sha == sha
    assert {s.rfilename: s.size for s in info.siblings} == {"config.json": len(CONFIG), "model.safetensors": 200_000}


def test_in_process_with_monkeypatched_constants(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants, hf_hub_download

    sha = hub.add_commit(REPO, {"config.json": CONFIG})
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    path = hf_hub_download(REPO, "config.json")
    assert path == str(tmp_path / "models--org--tiny" / "snapshots" / sha / "config.json")
    n = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hf_hub_download(REPO, "config.json") == path
    assert len(hub.requests) == n
