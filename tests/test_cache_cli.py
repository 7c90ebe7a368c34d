"""`vlm cache ls | du | prune | clear` with --json, and `vlm download toy-av` on the command line."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from vlm_cli.cache import FeatureCache
from vlm_cli.cli import run


@pytest.fixture
def filled(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_HOME", str(tmp_path / "home"))
    cache = FeatureCache()
    now = time.time()
    for i, modality in enumerate(["vision", "vision", "audio"]):
        path = cache.put(f"{i:064x}", {"features": torch.zeros(256)},
                         {"modality": modality, "media": f"/clips/{i}.mp4"})
        os.utime(path, (now - (3 - i) * 86400,) * 2)
    return cache


def cli_json(capsys, *args):
    code = run([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_ls_and_du(filled, capsys):
    code, listing = cli_json(capsys, "cache", "ls")
    assert code == 0 and len(listing["entries"]) == 3
    assert {e["media"] for e in listing["entries"]} == {"/clips/0.mp4", "/clips/1.mp4",
                                                        "/clips/2.mp4"}
    code, usage = cli_json(capsys, "cache", "du")
    assert usage["entries"] == 3 and usage["by_modality"]["vision"]["entries"] == 2
    assert usage["bytes"] == sum(e.size for e in filled.entries())
    assert run(["cache", "ls"]) == 0 and "/clips/2.mp4" in capsys.readouterr().out


def test_prune_and_clear(filled, capsys):
    code, pruned = cli_json(capsys, "cache", "prune", "--older-than", "2.5")
    assert code == 0 and pruned["removed"] == 1
    size = next(filled.entries()).size
    code, pruned = cli_json(capsys, "cache", "prune", "--max-size", str(size))
    assert pruned["removed"] == 1
    assert run(["cache", "prune"]) == 2
    assert "--max-size" in capsys.readouterr().err
    assert run(["cache", "prune", "--max-size", "lots"]) == 1
    assert run(["cache", "clear"]) == 2  # no terminal and no --yes: refuse, do not hang
    code, cleared = cli_json(capsys, "cache", "clear", "--yes")
    assert cleared["removed"] == 1 and not list(filled.entries())


def test_download_toy_av_cli(tmp_path, capsys):
    out = tmp_path / "toy"
    code, summary = cli_json(capsys, "download", "toy-av", "--out", str(out), "--clips", "8",
                             "--seed", "5")
    assert code == 0 and summary["clips"] == 8 and not summary["existing"]
    assert (out / "stage1.json").exists()
    code, again = cli_json(capsys, "download", "toy-av", "--out", str(out), "--clips", "8",
                           "--seed", "5")
    assert again["existing"]
    assert run(["download", "toy-av", "--out", str(out), "--clips", "9"]) == 2
    assert str(out) in capsys.readouterr().err
    assert run(["download"]) == 2  # neither a repository id, toy-av nor --recipe
