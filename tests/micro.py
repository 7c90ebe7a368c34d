"""The micro recipe shared by the training, ask and eval tests: every part 1 layer, width 32."""

from __future__ import annotations

VISION_CLIP = """{arch: clip, config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
           num_attention_heads: 2, image_size: 32, patch_size: 16}, feature_layer: -1}"""
VISION_VIVIT = """{arch: vivit, config: {image_size: 32, num_frames: 4, tubelet_size: [2, 16, 16],
           hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
           num_attention_heads: 2}, feature_layer: -1, select: cls,
           image_mean: [0.5, 0.5, 0.5], image_std: [0.25, 0.25, 0.25]}"""
TEMPLATE = """
name: micro
model:
  vision: {vision}
  audio: {{arch: ast, config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
          num_attention_heads: 2, num_mel_bins: 128, max_length: 204, patch_size: 16,
          frequency_stride: 32, time_stride: 32}}}}
  video_connector: {video_connector}
  audio_connector: {{type: mlp}}
  llm: {{config: {{model_type: llama, hidden_size: 32, intermediate_size: 64,
        num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2,
        max_position_embeddings: 256}}, tokenizer: toy-av}}
data: {{frames: 4, audio_clips: {audio_clips}}}
train:
{train}
"""


def micro_recipe(*, vision: str = VISION_CLIP, video_connector: str = "{type: mlp}",
                 audio_clips: int = 2, train: str) -> str:
    """The micro recipe's YAML with the given vision encoder, video connector and train section
    (an indented YAML block)."""
    return TEMPLATE.format(vision=vision, video_connector=video_connector,
                           audio_clips=audio_clips, train=train)
