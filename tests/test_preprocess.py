"""`vlm preprocess`: fills the cache, idempotent, bad input reported per clip, safe concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from media_factory import SHARED_MEDIA, moving_frames, write_video, write_wav
from vlm_cli.cache import FeatureCache
from vlm_cli.cli import run

VLM = str(Path(sys.executable).with_name("vlm"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 12-clip toy-av dataset (real h264 + AAC mp4 files)."""
    from vlm_cli.toyav import generate_toy_av

    out = tmp_path_factory.mktemp("toy") / "toy-av"
    generate_toy_av(out, clips=12, seed=3, workers=1)
    return out


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_HOME", str(tmp_path / "vlm-home"))
    return tmp_path / "vlm-home"


def vlm_json(capsys, *args) -> tuple[int, dict, str]:
    code = run(["preprocess", *args, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else {}), captured.err


def entries(home: Path) -> list:
    return list(FeatureCache(home).entries())


def test_fills_cache_then_computes_nothing(toy, home, capsys):
    code, first, _ = vlm_json(capsys, str(toy / "clips.jsonl"))
    assert code == 0 and (first["clips"], first["computed"], first["hits"]) == (12, 12, 0)
    assert len(entries(home)) == 24  # one vision + one audio entry per clip
    code, second, _ = vlm_json(capsys, str(toy / "clips.jsonl"))
    assert code == 0 and (second["computed"], second["hits"]) == (0, 12)
    assert run(["preprocess", str(toy / "clips.jsonl")]) == 0
    assert "nothing to compute" in capsys.readouterr().out
    meta = {e.metadata["modality"]: e.metadata for e in entries(home)}
    assert meta["vision"]["sampling"] == {"strategy": "uniform", "frames": 8}
    assert meta["vision"]["decoder"] == "pyav-seek"
    assert meta["audio"]["audio"] == "present"
    assert Path(meta["vision"]["media"]).is_absolute()
    # A different sampling setting is a different key: nothing stale is reused.
    code, third, _ = vlm_json(capsys, str(toy / "clips.jsonl"), "model.vision.feature_layer=-2")
    assert third["computed"] == 12
    code, _, err = vlm_json(capsys, str(toy / "clips.jsonl"), "data.frames=4")
    assert code == 1 and "takes 8 frames per clip" in err  # ViViT's input length is fixed


def test_cached_run_loads_no_model_library(toy, home, capsys):
    """Every clip cached: no torch, numpy, decoder, rich (stderr is a pipe),
    importlib.metadata or multiprocessing (no decoder server is started) is
    imported (the start-up is most of a warm run)."""
    assert vlm_json(capsys, str(toy / "clips.jsonl"))[0] == 0
    code = ("import sys\n"
            "from vlm_cli.cli import run\n"
            f"code = run(['preprocess', {str(toy / 'clips.jsonl')!r}, '--json'])\n"
            "heavy = [m for m in ('torch', 'numpy', 'transformers', 'av', 'decord', 'rich',\n"
            "                     'importlib.metadata', 'multiprocessing')\n"
            "         if m in sys.modules]\n"
            "print('HEAVY', code, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "VLM_HOME": str(home)})
    assert "HEAVY 0 []" in out.stdout, out.stdout + out.stderr
    assert '"hits": 12' in out.stdout


def test_features_have_the_recipe_shapes(toy, home, capsys):
    vlm_json(capsys, str(toy / "stage1.json"), "--workers", "1")
    cache = FeatureCache(home)
    by_modality = {}
    for e in entries(home):
        by_modality[e.metadata["modality"]] = cache.get(e.key)[0]
    assert tuple(by_modality["vision"]["features"].shape) == (1, 1, 64)  # ViViT CLS per clip
    assert tuple(by_modality["audio"]["features"].shape) == (1, 64)  # one 2 s clip, pooled
    assert len(by_modality["vision"]["timestamps"]) == 8
    ts = by_modality["vision"]["timestamps"]
    assert ts[0] >= 0 and ts[-1] < 2.0 and bool((ts[1:] > ts[:-1]).all())


def make_bad_files(root: Path, toy: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    bad = {"missing": root / "missing.mp4", "text": root / "text.mp4",
           "truncated": root / "truncated.mp4", "empty": root / "empty.mp4"}
    bad["text"].write_text("this is not a video\n" * 50)
    data = (toy / "media" / "toyav-00000.mp4").read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 3])
    bad["empty"].write_bytes(b"")
    return bad


def test_bad_inputs_are_reported_and_the_rest_finishes(toy, home, tmp_path, capsys):
    bad = make_bad_files(tmp_path / "bad", toy)
    good = [toy / "media" / "toyav-00001.mp4", toy / "media" / "toyav-00002.mp4"]
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": str(i), "video": str(p)}
                                for i, p in enumerate([*bad.values(), *good])]))
    log = tmp_path / "errors.jsonl"
    code, summary, err = vlm_json(capsys, str(data), "--error-log", str(log))
    assert code == 0 and summary["computed"] == 2
    failed = {Path(f["path"]).name: f["reason"] for f in summary["failed"]}
    assert set(failed) == {p.name for p in bad.values()}
    assert "file not found" in failed["missing.mp4"]
    assert all(reason and "\n" not in reason for reason in failed.values())
    assert [json.loads(line)["path"] for line in log.read_text().splitlines()] \
        == [f["path"] for f in summary["failed"]]
    assert len(entries(home)) == 4  # the two good clips, vision + audio; nothing for bad ones
    assert not list(home.rglob("*.tmp"))
    code, _, _ = vlm_json(capsys, str(data), "--on-error", "fail", "--error-log", str(log))
    assert code == 1


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "empty"])
def test_a_bad_file_alone_exits_1_with_one_line(toy, home, tmp_path, kind, capsys):
    """One error line naming the file, exit 1, nothing cached; the truncated file through a
    real process with no standard input (as CI runs it), the others through the entry point."""
    path = make_bad_files(tmp_path / "bad", toy)[kind]
    if kind == "truncated":
        out = subprocess.run([VLM, "preprocess", str(path)], capture_output=True, text=True,
                             env={**os.environ, "VLM_HOME": str(home)}, stdin=subprocess.DEVNULL)
        code, err = out.returncode, out.stderr
    else:
        code, err = run(["preprocess", str(path)]), capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines()
             if line.strip() and "preprocess" not in line and "━" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), err
    assert "Traceback" not in err
    assert not entries(home) and not list(home.rglob("*.tmp"))


def test_corrupted_entry_is_reported_and_recomputed(toy, home, capsys):
    vlm_json(capsys, str(toy / "stage1.json"))
    victim = entries(home)[0]
    victim.path.write_bytes(victim.path.read_bytes()[:-50])
    code, summary, err = vlm_json(capsys, str(toy / "stage1.json"))
    assert code == 0 and summary["computed"] == 1
    assert "is corrupt" in err and victim.path.name in err
    assert FeatureCache(home).get(victim.key) is not None


def test_shards_partition_the_dataset(toy, home, capsys):
    counts = [vlm_json(capsys, str(toy / "clips.jsonl"), "--shard", s)[1]["computed"]
              for s in ("0/3", "1/3", "2/3")]
    assert sum(counts) == 12 and all(c > 0 for c in counts)
    assert vlm_json(capsys, str(toy / "clips.jsonl"))[1]["hits"] == 12
    assert run(["preprocess", str(toy / "clips.jsonl"), "--shard", "3/3"]) == 2


def test_image_audio_only_and_silent_video(home, tmp_path, capsys):
    from media_factory import write_png

    write_png(tmp_path / "still.png", moving_frames(1)[0])
    write_wav(tmp_path / "tone.wav", 0.3 * __import__("numpy").sin(
        __import__("numpy").arange(48000) / 16000 * 2 * 3.14159 * 440).astype("float32"), 16000)
    write_video(tmp_path / "mute.mp4", moving_frames(16), fps=8)
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"image": "still.png"}, {"audio": "tone.wav"},
                                {"video": "mute.mp4"}]))
    code, summary, _ = vlm_json(capsys, str(data))
    assert code == 0 and summary["computed"] == 3 and not summary["failed"]
    got = {(Path(e.metadata["media"]).name, e.metadata["modality"]): e.metadata
           for e in entries(home)}
    assert set(got) == {("still.png", "vision"), ("tone.wav", "audio"), ("mute.mp4", "vision"),
                        ("mute.mp4", "audio")}
    assert got[("mute.mp4", "audio")]["audio"] == "absent"  # explicit, never silent zeros
    assert got[("still.png", "vision")]["decoder"] == "image"


@pytest.mark.slow
def test_two_processes_at_once_then_nothing_to_compute(tmp_path, home):
    from vlm_cli.toyav import generate_toy_av

    out = generate_toy_av(tmp_path / "toy50", clips=50, seed=11)["out_dir"]
    cmd = [VLM, "preprocess", str(Path(out) / "clips.jsonl"), "--workers", "1", "--json"]
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "VLM_HOME": str(home), "TMPDIR": str(tmp_path / "tmp")}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    # `vlm` ends with os._exit after the exit handlers (multiprocessing's removed its files) and
    # kills the decoders' forkserver instead of waiting for its teardown
    assert list((tmp_path / "tmp").glob("pymp-*")) == []
    cache = FeatureCache(home)
    assert len(entries(home)) == 100
    assert all(cache.get(e.key) is not None for e in entries(home))
    third = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert json.loads(third.stdout)["computed"] == 0


def test_real_sample_media(home, capsys, tmp_path):
    files = sorted(p for p in SHARED_MEDIA.iterdir() if p.suffix in {".mp4", ".wav"})
    data = tmp_path / "real.json"
    data.write_text(json.dumps([{"audio" if p.suffix == ".wav" else "video": str(p)}
                                for p in files]))
    code, summary, _ = vlm_json(capsys, str(data))
    assert code == 0 and not summary["failed"] and summary["computed"] == len(files)
    audio = {Path(e.metadata["media"]).name: e.metadata["audio"]
             for e in entries(home) if e.metadata["modality"] == "audio"}
    assert audio["birthday.mp4"] == audio["output_v_3V9tzjyr51I.mp4"] == "absent"
    assert audio["dog_barking.mp4"] == audio["00003491.mp4"] == audio["dog_audio.wav"] == "present"


#: A 2-layer CLIP at 224 px (the Video-LLaVA input size) with the CLIP mean / std.
CLIP_224 = ["model.vision.arch=clip", "model.vision.select=patch", "model.vision.feature_layer=-2",
            "model.vision.image_mean=null", "model.vision.image_std=null",
            "model.vision.config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
            "num_attention_heads: 2, image_size: 224, patch_size: 32}", "model.audio=null",
            "model.audio_connector=null"]


def _reference_pixels(frames, size, mean, std):
    """The encoder's preprocessing before issue 15 (resize of the full-resolution frames in the
    main process), verbatim: what the cached features must still equal bit for bit."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
    h, w = x.shape[-2:]
    long = int(size * max(h, w) / min(h, w))
    target = (size, long) if h <= w else (long, size)
    if target != (h, w):
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True, align_corners=False)
    top, left = int((target[0] - size) / 2), int((target[1] - size) / 2)
    x = x[:, :, top:top + size, left:left + size].float()
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return (x - 255 * mean) / (255 * std)


@pytest.mark.skipif(SHARED_MEDIA is None, reason="../shared/media not available")
def test_worker_resize_and_batched_encoding_keep_the_features_bit_identical(home, tmp_path):
    """Frames resized in the decode worker and several clips encoded in one forward give the
    features that resizing the full-resolution frames and encoding clip by clip gave."""
    import shutil

    import torch

    from vlm_cli.features import FeatureStore, decode_media
    from vlm_cli.media import load_video
    from vlm_cli.preprocess import preprocess
    from vlm_cli.recipe import load_recipe

    clips = []
    for name in ("dog_barking.mp4", "sample_demo_22.mp4", "boat.mp4"):  # landscape + portrait
        clips.append(tmp_path / name)
        shutil.copy(SHARED_MEDIA / name, clips[-1])
    recipe = load_recipe("tiny-av", CLIP_224)
    store = FeatureStore(recipe, FeatureCache(home), "cpu")
    assert store.request(clips[0], ["vision"]).resize == 224
    summary = preprocess(clips, store, workers=2)
    assert (summary.computed, summary.failed) == (3, [])
    encoder = store.encoder("vision")
    pre = encoder.preprocessing
    batched = store.encoders.encode_vision_batch(  # all three in one forward
        [("vision", decode_media(store.request(clip, ["vision"]))) for clip in clips])
    for clip, together in zip(clips, batched):
        frames = load_video(clip, num_frames=recipe.data.frames).frames
        with torch.no_grad():
            expected = encoder(_reference_pixels(frames, 224, pre.mean, pre.std))[0]
        cached = store.media_input(clip).vision
        assert cached.shape == expected.shape and torch.equal(cached, expected), clip.name
        assert torch.equal(together, expected), clip.name


def test_read_ahead_is_bounded_by_bytes_not_files():
    """The workers may decode far ahead of the encoder when each file's frames have a known
    size (while it is being built), and only a few files when they do not."""
    from vlm_cli.features import DecodeRequest
    from vlm_cli.preprocess import ENCODE_BATCH, READ_AHEAD_BYTES, read_ahead

    uniform = DecodeRequest("a.mp4", "video", {"num_frames": 8}, None, resize=224)
    assert uniform.frame_bytes() == 8 * 224 * 224 * 3
    assert read_ahead([uniform] * 3, workers=2) == READ_AHEAD_BYTES // (8 * 224 * 224 * 3)
    capped = DecodeRequest("a.mp4", "video", {"num_frames": None, "fps": 1.0, "max_frames": 3600},
                           None, resize=224)
    assert read_ahead([uniform, capped], workers=2) == max(ENCODE_BATCH, 4)  # 540 MB a file
    unbounded = DecodeRequest("b.mp4", "video", {"num_frames": None, "fps": 1.0,
                                                 "max_frames": None}, None, resize=224)
    full_size = DecodeRequest("c.mp4", "video", {"num_frames": 8}, None)
    for odd in (unbounded, full_size):
        assert read_ahead([uniform, odd], workers=3) == max(ENCODE_BATCH, 6)
    audio_only = DecodeRequest("d.wav", "audio", None, {"num_clips": 3})
    assert audio_only.frame_bytes() == 0
    assert read_ahead([audio_only], workers=2) == READ_AHEAD_BYTES // 2**20


def test_encoder_gets_all_cores_when_files_wait_else_those_the_decoders_leave(monkeypatch):
    import torch

    from vlm_cli.preprocess import _CoreShare

    threads = [3]
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads[0])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.__setitem__(0, n))
    share = _CoreShare()
    share.cores = 4
    for decoding, bound, expected in ((0, False, 3), (2, False, 2), (3, False, 1), (6, False, 1),
                                      (2, True, 3), (6, True, 3)):
        share.running(decoding)
        share.apply(encoder_bound=bound)
        assert threads[0] == expected, (decoding, bound)
    share.restore()
    assert threads[0] == 3


@pytest.mark.skipif(SHARED_MEDIA is None, reason="../shared/media not available")
def test_vision_features_do_not_depend_on_the_thread_count(home):
    """What :class:`vlm_cli.preprocess._CoreShare` relies on: the encoder gives the same
    features bit for bit at 1 and 2 threads."""
    import torch

    from vlm_cli.features import FeatureStore
    from vlm_cli.media import load_video
    from vlm_cli.recipe import load_recipe

    store = FeatureStore(load_recipe("tiny-av", CLIP_224), FeatureCache(home), "cpu")
    encoder = store.encoder("vision")
    pre = encoder.preprocessing
    frames = load_video(SHARED_MEDIA / "boat.mp4", num_frames=8).frames
    pixels = _reference_pixels(frames, 224, pre.mean, pre.std)
    before = torch.get_num_threads()
    features = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                features.append(encoder(pixels)[0])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(features[0], features[1])


def test_omp_wait_policy_is_set_before_torch_is_imported(tmp_path):
    """`vlm preprocess` sets OMP_WAIT_POLICY=PASSIVE (unless set) before anything on its path
    imports torch, whose OpenMP runtime reads it once when loaded."""
    script = textwrap.dedent("""
        import os, sys
        seen = []
        def hook(event, args):
            if event == "import" and args[0] == "torch" and not seen:
                seen.append(os.environ.get("OMP_WAIT_POLICY"))
                print(f"torch imported with OMP_WAIT_POLICY={seen[0]}", file=sys.stderr)
                raise SystemExit(1)  # (no need to go on)
        sys.addaudithook(hook)
        from vlm_cli.cli import run
        run(["preprocess", sys.argv[1]])
    """)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["VLM_HOME"] = str(tmp_path / "home")
    clip = write_video(tmp_path / "clip.mp4", moving_frames(10), 5)
    done = subprocess.run([sys.executable, "-c", script, str(clip)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert "torch imported with OMP_WAIT_POLICY=PASSIVE" in done.stderr, done.stderr
