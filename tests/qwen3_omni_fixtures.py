"""A tiny random-weight Qwen3-Omni checkpoint in exactly the hub layout of the released repos
(``Qwen/Qwen3-Omni-30B-A3B-Instruct``, ``-Thinking``, ``-Captioner``; see :func:`make_tiny_qwen3_omni`),
for the transformers-native family's Qwen3-Omni entry.

What is real (taken from the released repos) and what is tiny:

* ``config.json``: ``Qwen3OmniMoeConfig`` in the hub's (transformers 4.57) form: ``thinker_config`` /
  ``talker_config`` / ``code2wav_config``, ``rope_scaling`` + ``rope_theta`` (not 5.x's
  ``rope_parameters``), the undeclared ids ``get_rope_index`` reads (``vision_start_token_id``, ...),
  ``position_id_per_seconds`` 13, ``deepstack_visual_indexes``, patch 16. The Thinking and Captioner repos
  are thinker-only (``enable_audio_output: false``, no talker / code2wav weights). Widths, depths and
  expert counts are tiny; the vocabulary is a small byte-level BPE plus Qwen3-Omni's 33 added tokens in
  their real order (compact ids instead of 151643...).
* weights: made by ``Qwen3OmniMoeForConditionalGeneration`` and written by its ``save_pretrained``, whose
  reverse weight conversion gives the hub's key names: ``thinker.model.*`` (language model),
  ``thinker.lm_head``, ``thinker.visual.*``, ``thinker.audio_tower.*``, per-expert
  ``mlp.experts.<e>.{gate,up,down}_proj`` tensors (transformers 5 fuses them on load), ``talker.*``,
  ``code2wav.*``; bfloat16. Resharded by component: the thinker's text model, its towers, then the talker
  and code2wav in shards of their own (on the hub, shards 13-15 of 15 hold only talker / code2wav
  tensors), so a thinker-only client can be checked never to fetch them.
* processor files: ``preprocessor_config.json`` (Qwen2VLImageProcessor + WhisperFeatureExtractor, patch 16;
  the released repos ship no ``video_preprocessor_config.json`` / ``processor_config.json``, so the video
  processor reads this file too), ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` (added
  tokens, the model-specific named tokens the processor reads), ``chat_template.json``,
  ``generation_config.json`` and a model card with the Apache-2.0 front matter.

Not checked against the released files (no copy was found): the Instruct / Captioner chat template (taken
to be the Thinking one), the absence of ``tokenizer.json``, the image mean/std (0.5, as Qwen3-VL), the
``generation_config.json`` contents (stop ids as Qwen2.5-Omni's) and the exact shard boundaries.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from omni_fixtures import CORPUS as _OMNI_CORPUS
from omni_fixtures import byte_level_bpe

VARIANTS = ("instruct", "thinking", "captioner")
REPO_IDS = {"instruct": "Qwen/Qwen3-Omni-30B-A3B-Instruct", "thinking": "Qwen/Qwen3-Omni-30B-A3B-Thinking",
            "captioner": "Qwen/Qwen3-Omni-30B-A3B-Captioner"}

#: Qwen3-Omni added tokens, real order (ids 151643 ... 151675 on the hub), with their ``special`` flag.
#: ``<think>`` / ``</think>`` / tool tokens are *not* special: ``skip_special_tokens`` keeps them.
SPECIAL_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<tts_pad>", True),
    ("<tts_text_bos>", True),
    ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
]

#: The released ``chat_template.json`` (Qwen/Qwen3-Omni-30B-A3B-Thinking, verbatim): Qwen3's hybrid
#: template with multimodal content parts. No default system turn; ``add_generation_prompt`` ends in
#: ``<|im_start|>assistant\n`` (the model opens ``<think>`` itself) unless ``enable_thinking=False``,
#: which appends an empty ``<think>\n\n</think>\n\n``. The Instruct and Captioner repos ship the
#: same file as far as could be checked (a public copy fetched from both repos keeps one file).
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {{- '<|im_start|>system\n' +"<|vision_start|><|image_pad|><|vision_end|>"+ '<|im_end|>\n' }}
                {%- elif content.type == 'audio' or 'audio' in content or 'audio_url' in content %}
                    {{- '<|im_start|>system\n' +"<|audio_start|><|audio_pad|><|audio_end|>"+ '<|im_end|>\n' }}
                {%- elif content.type == 'video' or 'video' in content %}
                    {{- '<|im_start|>system\n' +"<|vision_start|><|video_pad|><|vision_end|>"+ '<|im_end|>\n' }}
                {%- elif content.type == 'text' %}
                    {{- '<|im_start|>system\n' +content.text+ '<|im_end|>\n' }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = namespace(text="") %}
        {%- for mcontent in message.content %}
            {%- if mcontent.type == 'image' or 'image' in mcontent or 'image_url' in mcontent %}
                {%- set content.text = content.text~"<|vision_start|><|image_pad|><|vision_end|>" %}
            {%- elif mcontent.type == 'audio' or 'audio' in mcontent or 'audio_url' in mcontent %}
                {%- set content.text = content.text~"<|audio_start|><|audio_pad|><|audio_end|>" %}
            {%- elif mcontent.type == 'video' or 'video' in mcontent %}
                {%- set content.text = content.text~"<|vision_start|><|video_pad|><|vision_end|>" %}
            {%- elif mcontent.type == 'text' %}
                {%- set content.text = content.text~mcontent.text %}
            {%- endif %}
        {%- endfor %}
        {%- set content = content.text %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = "" %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
    {%- endif %}
    {%- if loop.index0 > ns.last_query_index %}
        {%- if loop.last or (not loop.last and reasoning_content) %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip("\n") + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + content }}
    {%- endif %}
    {%- if message.tool_calls %}
        {%- for tool_call in message.tool_calls %}
            {%- if (loop.first and content) or (not loop.first) %}{{- '\n' }}{%- endif %}
            {%- if tool_call.function %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}
{%- endif %}
"""

_CORPUS = _OMNI_CORPUS + [
    "<think> Let me think about what I see and hear. </think> The answer is a boat on the water.",
    "Describe the audio in detail. A dog barks twice while a car passes by in the rain.",
    "What can you see and hear? Answer in one short sentence.",
] * 20 + ["system", "user", "assistant"] * 200  # the role names become single tokens, as on the hub


def _build_tokenizer(out_dir: str, target_vocab: int = 400):
    """Byte-level BPE (Qwen2 pre-tokenizer) plus the added tokens in their real relative order, saved
    as the hub has them: ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` (added tokens,
    ``extra`` named tokens the processor reads). Returns ({token: id}, vocabulary length, Tokenizer)."""
    from tokenizers import AddedToken

    tok = byte_level_bpe(_CORPUS, target_vocab)
    base = tok.get_vocab_size()
    ids = {}
    for i, (content, special) in enumerate(SPECIAL_TOKENS):
        added = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False,
                           single_word=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
        ids[content] = tok.token_to_id(content)
        assert ids[content] == base + i, (content, ids[content], base + i)

    model_json = json.loads(tok.to_str())["model"]
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(model_json["vocab"], f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in model_json["merges"]:
            f.write((" ".join(m) if isinstance(m, list) else m) + "\n")
    _dump(out_dir, "tokenizer_config.json", {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": s}
            for t, s in SPECIAL_TOKENS
        },
        "additional_special_tokens": [t for t, s in SPECIAL_TOKENS if s and t != "<|endoftext|>"],
        # model-specific named tokens: Qwen3OmniMoeProcessor.__init__ reads tokenizer.<name> / <name>_id
        "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>",
        "audio_token": "<|audio_pad|>",
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": 65536,
        "pad_token": "<|endoftext|>",
        "processor_class": "Qwen3OmniMoeProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })
    return ids, base + len(SPECIAL_TOKENS), tok


# Tiny sizes. The text width is a multiple of the towers' output; head_dim 32 gives 16 rotary
# frequencies, which mrope_section [6, 5, 5] splits as the real [24, 20, 20] splits 64 (interleaved).
T_HID, V_HID, A_HID, TALK_HID = 64, 32, 32, 32


def _rope(section):
    return {"interleaved": True, "mrope_interleaved": True, "mrope_section": section,
            "rope_type": "default", "type": "default"}


def _build_config(ids: dict, tok_len: int, user_id: int, system_id: int, assistant_id: int,
                  variant: str) -> dict:
    vocab_size = int(math.ceil((tok_len + 16) / 64) * 64)  # padded like 151676 -> 152064
    thinker = {
        "audio_config": {
            "activation_dropout": 0, "activation_function": "gelu", "attention_dropout": 0,
            "conv_chunksize": 500, "d_model": A_HID, "downsample_hidden_size": 8, "dropout": 0,
            "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "encoder_layers": 2, "initializer_range": 0.02,
            "max_source_positions": 1500, "model_type": "qwen3_omni_moe_audio_encoder", "n_window": 50,
            "n_window_infer": 800, "num_mel_bins": 128, "output_dim": T_HID, "scale_embedding": False,
        },
        "audio_end_token_id": ids["<|audio_end|>"],
        "audio_start_token_id": ids["<|audio_start|>"],
        "audio_token_id": ids["<|audio_pad|>"],
        "dtype": "bfloat16",
        "image_token_id": ids["<|image_pad|>"],
        "initializer_range": 0.02,
        "model_type": "qwen3_omni_moe_thinker",
        "position_id_per_seconds": 13,
        "seconds_per_chunk": 2,
        "text_config": {
            "attention_bias": False, "attention_dropout": 0.0, "decoder_sparse_step": 1, "head_dim": 32,
            "hidden_act": "silu", "hidden_size": T_HID, "initializer_range": 0.02, "intermediate_size": 32,
            "max_position_embeddings": 65536, "mlp_only_layers": [], "model_type": "qwen3_omni_moe_text",
            "moe_intermediate_size": 32, "norm_topk_prob": True, "num_attention_heads": 4, "num_experts": 4,
            "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_key_value_heads": 2,
            "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_scaling": _rope([6, 5, 5]),
            "rope_theta": 1000000, "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 0,
            "sliding_window": None, "tie_word_embeddings": False, "use_cache": True, "use_qk_norm": True,
            "use_sliding_window": False, "vocab_size": vocab_size,
        },
        "user_token_id": user_id,
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": {
            "apply_vit_abs_pos_embed": True, "deepstack_visual_indexes": [0, 1], "depth": 2,
            "hidden_act": "gelu_pytorch_tanh", "hidden_size": V_HID, "image_size": 768, "in_channels": 3,
            "in_chans": 3, "initializer_range": 0.02, "intermediate_size": 64,
            "model_type": "qwen3_omni_moe_vision_encoder", "num_heads": 2, "num_position_embeddings": 2304,
            "out_hidden_size": T_HID, "patch_size": 16, "spatial_merge_size": 2, "spatial_patch_size": 16,
            "temporal_patch_size": 2, "tokens_per_second": 2,
        },
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
    }
    config = {
        "architectures": ["Qwen3OmniMoeForConditionalGeneration"],
        "assistant_token_id": assistant_id,
        "dtype": "bfloat16",
        "enable_audio_output": variant == "instruct",
        "im_end_token_id": ids["<|im_end|>"],
        "im_start_token_id": ids["<|im_start|>"],
        "model_type": "qwen3_omni_moe",
        "system_token_id": system_id,
        "thinker_config": thinker,
        "transformers_version": "4.57.0.dev0",
        "tts_bos_token_id": ids["<tts_text_bos>"],
        "tts_eos_token_id": ids["<tts_text_eod>"],
        "tts_pad_token_id": ids["<tts_pad>"],
        "user_token_id": user_id,
    }
    if variant == "instruct":  # the thinker-only repos carry neither config nor weights for these
        config["code2wav_config"] = {
            "attention_bias": False, "attention_dropout": 0.0, "codebook_dim": 32, "codebook_size": 2048,
            "decoder_dim": 32, "hidden_act": "silu", "hidden_size": TALK_HID, "intermediate_size": 64,
            "layer_scale_initial_scale": 0.01, "max_position_embeddings": 8000, "num_attention_heads": 2,
            "num_hidden_layers": 2, "num_key_value_heads": 2, "num_quantizers": 16,
            "num_semantic_quantizers": 1, "rms_norm_eps": 1e-05, "rope_theta": 10000,
            "semantic_codebook_size": 4096, "sliding_window": 72, "upsample_rates": [8, 5, 4, 3],
            "upsampling_ratios": [2, 2], "vector_quantization_hidden_dimension": 32,
        }
        config["talker_config"] = {
            "accept_hidden_layer": 1,
            "audio_end_token_id": ids["<|audio_end|>"],
            "audio_start_token_id": ids["<|audio_start|>"],
            "audio_token_id": ids["<|audio_pad|>"],
            "code_predictor_config": {
                "attention_bias": False, "attention_dropout": 0, "head_dim": 16, "hidden_act": "silu",
                "hidden_size": TALK_HID, "initializer_range": 0.02, "intermediate_size": 64,
                "layer_types": ["full_attention"], "max_position_embeddings": 32768, "max_window_layers": 28,
                "model_type": "qwen3_omni_moe_talker_code_predictor", "num_attention_heads": 2,
                "num_code_groups": 16, "num_hidden_layers": 1, "num_key_value_heads": 1, "rms_norm_eps": 1e-06,
                "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "use_cache": True,
                "use_sliding_window": False, "vocab_size": 2048,
            },
            "codec_bos_id": 2149, "codec_eos_token_id": 2150, "codec_nothink_id": 2155, "codec_pad_id": 2148,
            "codec_think_bos_id": 2156, "codec_think_eos_id": 2157,
            "image_token_id": ids["<|image_pad|>"],
            "num_code_groups": 16,
            "output_router_logits": False,
            "position_id_per_seconds": 13,
            "seconds_per_chunk": 2,
            "spatial_merge_size": 2,
            "speaker_id": {"aiden": 2303, "chelsie": 2301, "ethan": 2302},
            "text_config": {
                "attention_bias": False, "attention_dropout": 0, "decoder_sparse_step": 1, "head_dim": 16,
                "hidden_act": "silu", "hidden_size": TALK_HID, "initializer_range": 0.02, "intermediate_size": 64,
                "max_position_embeddings": 65536, "mlp_only_layers": [], "model_type": "qwen3_omni_moe_talker_text",
                "moe_intermediate_size": 16, "norm_topk_prob": True, "num_attention_heads": 2, "num_experts": 4,
                "num_experts_per_tok": 2, "num_hidden_layers": 1, "num_key_value_heads": 1,
                "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_scaling": _rope([4, 2, 2]),
                "rope_theta": 1000000, "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 32,
                "sliding_window": None, "tie_word_embeddings": False, "use_cache": True,
                "use_sliding_window": False, "vocab_size": 3072,
            },
            "thinker_hidden_size": T_HID,
            "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
        }
    return config


def _dump(out: str, name: str, obj: dict) -> None:
    with open(os.path.join(out, name), "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)


def _readme(variant: str) -> str:
    repo = REPO_IDS[variant]
    return ("---\nlicense: apache-2.0\nlanguage:\n- en\nlibrary_name: transformers\n"
            "pipeline_tag: any-to-any\n---\n"
            f"# {repo.split('/')[1]} (tiny random test copy)\n\n"
            f"Random weights in the layout of [{repo}](https://huggingface.co/{repo}); not a model.\n")


def _shard_groups(variant: str) -> list[tuple[str, ...]]:
    """Key prefixes per shard, in order: the thinker's language model, its towers, then (Instruct only)
    the talker and code2wav in shards of their own, as in the released repo (shards 13-15 of 15)."""
    groups = [("thinker.model.", "thinker.lm_head."), ("thinker.audio_tower.", "thinker.visual.")]
    if variant == "instruct":
        groups += [("talker.model.", "talker.codec_head.", "talker.text_projection.", "talker.hidden_projection."),
                   ("talker.code_predictor.", "code2wav.")]
    return groups


def make_tiny_qwen3_omni(out_dir: str | os.PathLike, seed: int = 0, variant: str = "instruct") -> Path:
    """A random-weight Qwen3-Omni checkpoint (a few MB) in the hub layout of ``REPO_IDS[variant]``.

    ``instruct``: thinker + talker + code2wav (``enable_audio_output: true``); ``thinking`` and
    ``captioner``: the thinker only (``enable_audio_output: false``, no ``talker_config`` /
    ``code2wav_config``, no talker / code2wav tensors). Weights are made by
    ``Qwen3OmniMoeForConditionalGeneration`` from ``seed`` and written by its ``save_pretrained`` (whose
    reverse weight conversion yields the hub's key names), then resharded by component with an index.
    The same seed gives the same thinker weights in every variant."""
    import tempfile

    import torch
    import transformers
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    out = str(out_dir)
    os.makedirs(out, exist_ok=True)
    ids, tok_len, tok = _build_tokenizer(out)

    def single(word):
        (token,) = tok.encode(word, add_special_tokens=False).ids
        return token

    config = _build_config(ids, tok_len, single("user"), single("system"), single("assistant"), variant)
    _dump(out, "config.json", config)
    _dump(out, "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "transformers_version": "4.57.0.dev0"})
    _dump(out, "preprocessor_config.json", {
        "chunk_length": 300, "dither": 0.0, "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": 128, "hop_length": 160, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessor", "image_std": [0.5, 0.5, 0.5],
        "max_pixels": 12845056, "merge_size": 2, "min_pixels": 3136, "n_fft": 400, "n_samples": 4800000,
        "nb_max_frames": 30000, "padding_side": "right", "padding_value": 0.0, "patch_size": 16,
        "processor_class": "Qwen3OmniMoeProcessor", "return_attention_mask": True, "sampling_rate": 16000,
        "temporal_patch_size": 2})
    _dump(out, "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(_readme(variant))

    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # save_pretrained's "Writing model shards"
    try:
        torch.manual_seed(seed)
        model = Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig.from_pretrained(out))
        model = model.to(torch.bfloat16).eval()
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, max_shard_size="1GB")
            state = {}
            for name in sorted(os.listdir(tmp)):
                if name.endswith(".safetensors"):
                    with safe_open(os.path.join(tmp, name), "pt") as f:
                        state.update({k: f.get_tensor(k) for k in f.keys()})
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()

    groups = _shard_groups(variant)
    weight_map, total = {}, 0
    for i, prefixes in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {k: v.contiguous() for k, v in sorted(state.items()) if k.startswith(prefixes)}
        save_file(shard, os.path.join(out, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(v.numel() * v.element_size() for v in shard.values())
    assert set(weight_map) == set(state), sorted(set(state) - set(weight_map))[:5]
    _dump(out, "model.safetensors.index.json",
          {"metadata": {"total_parameters": sum(v.numel() for v in state.values()), "total_size": total},
           "weight_map": dict(sorted(weight_map.items()))})
    return Path(out)
