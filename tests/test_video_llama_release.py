"""The released Video-LLaMA checkpoints (family ``video-llama``) against the public original.

Golden parity: the fixtures in ``tests/fixtures/video_llama`` are the original code's own outputs
(``make_golden.py`` ran DAMO-NLP-SG/Video-LLaMA and its ImageBind copy on tiny random weights in
the released key layout). Our port must reproduce them within 1e-4 in fp32: the ImageBind audio
embedding, the image / Video / Audio Q-Former outputs, both soft prompts, the prompt's token ids
and the LLM logits; and our frame and fbank preprocessing must equal the original's on
``../shared/media``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from media_factory import SHARED_MEDIA
from video_llama_fixtures import (BLIP2_REPO, GOLDEN, GOLDEN_HEADS, RELEASE_REPO, golden,
                                  make_tiny_blip2, make_tiny_release)

VLM = str(Path(sys.executable).with_name("vlm"))
TOL = 1e-4


@pytest.fixture(scope="module")
def gold():
    return golden()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("video-llama")
    return make_tiny_release(root / "release"), make_tiny_blip2(root / "blip2")


@pytest.fixture(scope="module")
def loaded(parts):
    from vlm_cli.model.families import load_model, video_llama

    release, blip2 = parts
    with pytest.MonkeyPatch.context() as mp:  # the BLIP-2 parts from a directory, not the hub
        mp.setattr(video_llama, "blip2_directory",
                   lambda p, download=False, fetch="": (blip2, {"test": str(blip2)}))
        assert load_model(release).family == "video-llama"
        yield video_llama.load(release, dtype=torch.float32, heads=GOLDEN_HEADS)


def golden_frames() -> torch.Tensor:
    """The original's decoded frames ``[8, 224, 224, 3] uint8`` (lossless PNGs)."""
    from PIL import Image

    return torch.from_numpy(np.stack([np.asarray(Image.open(GOLDEN / "frames" /
                                                            f"dog_barking_{i:03d}.png"))
                                      for i in range(8)]))


def close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    diff = (ours.float() - theirs.float()).abs().max().item()
    assert ours.shape == theirs.shape and diff <= TOL, (tuple(ours.shape), diff)
    return diff


def test_imagebind_audio_tower_matches_original(gold):
    from vlm_cli.model.imagebind import AUDIO_PREFIXES, ImageBindAudio

    tensors, _ = gold
    state = {k[len("imagebind."):]: v for k, v in tensors.items() if k.startswith("imagebind.")}
    tower = ImageBindAudio.from_state({k: v for k, v in state.items()
                                       if k.startswith(AUDIO_PREFIXES)}, num_heads=GOLDEN_HEADS)
    cls = {}
    tower.head_norm.register_forward_hook(lambda m, i, o: cls.update(out=o[:, 0]))
    fbank = tensors["in.audio"][0]  # [8, 1, 128, 204]: ImageBind's layout
    close(tower.encode_clips(fbank), tensors["out.audio_finalout"][0])
    close(cls["out"], tensors["out.audio_feature"][0])
    # our fbank layout [K, frames, bins] gives the same embedding
    close(tower.encode_clips(fbank[:, 0].transpose(1, 2)), tensors["out.audio_finalout"][0])


def test_towers_qformers_and_soft_prompts_match_original(loaded, parts, gold):
    from vlm_cli.model.families.video_llama import VisionTower

    tensors, _ = gold
    tower = VisionTower(parts[1])
    features = tower.encode_frames(golden_frames())
    close(features, tensors["out.image_qformer"])
    pixels = (golden_frames()[:1].permute(0, 3, 1, 2).float() / 255 - tower.mean) / tower.std
    close(tower.vision(pixel_values=pixels).last_hidden_state, tensors["out.vit_frame0"])
    connectors = loaded.model.connectors
    hidden = {}
    for name in ("video", "audio"):
        connectors[name].qformer.register_forward_hook(
            lambda m, i, o, name=name: hidden.update({name: o.last_hidden_state}))
    with torch.no_grad():
        video = connectors["video"](features[None])
        audio = connectors["audio"](tensors["out.audio_finalout"][:, :, None])
    close(hidden["video"], tensors["out.video_qformer"])
    close(video, tensors["out.video_prompt"])
    close(hidden["audio"], tensors["out.audio_qformer"])
    close(audio, tensors["out.audio_prompt"])


def _media(tensors, stamps, audio=True):
    from vlm_cli.model.vlm import MediaInput

    return MediaInput(vision=tensors["out.image_qformer"],
                      audio=tensors["out.audio_finalout"][0] if audio else None,
                      vision_meta={"timestamps": torch.tensor(stamps, dtype=torch.float64)})


def _joined(model, segments):
    ids = []
    for i, segment in enumerate(segments):
        ids += ([model.placeholder_id] if i else []) + segment
    return ids


def test_prompt_ids_and_logits_match_original(loaded, gold):
    from vlm_cli.media import load_video

    tensors, meta = gold
    model = loaded.model
    stamps = load_video(SHARED_MEDIA / "dog_barking.mp4", num_frames=8, sampling="segment_start",
                        size=(224, 224)).timestamps.tolist()
    # With its sound: audio soft prompt, then <Video>..</Video>, in the demo's wording.
    av = meta["prompts"]["av"]
    media = _media(tensors, stamps)
    ids = model.encode_prompt([{"from": "human", "value": f"<video>\n{av['question']}"}], [media])
    assert ids == _joined(model, av["segment_ids"])
    close(model.logits(ids, [media]), tensors["out.logits_av"])
    # Without sound: the demo's empty system prompt and the frame times.
    silent = meta["prompts"]["video_demo_empty_system"]
    media = _media(tensors, stamps, audio=False)
    ids = model.encode_prompt([{"from": "human", "value": f"<video>\n{silent['question']}"}],
                              [media])
    assert ids == _joined(model, silent["segment_ids"])
    # The logits the original gave for the same video under the default system prompt.
    close(model.logits(_joined(model, meta["prompts"]["video"]["segment_ids"]), [media]),
          tensors["out.logits_video"])


def test_preprocessing_matches_original_on_shared_media(loaded, gold, tmp_path):
    from PIL import Image

    from vlm_cli.features import decode_media
    from vlm_cli.media.kinds import media_kind
    from vlm_cli.model.families.video_llama import CLIP_MEAN, CLIP_STD

    tensors, meta = gold
    store_sources = loaded.encoders
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None, None], torch.tensor(CLIP_STD)[:, None, None,
                                                                                      None]
    from vlm_cli.features import DecodeRequest

    def request(path, vision=True, audio=True):
        frames = {"num_frames": 8, "sampling": "segment_start",
                  **store_sources["vision"].decode} if vision else None
        return DecodeRequest(str(path), media_kind(path), frames,
                             store_sources["audio"].decode if audio else None)

    for name in ("dog_barking.mp4", "birthday.mp4"):
        expected = meta["media"][name]
        decoded = decode_media(request(SHARED_MEDIA / name, audio=name == "dog_barking.mp4"))
        frames = decoded["vision"]["frames"]
        assert hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest() == \
            expected["frames_u8_sha256"], name
        video = (torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255 - mean) / std
        close(video[:, :, :16, :16], tensors[f"media.{name}.frames_crop"])
    fbank = decode_media(request(SHARED_MEDIA / "dog_barking.mp4", vision=False))
    close(torch.from_numpy(fbank["audio"]["spectrogram"]).transpose(1, 2),
          tensors["in.audio"][0, :, 0])
    for name in ("car_audio.wav", "dog_audio.wav"):
        spectrogram = decode_media(request(SHARED_MEDIA / name, vision=False))["audio"][
            "spectrogram"]
        close(torch.from_numpy(spectrogram).transpose(1, 2)[:, ::4, ::4],
              tensors[f"media.{name}.fbank_sub4"][0, :, 0])
    assert "absent" in decode_media(request(SHARED_MEDIA / "birthday.mp4", vision=False))["audio"]
    # A picture: BLIP-2's Resize((224, 224), bicubic) then CLIP mean / std.
    picture = tmp_path / "picture.png"
    Image.fromarray(golden_frames()[0, :, :160].numpy()).save(picture)
    pixels = decode_media(request(picture, audio=False))["vision"]["frames"]
    image = (torch.from_numpy(np.array(pixels)).permute(3, 0, 1, 2).float() / 255 - mean) / std
    expected = meta["media"]["blip2_image_eval_processor"]
    assert np.allclose(image.mean(dim=(1, 2, 3)).numpy(), expected["output_channel_mean"],
                       atol=TOL)


def test_release_is_read_without_unpickling_code_and_without_optimizer_state(parts, tmp_path):
    from vlm_cli.errors import VlmError
    from vlm_cli.model.families.video_llama import read_tensors

    release, _ = parts
    state = read_tensors(next(release.glob("VL_*.pth")))
    assert "video_query_tokens" in state and not any("exp_avg" in k for k in state)

    class Payload:  # anything but tensors and containers needs a full unpickler
        def __reduce__(self):
            return (print, ("unpickled",))

    evil = tmp_path / "VL_evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "config": Payload()}, evil)
    with pytest.raises(VlmError, match="refusing to unpickle"):
        read_tensors(evil)


def _hub_env(tmp_path, hub):
    from hub_server import client_env

    return client_env(tmp_path / "hf", hub.url, VLM_HOME=str(tmp_path / "home"))


def _vlm(env, *args, offline=True, ok=True):
    out = subprocess.run([VLM, *args], capture_output=True, text=True, timeout=600,
                         env={**env, **({"HF_HUB_OFFLINE": "1"} if offline else {})})
    if ok:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_download_then_offline_ask_with_both_branches(parts, tmp_path):
    """`vlm download` fetches the release and only BLIP-2's vision / Q-Former shard; offline,
    one `vlm ask` answers a clip with sound (both branches), one without (video only, with the
    note), a picture (a one-frame video) and an audio file (the audio branch alone)."""
    from hub_server import FakeHub

    release, blip2 = parts
    picture = tmp_path / "picture.png"
    from PIL import Image

    Image.fromarray(golden_frames()[0].numpy()).save(picture)
    with FakeHub() as hub:
        hub.add_dir(RELEASE_REPO, release)
        hub.add_dir(BLIP2_REPO, blip2)
        env = _hub_env(tmp_path, hub)
        got = json.loads(_vlm(env, "download", RELEASE_REPO, "--json", offline=False).stdout)
        assert "VL_LLaMA_2_7B_Finetuned.pth" in got["files"]
        assert "llama-2-7b-chat-hf/pytorch_model-00002-of-00002.bin" in got["files"]
        assert [r["repo_id"] for r in got["requires"]] == [BLIP2_REPO]
        fetched = [r[1] for r in hub.requests if "/resolve/" in r[1]]
        assert not any("model-00002-of-00002.safetensors" in r for r in fetched)  # T5 shard
        clips = [SHARED_MEDIA / "dog_barking.mp4", SHARED_MEDIA / "birthday.mp4", picture,
                 SHARED_MEDIA / "car_audio.wav"]
        ask = _vlm(env, "ask", *map(str, clips), "What sound is playing?", "--model",
                   RELEASE_REPO, "--json", "--max-new-tokens", "3")
        rows = {Path(r["media"]).name: r for r in map(json.loads, ask.stdout.splitlines())}
        assert rows["dog_barking.mp4"]["branches"] == ["vision", "audio"]
        assert rows["birthday.mp4"]["audio"] == "absent"
        assert rows["birthday.mp4"]["branches"] == ["vision"]
        assert rows["picture.png"]["branches"] == ["vision"]
        assert rows["car_audio.wav"]["branches"] == ["audio"]
        assert all("answer" in r for r in rows.values())
        assert "CC BY-NC-SA 4.0" in ask.stderr and "LLaMA 2 Community License" in ask.stderr
        assert "[transformers]" not in ask.stderr
        one = _vlm(env, "ask", str(SHARED_MEDIA / "birthday.mp4"), "What is shown?",
                   "--model", RELEASE_REPO, "--max-new-tokens", "3")
        assert "no audio track" in one.stderr
        too_many = _vlm(env, "ask", str(SHARED_MEDIA / "boat.mp4"), "What?", "--model",
                        RELEASE_REPO, "--frames", "40", ok=False)
        assert too_many.returncode != 0 and "--frames 40" in too_many.stderr
        assert "Traceback" not in too_many.stderr


@pytest.mark.slow
def test_tune_merge_and_ask_the_merge(parts, tmp_path):
    """Offline after `vlm download`: `vlm tune --from` the release (LoRA on LLaMA-2 and both
    Q-Formers, towers frozen, features cached), `vlm merge-lora` into a self-contained directory
    (safetensors only), and `vlm ask` on it."""
    from hub_server import FakeHub

    release, blip2 = parts
    data = tmp_path / "train.json"
    data.write_text(json.dumps([
        {"id": str(i), "video": str(clip), "conversations": [
            {"from": "human", "value": "<video>\nWhat sound is playing?"},
            {"from": "gpt", "value": answer}]}
        for i, (clip, answer) in enumerate(((SHARED_MEDIA / "dog_barking.mp4", "a dog barks"),
                                            (SHARED_MEDIA / "birthday.mp4", "no sound")))]))
    with FakeHub() as hub:
        hub.add_dir(RELEASE_REPO, release)
        hub.add_dir(BLIP2_REPO, blip2)
        env = _hub_env(tmp_path, hub)
        _vlm(env, "download", RELEASE_REPO, offline=False)
    evaluated = json.loads(_vlm(env, "eval", "--data", str(data), "--model", RELEASE_REPO,
                                "--out", str(tmp_path / "eval"), "--json").stdout)
    assert evaluated["n"] == 2 and evaluated["model"]["revision"]  # pinned by the hub commit
    tune = json.loads(_vlm(
        env, "tune", "video-llama-2-7b", "--from", RELEASE_REPO, "--data", str(data), "--out",
        str(tmp_path / "run"), "--json", "train.stage2.lora={rank: 4, alpha: 8, dropout: 0.0}",
        "train.stage2.batch_size=2", "train.stage2.max_steps=2", "train.stage2.lr=1e-2").stdout)
    assert tune["trained"] == ["video_connector", "audio_connector", "lora"]
    merge = json.loads(_vlm(env, "merge-lora", str(tmp_path / "run"), "--out",
                            str(tmp_path / "merged"), "--verify", "--json").stdout)
    assert merge["max_abs_logit_diff_saved"] <= 1e-4
    again = json.loads(_vlm(env, "merge-lora", str(tmp_path / "run"), "--out",
                            str(tmp_path / "merged"), "--json").stdout)
    assert again["skipped"]
    merged = tmp_path / "merged"
    assert json.loads((merged / "video_llama.json").read_text())["data"]["frames"] == 8
    assert not list(merged.rglob("*.pth")) and not list(merged.rglob("*.bin"))
    ask = json.loads(_vlm(env, "ask", str(SHARED_MEDIA / "dog_barking.mp4"), "What sound?",
                          "--model", str(merged), "--json", "--max-new-tokens", "3").stdout)
    assert ask["branches"] == ["vision", "audio"] and ask["cache"] == "hit"


def test_training_labels_are_the_answers_and_eos(loaded, gold):
    from vlm_cli.model.chat import IGNORE_INDEX

    tensors, _ = gold
    model = loaded.model
    turns = [{"from": "human", "value": "<video>\nWhat sound is playing?"},
             {"from": "gpt", "value": "a dog barks"},
             {"from": "human", "value": "Is it loud?"}, {"from": "gpt", "value": "yes"}]
    media = _media(tensors, [0.0, 0.9, 1.8, 2.6, 3.5, 4.4, 5.3, 6.2])
    ids, labels = model.encode_conversation(turns, 4096, [media])
    assert ids[: len(model.encode_prompt(turns[:1], [media]))] == \
        model.encode_prompt(turns[:1], [media])
    answers = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert model.tokenizer.decode(answers).split() == ["a", "dog", "barks", "</s>", "yes", "</s>"]
    assert ids.count(model.placeholder_id) == 2  # audio slot, then video slot


def test_images_and_silent_videos_are_worded_by_kind(loaded, gold):
    from vlm_cli.model.families.video_llama import IMAGE_SYSTEM
    from vlm_cli.model.vlm import MediaInput

    tensors, _ = gold
    model = loaded.model
    one = tensors["out.image_qformer"][:1]
    picture = MediaInput(vision=one, vision_meta={"timestamps": torch.zeros(1, dtype=torch.float64),
                                                  "still": torch.ones(1, dtype=torch.bool)})
    frame = MediaInput(vision=one, vision_meta={"timestamps": torch.zeros(1, dtype=torch.float64)})
    turns = [{"from": "human", "value": "<image>\nWhat is shown?"}]
    text = model.tokenizer.decode(model.encode_prompt(turns, [picture])[1:])
    assert "<Image>" in text and IMAGE_SYSTEM.split()[0] in text
    text = model.tokenizer.decode(model.encode_prompt(turns, [frame])[1:])
    assert "<Video>" in text and "The video contains 1 frames sampled at 0.0 seconds." in text


def test_broken_releases_are_one_clear_error(parts, tmp_path):
    import shutil

    from vlm_cli.errors import VlmError
    from vlm_cli.model.families import video_llama

    release, _ = parts
    partial = tmp_path / "partial"
    shutil.copytree(release, partial)
    next(partial.glob("AL_*.pth")).unlink()
    with pytest.raises(VlmError, match="no AL_.*audio-language branch.*vlm download"):
        video_llama.load(partial)
    shutil.copyfile(next(release.glob("AL_*.pth")), partial / "AL_LLaMA_2_7B_Finetuned.pth")
    vl = next(partial.glob("VL_*.pth"))
    vl.write_bytes(vl.read_bytes()[:1000])
    with pytest.raises(VlmError, match="corrupt or truncated"):
        video_llama.load(partial)
    extra = tmp_path / "extra.pth"
    state = video_llama.read_tensors(next(release.glob("VL_*.pth")))
    torch.save({"model": {**state, "ln_vision.weight": torch.ones(4)}}, extra)
    with pytest.raises(VlmError, match="'ln_vision.weight' is not part"):
        video_llama.connector_state({"vl": video_llama.read_tensors(extra)})


def test_rate_sampling_is_subsampled_to_the_frame_positions(loaded, gold):
    from vlm_cli.model.budget import fit_video
    from vlm_cli.model.families.video_llama import check_media
    from vlm_cli.model.vlm import MediaInput

    tensors, _ = gold
    check_media(Path("x.mp4"), fps=1.0, frames=None, audio=True)  # --fps: allowed
    features = tensors["out.image_qformer"].repeat(6, 1, 1)  # 48 frames
    media = MediaInput(vision=features, vision_meta={"timestamps": torch.arange(48.0)})
    fitted, budget = fit_video(loaded.model, media)
    assert fitted.vision.shape[0] == 32 and budget.frames_sampled == 48
    assert budget.frames_used == 32 and "subsampl" in budget.pooled and budget.tokens == 32
    # the timestamps follow the frames kept, so the prompt's frame times are the used frames'
    assert len(fitted.vision_meta["timestamps"]) == 32
