"""Long videos (issue 15): windowed decoding, window-by-window encoding, the token budget."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from media_factory import moving_frames, use_decoder, write_video
from micro import VISION_VIVIT, micro_recipe, trained_run
from vlm_cli.cli import run
from vlm_cli.media import load_video, video_windows

MICRO_VIVIT = micro_recipe(
    vision=VISION_VIVIT,
    train="  stage1: {freeze: [vision, audio], batch_size: 4, max_steps: 2, max_length: 128}")


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "short.mp4", moving_frames(75), fps=25)


def long_clip(path, seconds: int, fps: int = 4):
    """A ``seconds`` s clip at 48×64 px, written frame by frame (never held whole)."""
    pictures = moving_frames(16, 48, 64)
    return write_video(path, (pictures[(i // fps) % 16] for i in range(seconds * fps)), fps=fps)


@pytest.mark.parametrize("decoder", ["pyav-seek", "decord", "pyav"])
@pytest.mark.parametrize("window", [1, 3, 100])
def test_windows_give_the_frames_and_times_of_load_video(short_clip, decoder, window,
                                                         monkeypatch):
    # load_video's decoders; the windows decode with PyAV, by seeking

    use_decoder(monkeypatch, decoder)
    whole = load_video(short_clip, num_frames=None, fps=3)
    reader = video_windows(short_clip, fps=3, window=window)
    parts = list(reader)
    assert whole.decoder == decoder and reader.decoder == "pyav-seek"
    assert all(1 <= p.shape[0] <= window for p in parts) and reader.peak_frames <= window
    assert np.array_equal(np.concatenate(parts), whole.frames)
    # decord keeps times as float32: the same times, to its rounding.
    np.testing.assert_allclose(reader.timestamps, whole.timestamps, rtol=0,
                               atol=1e-6 if decoder == "decord" else 1e-12)
    assert reader.num_decodable == whole.num_decodable == 75
    assert reader.duration == pytest.approx(whole.duration)


def test_uniform_sampling_and_images_come_as_slices(short_clip):
    whole = load_video(short_clip, num_frames=8)
    reader = video_windows(short_clip, num_frames=8, window=3)
    assert [p.shape[0] for p in reader] == [3, 3, 2]
    assert np.array_equal(reader.timestamps, whole.timestamps)


def test_vivit_encodes_windows_as_clips(tmp_path):
    from vlm_cli.errors import VlmError
    from vlm_cli.model.encoders import VisionEncoder
    from vlm_cli.recipe import load_recipe

    (tmp_path / "micro.yaml").write_text(MICRO_VIVIT)
    encoder = VisionEncoder(load_recipe(str(tmp_path / "micro.yaml")).model.vision, lambda p: "")
    frames = moving_frames(10, 32, 32)
    assert encoder.clip_frames == 4
    with pytest.raises(VlmError, match="takes 4 frames per clip, got 10"):
        encoder.encode_frames(frames)
    feats = encoder.encode_frames(frames, pad=True)  # 3 clips, the last with 2 repeats
    assert feats.shape[0] == 3
    padded = np.concatenate([frames[8:], frames[9:].repeat(2, 0)])
    torch.testing.assert_close(feats, torch.cat([encoder.encode_frames(frames[:4]),
                                                 encoder.encode_frames(frames[4:8]),
                                                 encoder.encode_frames(padded)]))


def test_fetch_encodes_a_long_clip_window_by_window(tmp_path, monkeypatch):
    from vlm_cli.cache import FeatureCache
    from vlm_cli.features import WINDOW_FRAMES, FeatureStore
    from vlm_cli.recipe import load_recipe

    (tmp_path / "micro.yaml").write_text(MICRO_VIVIT)
    recipe = load_recipe(str(tmp_path / "micro.yaml"))
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, sampling="fps",
                                                                  fps=2.0))
    store = FeatureStore(recipe, FeatureCache(tmp_path / "cache"), device="cpu")
    readers = []
    made = FeatureStore.vision_windows
    monkeypatch.setattr(FeatureStore, "vision_windows",
                        lambda self, path: readers.append(made(self, path)) or readers[-1])
    clip = long_clip(tmp_path / "minute.mp4", 60)
    media, info = store.fetch(clip, audio=False)
    assert info["frames"]["count"] == 120 and info["cache"] == "miss"
    assert media.vision.shape[0] == 30  # 120 frames in clips of 4
    assert readers[0].window == WINDOW_FRAMES and readers[0].peak_frames <= WINDOW_FRAMES
    # The cache entry holds every window's features and every frame's time.
    again, info = store.fetch(clip, audio=False)
    assert info["cache"] == "hit" and torch.equal(again.vision, media.vision)
    assert again.vision_meta["timestamps"].numel() == 120
    # Three times longer: more features, the same frames held at once.
    long = long_clip(tmp_path / "three.mp4", 180)
    media, _ = store.fetch(long, audio=False)
    assert media.vision.shape[0] == 90 and readers[1].peak_frames == readers[0].peak_frames


def fake_model(connector, *, max_tokens=None, context=256):
    from vlm_cli.recipe import ConnectorSpec

    return SimpleNamespace(connectors={"video": connector},
                           spec=SimpleNamespace(video_connector=ConnectorSpec(
                               max_tokens=max_tokens)),
                           llm=SimpleNamespace(config=SimpleNamespace(
                               max_position_embeddings=context)))


def test_mlp_budget_pools_frames_in_time():
    from vlm_cli.errors import UsageError
    from vlm_cli.model.budget import fit_video
    from vlm_cli.model.connectors import MLPProjector
    from vlm_cli.model.vlm import MediaInput
    from vlm_cli.recipe import ConnectorSpec

    mlp = MLPProjector(8, 16, ConnectorSpec(tokens_per_frame=1))
    feats = torch.arange(300 * 4 * 8, dtype=torch.float32).reshape(300, 4, 8)
    media = MediaInput(vision=feats, vision_meta={"timestamps": torch.arange(300.0)})
    fitted, budget = fit_video(fake_model(mlp), media)  # 256 context: 128 tokens
    assert budget.max_tokens == 128 and budget.frames_used == 128 and budget.tokens == 128
    assert budget.frames_sampled == 300 and "temporal mean pooling 300 -> 128" in budget.pooled
    assert media.vision is feats and fitted.vision.shape == (128, 4, 8)
    torch.testing.assert_close(fitted.vision[0], feats[0:2].mean(0))  # round(300/128) edges
    same, budget = fit_video(fake_model(mlp), MediaInput(vision=feats[:100]))
    assert same.vision.shape[0] == 100 and budget.pooled == "none"
    with pytest.raises(UsageError, match="over the budget of 3"):
        fit_video(fake_model(MLPProjector(8, 16, ConnectorSpec()), max_tokens=3), media)


def test_qformer_budget_subsamples_to_its_positions():
    from vlm_cli.media.sampling import sample_frame_indices
    from vlm_cli.model.budget import fit_video
    from vlm_cli.model.connectors import QFormerConnector
    from vlm_cli.model.vlm import MediaInput
    from vlm_cli.recipe import ConnectorSpec

    qformer = QFormerConnector(8, 16, ConnectorSpec(type="qformer", hidden_size=16, num_layers=1,
                                                    num_heads=2, num_query_tokens=4,
                                                    max_positions=6))
    feats = torch.randn(20, 3, 8)
    fitted, budget = fit_video(fake_model(qformer), MediaInput(vision=feats))
    assert torch.equal(fitted.vision, feats[torch.as_tensor(sample_frame_indices(20, 6))])
    assert (budget.frames_used, budget.tokens) == (6, 4) and "uniform subsampling" in budget.pooled
    assert qformer(fitted.vision[None]).shape == (1, 4, 16)


@pytest.fixture(scope="module")
def vivit_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "long", MICRO_VIVIT, clips=8, seed=5)


def test_ask_a_clip_longer_than_the_clip_encoder_window(vivit_run, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.setenv("VLM_HOME", str(tmp_path / "home"))
    clip = long_clip(tmp_path / "long.mp4", 300, fps=2)
    code = run(["ask", str(clip), "What is happening?", "--fps", "2", "--json", "--model",
                str(vivit_run / "run")])
    out = capsys.readouterr()
    assert code == 0, out.err
    answer = json.loads(out.out)
    assert answer["answer"] and answer["frames"]["count"] == 600
    # 600 frames in 150 windows of 4, one token each; the budget (256 - 128) pools them.
    assert answer["budget"] == {
        "frames_sampled": 600, "frames_used": 128, "tokens": 128, "max_tokens": 128,
        "clip_windows": 150, "clip_frames": 4, "padded_frames": 0,
        "pooled": "temporal mean pooling 150 -> 128 rows (groups of 1.17 consecutive rows, "
                  "to fit 128 tokens)"}
    assert "150 -> 128" in out.err  # what was pooled is said, not only in --json


@pytest.mark.parametrize("rate,channels,clips", [(16000, 1, 8), (48000, 2, 3), (44100, 1, 1)])
def test_audio_clips_streamed_equal_the_whole_track(tmp_path, rate, channels, clips):
    from media_factory import write_wav
    from vlm_cli.media import audio_clip_fbanks, load_audio
    from vlm_cli.media.audio_clips import stream_clip_fbanks

    wave = 0.3 * np.random.default_rng(rate).standard_normal((channels, rate * 9))
    path = write_wav(tmp_path / "track.wav", wave.astype(np.float32).squeeze(), rate,
                     channels=channels)
    whole = audio_clip_fbanks(load_audio(path), num_clips=clips)
    streamed, duration = stream_clip_fbanks(path, num_clips=clips)
    assert torch.equal(streamed.spectrogram, whole.spectrogram)  # bit for bit
    assert np.array_equal(streamed.starts, whole.starts)
    assert duration == load_audio(path).duration


@pytest.mark.parametrize("long_s", [1.0, 600.0])  # streamed (a "long" track) or whole
def test_decode_media_takes_the_audio_clips_only(tmp_path, monkeypatch, long_s):
    from vlm_cli import decode
    from vlm_cli.features import DecodeRequest, decode_media
    from vlm_cli.media import audio_clip_fbanks, load_audio

    monkeypatch.setattr(decode, "LONG_AUDIO_S", long_s)
    calls = []
    import vlm_cli.media.audio_clips as streaming

    real = streaming.stream_clip_fbanks
    monkeypatch.setattr(streaming, "stream_clip_fbanks",
                        lambda *a, **k: calls.append(1) or real(*a, **k))

    tone = np.sin(np.arange(16000 * 30) / 16000 * 2 * np.pi * 440).astype(np.float32) * 0.2
    clip = write_video(tmp_path / "av.mp4", moving_frames(60, 32, 32), fps=2, audio=tone)
    settings = {"num_clips": 4, "clip_seconds": 2.0, "frontend": "kaldi_fbank",
                "num_mel_bins": 128, "target_frames": 204, "mean": -4.268, "std": 9.138}
    out = decode_media(DecodeRequest(str(clip), "video", None, settings))["audio"]
    whole = audio_clip_fbanks(load_audio(clip), num_clips=4)
    assert np.array_equal(out["spectrogram"], whole.spectrogram.numpy())
    assert out["duration"] == load_audio(clip).duration
    assert bool(calls) == (long_s < 30)  # the 30 s track is streamed only when "long"
    silent = write_video(tmp_path / "mute.mp4", moving_frames(4, 32, 32), fps=2)
    assert decode_media(DecodeRequest(str(silent), "video", None, settings))["audio"] == {
        "absent": "no audio track"}
