"""Qwen2.5-Omni's media as its model card prepares it: our ports against the real reference.

The reference is the PyPI package ``qwen-omni-utils`` 0.0.9 (``process_mm_info(conversation,
use_audio_in_video=True)``, the test extra): its vision half is qwen-vl-utils
(``qwen_omni_utils.v2_5.vision_process``: decord reader, ``smart_nframes``, ``fetch_video``'s
resize, ``fetch_image``), its audio half ``librosa.load`` on the ffmpeg tool's s16le output.
Each test runs both on the same file and asserts equality: ``torch.equal`` / ``array_equal``,
no tolerance. No network: the reference reads local paths only, and audioread runs the ffmpeg
binary of imageio-ffmpeg, put on PATH by :func:`reference`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from media_factory import SHARED_MEDIA, shared_sample, write_png
from omni_fixtures import card_pipeline
from vlm_cli.media import NoAudio, load_audio, load_video
from vlm_cli.media.resize import (qwen_load_image, qwen_resize_frames, qwen_video_max_pixels,
                                  smart_resize)
from vlm_cli.media.sampling import qwen_frame_indices

vision_process = pytest.importorskip("qwen_omni_utils.v2_5.vision_process")
qwen_omni_utils = pytest.importorskip("qwen_omni_utils")

WITH_SOUND = ["boat.mp4", "dog_barking.mp4", "sample_demo_3.mp4"]
SILENT = ["output_v_3V9tzjyr51I.mp4"]
WAVS = ["dog_audio.wav", "car_audio.wav"]
#: (reference video element keys, our load_video sampling arguments)
SAMPLINGS = {
    "fps2": ({}, dict(num_frames=None, fps=2.0)),
    "fps1-max16": ({"fps": 1.0, "max_frames": 16}, dict(num_frames=None, fps=1.0, max_frames=16)),
    "nframes8": ({"nframes": 8}, dict(num_frames=8)),
}


@pytest.fixture
def reference(tmp_path_factory: pytest.TempPathFactory):
    """qwen-omni-utils as the model card runs it here (:func:`omni_fixtures.card_pipeline`)."""
    with card_pipeline(tmp_path_factory.mktemp("ffmpeg-bin")) as package:
        yield package


def _ours(path: Path, sampling: dict) -> tuple[np.ndarray, float, torch.Tensor]:
    """(indices, sample_fps, resized frames) by our functions."""
    video = load_video(path, sampling="qwen", **sampling)
    if sampling.get("fps") is not None:
        rule = dict(fps=sampling["fps"], **({"max_frames": sampling["max_frames"]}
                                             if "max_frames" in sampling else {}))
    else:
        rule = dict(fps=None, nframes=sampling["num_frames"])
    indices, sample_fps = qwen_frame_indices(video.num_decodable, video.fps, **rule)
    assert video.sample_fps == sample_fps
    assert video.frames.shape[0] == indices.size
    return indices, sample_fps, qwen_resize_frames(video.frames)


# ------------------------------------------------------------------------------------------
# Videos: frames, sample_fps, resized tensor


@pytest.mark.parametrize("name", WITH_SOUND + SILENT)
@pytest.mark.parametrize("case", sorted(SAMPLINGS))
def test_video_equals_fetch_video(name: str, case: str, reference) -> None:
    path = shared_sample(name)
    keys, sampling = SAMPLINGS[case]
    (ref, meta), ref_fps = vision_process.fetch_video(
        {"type": "video", "video": str(path), **keys}, return_video_sample_fps=True,
        return_video_metadata=True)
    indices, sample_fps, frames = _ours(path, sampling)
    assert indices.tolist() == list(meta["frames_indices"])
    assert sample_fps == ref_fps
    assert frames.dtype == ref.dtype == torch.float32
    assert frames.shape == ref.shape
    assert torch.equal(frames, ref)
    assert frames.shape[2] % 28 == 0 and frames.shape[3] % 28 == 0


@pytest.mark.parametrize("name", WITH_SOUND)
def test_process_mm_info_video_with_its_audio(name: str, reference) -> None:
    """The model card's call: one conversation, ``use_audio_in_video=True``."""
    path = shared_sample(name)
    conversation = [{"role": "user", "content": [{"type": "video", "video": str(path)},
                                                 {"type": "text", "text": "What happens?"}]}]
    audios, images, videos, kwargs = reference.process_mm_info(
        conversation, use_audio_in_video=True, return_video_kwargs=True)
    assert images is None
    _, sample_fps, frames = _ours(path, SAMPLINGS["fps2"][1])
    assert kwargs["fps"] == [sample_fps]
    assert torch.equal(frames, videos[0])
    waveform = load_audio(path, resampler="soxr").waveform.numpy()
    assert waveform.dtype == audios[0].dtype == np.float32
    np.testing.assert_array_equal(waveform, audios[0])


def test_video_without_sound(reference) -> None:
    """No audio track: the reference refuses ``use_audio_in_video``, we say NoAudio."""
    path = shared_sample(SILENT[0])
    conversation = [{"role": "user", "content": [{"type": "video", "video": str(path)}]}]
    with pytest.raises(AssertionError, match="audio track"):
        reference.process_mm_info(conversation, use_audio_in_video=True)
    assert isinstance(load_audio(path, resampler="soxr"), NoAudio)


def test_frames_bounded_by_total_pixels(reference) -> None:
    """The per-frame cap shrinks with the frame count (``total_pixels``), and explicit
    ``min_pixels`` / ``max_pixels`` bounds: the same sizes and pixels as ``fetch_video``."""
    path = shared_sample("dog_barking.mp4")
    for keys in ({"total_pixels": 1_000_000}, {"max_pixels": 150_000},
                 {"min_pixels": 500_000, "max_pixels": 600_000}):
        ref = vision_process.fetch_video({"video": str(path), "nframes": 8, **keys})
        video = load_video(path, sampling="qwen", num_frames=8)
        ours = qwen_resize_frames(video.frames, **keys)
        assert ours.shape == ref.shape and torch.equal(ours, ref), keys


# ------------------------------------------------------------------------------------------
# Frame sampling and the size rule, without decoding


@pytest.mark.parametrize("total, video_fps", [
    (2, 30.0), (3, 30.0), (7, 25.0), (150, 30.0), (181, 30000 / 1001), (170, 24.0),
    (1090, 1090000 / 36301), (3600, 60.0), (4000, 1.0), (100_000, 30.0)])
@pytest.mark.parametrize("rule", [
    {}, {"fps": 1.0, "max_frames": 16}, {"fps": 0.1}, {"fps": 30.0}, {"fps": 2.0, "min_frames": 9},
    {"nframes": 8}, {"nframes": 9}, {"nframes": 11}, {"nframes": 768}])
def test_frame_indices_equal_smart_nframes(total: int, video_fps: float, rule: dict) -> None:
    try:
        n = vision_process.smart_nframes(dict(rule), total_frames=total, video_fps=video_fps)
    except ValueError:
        with pytest.raises(ValueError, match="even frame count"):
            qwen_frame_indices(total, video_fps, **_rule(rule))
        return
    expected = torch.linspace(0, total - 1, n).round().long().tolist()
    indices, sample_fps = qwen_frame_indices(total, video_fps, **_rule(rule))
    assert indices.dtype == np.int64 and indices.tolist() == expected
    assert sample_fps == n / max(total, 1e-6) * video_fps


def _rule(rule: dict) -> dict:
    return {"fps": None, **rule} if "nframes" in rule else rule


@pytest.mark.parametrize("kwargs, match", [
    (dict(fps=2.0, nframes=8), "exactly one"), (dict(fps=None), "exactly one"),
    (dict(fps=0.0), "fps must be > 0"), (dict(video_fps=float("nan")), "video_fps"),
    (dict(total_frames=0), "total_frames")])
def test_frame_indices_reject(kwargs: dict, match: str) -> None:
    args = {"total_frames": 100, "video_fps": 25.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        qwen_frame_indices(args.pop("total_frames"), args.pop("video_fps"), **args)


def test_long_clip_needs_float32_linspace() -> None:
    """numpy's float64 linspace would round 3 of these 768 positions to the next frame."""
    indices, _ = qwen_frame_indices(100_000, 30.0, fps=None, nframes=768)
    exact = np.rint(np.linspace(0, 99_999, 768)).astype(np.int64)
    assert indices.tolist() == torch.linspace(0, 99_999, 768).round().long().tolist()
    assert not np.array_equal(indices, exact)


def test_smart_resize_equals_reference_not_transformers() -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf

    rng = np.random.default_rng(0)
    sizes = [(13, 2000), (60, 11000), (28, 28), (1, 1), (336, 592), (480, 854), (4000, 3000)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(3000)]
    bounds = [(3136, 12845056), (100352, 602112), (100352, 105369), (100352, 451584.0)]
    differ = 0
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError, match="aspect ratio"):
                smart_resize(h, w)
            continue
        for low, high in bounds:
            ours = smart_resize(h, w, min_pixels=low, max_pixels=high)
            assert ours == vision_process.smart_resize(h, w, 28, low, high), (h, w, low, high)
            differ += ours != hf(h, w, 28, low, high)
    assert smart_resize(13, 2000) == (28, 1988) != hf(13, 2000, 28, 3136, 12845056)
    assert differ > 0


def test_video_max_pixels_shrinks_with_frame_count() -> None:
    assert qwen_video_max_pixels(8) == 768 * 28 * 28
    assert qwen_video_max_pixels(400) == 128000 * 28 * 28 * 0.9 / 400 * 2
    assert qwen_video_max_pixels(5000) == int(128 * 28 * 28 * 1.05)
    assert qwen_video_max_pixels(8, max_pixels=200_000) == 200_000


# ------------------------------------------------------------------------------------------
# Pictures


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PNG files from a real frame: RGB at an odd size, RGBA with a varying alpha, and a
    picture small enough to be scaled up."""
    frame = load_video(shared_sample("boat.mp4"), num_frames=1).frames[0]
    folder = tmp_path_factory.mktemp("pictures")
    from PIL import Image

    rgba = np.dstack([frame, (np.arange(frame.shape[1]) % 256).astype(np.uint8)[None, :]
                      .repeat(frame.shape[0], 0)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    return {"rgb": write_png(folder / "rgb.png", frame[:333, :517]),
            "rgba": folder / "rgba.png",
            "small": write_png(folder / "small.png", frame[100:130, 200:241])}


@pytest.mark.parametrize("kind", ["rgb", "rgba", "small"])
@pytest.mark.parametrize("bounds", [{}, {"max_pixels": 50_000}, {"min_pixels": 200_000}])
def test_image_equals_fetch_image(pictures: dict[str, Path], kind: str, bounds: dict) -> None:
    ref = vision_process.fetch_image({"type": "image", "image": str(pictures[kind]), **bounds})
    ours = qwen_load_image(pictures[kind], **bounds)
    assert ours.dtype == np.uint8 and ours.shape == (1, ref.height, ref.width, 3)
    np.testing.assert_array_equal(ours[0], np.asarray(ref))


def test_image_through_process_vision_info(pictures: dict[str, Path]) -> None:
    image = {"type": "image", "image": str(pictures["rgba"])}
    conversation = [{"role": "user", "content": [image]}]
    images, videos = vision_process.process_vision_info(conversation)
    assert videos is None
    np.testing.assert_array_equal(qwen_load_image(pictures["rgba"])[0], np.asarray(images[0]))


# ------------------------------------------------------------------------------------------
# Audio


@pytest.mark.parametrize("name", WITH_SOUND + WAVS)
def test_audio_equals_process_audio_info(name: str, reference) -> None:
    path = shared_sample(name)
    kind = "audio" if name in WAVS else "video"
    conversation = [{"role": "user", "content": [{"type": kind, kind: str(path)}]}]
    (ref,) = reference.process_mm_info(conversation, use_audio_in_video=True)[0]
    track = load_audio(path, resampler="soxr")
    assert track.sample_rate == 16000
    np.testing.assert_array_equal(track.waveform.numpy(), ref)


def test_soxr_keeps_the_default_resampler_unchanged() -> None:
    path = shared_sample("dog_audio.wav")
    default, soxr = load_audio(path), load_audio(path, resampler="soxr")
    assert default.waveform.shape == soxr.waveform.shape
    assert not torch.equal(default.waveform, soxr.waveform)
    assert torch.allclose(default.waveform, soxr.waveform, atol=0.05)
    with pytest.raises(ValueError, match="resampler"):
        load_audio(path, resampler="sinc")


# ------------------------------------------------------------------------------------------
# The processor does not resize the reference's frames again


def test_processor_keeps_reference_sized_frames() -> None:
    """Frames already at multiples of 28 within the bounds pass Qwen2VLVideoProcessor's resize
    untouched (its smart_resize returns their size; torchvision returns the same tensor)."""
    from transformers import Qwen2VLVideoProcessor

    video = load_video(shared_sample("boat.mp4"), sampling="qwen", num_frames=4)
    frames = qwen_resize_frames(video.frames)
    processor = Qwen2VLVideoProcessor(cap_pixels_per_frame=True)
    resized = processor(videos=[frames], return_tensors="pt")
    kept = processor(videos=[frames], do_resize=False, return_tensors="pt")
    t, h, w = resized["video_grid_thw"][0].tolist()
    assert (t, h * 14, w * 14) == (2, *frames.shape[2:])
    assert torch.equal(resized["pixel_values_videos"], kept["pixel_values_videos"])


# ------------------------------------------------------------------------------------------
# load_video's other paths


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_qwen_sampling_through_windows_and_fallbacks(decoder: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """video_windows hands out the same frames; the fallback decoders pick the same ones."""
    from media_factory import use_decoder
    from vlm_cli.media import video_windows

    path = shared_sample("boat.mp4")
    video = load_video(path, sampling="qwen", num_frames=None, fps=1.0)
    windows = video_windows(path, sampling="qwen", fps=1.0, window=4)
    np.testing.assert_array_equal(np.concatenate(list(windows)), video.frames)
    use_decoder(monkeypatch, decoder)
    other = load_video(path, sampling="qwen", num_frames=None, fps=1.0)
    assert (other.decoder, video.decoder) == (decoder, "pyav-seek")
    assert other.sample_fps == video.sample_fps
    np.testing.assert_array_equal(other.frames, video.frames)
    assert load_video(path).sample_fps is None


def test_clip_too_short_for_qwen_sampling_is_a_media_error() -> None:
    from vlm_cli.errors import MediaError

    with pytest.raises(MediaError, match="even frame count"):
        load_video(shared_sample(SILENT[0]), sampling="qwen", num_frames=1000)
