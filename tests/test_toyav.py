"""Tests of the toy-av dataset generator (CPU, small clips, PyAV decoding)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from vlm_cli.errors import UsageError
from vlm_cli.toyav import COLOURS, DIRECTIONS, SHAPES, SOUNDS, USUAL_SOUND, generate_toy_av
from vlm_cli.toyav.annotations import QUESTION_TEMPLATES
from vlm_cli.toyav.render import render_audio, render_frames
from vlm_cli.toyav.world import OPPOSITE, PALETTE, sample_clips, split_counts
from vlm_cli.toyav.writer import write_mp4

CLIPS = 28  # gives 19 train, 3 val, 3 test, 3 probe (one reversed pair + one contradiction)
SEED = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toyav") / "toy-av"
    calls: list[tuple[int, int]] = []
    summary = generate_toy_av(
        out, clips=CLIPS, seed=SEED, workers=1, progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1] == (CLIPS, CLIPS) and len(calls) == CLIPS
    return out, summary


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "clips.jsonl").read_text().splitlines()]


def _load(path: Path):
    return json.loads(path.read_text())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- decoding helpers


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """frames [T, H, W, 3] uint8 and audio [S] float32 of an mp4."""
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.float32)
    return frames, audio


def _mask(frame: np.ndarray) -> np.ndarray:
    return frame.max(axis=-1) > 80  # background grey is <= ~35, every palette colour has a channel > 200


def _classify_colour(frame: np.ndarray) -> str:
    rgb = frame[_mask(frame)].astype(float).mean(axis=0)
    return min(PALETTE, key=lambda c: float(np.sum((np.array(PALETTE[c]) - rgb) ** 2)))


def _classify_shape(frame: np.ndarray) -> str:
    m = _mask(frame)
    ys, xs = np.nonzero(m)
    fill = m.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))  # square ~1, circle ~pi/4, triangle ~1/2
    return "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"


def _centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(_mask(frame))
    return np.array([xs.mean(), ys.mean()])


def _classify_direction(frames: np.ndarray) -> str:
    dx, dy = _centroid(frames[-1]) - _centroid(frames[0])
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _dominant_hz(x: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def _classify_sound(audio: np.ndarray, rate: int = 16000) -> str:
    if np.sqrt(np.mean(audio**2)) < 1e-4:
        return "silence"
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    if power[freqs > 2000].sum() / power.sum() > 0.3:  # tones and chirp stay below 1.6 kHz
        return "noise burst"
    half = len(audio) // 2
    first, second = _dominant_hz(audio[:half]), _dominant_hz(audio[half:])
    if second > 1.5 * first:
        return "rising chirp"
    return "low tone" if first < 500 else "high tone"


# ---------------------------------------------------------------- world (no rendering)


def test_split_counts() -> None:
    assert split_counts(1000) == {"train": 700, "val": 100, "test": 100, "probe": 100}
    assert split_counts(28) == {"train": 19, "val": 3, "test": 3, "probe": 3}
    assert split_counts(4) == {"train": 1, "val": 1, "test": 1, "probe": 1}
    assert sum(split_counts(1).values()) == 1


def test_world_sampling_rules() -> None:
    specs = sample_clips(0, 1000)
    assert [s.id for s in specs] == [f"toyav-{i:05d}" for i in range(1000)]
    for split in ("train", "val", "test"):
        part = [s for s in specs if s.split == split]
        rate = np.mean([s.sound == USUAL_SOUND[s.shape] for s in part])
        # 80 % usual + 20 % uniform over 5 sounds (one of them usual) = 84 %
        assert abs(rate - 0.84) < (0.04 if split == "train" else 0.1), (split, rate)
        assert all(s.usual_sound == (s.sound == USUAL_SOUND[s.shape]) for s in part)
    train = [s for s in specs if s.split == "train"]
    for attr, vocab in (("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS), ("sound", SOUNDS)):
        assert set(Counter(getattr(s, attr) for s in train)) == set(vocab), attr
    probe = {s.id: s for s in specs if s.split == "probe"}
    assert all(s.probe_kind in ("contradiction", "reversed") for s in probe.values())
    assert all(s.probe_kind is None and s.pair is None for s in specs if s.split != "probe")
    # no shortcut: no probe clip makes its shape's usual sound
    assert not any(s.usual_sound or s.sound == USUAL_SOUND[s.shape] for s in probe.values())
    kinds = Counter(s.probe_kind for s in probe.values())
    assert kinds["reversed"] >= 40 and kinds["contradiction"] >= 40
    for s in probe.values():
        if s.probe_kind == "reversed":
            p = probe[s.pair]
            assert p.pair == s.id and p.probe_kind == "reversed"
            same = ("colour", "shape", "sound", "offset_px", "shape_px", "rgb", "background", "audio_seed")
            assert all(getattr(p, k) == getattr(s, k) for k in same)
            assert p.direction == OPPOSITE[s.direction]
            assert (p.start_gap_px, p.end_gap_px) == (s.end_gap_px, s.start_gap_px)
        else:
            assert s.pair is None
    for s in specs:
        assert 16 <= s.shape_px <= 20
    assert sample_clips(0, 50) == sample_clips(0, 50)
    assert sample_clips(0, 50) != sample_clips(1, 50)


# ---------------------------------------------------------------- generated dataset


def test_layout_and_formats(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    assert summary["existing"] is False and summary["clips"] == CLIPS and summary["seed"] == SEED
    assert summary["counts"] == {"train": 19, "val": 3, "test": 3, "probe": 3}
    manifest = _load(root / "toy-av.json")
    assert manifest["name"] == "toy-av" and manifest["format_version"] == 1
    settings = {k: manifest[k] for k in ("seed", "clips", "size", "fps", "seconds")}
    assert settings == {"seed": SEED, "clips": CLIPS, "size": 64, "fps": 8, "seconds": 2.0}
    assert manifest["sample_rate"] == 16000
    assert manifest["colours"] == list(COLOURS) and manifest["sounds"] == list(SOUNDS)
    assert manifest["shapes"] == list(SHAPES) and manifest["directions"] == list(DIRECTIONS)
    assert manifest["usual_sound"] == USUAL_SOUND and manifest["counts"] == summary["counts"]
    for rel in manifest["annotation_files"]:
        assert (root / rel).is_file(), rel
    assert set(summary["annotations"]) >= {"manifest", "clips", "stage1", "stage2", "probe_questions", "val_answers"}
    assert all(Path(p).is_file() for p in summary["annotations"].values())

    records = _records(root)
    assert [r["id"] for r in records] == [f"toyav-{i:05d}" for i in range(CLIPS)]
    assert sorted(p.name for p in (root / "media").iterdir()) == [f"{r['id']}.mp4" for r in records]
    keys = {"id", "split", "video", "colour", "shape", "direction", "sound", "usual_sound", "pair", "probe_kind"}
    by_id = {r["id"]: r for r in records}
    for r in records:
        assert set(r) == keys and r["video"] == f"media/{r['id']}.mp4" and (root / r["video"]).is_file()
        assert r["usual_sound"] == (r["sound"] == USUAL_SOUND[r["shape"]])
    probe = [r for r in records if r["split"] == "probe"]
    assert Counter(r["probe_kind"] for r in probe) == {"reversed": 2, "contradiction": 1}

    train_ids = {r["id"] for r in records if r["split"] == "train"}
    stage1 = _load(root / "stage1.json")
    assert {e["id"] for e in stage1} == train_ids
    for e in stage1:
        (human, gpt) = e["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<video>\n") and gpt["from"] == "gpt"
        r = by_id[e["id"]]
        assert f"{r['colour']} {r['shape']} moves {r['direction']}" in gpt["value"] and (root / e["video"]).is_file()
    stage2 = _load(root / "stage2.json")
    assert {e["id"] for e in stage2} == train_ids
    answers_of = {"sound": SOUNDS, "colour": COLOURS, "shape": SHAPES, "direction": DIRECTIONS}
    phrasing_type = {q: t for t, qs in QUESTION_TEMPLATES.items() for q in qs}
    assert "What sound is playing?" in QUESTION_TEMPLATES["sound"]
    for e in stage2:
        turns = e["conversations"]
        assert 4 <= len(turns) <= 8 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<video>\n")
        assert all("<video>" not in t["value"] for t in turns[1:])
        for q, a in zip(turns[::2], turns[1::2]):
            qtype = phrasing_type[q["value"].removeprefix("<video>\n")]
            assert a["value"] == by_id[e["id"]][qtype] and a["value"] in answers_of[qtype]

    all_qids: list[str] = []
    for split in ("val", "test", "probe"):
        questions = _load(root / "qa" / f"{split}_questions.json")
        answers = {a["question_id"]: a for a in _load(root / "qa" / f"{split}_answers.json")}
        ids = [r["id"] for r in records if r["split"] == split]
        assert len(questions) == 4 * len(ids) == len(answers)
        for q in questions:
            assert set(q) == {"video_name", "question", "question_id", "type"} and q["video_name"] in ids
            assert phrasing_type[q["question"]] == q["type"]
            a = answers[q["question_id"]]
            assert a["type"] == q["type"] and a["answer"] == by_id[q["video_name"]][q["type"]]
        assert Counter(q["type"] for q in questions) == {t: len(ids) for t in answers_of}
        all_qids += [q["question_id"] for q in questions]
    assert len(all_qids) == len(set(all_qids))


def test_mp4_streams(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for path in sorted((root / "media").iterdir())[:5]:
        with av.open(str(path)) as c:
            video, audio = c.streams.video[0], c.streams.audio[0]
            assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
            assert (video.codec_context.width, video.codec_context.height) == (64, 64)
            assert audio.codec_context.name == "aac" and audio.sample_rate == 16000 and audio.channels == 1
            assert abs(c.duration / av.time_base - 2.0) < 0.2
            assert abs(float(video.average_rate) - 8) < 1e-6
            assert not c.metadata.get("creation_time")
            assert sum(1 for _ in c.decode(video=0)) == 16


def test_content_matches_ground_truth(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for r in _records(root):
        frames, audio = _decode(root / r["video"])
        assert frames.shape == (16, 64, 64, 3)
        assert _classify_colour(frames[8]) == r["colour"], r
        assert _classify_shape(frames[8]) == r["shape"], r
        assert _classify_direction(frames) == r["direction"], r
        assert _classify_sound(audio) == r["sound"], r


def test_every_colour_shape_and_sound_survives_encoding(tmp_path: Path) -> None:
    base = sample_clips(7, 1)[0]
    combos = [(c, s, d, snd) for (c, s), d, snd in zip(
        [(c, s) for c in COLOURS for s in SHAPES], DIRECTIONS * 3, SOUNDS * 3)]
    assert {c for c, *_ in combos} == set(COLOURS) and {x[3] for x in combos} == set(SOUNDS)
    for i, (colour, shape, direction, sound) in enumerate(combos):
        spec = dataclasses.replace(
            base, colour=colour, shape=shape, direction=direction, sound=sound, rgb=PALETTE[colour]
        )
        path = tmp_path / f"{i}.mp4"
        frames = render_frames(spec, size=64, fps=8, seconds=2.0)
        write_mp4(path, frames, render_audio(spec, seconds=2.0), fps=8, sample_rate=16000)
        frames, audio = _decode(path)
        assert _classify_colour(frames[8]) == colour
        assert _classify_shape(frames[8]) == shape
        assert _classify_direction(frames) == direction
        assert _classify_sound(audio) == sound
        if sound == "silence":
            assert len(audio) >= 32000 and np.abs(audio).max() == 0  # a real, silent track
        if sound == "rising chirp":
            quarter = len(audio) // 4
            hz = [_dominant_hz(audio[k * quarter : (k + 1) * quarter]) for k in range(4)]
            assert hz == sorted(hz) and hz[0] < 700 and hz[-1] > 1100


def test_reversed_pair_frames_are_time_reversed(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    pair = [r for r in _records(root) if r["probe_kind"] == "reversed"]
    a, b = sorted(pair, key=lambda r: r["id"])
    assert a["pair"] == b["id"] and b["pair"] == a["id"] and b["direction"] == OPPOSITE[a["direction"]]
    fa, aa = _decode(root / a["video"])
    fb, ab = _decode(root / b["video"])
    assert np.abs(fa.astype(int) - fb[::-1].astype(int)).mean() < 2.0
    assert np.abs(aa - ab).max() == 0


def test_deterministic_bytes_any_worker_count(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = dataset
    again = generate_toy_av(tmp_path / "again", clips=CLIPS, seed=SEED, workers=2)
    assert again["existing"] is False
    assert _tree(root) == _tree(tmp_path / "again")
    other = _tree(Path(generate_toy_av(tmp_path / "other", clips=CLIPS, seed=SEED + 1, workers=1)["out_dir"]))
    first = _tree(root)
    assert other["clips.jsonl"] != first["clips.jsonl"]
    assert all(other[k] != first[k] for k in first if k.startswith("media/"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_existing_directory(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = dataset
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    again = generate_toy_av(root, clips=CLIPS, seed=SEED)
    assert again["existing"] is True and again["counts"] == dataset[1]["counts"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    with pytest.raises(UsageError, match=str(root)):
        generate_toy_av(root, clips=CLIPS, seed=SEED + 1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="foreign"):
        generate_toy_av(foreign, clips=4)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]


def test_interrupted_run_leaves_nothing(tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_toy_av(tmp_path / "ds", clips=8, workers=1, progress=stop)
    assert list(tmp_path.iterdir()) == []
    stale = tmp_path / ".ds.toyav-tmp-4194305-dead"  # left by a killed run (pid above Linux's pid_max)
    (stale / "media").mkdir(parents=True)
    generate_toy_av(tmp_path / "ds", clips=4, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    shutil.rmtree(tmp_path / "ds")
    (tmp_path / "empty").mkdir()  # an empty directory may be filled
    assert generate_toy_av(tmp_path / "empty", clips=4, workers=1)["counts"]["probe"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize(
    "kwargs",
    [{"clips": 0}, {"seed": -1}, {"size": 63}, {"fps": 0}, {"seconds": 0.0}, {"workers": 0}, {"clips": 2.5}],
)
def test_bad_settings_are_usage_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(UsageError):
        generate_toy_av(tmp_path / "x", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_package_import_is_light() -> None:
    code = "import sys, vlm_cli.toyav as t; t.COLOURS; print('numpy' in sys.modules or 'av' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
