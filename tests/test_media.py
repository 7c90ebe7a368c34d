"""Tests for vlm_cli.media: real sample clips, generated clips, bad inputs, audio front end."""

from __future__ import annotations

from fractions import Fraction

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchaudio

from media_factory import (SHARED_MEDIA, moving_frames, shared_sample, tone, use_decoder,
                           write_png, write_video, write_wav)
from vlm_cli.errors import MediaError
from vlm_cli.media import (
    IMAGEBIND_FBANK_MEAN,
    IMAGEBIND_FBANK_STD,
    SAMPLE_RATE,
    AudioTrack,
    NoAudio,
    audio_clip_fbanks,
    fps_frame_indices,
    kaldi_fbank,
    load_audio,
    load_video,
    probe_media,
    sample_audio_clips,
    sample_frame_indices,
)
from vlm_cli.media import video as video_module

SAMPLES = SHARED_MEDIA

# name: (width, height, duration s, audio channels or None) -- from the samples' README.md
SAMPLE_VIDEOS = {
    "dog_barking.mp4": (854, 480, 7.2, 2),
    "boat.mp4": (592, 336, 6.0, 2),
    "applausing.mp4": (720, 480, 10.1, 2),
    "birthday.mp4": (596, 336, 16.7, None),
    "output_v_3V9tzjyr51I.mp4": (480, 360, 5.0, None),
    "sample_demo_1.mp4": (640, 360, 9.7, 2),
    "sample_demo_3.mp4": (640, 360, 6.1, 2),
    "sample_demo_22.mp4": (204, 360, 36.3, 1),
    "00003491.mp4": (640, 360, 60.0, 2),
}
# name: (duration s, channels)
SAMPLE_WAVS = {"dog_audio.wav": (2.6, 2), "car_audio.wav": (5.0, 1)}

needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"no sample media at {SAMPLES}")


@pytest.fixture
def no_decord(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only PyAV's sequential decoding: both seeking decoders fail on every file."""
    use_decoder(monkeypatch, "pyav")


def _assert_timestamps(vf, duration: float) -> None:
    assert vf.timestamps.dtype == np.float64
    assert vf.timestamps.shape == (vf.frames.shape[0],)
    assert np.all(np.diff(vf.timestamps) > 0)
    assert vf.timestamps[0] >= 0.0
    assert vf.timestamps[-1] <= vf.duration + 1e-6
    assert vf.duration == pytest.approx(duration, abs=0.3)


# ------------------------------------------------------------------------------------------
# Real sample files


@needs_samples
@pytest.mark.parametrize("name", sorted(SAMPLE_VIDEOS))
def test_sample_video_decodes_8_frames(name: str) -> None:
    width, height, duration, _ = SAMPLE_VIDEOS[name]
    vf = load_video(shared_sample(name))
    assert vf.decoder == "pyav-seek"
    assert vf.frames.dtype == np.uint8
    assert vf.frames.shape == (8, height, width, 3)
    assert vf.frames.flags.c_contiguous
    _assert_timestamps(vf, duration)
    assert vf.num_decodable >= 8
    assert vf.fps > 0
    assert vf.num_decodable == pytest.approx(vf.duration * vf.fps, rel=0.02)
    assert vf.frames.std() > 5  # real pictures, not a blank buffer


@needs_samples
@pytest.mark.parametrize("name, sampling", [
    *((name, dict(num_frames=8)) for name in sorted(SAMPLE_VIDEOS)),
    ("sample_demo_22.mp4", dict(num_frames=None, fps=1.0)),  # 36 s, 1 ms last frame
    ("applausing.mp4", dict(num_frames=None, fps=3.0)),  # first pts not 0, 29.97 Hz
    ("birthday.mp4", dict(num_frames=16, sampling="segment_start")),
])
def test_seeking_with_pyav_gives_decords_frames(name: str, sampling: dict,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The same pixels as decord, bit for bit, at the same times (decord keeps float32)."""
    seek = load_video(shared_sample(name), **sampling)
    use_decoder(monkeypatch, "decord")
    reference = load_video(shared_sample(name), **sampling)
    assert (seek.decoder, reference.decoder) == ("pyav-seek", "decord")
    np.testing.assert_array_equal(seek.frames, reference.frames)
    np.testing.assert_allclose(seek.timestamps, reference.timestamps, rtol=0, atol=2e-6)
    assert (seek.num_decodable, seek.fps) == (reference.num_decodable, reference.fps)
    # The last frame's end comes from its packet duration, as the demuxer reports it: decord's
    # older libavformat gives 33 ms where PyAV's gives the 1 ms of sample_demo_22's table.
    assert seek.duration == pytest.approx(reference.duration, abs=0.035)


@pytest.mark.parametrize("decoder", ["pyav-seek", "decord", "pyav"])
def test_each_frame_maps_every_frame_as_it_is_decoded(tmp_path: Path, decoder: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``each_frame`` gives what mapping the result frame by frame gives (the encoder's resize
    and crop, bit for bit), by every decoder, for a picture, and after a display rotation is
    undone; the seeking decoder calls it on each frame as it is decoded, never on a stack."""
    from vlm_cli.media.resize import clip_resize_crop

    def crop(frame: np.ndarray) -> np.ndarray:
        assert frame.ndim == 3, frame.shape  # one frame at a time
        calls.append(frame.shape)
        return clip_resize_crop(frame[None], 32)[0]

    frames = moving_frames(12, 48, 80)
    clip = tmp_path / "clip.mp4"
    turned = tmp_path / "turned.mp4"
    for path, rotation in ((clip, 0), (turned, 90)):
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=12)
            stream.width, stream.height, stream.pix_fmt = 80, 48, "yuv420p"
            if rotation:
                stream.set_display_rotation(rotation)
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    picture = write_png(tmp_path / "still.png", frames[0])
    if decoder != "pyav-seek":
        use_decoder(monkeypatch, decoder)
    for path, kwargs in ((clip, {"num_frames": 5}), (clip, {"num_frames": None, "fps": 3.0}),
                         (turned, {"num_frames": 4, "sampling": "transformers"}),
                         (picture, {"num_frames": 8})):
        calls: list[tuple[int, ...]] = []
        mapped = load_video(path, **kwargs, each_frame=crop)
        whole = load_video(path, **kwargs)
        assert mapped.decoder == whole.decoder
        if path != turned:  # (decord gives way to PyAV on the rotated clip)
            assert mapped.decoder == (decoder if path == clip else "image")
        want = clip_resize_crop(whole.frames, 32)
        assert mapped.frames.shape == want.shape and np.array_equal(mapped.frames, want)
        np.testing.assert_array_equal(mapped.timestamps, whole.timestamps)
        distinct = len({float(t) for t in whole.timestamps})
        assert len(calls) == (distinct if decoder == "pyav-seek" and path == clip
                              else len(whole.frames))
        assert (mapped.frames.flags.c_contiguous, mapped.frames.dtype) == (True, np.uint8)


@needs_samples
@pytest.mark.parametrize("name", sorted(SAMPLE_VIDEOS))
def test_sample_video_pyav_matches_decord(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    use_decoder(monkeypatch, "decord")
    reference = load_video(shared_sample(name))
    use_decoder(monkeypatch, "pyav")
    vf = load_video(shared_sample(name))
    assert vf.decoder == "pyav"
    assert vf.num_decodable == reference.num_decodable
    np.testing.assert_allclose(vf.timestamps, reference.timestamps, atol=1e-3)
    assert vf.duration == pytest.approx(reference.duration, abs=0.05)
    diff = np.abs(vf.frames.astype(np.int16) - reference.frames.astype(np.int16)).mean()
    assert diff < 2.0


@needs_samples
@pytest.mark.parametrize("name", sorted(SAMPLE_VIDEOS))
def test_sample_video_audio(name: str) -> None:
    _, _, duration, channels = SAMPLE_VIDEOS[name]
    track = load_audio(shared_sample(name))
    if channels is None:
        assert isinstance(track, NoAudio)
        assert track.path == str(shared_sample(name))
        return
    assert isinstance(track, AudioTrack)
    _assert_track(track, duration, channels, 44_100)


@needs_samples
@pytest.mark.parametrize("name", sorted(SAMPLE_WAVS))
def test_sample_wav_audio(name: str) -> None:
    duration, channels = SAMPLE_WAVS[name]
    track = load_audio(shared_sample(name))
    assert isinstance(track, AudioTrack)
    _assert_track(track, duration, channels, 44_100)
    info = probe_media(shared_sample(name))
    assert (info.kind, info.has_video, info.has_audio) == ("audio", False, True)


def _assert_track(track: AudioTrack, duration: float, channels: int, source_rate: int) -> None:
    assert track.sample_rate == SAMPLE_RATE == 16_000
    assert track.waveform.dtype == torch.float32
    assert track.waveform.ndim == 1
    assert track.duration == pytest.approx(track.waveform.numel() / 16_000)
    assert track.duration == pytest.approx(duration, abs=0.3)
    assert track.source_channels == channels
    assert track.source_sample_rate == source_rate
    assert float(track.waveform.square().mean().sqrt()) > 1e-3  # real sound, not zeros


@needs_samples
def test_sample_mp3_in_mp4() -> None:
    """00003491.mp4 carries MP3 (not AAC) audio next to h264 at 60 fps."""
    track = load_audio(shared_sample("00003491.mp4"))
    assert isinstance(track, AudioTrack)
    assert track.duration == pytest.approx(60.0, abs=0.3)
    clips = audio_clip_fbanks(track)
    assert clips.spectrogram.shape == (8, 204, 128)
    # pytorchvideo's ConstantClipsPerVideoSampler: k * (duration - 2) / 8
    np.testing.assert_allclose(clips.starts, np.arange(8) * (track.duration - 2.0) / 8)


@needs_samples
@pytest.mark.parametrize("name", sorted(SAMPLE_VIDEOS))
def test_sample_probe(name: str) -> None:
    width, height, duration, channels = SAMPLE_VIDEOS[name]
    info = probe_media(shared_sample(name))
    assert info.kind == "video" and info.has_video
    assert info.has_audio == (channels is not None)
    assert (info.width, info.height) == (width, height)
    assert info.duration == pytest.approx(duration, abs=0.3)


@needs_samples
def test_wav_is_not_a_video() -> None:
    with pytest.raises(MediaError, match="no video stream") as err:
        load_video(shared_sample("car_audio.wav"))
    assert str(shared_sample("car_audio.wav")) in str(err.value)


# ------------------------------------------------------------------------------------------
# Frame sampling


@pytest.mark.parametrize("total,num", [(1, 1), (1, 8), (3, 8), (8, 8), (9, 8), (299, 8), (3600, 8)])
def test_sample_frame_indices(total: int, num: int) -> None:
    idx = sample_frame_indices(total, num)
    assert idx.dtype == np.int64 and idx.shape == (num,)
    assert idx[0] == 0 and idx[-1] == total - 1
    assert np.all(np.diff(idx) >= 0) and idx.max() <= total - 1
    # Video-LLaVA: np.linspace(0, len(vr) - 1, num_frames, dtype=int)
    np.testing.assert_array_equal(idx, np.linspace(0, total - 1, num, dtype=int))
    if total >= num:
        assert np.unique(idx).size == num
    np.testing.assert_array_equal(idx, sample_frame_indices(total, num))  # deterministic


@pytest.mark.parametrize("total,num", [(0, 8), (10, 0), (-1, 1)])
def test_sample_frame_indices_rejects(total: int, num: int) -> None:
    with pytest.raises(ValueError):
        sample_frame_indices(total, num)


def _fps_reference(ts: np.ndarray, fps: float) -> np.ndarray:
    targets = ts[0] + np.arange(0.0, ts[-1] - ts[0] + 1e-9, 1.0 / fps)
    return np.unique(np.searchsorted(ts, targets + 1e-4, side="right") - 1)


def test_fps_frame_indices_constant_rate() -> None:
    ts = np.arange(300) / 30.0  # 10 s at 30 fps
    idx = fps_frame_indices(ts, 1.0)
    np.testing.assert_array_equal(idx, np.arange(0, 300, 30))
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(fps_frame_indices(ts, 2.0), np.arange(0, 300, 15))
    # without `end` the last target is the last timestamp; with it, the last frame's span counts
    np.testing.assert_array_equal(fps_frame_indices(ts, 1000.0, end=10.0), np.arange(300))
    assert fps_frame_indices(ts, 1000.0).size == 299
    np.testing.assert_array_equal(fps_frame_indices(ts, 1.0, end=10.0), idx)
    np.testing.assert_array_equal(fps_frame_indices(ts, 30.0, end=10.0), np.arange(300))
    capped = fps_frame_indices(ts, 1.0, max_frames=4)
    assert capped.size == 4
    np.testing.assert_array_equal(capped, idx[sample_frame_indices(idx.size, 4)])
    assert set(capped) <= set(idx) and capped[0] == 0 and capped[-1] == idx[-1]
    assert fps_frame_indices(ts, 1.0, max_frames=100).size == 10  # cap above count: no-op
    np.testing.assert_array_equal(fps_frame_indices(np.array([0.5]), 1.0), [0])


def test_fps_frame_indices_variable_rate() -> None:
    rng = np.random.default_rng(0)
    ts = np.cumsum(rng.uniform(0.01, 0.2, size=500)) + 0.3
    for fps in (0.5, 1.0, 3.0, 7.5, 50.0):
        np.testing.assert_array_equal(fps_frame_indices(ts, fps), _fps_reference(ts, fps))


@pytest.mark.parametrize(
    "ts,fps,cap,end",
    [([], 1.0, None, None), ([0, 1], 0.0, None, None), ([1, 0], 1.0, None, None),
     ([0, 1], 1.0, 0, None), ([0, 1], 1.0, None, 0.5)],
)
def test_fps_frame_indices_rejects(
    ts: list, fps: float, cap: int | None, end: float | None
) -> None:
    with pytest.raises(ValueError):
        fps_frame_indices(np.asarray(ts, dtype=float), fps, cap, end=end)


# ------------------------------------------------------------------------------------------
# Generated clips


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def clip_4s(clip_dir: Path) -> Path:
    """4 s at 25 fps, 64x96, with a 440 Hz AAC tone at 16 kHz."""
    return write_video(
        clip_dir / "clip4s.mp4", moving_frames(100), 25, audio=tone(440, 4.0, 16_000)
    )


@pytest.mark.parametrize("decoder", ["pyav-seek", "decord", "pyav"])
def test_load_video_by_fps(clip_4s: Path, decoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    use_decoder(monkeypatch, decoder)
    vf = load_video(clip_4s, num_frames=None, fps=2.0)
    assert vf.decoder == decoder
    assert vf.frames.shape == (8, 64, 96, 3)
    # frames at k / 25 s: the frame on screen at 0.5 s is the one shown from 0.48 s
    expected = np.floor(np.arange(8) * 0.5 * 25 + 1e-6) / 25
    np.testing.assert_allclose(vf.timestamps, expected, atol=1e-3)
    capped = load_video(clip_4s, num_frames=None, fps=2.0, max_frames=3)
    np.testing.assert_allclose(capped.timestamps, expected[[0, 3, 7]], atol=1e-3)
    every = load_video(clip_4s, num_frames=None, fps=25.0)
    assert every.frames.shape[0] == 100
    assert vf.num_decodable == 100 and vf.fps == pytest.approx(25.0)
    assert vf.duration == pytest.approx(4.0, abs=0.05)


@pytest.mark.parametrize(
    "kwargs",
    [dict(fps=1.0), dict(num_frames=None), dict(num_frames=0), dict(num_frames=4, max_frames=2),
     dict(num_frames=None, fps=-1.0)],
)
def test_load_video_rejects_bad_sampling(clip_4s: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        load_video(clip_4s, **kwargs)


@pytest.mark.parametrize("decoder", ["pyav-seek", "decord", "pyav"])
def test_short_clip_repeats_frames(
    clip_dir: Path, decoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_decoder(monkeypatch, decoder)
    path = write_video(clip_dir / f"three_{decoder}.mp4", moving_frames(3), 10)
    vf = load_video(path, num_frames=8)
    assert vf.decoder == decoder
    assert vf.frames.shape == (8, 64, 96, 3) and vf.num_decodable == 3
    np.testing.assert_allclose(vf.timestamps, np.linspace(0, 2, 8).astype(int) / 10, atol=1e-3)
    np.testing.assert_array_equal(vf.frames[0], vf.frames[1])


def test_generated_audio_track(clip_4s: Path) -> None:
    track = load_audio(clip_4s)
    assert isinstance(track, AudioTrack)
    assert track.source_sample_rate == 16_000 and track.source_channels == 1
    assert track.duration == pytest.approx(4.0, abs=0.1)
    assert _dominant_hz(track.waveform[8000:-8000], 16_000) == pytest.approx(440, abs=3)


def test_image_is_one_frame(tmp_path: Path) -> None:
    rgb = moving_frames(1, 48, 80)[0]
    path = write_png(tmp_path / "picture.png", rgb)
    vf = load_video(path)  # num_frames=8 asked, one picture given
    assert vf.decoder == "image"
    assert vf.frames.shape == (1, 48, 80, 3) and vf.frames.dtype == np.uint8
    np.testing.assert_array_equal(vf.frames[0], rgb)  # png is lossless
    np.testing.assert_array_equal(vf.timestamps, [0.0])
    assert (vf.num_decodable, vf.duration, vf.fps) == (1, 0.0, 0.0)
    assert load_video(path, num_frames=None, fps=1.0).frames.shape[0] == 1
    info = probe_media(path)
    assert (info.kind, info.width, info.height, info.duration) == ("image", 80, 48, None)
    assert isinstance(load_audio(path), NoAudio)


def test_decord_failure_falls_back_to_pyav(clip_4s: Path, no_decord: None) -> None:
    vf = load_video(clip_4s)
    assert vf.decoder == "pyav"
    assert vf.frames.shape == (8, 64, 96, 3) and vf.num_decodable == 100


@pytest.fixture(scope="module")
def b_frame_clip(clip_dir: Path) -> Path:
    """4 s at 25 fps with B-frames (x264 medium) and key frames at most 12 frames apart."""
    return write_video(clip_dir / "bframes.mp4", moving_frames(100), 25,
                       x264={"preset": "medium", "g": "12", "crf": "23"})


def _frames_decoded(caplog: pytest.LogCaptureFixture) -> int:
    for record in caplog.records:
        if record.name == video_module.__name__ and "frames decoded for" in record.getMessage():
            return int(record.getMessage().split(": ")[1].split()[0])
    raise AssertionError("the seeking decoder logged no count")


@pytest.mark.parametrize("sampling", [dict(num_frames=8), dict(num_frames=3),
                                      dict(num_frames=None, fps=7.0),
                                      dict(num_frames=None, fps=25.0)])
def test_seeking_skips_unreferenced_frames_and_keeps_the_pixels(
    b_frame_clip: Path, sampling: dict, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Against every frame decoded in order: the same frames and times; fewer frames decoded
    than when the non-reference frames on the way are decoded too (every frame at 25 fps)."""
    caplog.set_level("DEBUG", logger=video_module.__name__)
    seek = load_video(b_frame_clip, **sampling)
    skipping = _frames_decoded(caplog)
    caplog.clear()
    monkeypatch.setattr(video_module, "_SKIP_NONREF_CODECS", frozenset())
    assert np.array_equal(load_video(b_frame_clip, **sampling).frames, seek.frames)
    everything = _frames_decoded(caplog)
    use_decoder(monkeypatch, "pyav")
    reference = load_video(b_frame_clip, **sampling)
    assert seek.decoder == "pyav-seek" and reference.decoder == "pyav"
    np.testing.assert_array_equal(seek.frames, reference.frames)
    np.testing.assert_allclose(seek.timestamps, reference.timestamps, rtol=0, atol=1e-9)
    assert seek.num_decodable == reference.num_decodable == 100
    if sampling.get("fps") == 25.0:
        assert skipping == everything == 100
    else:
        assert skipping < everything < 100


def test_seeks_that_land_early_decode_forward(b_frame_clip: Path) -> None:
    """A demuxer that lands on an earlier key frame than asked (here always the first): the
    decoder goes forward from there to every selected frame, and stops."""
    with av.open(str(b_frame_clip)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        pts = np.sort([p for p, _ in packets])
        keys = np.sort([p for p, key in packets if key])
        wanted = pts[[20, 50, 51, 99]]
        assert np.searchsorted(keys, wanted[-1]) > 2  # several key frames to seek to

        class LandsAtTheStart:
            def seek(self, offset: int, **options: object) -> None:
                container.seek(0, **options)

            def demux(self, which: object):
                return container.demux(which)

        early, _ = video_module._decode_by_seeking(LandsAtTheStart(), stream, wanted, keys)
        exact, _ = video_module._decode_by_seeking(container, stream, wanted, keys)
    assert sorted(early) == sorted(exact) == wanted.tolist()
    for p in wanted.tolist():
        np.testing.assert_array_equal(early[p], exact[p])


def test_index_without_timestamps_is_decoded_in_order(tmp_path: Path) -> None:
    """A raw h264 stream has no packet times: neither seeking decoder can use it, PyAV decodes
    it in order (never a wrong frame from a guessed position)."""
    original = moving_frames(40)
    path = write_video(tmp_path / "raw.h264", original, 10)
    vf = load_video(path, num_frames=4)
    assert vf.decoder == "pyav" and vf.num_decodable == 40
    expected = original[[0, 13, 26, 39], :, :, 0].mean(axis=(1, 2))  # red level: frame number
    np.testing.assert_allclose(vf.frames[..., 0].mean(axis=(1, 2)), expected, atol=4)


def test_scaling_in_the_decoder_is_decords(clip_4s: Path) -> None:
    """Video-LLaMA's ``VideoReader(height=224, width=224)``: decord's libswscale, which PyAV's
    does not reproduce, so the scaled frames stay decord's."""
    vf = load_video(clip_4s, size=(32, 32))
    assert vf.decoder == "decord" and vf.frames.shape == (8, 32, 32, 3)


def _truncated_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_truncated_faststart_mp4_decodes_what_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moov first, data cut at 60%: decord refuses it; PyAV's demuxer stops at the cut, so the
    index holds the frames that exist, the sampling is spread over them (not over the header's
    100 frames) and seeking gives what decoding every frame in order gives."""
    original = moving_frames(100)
    full = write_video(
        tmp_path / "full.mp4", original, 25, audio=tone(440, 4.0, 16_000), faststart=True
    )
    cut = _truncated_copy(full, tmp_path / "cut.mp4", 0.6)
    vf = load_video(cut)
    with monkeypatch.context() as patch:
        use_decoder(patch, "decord")
        in_order = load_video(cut)
    assert (vf.decoder, in_order.decoder) == ("pyav-seek", "pyav")
    np.testing.assert_array_equal(vf.frames, in_order.frames)
    np.testing.assert_array_equal(vf.timestamps, in_order.timestamps)
    assert 0 < vf.num_decodable == in_order.num_decodable < 100
    assert vf.frames.shape == (8, 64, 96, 3)
    _assert_timestamps(vf, vf.num_decodable / 25)
    np.testing.assert_array_equal(
        np.round(vf.timestamps * 25).astype(int), sample_frame_indices(vf.num_decodable, 8)
    )
    # Each frame is the real picture at its timestamp (red level encodes the frame number).
    expected = original[np.round(vf.timestamps * 25).astype(int), :, :, 0].mean(axis=(1, 2))
    np.testing.assert_allclose(vf.frames[..., 0].mean(axis=(1, 2)), expected, atol=4)
    # The audio of the cut file: what decodes before the cut, or a MediaError -- never zeros.
    try:
        track = load_audio(cut)
    except MediaError as err:
        assert str(cut) in str(err)
    else:
        assert isinstance(track, AudioTrack) and 0 < track.duration < 4.0
        assert _dominant_hz(track.waveform, 16_000) == pytest.approx(440, abs=3)


# ------------------------------------------------------------------------------------------
# Bad inputs


def _bad_inputs(tmp_path: Path, clip: Path) -> dict[str, Path]:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    truncated = _truncated_copy(clip, tmp_path / "truncated.mp4", 0.5)  # index at the end: lost
    return {
        "missing": tmp_path / "missing.mp4",
        "zero-byte": empty,
        "text": text,
        "truncated": truncated,
        "directory": tmp_path,
    }


@pytest.mark.parametrize("kind", ["missing", "zero-byte", "text", "truncated", "directory"])
@pytest.mark.parametrize("loader", [load_video, load_audio, probe_media])
def test_bad_input_raises_media_error(
    tmp_path: Path, clip_4s: Path, kind: str, loader
) -> None:
    path = _bad_inputs(tmp_path, clip_4s)[kind]
    with pytest.raises(MediaError) as err:
        loader(path)
    assert str(path) in str(err.value)
    assert err.value.path == str(path)
    assert "\n" not in str(err.value)


def test_bad_input_with_pyav_only(tmp_path: Path, clip_4s: Path, no_decord: None) -> None:
    for path in _bad_inputs(tmp_path, clip_4s).values():
        with pytest.raises(MediaError):
            load_video(path)


# ------------------------------------------------------------------------------------------
# Audio front end


def _dominant_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy().astype(np.float64)))
    return float(np.fft.rfftfreq(wave.numel(), 1.0 / rate)[spectrum.argmax()])


def test_stereo_downmix_keeps_one_sided_tone(tmp_path: Path) -> None:
    left = tone(440, 3.0, 44_100, amplitude=0.5)
    path = write_wav(tmp_path / "left_only.wav", np.stack([left, np.zeros_like(left)]), 44_100)
    track = load_audio(path)
    assert isinstance(track, AudioTrack)
    assert track.source_channels == 2 and track.source_sample_rate == 44_100
    # 44.1 kHz -> 16 kHz: ceil(S * 16000 / 44100) samples
    assert track.waveform.numel() == int(np.ceil(left.size * 16_000 / 44_100))
    assert track.duration == pytest.approx(3.0, abs=1e-3)
    assert _dominant_hz(track.waveform, 16_000) == pytest.approx(440, abs=1)
    peak = float(track.waveform[1000:-1000].abs().max())
    assert peak == pytest.approx(0.25, abs=0.01)  # mean of the two channels


def test_mono_wav_at_16k_is_not_resampled(tmp_path: Path) -> None:
    wave = tone(1000, 1.0, 16_000, amplitude=0.3)
    track = load_audio(write_wav(tmp_path / "mono.wav", wave, 16_000, channels=1))
    assert isinstance(track, AudioTrack)
    np.testing.assert_allclose(track.waveform.numpy(), wave, atol=1 / 32767 + 1e-6)


def test_video_without_audio_is_no_audio(tmp_path: Path) -> None:
    path = write_video(tmp_path / "silent.mp4", moving_frames(10), 10)
    result = load_audio(path)
    assert result == NoAudio(path=str(path))
    with pytest.raises(MediaError, match="no audio track"):
        audio_clip_fbanks(result)


def test_sample_audio_clips_long() -> None:
    wave = torch.arange(10 * 16_000, dtype=torch.float32)
    clips, starts = sample_audio_clips(wave, num_clips=8, clip_seconds=2.0)
    assert clips.shape == (8, 32_000) and clips.dtype == torch.float32
    assert starts.dtype == np.float64
    # pytorchvideo's ConstantClipsPerVideoSampler: k * (10 - 2) / 8 s; ImageBind's int(start * rate)
    np.testing.assert_allclose(starts, np.arange(8.0))
    for k, clip in enumerate(clips):
        first = int(Fraction(8, 8) * k * 16_000)
        torch.testing.assert_close(clip, wave[first : first + 32_000])


def test_sample_audio_clips_short_is_zero_padded() -> None:
    wave = torch.ones(24_000)  # 1.5 s
    clips, starts = sample_audio_clips(wave, num_clips=3)
    np.testing.assert_array_equal(starts, [0.0, 0.0, 0.0])
    assert torch.all(clips[:, :24_000] == 1) and torch.all(clips[:, 24_000:] == 0)
    with pytest.raises(ValueError):
        sample_audio_clips(torch.zeros(0))
    with pytest.raises(ValueError):
        sample_audio_clips(torch.zeros(2, 100))


def _reference_fbank(clip: torch.Tensor) -> torch.Tensor:
    """ImageBind's waveform2melspec + Normalize, written out independently."""
    if clip.numel() < 400:  # torchaudio refuses clips shorter than one window
        return torch.full((204, 128), -IMAGEBIND_FBANK_MEAN / IMAGEBIND_FBANK_STD)
    wave = clip.unsqueeze(0) - clip.mean()
    fb = torchaudio.compliance.kaldi.fbank(
        wave, htk_compat=True, sample_frequency=16_000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10,
    ).T
    p = 204 - fb.shape[1]
    fb = torch.nn.functional.pad(fb, (0, p)) if p > 0 else fb[:, :204]
    return ((fb - IMAGEBIND_FBANK_MEAN) / IMAGEBIND_FBANK_STD).T


@pytest.mark.parametrize("seconds", [2.0, 5.0, 0.5, 0.01])
def test_kaldi_fbank_shape_pad_crop(seconds: float) -> None:
    clip = torch.from_numpy(tone(440, seconds, 16_000)) + 0.01 * torch.randn(
        int(round(seconds * 16_000)), generator=torch.Generator().manual_seed(0)
    )
    fb = kaldi_fbank(clip)
    assert fb.shape == (204, 128) and fb.dtype == torch.float32
    torch.testing.assert_close(fb, _reference_fbank(clip))
    real = max(0, 1 + (clip.numel() - 400) // 160)  # 25 ms windows every 10 ms
    if real < 204:  # padded rows are zeros normalised after padding
        pad_value = -IMAGEBIND_FBANK_MEAN / IMAGEBIND_FBANK_STD
        torch.testing.assert_close(fb[real:], torch.full((204 - real, 128), pad_value))
        if real:
            assert not torch.allclose(fb[:real], torch.full((real, 128), pad_value))
    assert kaldi_fbank(clip, target_frames=50, num_mel_bins=64).shape == (50, 64)
    with pytest.raises(ValueError):
        kaldi_fbank(torch.zeros(0))


def test_audio_clip_fbanks_short_track_pads_fbank_not_samples() -> None:
    wave = torch.from_numpy(tone(440, 1.0, 16_000))
    track = AudioTrack(wave, 16_000, 1.0, 16_000, 1)
    clips = audio_clip_fbanks(track, num_clips=2)
    assert clips.spectrogram.shape == (2, 204, 128) and clips.spectrogram.dtype == torch.float32
    np.testing.assert_array_equal(clips.starts, [0.0, 0.0])
    torch.testing.assert_close(clips.spectrogram[0], _reference_fbank(wave))  # ImageBind: real samples


# ------------------------------------------------------------------------------------------
# Memory bound

_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from vlm_cli.media import load_video, video

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    seeking, decord = video._load_by_seeking, video._load_with_decord
    def run(path, decoder):
        video._load_by_seeking = seeking if decoder == "pyav-seek" else _no_seeking
        video._load_with_decord = _no_decord if decoder == "pyav" else decord
        vf = load_video(path, num_frames=8)
        assert vf.frames.shape[0] == 8 and vf.decoder == decoder

    def _no_seeking(*args):
        raise video._SeekFailed("test")

    def _no_decord(path, select, size=None):
        raise video._DecordFailed("test")

    short, long = sys.argv[1:3]
    decoders = ("pyav-seek", "decord", "pyav")
    for decoder in decoders:
        run(short, decoder); run(short, decoder)
    before = peak_mib()
    for decoder in decoders:
        run(long, decoder)
    print(before, peak_mib())
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ off Linux")
def test_memory_does_not_grow_with_length(clip_dir: Path) -> None:
    """Peak RSS of sampling 8 frames from a 60 s clip stays that of a 10 s clip (all decoders).

    Holding every frame of the 60 s clip (1500 frames of 320x240) would take ~345 MiB more.
    """

    def frames(n: int):
        base = moving_frames(1, 240, 320)[0]
        for i in range(n):
            frame = base.copy()
            frame[:, (i * 3) % 320, :] = 255
            yield frame

    short = write_video(clip_dir / "short10s.mp4", frames(250), 25)
    long = write_video(clip_dir / "long60s.mp4", frames(1500), 25)
    repo = str(Path(__file__).resolve().parents[1])
    path_entries = [repo, os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path_entries if p))
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(short), str(long)],
        check=True, capture_output=True, text=True, env=env, timeout=120,
    )
    before, after = map(float, out.stdout.split())
    assert after - before < 60, f"peak RSS grew from {before:.0f} to {after:.0f} MiB"



# --------------------------------------------------------------------------------------------
# clip_resize_crop: the channels-last fast path gives what the contiguous (slow) path gave


def _clip_resize_crop_contiguous(frames: np.ndarray, size: int) -> np.ndarray:
    """The resize before issue 26: ``F.interpolate`` on a contiguous NCHW copy."""
    import torch.nn.functional as F

    h, w = frames.shape[1:3]
    long = int(size * max(h, w) / min(h, w))
    target = (size, long) if h <= w else (long, size)
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).contiguous()
    if target != (h, w):
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True, align_corners=False)
    top, left = int((target[0] - size) / 2), int((target[1] - size) / 2)
    return x[:, :, top:top + size, left:left + size].permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("threads", [1, 2])
def test_clip_resize_crop_equals_contiguous_path_on_random_shapes(threads):
    from vlm_cli.media.resize import clip_resize_crop

    rng = np.random.default_rng(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(25):
            t, h, w = (int(v) for v in rng.integers((1, 9, 9), (4, 300, 300)))
            size = int(rng.integers(8, 240))
            frames = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
            got = clip_resize_crop(frames, size)
            assert got.shape == (t, size, size, 3) and got.flags.c_contiguous
            np.testing.assert_array_equal(got, _clip_resize_crop_contiguous(frames, size))
    finally:
        torch.set_num_threads(before)


def test_clip_resize_crop_equals_clip_image_processor_on_real_frames():
    from transformers import CLIPImageProcessor

    from vlm_cli.media.resize import clip_resize_crop

    frames = load_video(shared_sample("boat.mp4"), num_frames=3).frames
    processor = CLIPImageProcessor(size={"shortest_edge": 224},
                                   crop_size={"height": 224, "width": 224},
                                   do_rescale=False, do_normalize=False)
    expected = processor(images=list(frames), return_tensors="pt")["pixel_values"]
    got = clip_resize_crop(frames, 224)
    np.testing.assert_array_equal(got, expected.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(got, _clip_resize_crop_contiguous(frames, 224))


# --------------------------------------------------------------------------------------------
# HEVC: non-reference frames skipped only when the stream has one temporal sub-layer


def _write_hevc(path: Path, frames: np.ndarray, fps: int, x265_params: str) -> Path:
    """``frames [T, H, W, 3] uint8`` as HEVC (libx265, ``hvc1`` in MP4) with ``x265_params``."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx265", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_tag = "hvc1"
        stream.options = {"preset": "medium", "crf": "23",
                          "x265-params": f"{x265_params}:log-level=error"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def hevc_clips(clip_dir: Path) -> dict[str, Path]:
    """4 s at 25 fps of HEVC with 4 B-frames (x265 medium: a B pyramid) and key frames 12
    apart: ``one-layer`` (x265's default) and ``two-layers`` (``temporal-layers=2``)."""
    common = "keyint=12:min-keyint=12:scenecut=0:bframes=4"
    frames = moving_frames(100)
    return {"one-layer": _write_hevc(clip_dir / "hevc1.mp4", frames, 25, common),
            "two-layers": _write_hevc(clip_dir / "hevc2.mp4", frames, 25,
                                      f"{common}:temporal-layers=2")}


def test_hevc_temporal_layers_decide_skipping(hevc_clips: dict[str, Path]) -> None:
    for name, layers in (("one-layer", True), ("two-layers", False)):
        with av.open(str(hevc_clips[name])) as container:
            context = container.streams.video[0].codec_context
            assert context.name == "hevc"
            assert video_module._skips_nonref(context) is layers, name


@pytest.mark.parametrize("clip", ["one-layer", "two-layers"])
@pytest.mark.parametrize("sampling", [dict(num_frames=8), dict(num_frames=None, fps=7.0)])
def test_hevc_seeking_keeps_the_pixels(
    hevc_clips: dict[str, Path], clip: str, sampling: dict, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The seeking decoder's frames equal every frame decoded in order; fewer frames are
    decoded than without skipping on the one-layer clip, the same number on the two-layer one
    (nothing skipped)."""
    path = hevc_clips[clip]
    caplog.set_level("DEBUG", logger=video_module.__name__)
    seek = load_video(path, **sampling)
    skipping = _frames_decoded(caplog)
    caplog.clear()
    with monkeypatch.context() as patch:
        patch.setattr(video_module, "_SKIP_NONREF_CODECS", frozenset())
        assert np.array_equal(load_video(path, **sampling).frames, seek.frames)
    everything = _frames_decoded(caplog)
    assert seek.decoder == "pyav-seek"
    assert (skipping < everything) if clip == "one-layer" else (skipping == everything)
    # Not against decord: on these clips (B pyramid) decord 0.6 returns the wrong frame for
    # some indices (57 -> 61, 71 -> 72 of 100 at num_frames=8).
    use_decoder(monkeypatch, "pyav")
    reference = load_video(path, **sampling)
    assert reference.decoder == "pyav"
    np.testing.assert_array_equal(seek.frames, reference.frames)
    np.testing.assert_allclose(seek.timestamps, reference.timestamps, rtol=0, atol=1e-9)
    assert seek.num_decodable == reference.num_decodable == 100


def test_decord_leaves_torchvisions_image_decoder_working(tmp_path: Path) -> None:
    """Once vlm has loaded decord, ``torchvision.io.decode_image`` (transformers' ``load_image``
    for a picture given by path) still decodes: loaded after decord's bundled libraries, its
    extension failed with "Internal error"."""
    picture = write_png(tmp_path / "still.png", moving_frames(1, 48, 64)[0])
    clip = write_video(tmp_path / "clip.mp4", moving_frames(8), fps=8)
    code = textwrap.dedent(f"""
        import torch
        from vlm_cli.media.video import _import_decord
        decord = _import_decord()
        decord.VideoReader({str(clip)!r}).get_batch([0]).asnumpy()
        from torchvision.io import decode_image
        data = torch.frombuffer(bytearray(open({str(picture)!r}, "rb").read()), dtype=torch.uint8)
        print(tuple(decode_image(data).shape))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "(3, 48, 64)", out.stderr[-2000:]
