"""The Whisper audio encoder option: log-mel front end, checkpoint loading, features."""

from __future__ import annotations

import pytest
import torch

from media_factory import SHARED_MEDIA
from vlm_cli.cache import FeatureCache
from vlm_cli.errors import VlmError
from vlm_cli.features import FeatureStore
from vlm_cli.recipe import load_recipe

WHISPER = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2,
           "encoder_ffn_dim": 64, "decoder_layers": 1, "decoder_attention_heads": 2,
           "decoder_ffn_dim": 64, "num_mel_bins": 80, "max_source_positions": 100,
           "vocab_size": 51865}


def whisper_recipe(tmp_path, *extra):
    return load_recipe("tiny-av", ["model.audio.arch=whisper", "model.audio.num_mel_bins=80",
                                   "model.audio.target_frames=200", *extra])


def test_checkpoint_features_match_transformers(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from vlm_cli.media import load_audio

    torch.manual_seed(0)
    reference = WhisperModel(WhisperConfig(**WHISPER)).eval()
    reference.save_pretrained(tmp_path / "whisper")
    recipe = whisper_recipe(tmp_path, "model.audio.config=null",
                            f"model.audio.pretrained={tmp_path / 'whisper'}")
    store = FeatureStore(recipe, FeatureCache(tmp_path / "cache"))
    media, info = store.fetch(SHARED_MEDIA / "dog_audio.wav")
    assert info["audio"] == "used" and media.audio.shape == (1, 32)  # one 2 s clip, pooled
    # Same numbers as transformers' own feature extractor + encoder on the first 2 s.
    wave = load_audio(SHARED_MEDIA / "dog_audio.wav").waveform[:32000].numpy()
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=2)
    feats = extractor(wave, sampling_rate=16000, return_tensors="pt")["input_features"]
    with torch.no_grad():
        hidden = reference.encoder(input_features=feats).last_hidden_state
    torch.testing.assert_close(media.audio[0], hidden[0, :100].mean(0), atol=1e-4, rtol=1e-4)
    assert store.sources["audio"].key.preprocess["frontend"] == "whisper_log_mel"


def test_random_init_and_input_length_check(tmp_path):
    config = ",".join(f"{k}: {v}" for k, v in WHISPER.items())
    recipe = whisper_recipe(tmp_path, f"model.audio.config={{{config}}}")
    store = FeatureStore(recipe, FeatureCache(tmp_path / "cache"))
    media, _ = store.fetch(SHARED_MEDIA / "dog_barking.mp4")
    assert media.audio.shape == (1, 32) and media.vision is not None
    bad = whisper_recipe(tmp_path, f"model.audio.config={{{config}}}",
                         "model.audio.target_frames=300")
    with pytest.raises(VlmError, match="takes 200 frames"):
        FeatureStore(bad, FeatureCache(tmp_path / "cache2")).fetch(
            SHARED_MEDIA / "dog_audio.wav")
