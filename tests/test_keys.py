"""Feature-cache keys: typed values whose canonical JSON is the key, and today's entries found."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from media_factory import moving_frames, write_video

#: tiny-av's encoders as the dict fingerprints of 7da98c1 (before the typed keys) wrote them,
#: with torch 2.11.0 (the version is part of a random initialisation's identity).
TINY_AV_VISION = json.loads(
    '{"modality": "vision", "arch": "vivit", "source": {"config": {"image_size": 64, '
    '"num_frames": 8, "tubelet_size": [2, 8, 8], "hidden_size": 64, "intermediate_size": 128, '
    '"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_act": "gelu"}, "init_seed": 0, '
    '"torch": "2.11.0"}, "feature_layer": -1, "select": "cls", "dtype": "float32", '
    '"preprocess": {"resize": "shortest-edge-bicubic-antialias-uint8", "crop": "center", '
    '"size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}')
TINY_AV_AUDIO = json.loads(
    '{"modality": "audio", "arch": "ast", "source": {"config": {"hidden_size": 64, '
    '"intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, '
    '"num_mel_bins": 128, "max_length": 204, "patch_size": 16, "frequency_stride": 16, '
    '"time_stride": 16}, "init_seed": 0, "torch": "2.11.0"}, "feature_layer": -1, '
    '"select": "pooled", "dtype": "float32", "preprocess": {"frontend": "kaldi_fbank", '
    '"num_mel_bins": 128, "target_frames": 204, "mean": -4.268, "std": 9.138, '
    '"sample_rate": 16000, "clip_first_sample": "int(start * rate)"}}')
SAMPLING = {"vision": {"strategy": "uniform", "frames": 8}, "audio": {"clips": 1,
                                                                      "clip_seconds": 2.0}}


def todays_key(media: str, encoder: dict, sampling: dict) -> str:
    """The key as 7da98c1 computed it: sha256 of the sorted, compact JSON."""
    blob = json.dumps({"v": "1", "media": media, "encoder": encoder, "sampling": sampling},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.fixture
def tiny_av(tmp_path, monkeypatch):
    from vlm_cli.cache import FeatureCache
    from vlm_cli.features import FeatureStore
    from vlm_cli.model import fingerprint
    from vlm_cli.recipe import load_recipe

    monkeypatch.setattr(fingerprint, "_torch_version", lambda: "2.11.0")
    return FeatureStore(load_recipe("tiny-av"), FeatureCache(tmp_path / "cache"), "cpu")


def test_keys_are_the_bytes_of_todays_keys(tiny_av):
    """The typed keys hash to the keys 7da98c1 computed (pinned): every entry written before
    them is found. The probe's frame order and the alignment's decoded inputs too."""
    from vlm_cli.features import MediaFile
    from vlm_cli.keys import DecodedKey, FeatureKey

    media = MediaFile(Path("clip.mp4"), "video", "0" * 64)
    assert tiny_av.key(media, "vision").hex == \
        "5514ca8638d5a685a24e095e09c76e65b31c1959b71e324604c136e63a81f3ce"
    assert tiny_av.key(media, "audio").hex == \
        "1b2afca31c8adc1398e536aac8d12669fe2875a0097a90e6650cfcb1c05f997a"
    assert tiny_av.key(media, "vision", frame_order="reverse").hex == \
        "326a2a449deb27b1c3a2dadca9f66e7cf635a9b70ef9ccf60367f9a2c61dd1c8"
    request = tiny_av.request(media, ["vision", "audio"])
    decoded = FeatureKey(media.sha256, DecodedKey(frames=request.frames, audio=request.audio), {})
    assert decoded.hex == "99b8a69ff29dd676810c150b1fdd434d80ed50d7ce73f956c7a5247a2a8f3754"
    for modality, encoder in (("vision", TINY_AV_VISION), ("audio", TINY_AV_AUDIO)):
        key = tiny_av.key(media, modality)
        assert key.as_json()["encoder"] == encoder
        assert key.hex == todays_key(media.sha256, encoder, SAMPLING[modality])


def test_an_entry_written_today_is_a_hit(tiny_av, tmp_path):
    """Entries stored under 7da98c1's keys (computed here from its dict fingerprints, not by
    the typed keys) are what `fetch` reads: a hit, nothing decoded or encoded."""
    clip = write_video(tmp_path / "clip.mp4", moving_frames(16, 64, 64), fps=8,
                       audio=(0.1 * torch.randn(16000 * 2)).numpy())
    digest = tiny_av.cache.file_digest(clip)
    vision = {"features": torch.randn(4, 1, 64), "timestamps": torch.arange(8.0)}
    audio = {"features": torch.randn(1, 64), "starts": torch.zeros(1, dtype=torch.float64)}
    for modality, encoder, tensors in (("vision", TINY_AV_VISION, vision),
                                       ("audio", TINY_AV_AUDIO, audio)):
        tiny_av.cache.put(todays_key(digest, encoder, SAMPLING[modality]), tensors,
                          {"modality": modality, "media": str(clip)})
    features, info = tiny_av.fetch(clip)
    assert info.cache == "hit" and info.audio == "used" and info.frames["count"] == 8
    assert torch.equal(features.vision, vision["features"])
    assert torch.equal(features.audio, audio["features"])
    assert not tiny_av.encoders._built  # no encoder was built


def test_keys_are_frozen_typed_values():
    from vlm_cli.keys import EncoderKey, FeatureKey

    encoder = EncoderKey(modality="vision", source={"weights": {"a.safetensors": "1" * 64}},
                         dtype="float32", preprocess={"size": 224, "mean": [0.5, 0.5, 0.5]})
    key = FeatureKey("0" * 64, encoder, {"strategy": "uniform", "frames": 8})
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.media = "1" * 64  # type: ignore[misc]
    with pytest.raises(TypeError):  # nested settings are read-only too
        encoder.preprocess["size"] = 336
    # Fields left None are not written: a field added to the key keeps the others' entries.
    assert set(encoder.as_json()) == {"modality", "source", "dtype", "preprocess"}
    assert encoder.as_json()["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert key.hex == todays_key("0" * 64, encoder.as_json(), {"strategy": "uniform",
                                                               "frames": 8})
    assert str(key) == key.hex and len(key.hex) == 64
    assert FeatureKey("0" * 64, encoder, key.sampling, "reverse").hex != key.hex


def test_a_family_may_give_the_key_as_a_mapping():
    """The transformers-native table builds its keys' fields as a dict: the source makes the
    typed key of it, and a misspelt field is an error, not a silently different key."""
    from vlm_cli.keys import EncoderKey
    from vlm_cli.model.families import EncoderSource

    fields = {"modality": "vision", "tower": "video", "family": "qwen2.5-omni",
              "source": {"revision": "abc"}, "dtype": "bfloat16",
              "reference": {"fps": 2.0}, "preprocess": {"patch": 14}}
    source = EncoderSource(fields, lambda: None)
    assert isinstance(source.key, EncoderKey) and source.key.as_json() == fields
    with pytest.raises(TypeError):
        EncoderSource({**fields, "preproces": {}}, lambda: None)
