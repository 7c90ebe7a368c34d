"""The 7B recipes instantiate (meta device, no download) with the papers' sizes."""

from __future__ import annotations

import json

import pytest

from skeleton import parameter_counts
from vlm_cli.recipe import load_recipe

CLIP_L14 = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
            "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
            "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
            "projection_dim": 768}
VICUNA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
AST_BASE = {"model_type": "audio-spectrogram-transformer", "hidden_size": 768,
            "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "num_mel_bins": 128, "max_length": 1024, "patch_size": 16, "frequency_stride": 10,
            "time_stride": 10}


def write_config(root, name, config):
    directory = root / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


@pytest.fixture
def local_configs(tmp_path):
    return {"model.vision.pretrained": write_config(tmp_path, "clip", CLIP_L14),
            "model.llm.pretrained": write_config(tmp_path, "vicuna", VICUNA_7B),
            "model.audio.pretrained": write_config(tmp_path, "ast", AST_BASE)}


def overrides(configs, *keys):
    return [f"{k}={configs[k]}" for k in keys]


def test_video_llava_7b(local_configs):
    recipe = load_recipe("video-llava-7b", overrides(local_configs, "model.vision.pretrained",
                                                     "model.llm.pretrained"))
    counts = parameter_counts(recipe)
    assert 0.29e9 < counts["vision"] < 0.31e9  # ViT-L/14: 303M
    assert 6.6e9 < counts["llm"] < 6.8e9  # LLaMA-7B: 6.74B
    # Linear(1024, 4096) + GELU + Linear(4096, 4096)
    assert counts["video_connector"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert "audio" not in counts


def test_video_llama_7b(local_configs):
    recipe = load_recipe("video-llama-7b", overrides(local_configs, *local_configs))
    counts = parameter_counts(recipe)
    assert 0.29e9 < counts["vision"] < 0.31e9
    assert 85e6 < counts["audio"] < 90e6  # AST base: 86M
    assert 6.6e9 < counts["llm"] < 6.8e9
    assert counts["video_connector"] > counts["audio_connector"] > 10e6
    assert recipe.model.video_connector.num_query_tokens == 32
    assert recipe.model.audio_connector.num_query_tokens == 8
    assert recipe.train.stage1.freeze == ["vision", "audio", "llm"]
