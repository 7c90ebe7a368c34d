"""`vlm probe`: counterfactual variants (frame order, soundtrack), their cache keys, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from micro import VISION_VIVIT, micro_recipe, trained_run
from vlm_cli.cli import run
from vlm_cli.eval.probe import (VARIANTS, derangement, frame_order, parse_variants, summarise,
                                variant_truth)
from vlm_cli.errors import UsageError

MICRO = micro_recipe(vision=VISION_VIVIT,
                     train="  stage1: {freeze: [vision, audio], batch_size: 4, max_steps: 2, "
                           "max_length: 128}")


def test_frame_orders():
    assert frame_order("reverse", 4) == [3, 2, 1, 0]
    assert frame_order("still", 4) == [2, 2, 2, 2] and frame_order("still", 1) == [0]
    for n in (2, 3, 8, 32):
        order = frame_order("shuffle", n)
        assert sorted(order) == list(range(n)) and order != list(range(n))
        assert order == frame_order("shuffle", n)  # fixed for a frame count
    with pytest.raises(ValueError):
        frame_order("mute", 4)


def test_derangement_has_no_fixed_points_and_is_deterministic():
    for n in (2, 3, 7, 50):
        names = [f"clip{i}.mp4" for i in range(n)]
        mapping = derangement(names)
        assert set(mapping) == set(names) and sorted(mapping.values()) == sorted(names)
        assert all(a != b for a, b in mapping.items())
        assert mapping == derangement(list(reversed(names)))  # independent of input order
    with pytest.raises(ValueError):
        derangement(["only.mp4", "only.mp4"])


def test_variant_names_and_truths():
    assert parse_variants("mute,reverse") == ["reverse", "mute"]
    for bad in ("", "reverse,reverse", "backwards"):
        with pytest.raises(UsageError):
            parse_variants(bad)
    clip = {"colour": "red", "direction": "left", "sound": "low tone", "shape": "circle"}
    other = {"colour": "blue", "direction": "up", "sound": "noise burst", "shape": "square"}
    assert variant_truth("reverse", "direction", clip) == "right"
    assert variant_truth("reverse", "colour", clip) == "red"
    assert variant_truth("shuffle", "direction", clip) is None
    assert variant_truth("still", "shape", clip) == "circle"
    assert variant_truth("swap-audio", "sound", clip, other) == "noise burst"
    assert variant_truth("swap-audio", "colour", clip, other) == "red"
    assert variant_truth("mute", "sound", clip) is None
    assert variant_truth("reverse", "direction", None) is None


def test_summary_counts_changes_and_variant_accuracy():
    def row(qid, variant, pred, truth, qtype="sound"):
        return {"question_id": qid, "variant": variant, "pred": pred, "truth": truth,
                "type": qtype}
    rows = {r["question_id"] + r["variant"]: r for r in [
        row("a", "original", "a low tone", "low tone"),
        row("a", "swap-audio", "noise burst", "noise burst"),
        row("b", "original", "high tone", "high tone"),
        row("b", "swap-audio", "High tone.", "silence"),
        row("c", "original", "red", "red", "colour"),
        row("c", "swap-audio", "blue", "red", "colour")]}
    summary = summarise(rows, ["swap-audio"])
    assert summary["sound"]["swap-audio"] == {"n": 2, "changed": 0.5, "known": 2,
                                              "accuracy": 0.5}
    assert summary["sound"]["original"]["accuracy"] == 1.0
    assert summary["colour"]["swap-audio"]["changed"] == 1.0
    assert summary["all"]["swap-audio"]["n"] == 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = trained_run(tmp_path_factory, "probe", MICRO, clips=6, seed=7)
    qa = root / "toy" / "qa"
    for part in ("questions", "answers"):  # every held-out clip in one QA set
        rows = [r for split in ("val", "test", "probe")
                for r in json.loads((qa / f"{split}_{part}.json").read_text())]
        (qa / f"heldout_{part}.json").write_text(json.dumps(rows))
    return root


@pytest.fixture
def home(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VLM_MODEL", raising=False)
    return trained


def test_variant_features_and_their_cache_keys(home, tmp_path):
    """ViViT sees the frame order: reordered frames are encoded and cached under keys of their
    own, never an original's; a per-frame encoder's variant is its features reordered."""
    from vlm_cli.cache import FeatureCache
    from vlm_cli.eval.probe import reordered_frames
    from vlm_cli.features import FeatureStore
    from vlm_cli.model.families import load_model

    store = FeatureStore(load_model(home / "run").recipe, FeatureCache())
    clips = [store.media(c) for c in sorted((home / "toy" / "media").glob("*.mp4"))[:2]]
    originals = {k.hex for c in clips for k in store.keys(c).values()}
    variants = set()
    for clip in clips:
        base, _ = store.fetch(clip)
        for name in ("reverse", "shuffle", "still"):
            feats, _ = reordered_frames(store, clip, frame_order(name, 4), name)
            assert feats.shape == base.vision.shape
            variants.add(store.key(clip, "vision", frame_order=name).hex)
        again, _ = reordered_frames(store, clip, frame_order("reverse", 4), "reverse")
        assert torch.equal(again, reordered_frames(store, clip, [3, 2, 1, 0], "reverse")[0])
        assert not torch.equal(again, base.vision)  # the encoder saw the order
    assert len(variants) == 6 and not variants & originals
    provenance = [e.metadata for e in store.cache.entries() if "frame_order" in e.metadata]
    assert sorted(m["frame_order"] for m in provenance) == sorted(["reverse", "shuffle",
                                                                   "still"] * 2)
    # A per-frame encoder (CLIP): the variant is the cached features, reordered.
    from micro import VISION_CLIP
    from vlm_cli.recipe import load_recipe

    (tmp_path / "clip.yaml").write_text(MICRO.replace(VISION_VIVIT, VISION_CLIP))
    per_frame = FeatureStore(load_recipe(str(tmp_path / "clip.yaml")), FeatureCache())
    base, _ = per_frame.fetch(clips[0], audio=False)
    got, meta = reordered_frames(per_frame, clips[0], [3, 2, 1, 0], "reverse")
    assert torch.equal(got, base.vision.flip(0)) and "timestamps" in meta
    with pytest.raises(ValueError):
        reordered_frames(per_frame, clips[0], [0, 1], "reverse")


def test_probe_report_rows_and_resume(home, tmp_path, capsys):
    data = home / "toy" / "qa" / "heldout_questions.json"
    out = tmp_path / "probe"
    args = ["probe", str(data), "--model", str(home / "run"), "--out", str(out), "--json"]
    assert run(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    questions = json.loads(data.read_text())
    assert len(rows) == len(questions) * (1 + len(VARIANTS))
    assert report["variants"] == list(VARIANTS) and report["labels"].endswith("clips.jsonl")
    assert set(report["summary"]["all"]) == {"original", *VARIANTS}
    assert (out / "changes.png").read_bytes()[:4] == b"\x89PNG"
    labels = {Path(json.loads(line)["video"]).name: json.loads(line)
              for line in (home / "toy" / "clips.jsonl").read_text().splitlines()}
    flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
    for r in rows:
        own = labels[Path(r["media"]).name]
        if r["variant"] == "reverse" and r["type"] == "direction":
            assert r["truth"] == flip[own["direction"]]
        if r["variant"] == "swap-audio":
            assert r["donor"] != r["media"] and r["audio"] == "swapped"
            if r["type"] == "sound":
                assert r["truth"] == labels[Path(r["donor"]).name]["sound"]
        if r["variant"] == "mute":
            assert r["audio"] == "muted" and (r["truth"] is None) == (r["type"] == "sound")
    # A re-run answers nothing again and gives the same report.
    before = (out / "probe.jsonl").read_text()
    assert run(args) == 0
    assert json.loads(capsys.readouterr().out)["summary"] == report["summary"]
    assert (out / "probe.jsonl").read_text() == before


def test_probe_on_shared_media_llava_json(home, tmp_path, capsys):
    from media_factory import SHARED_MEDIA

    clips = sorted(p.name for p in SHARED_MEDIA.iterdir() if p.suffix in (".mp4", ".wav"))
    data = tmp_path / "questions.json"
    data.write_text(json.dumps([
        {"id": f"q{i}", "video" if name.endswith(".mp4") else "audio": name,
         "conversations": [{"from": "human", "value": "<video>\nWhat sound is playing?"},
                           {"from": "gpt", "value": "a dog barking"}]}
        for i, name in enumerate(clips)]))
    out = tmp_path / "probe"
    code = run(["probe", str(data), "--model", str(home / "run"), "--media-root",
                str(SHARED_MEDIA), "--out", str(out), "--variants", "reverse,swap-audio,mute",
                "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["labels"] is None and not report["errors"]
    rows = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    audio_files = [n for n in clips if n.endswith(".wav")]
    # audio files: no frame order to reverse and nothing left when muted
    assert len(rows) == 4 * len(clips) - 2 * len(audio_files)
    assert all(isinstance(r["pred"], str) for r in rows)
