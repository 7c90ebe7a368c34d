"""Gemma 4 (``google/gemma-4-12B-it``, ``gemma4_unified``; ``google/gemma-4-E2B-it``, ``gemma4``) as
table entries of the transformers-native family, on tiny random checkpoints in the hub layout
(tests/gemma4_fixtures.py), against the model card's usage (the processor's chat template with
typed media, ``load_audio_from_video`` for a clip's own track, greedy ``generate``): the greedy
tokens of ``vlm ask`` equal it on a clip with sound, a clip without, a picture and an audio file;
a second ask encodes nothing; the budget check refuses what the card would cut or fail on; from a
(fake) hub, offline, tune with LoRA, merge, and transformers loads the merge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gemma4_fixtures import KINDS, MODEL_CLASSES, PROCESSOR_CLASSES, REPO_IDS, card_answer, card_decoders, \
    make_tiny_gemma4
from media_factory import SHARED_MEDIA, moving_frames, write_png, write_video
from micro import check_chat_reuses_its_cache, run_in_home, tune_and_merge, vlm_home

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # numpy 2, in transformers
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),  # peft
]

VLM = str(Path(sys.executable).with_name("vlm"))
QUESTION = "What can you see and hear? Answer in one short sentence."
WITH_AUDIO = SHARED_MEDIA / "boat.mp4"
SILENT = SHARED_MEDIA / "output_v_3V9tzjyr51I.mp4"
AUDIO_FILE = SHARED_MEDIA / "dog_audio.wav"
LONG = SHARED_MEDIA / "00003491.mp4"  # 60 s with sound
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gemma4")
    return {kind: make_tiny_gemma4(root / kind, seed=0, kind=kind) for kind in KINDS}


@pytest.fixture(scope="module")
def card(checkpoints):
    """Per kind: the card's processor and model (float32, as ``vlm ask --dtype float32``), and the
    card's decoders in place."""
    import transformers

    with pytest.MonkeyPatch.context() as mp:
        card_decoders(mp)
        yield {kind: (getattr(transformers, PROCESSOR_CLASSES[kind]).from_pretrained(path),
                      getattr(transformers, MODEL_CLASSES[kind]).from_pretrained(
                          path, dtype=torch.float32).eval())
               for kind, path in checkpoints.items()}


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    return write_png(tmp_path_factory.mktemp("png") / "still.png", moving_frames(1, 150, 260)[0])


@pytest.fixture(scope="module")
def ask(checkpoints, tmp_path_factory):
    home = tmp_path_factory.mktemp("g4-home")

    def run(kind: str, path: Path, *args: str, code: int = 0) -> dict | str:
        got, out = run_in_home(str(home), ["ask", str(path), QUESTION, "--model", str(checkpoints[kind]),
                                           "--json", "--dtype", "float32", "--max-new-tokens",
                                           str(NEW_TOKENS), *args])
        assert got == code, out
        return json.loads(out) if code == 0 else out

    return run


@pytest.mark.parametrize("name", ["boat.mp4", "output_v_3V9tzjyr51I.mp4", "sample_demo_3.mp4", "birthday.mp4"])
def test_frames_and_sound_as_the_card_decodes_them(name: str) -> None:
    """``load_video(sampling="transformers")`` gives the frames and times transformers' own
    reader gives for the processor's 32 (bit for bit; torchcodec's frames are these too, checked
    where it loads), and ``load_audio(resampler="ffmpeg")`` torchcodec's 16 kHz mono samples (as
    FFmpeg's resampler gives them)."""
    import numpy as np
    from transformers.video_utils import load_video as hf_load_video

    from gemma4_fixtures import pyav_sound
    from vlm_cli.media import NoAudio, load_audio, load_video

    path = SHARED_MEDIA / name
    ours = load_video(path, num_frames=32, sampling="transformers")
    frames, metadata = hf_load_video(str(path), backend="pyav", num_frames=32)
    assert np.array_equal(ours.frames, np.asarray(frames))
    assert ours.timestamps.tolist() == pytest.approx(metadata.timestamps, abs=1e-9)
    assert ours.num_decodable == metadata.total_num_frames
    track = load_audio(path, resampler="ffmpeg")
    if isinstance(track, NoAudio):
        return
    expected = pyav_sound(str(path), 16000)
    assert track.waveform.shape == expected.shape and np.array_equal(track.waveform.numpy(), expected)


@pytest.mark.parametrize("rotation, turns", [(90, 1), (-90, 3), (180, 2)])
def test_a_clip_stored_with_a_rotation_is_turned_upright(tmp_path, rotation: int, turns: int) -> None:
    """A phone's portrait clip is stored landscape with a display rotation; torchcodec (the card's
    decoder) returns its frames upright (``np.rot90`` by the rotation, counter-clockwise: checked
    against torchcodec 0.11 where it loads)."""
    import av
    import numpy as np

    from vlm_cli.media import load_video

    frames = moving_frames(12, 64, 96)
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(rotation)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    stored = load_video(path, num_frames=4)  # Video-LLaVA's / decord's frames: as stored
    upright = load_video(path, num_frames=4, sampling="transformers")
    assert stored.frames.shape[1:3] == (64, 96)
    assert np.array_equal(upright.frames[0], np.rot90(stored.frames[0], turns))
    try:
        from torchcodec.decoders import VideoDecoder
    except (ImportError, RuntimeError):  # not installed here: the rule above is what it does
        return
    assert np.array_equal(upright.frames[0], VideoDecoder(str(path))[0].permute(1, 2, 0).numpy())


def test_fewer_frames_than_asked_is_a_clear_error(tmp_path) -> None:
    from vlm_cli.errors import MediaError
    from vlm_cli.media import load_video
    from vlm_cli.media.sampling import transformers_frame_indices

    assert transformers_frame_indices(181, 29.97, num_frames=32)[:4].tolist() == [0, 5, 11, 16]
    assert transformers_frame_indices(300, 30.0, num_frames=None, fps=1.0).tolist() == [
        0, 30, 60, 90, 120, 150, 180, 210, 240, 270]
    assert len(transformers_frame_indices(300, 30.0, num_frames=None, fps=1.0, max_frames=4)) == 4
    short = write_video(tmp_path / "short.mp4", moving_frames(10, 64, 96), fps=10)
    with pytest.raises(MediaError, match="32 frames requested but the clip has 10"):
        load_video(short, num_frames=32, sampling="transformers")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["video+sound", "silent video", "picture", "audio"])
def test_ask_answers_as_the_model_card(ask, card, picture, kind: str, case: str) -> None:
    path, media_kind, audio = {"video+sound": (WITH_AUDIO, "video", "used"),
                               "silent video": (SILENT, "video", "absent"),
                               "picture": (picture, "image", None),
                               "audio": (AUDIO_FILE, "audio", "used")}[case]
    got = ask(kind, path)
    processor, model = card[kind]
    ids = card_answer(processor, model, media_kind, path, QUESTION, new_tokens=NEW_TOKENS,
                      sound=audio == "used")  # a silent clip: no audio entry (the card would fail)
    assert got["answer"] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert got["timings"]["tokens"] == min(len(ids) + 1, NEW_TOKENS)  # the end of turn counted
    if audio is not None:
        assert got["audio"] == audio
    if media_kind == "video":  # the processor's 32 frames, at the reference's times
        assert got["frames"]["count"] == 32
    again = ask(kind, path)
    assert again["cache"] == "hit" and again["timings"]["encode"] == 0.0
    assert again["answer"] == got["answer"]


def test_a_clip_without_its_sound_and_the_budget_check(ask, card, tmp_path, capfd) -> None:
    """``--no-audio`` gives the card's answer for the frames alone; E2B's front end keeps 30 s of
    sound (its card would cut the rest silently): a longer track stops before decoding, the 12B
    takes it; a clip shorter than the 32 frames stops with the setting to change."""
    got = ask("e2b", WITH_AUDIO, "--no-audio")
    processor, model = card["e2b"]
    ids = card_answer(processor, model, "video", WITH_AUDIO, QUESTION, new_tokens=NEW_TOKENS, sound=False)
    assert got["answer"] == processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert got["audio"] != "used"
    capfd.readouterr()
    ask("e2b", LONG, code=2)
    err = capfd.readouterr().err
    assert "60 s of audio" in err and "at most 30 s" in err and "--no-audio" in err
    assert "Traceback" not in err
    short = write_video(tmp_path / "short.mp4", moving_frames(10, 64, 96), fps=10)
    ask("unified", short, code=2)
    err = capfd.readouterr().err
    assert "32 frames requested but the clip has 10" in err and "--frames" in err
    assert ask("unified", short, "--frames", "8")["frames"]["count"] == 8


def test_cached_outputs_and_their_entries(checkpoints, tmp_path) -> None:
    """The features cached are the towers' outputs: a video's per-frame soft tokens and the
    reference's frame times, the audio's extractor mask."""
    from vlm_cli.cache import FeatureCache
    from vlm_cli.features import FeatureStore
    from vlm_cli.model.families import load_model

    with vlm_home(tmp_path / "home"):
        loaded = load_model(checkpoints["unified"], dtype=torch.float32)
        assert loaded.family == "gemma4-12b"
        store = FeatureStore(loaded.recipe, FeatureCache(), encoders=loaded.encoders)
        media, info = store.fetch(WITH_AUDIO)
        assert info["cache"] == "miss"
        per_frame = int(media.vision_meta["soft_tokens_per_frame"])
        assert media.vision.shape == (32 * per_frame, 64)
        stamps = media.vision_meta["timestamps"]
        assert float(stamps[-1]) == 175 / (30000 / 1001)  # index 31 * 181 // 32 at 29.97 fps
        mask = media.audio_meta["features_mask"]
        assert mask.dtype == torch.bool and int(mask.sum()) == media.audio.shape[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_from_the_hub_then_tune_merge_and_load(checkpoints, kind: str, tmp_path) -> None:
    """download -> offline ask -> tune LoRA on the language model (towers frozen, features from
    the cache) -> merge -> transformers loads the merge and matches -> ask on the merge."""
    import transformers

    from hub_server import FakeHub, client_env
    from vlm_cli.cache import FeatureCache
    from vlm_cli.features import FeatureStore
    from vlm_cli.model.families import load_model

    repo = REPO_IDS[kind]
    with FakeHub() as hub:
        hub.add_dir(repo, checkpoints[kind])
        env = client_env(tmp_path / "hf", hub.url, VLM_HOME=str(tmp_path / "home"))
        got = subprocess.run([VLM, "download", repo, "--json"], capture_output=True, text=True,
                             env=env, timeout=300)
        assert got.returncode == 0, got.stderr
    env["HF_HUB_OFFLINE"] = "1"
    ask = subprocess.run([VLM, "ask", str(WITH_AUDIO), QUESTION, "--model", repo, "--json",
                          "--max-new-tokens", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert ask.returncode == 0, ask.stderr[-2000:]
    assert json.loads(ask.stdout)["audio"] == "used"
    recipe = {"unified": "gemma-4-12b", "e2b": "gemma-4-e2b"}[kind]
    tune_and_merge(env, recipe, repo, [WITH_AUDIO, SILENT], tmp_path, max_length=8192)
    with vlm_home(env["VLM_HOME"]), pytest.MonkeyPatch.context() as mp:
        card_decoders(mp)
        merged = load_model(tmp_path / "merged", dtype=torch.float32)
        assert merged.family == {"unified": "gemma4-12b", "e2b": "gemma4"}[kind]
        processor = getattr(transformers, PROCESSOR_CLASSES[kind]).from_pretrained(tmp_path / "merged")
        model = getattr(transformers, MODEL_CLASSES[kind]).from_pretrained(
            tmp_path / "merged", dtype=torch.float32).eval()
        store = FeatureStore(merged.recipe, FeatureCache(), encoders=merged.encoders)
        media, _ = store.fetch(WITH_AUDIO)
        ids = merged.model.encode_prompt([{"from": "human", "value": f"<video>\n{QUESTION}"}], [media])
        assert merged.model.generate_batch([ids], [[media]], max_new_tokens=8)[0] == card_answer(
            processor, model, "video", WITH_AUDIO, QUESTION, new_tokens=8)
    ask = subprocess.run([VLM, "ask", str(WITH_AUDIO), QUESTION, "--model", str(tmp_path / "merged"),
                          "--json", "--max-new-tokens", "4"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert ask.returncode == 0, ask.stderr[-2000:]


@pytest.mark.parametrize("kind", KINDS)
def test_a_language_model_larger_than_one_gpu(checkpoints, kind: str, monkeypatch) -> None:
    """The device map of a native model on ``cuda``: one GPU when the language model fits it with
    the headroom; else its decoder spread over the visible GPUs by accelerate's
    ``infer_auto_device_map`` (towers still on disk); else one line with what it needs. (No GPU
    here: CUDA's device count is patched and the free memory given; the loading itself across
    GPUs is not run on CPU.)"""
    from vlm_cli.errors import UsageError
    from vlm_cli.model.families import native, read_config
    from vlm_cli.model.families.native_table import spec_for
    from vlm_cli.weights import stored_weights

    path = checkpoints[kind]
    spec = spec_for(read_config(path))
    text = stored_weights(path, skip=spec.tower_prefixes)[0]  # bf16 as stored
    monkeypatch.setattr(native, "GPU_HEADROOM", 1000)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    towers = {name: "disk" for names in spec.tower_modules.values() for name in names}
    one = native.place_modules(spec, path, torch.bfloat16, "cuda", free={0: 2 * text, 1: 2 * text})
    assert one == {"model.language_model": "cuda:0", "lm_head": "cuda:0", **towers}
    spread = native.place_modules(spec, path, torch.bfloat16, "cuda",
                                  free={0: int(text * 0.8) + 1000, 1: int(text * 0.8) + 1000})
    assert {k: v for k, v in spread.items() if v == "disk"} == towers
    assert {v for v in spread.values() if v != "disk"} == {0, 1}
    assert spread["lm_head"] == spread["model.language_model.embed_tokens"]  # tied
    with pytest.raises(UsageError, match=r"needs 0\.0 GiB in float32 .* 2 visible GPU"):
        native.place_modules(spec, path, torch.float32, "cuda", free={0: text, 1: text})


@pytest.mark.slow
def test_eval_and_probe(checkpoints, tmp_path) -> None:
    """`vlm eval` twice (the second encodes nothing) and `vlm probe` (frames reversed and
    re-encoded, the soundtrack swapped and muted) on Gemma 4 E2B."""
    data = tmp_path / "qa.json"
    data.write_text(json.dumps([
        {"id": f"q{i}", "video": str(clip), "type": "sound", "conversations": [
            {"from": "human", "value": "<video>\nWhat sound is playing?"}, {"from": "gpt", "value": "engine"}]}
        for i, clip in enumerate((WITH_AUDIO, SHARED_MEDIA / "sample_demo_3.mp4"))]))
    home = str(tmp_path / "home")
    model = ["--model", str(checkpoints["e2b"]), "--max-new-tokens", "3", "--json"]
    code, first = run_in_home(home, ["eval", "--data", str(data), *model, "--out", str(tmp_path / "e1")])
    assert code == 0 and json.loads(first)["n"] == 2
    entries = {p.name: p.stat().st_ino for p in Path(home).rglob("*.safetensors")}
    assert len(entries) == 4  # each clip's frames and its track
    code, again = run_in_home(home, ["eval", "--data", str(data), *model, "--out", str(tmp_path / "e2")])
    assert code == 0 and json.loads(again)["accuracy"] == json.loads(first)["accuracy"]
    assert {p.name: p.stat().st_ino for p in Path(home).rglob("*.safetensors")} == entries
    code, out = run_in_home(home, ["probe", str(data), *model, "--variants", "reverse,swap-audio,mute",
                                   "--out", str(tmp_path / "probe")])
    assert code == 0
    assert set(json.loads(out)["summary"]["sound"]) == {"original", "reverse", "swap-audio", "mute"}
    rows = [json.loads(line) for line in (tmp_path / "probe" / "probe.jsonl").read_text().splitlines()]
    assert {r["audio"] for r in rows if r["variant"] == "swap-audio"} == {"swapped"}
    assert {r["audio"] for r in rows if r["variant"] == "mute"} == {"muted"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_chat_keeps_its_cache_and_answers_as_a_fresh_prefill(checkpoints, kind: str, tmp_path) -> None:
    """A follow-up question reuses the conversation's KV cache (positions are plain, nothing else
    is carried): only its own tokens are prefilled, and its answer is a fresh prefill's; a batch
    of a clip with sound and a silent clip answers as one by one."""
    from vlm_cli.cache import FeatureCache
    from vlm_cli.features import FeatureStore
    from vlm_cli.model.families import load_model

    with vlm_home(tmp_path / "home"):
        loaded = load_model(checkpoints[kind], dtype=torch.float32)
        store = FeatureStore(loaded.recipe, FeatureCache(), encoders=loaded.encoders)
        media, _ = store.fetch(WITH_AUDIO)
        silent, _ = store.fetch(SILENT)
    # the second follow-up rolls the cache back a second time
    check_chat_reuses_its_cache(loaded.model, media, [QUESTION, "Is it loud?", "And the colours?"])
    model = loaded.model
    prompts = [model.encode_prompt([{"from": "human", "value": f"<video>\n{QUESTION}"}], [m])
               for m in (media, silent)]
    both = model.generate_batch(prompts, [[media], [silent]], max_new_tokens=6)
    assert both == [model.generate_batch([p], [[m]], max_new_tokens=6)[0]
                    for p, m in zip(prompts, (media, silent))]
