"""Tiny random-weight Gemma 4 checkpoints in the hub layout of the released repos (see
:func:`make_tiny_gemma4`), for the transformers-native family's Gemma 4 entries.

Two kinds:

* ``unified``: ``google/gemma-4-12B-it`` (``model_type`` ``gemma4_unified``,
  ``Gemma4UnifiedForConditionalGeneration``): encoder-free. No vision or audio tower: 48 px pixel
  patches go through ``model.embed_vision`` (LayerNorm, Dense, LayerNorm, 2-D position table, LayerNorm,
  RMSNorm + Linear), raw 16 kHz audio in 640-sample frames (40 ms) through ``model.embed_audio``
  (RMSNorm + Linear), straight into the decoder.
* ``e2b``: ``google/gemma-4-E2B-it`` / ``-E4B-it`` (``model_type`` ``gemma4``,
  ``Gemma4ForConditionalGeneration``): a SigLIP-style vision tower (``model.vision_tower``), a conformer
  audio tower on a log-mel (``model.audio_tower``), their projections (``model.embed_vision``,
  ``model.embed_audio``) and a decoder with per-layer embeddings (PLE).

What is real (taken from the released repos, see the notes below) and what is tiny:

* ``config.json``: the hub's form (written by transformers 5.5 / 5.10 dev): ``text_config`` with
  ``global_head_dim`` / ``num_global_key_value_heads`` (not 5.24's ``per_layer_config``), ``layer_types``
  ending in ``full_attention``, the two ``rope_parameters`` (sliding 10 k default; full 1 M
  ``proportional`` with ``partial_rotary_factor`` 0.25), ``final_logit_softcapping`` 30, the token ids of
  the media markers, ``eoa_token_index`` (sic), ``video_token_id``; 12B: ``attention_k_eq_v`` with one
  global key/value head, ``use_bidirectional_attention: "vision"``, ``hidden_size_per_layer_input: 0``;
  E2B: PLE (``hidden_size_per_layer_input``), no bidirectional vision attention, ``sliding_window`` 512
  (tiny here). Widths and depths are tiny (2 layers, width 64); the vocabulary is a small Gemma-style BPE
  (byte fallback, ``▁`` for spaces) plus Gemma 4's control and media tokens in their real relative order
  (compact ids instead of 0 ... 262143; see :data:`SPECIAL_TOKENS`).
* weights: made by the model class and written by its ``save_pretrained`` (transformers' reverse weight
  conversion gives the hub's names: 12B ``model.vision_embedder.*`` + ``model.embed_vision.embedding_projection``,
  ``model.embed_audio.*``; E2B ``model.vision_tower.*``, ``model.audio_tower.*``, ``model.embed_vision.*``,
  ``model.embed_audio.*``; both ``model.language_model.*``, the head tied to the embedding); bfloat16.
  12B: two shards ``model-0000{1,2}-of-00002.safetensors`` + ``model.safetensors.index.json``; E2B: one
  ``model.safetensors`` (the E2B repo ships a single 10.2 GB file and no index).
* processor files as the hub has them: ``processor_config.json`` (the image processor, video processor and
  feature extractor nested in one file; no ``preprocessor_config.json``), ``tokenizer.json`` +
  ``tokenizer_config.json`` (``GemmaTokenizer``, the named tokens the processor reads: ``image_token``,
  ``boi_token``, ``audio_token``, ``boa_token``, ... and ``extra_special_tokens: ["<|video|>"]``),
  ``chat_template.jinja``, ``generation_config.json`` and a model card whose front matter has the licence
  the released cards state (``license: apache-2.0`` with ``license_link`` to the Gemma 4 licence page).

Not checked against the released files (no verbatim copy could be read): the chat templates (written
here to render as the released ones do for system / user / assistant turns with text, image, audio and
video parts: tool declarations, tool calls and tool responses are left out; the 12B template ends the
generation prompt with an empty closed thought channel ``<|channel>thought\\n<channel|>`` unless
``enable_thinking``, the E2B / E4B template does not, as found in third-party diffs of Google's own
files), the id of ``<|think|>``, the E2B ``config.json`` beyond its model fields (read: the 12B base
config in full, E2B / E4B fragments; the generic sub-config keys such as ``id2label`` are left out), the
12B top-level ``eos_token_id`` and ``generation_config.json`` (from copies of the 12B repo), the E2B
``generation_config.json`` (taken as the 12B one without ``suppress_tokens``), ``tokenizer_config.json``'s
``response_schema`` (left out) and the 12B shard boundaries.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

KINDS = ("unified", "e2b")
REPO_IDS = {"unified": "google/gemma-4-12B-it", "e2b": "google/gemma-4-E2B-it"}
MODEL_TYPES = {"unified": "gemma4_unified", "e2b": "gemma4"}
MODEL_CLASSES = {"unified": "Gemma4UnifiedForConditionalGeneration", "e2b": "Gemma4ForConditionalGeneration"}
PROCESSOR_CLASSES = {"unified": "Gemma4UnifiedProcessor", "e2b": "Gemma4Processor"}

#: Gemma 4's special tokens before the ordinary vocabulary, in their real order, with the hub's ids
#: where a public copy of the tokenizer confirmed them (None: order inferred, id not confirmed). The
#: hub vocabulary has other (unused) tokens between them; here they are consecutive from 0.
SPECIAL_TOKENS: list[tuple[str, int | None]] = [
    ("<pad>", 0),
    ("<eos>", 1),
    ("<bos>", 2),
    ("<unk>", 3),
    ("<mask>", 4),
    ("<|tool>", 46),
    ("<tool|>", 47),
    ("<|tool_call>", 48),
    ("<tool_call|>", 49),
    ("<|tool_response>", 50),
    ("<tool_response|>", 51),
    ('<|"|>', 52),
    ("<|think|>", None),
    ("<|channel>", 100),
    ("<channel|>", 101),
    ("<|turn>", 105),
    ("<turn|>", 106),
]
#: The media markers after the ordinary vocabulary, in their real order, with the hub's ids (those of
#: ``config.json``: ``boi_token_id``, ``boa_token_id``, ``image_token_id``, ``audio_token_id``,
#: ``eoi_token_id``, ``eoa_token_index``, ``video_token_id``).
MEDIA_TOKENS: list[tuple[str, int]] = [
    ("<|image>", 255999),
    ("<|audio>", 256000),
    ("<|image|>", 258880),
    ("<|audio|>", 258881),
    ("<image|>", 258882),
    ("<audio|>", 258883),
    ("<|video|>", 258884),
]

#: ``tokenizer_config.json`` named tokens (Gemma 4's hub file): attribute -> token.
NAMED_TOKENS = {
    "audio_token": "<|audio|>", "boa_token": "<|audio>", "boi_token": "<|image>", "eoa_token": "<audio|>",
    "eoc_token": "<channel|>", "eoi_token": "<image|>", "eot_token": "<turn|>", "escape_token": '<|"|>',
    "etc_token": "<tool_call|>", "etd_token": "<tool|>", "etr_token": "<tool_response|>",
    "image_token": "<|image|>", "soc_token": "<|channel>", "sot_token": "<|turn>", "stc_token": "<|tool_call>",
    "std_token": "<|tool>", "str_token": "<|tool_response>", "think_token": "<|think|>",
}

_CONTENT = r"""
{%- macro strip_thinking(text) -%}
    {%- set ns = namespace(result='') -%}
    {%- for part in text.split('<channel|>') -%}
        {%- if '<|channel>' in part -%}
            {%- set ns.result = ns.result + part.split('<|channel>')[0] -%}
        {%- else -%}
            {%- set ns.result = ns.result + part -%}
        {%- endif -%}
    {%- endfor -%}
    {{- ns.result | trim -}}
{%- endmacro -%}
{%- set loop_messages = messages -%}
{{- bos_token -}}
{%- if (enable_thinking is defined and enable_thinking) or messages[0]['role'] in ['system', 'developer'] -%}
    {{- '<|turn>system\n' -}}
    {%- if enable_thinking is defined and enable_thinking -%}
        {{- '<|think|>\n' -}}
    {%- endif -%}
    {%- if messages[0]['role'] in ['system', 'developer'] -%}
        {%- if messages[0]['content'] is string -%}
            {{- messages[0]['content'] | trim -}}
        {%- elif messages[0]['content'] is sequence -%}
            {%- for item in messages[0]['content'] -%}
                {{- item['text'] | trim + ' ' -}}
            {%- endfor -%}
        {%- endif -%}
        {%- set loop_messages = messages[1:] -%}
    {%- endif -%}
    {{- '<turn|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\n' -}}
    {%- if message['content'] is string -%}
        {%- if role == 'model' -%}
            {{- strip_thinking(message['content']) -}}
        {%- else -%}
            {{- message['content'] | trim -}}
        {%- endif -%}
    {%- elif message['content'] is sequence -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {%- if role == 'model' -%}
                    {{- strip_thinking(item['text']) -}}
                {%- else -%}
                    {{- item['text'] | trim -}}
                {%- endif -%}
            {%- elif item['type'] == 'image' -%}
                {{- '<|image|>' -}}
            {%- elif item['type'] == 'audio' -%}
                {{- '<|audio|>' -}}
            {%- elif item['type'] == 'video' -%}
                {{- '<|video|>' -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\n' -}}
"""

#: The chat templates (see the module notes): the 12B one closes an empty thought channel after the
#: generation prompt unless ``enable_thinking``; the E2B / E4B one does not. No default system turn.
CHAT_TEMPLATES = {
    "unified": _CONTENT.lstrip("\n") + (
        "    {%- if not enable_thinking | default(false) -%}\n"
        "        {{- '<|channel>thought\\n<channel|>' -}}\n"
        "    {%- endif -%}\n"
        "{%- endif -%}\n"),
    "e2b": _CONTENT.lstrip("\n") + "{%- endif -%}\n",
}

_CORPUS = [
    "What can you see and hear? Answer in one short sentence.",
    "Describe this video. A boat sails on the water while people talk on the deck.",
    "Describe the audio in detail. A dog barks twice while a car passes by in the rain.",
    "What is shown in this image? A small boat on a lake under a grey sky.",
    "Please transcribe the following audio: the weather in Barcelona is sunny today.",
    "The answer is a boat on the water. There is a man, a woman and a child.",
    "00:00 00:01 00:02 00:03 00:04 00:05 00:06 00:07 00:08 00:09 00:10",
    "thought Let me think about what I see and hear.",
] * 20 + ["user", "model", "system", "developer", "thought"] * 100


def _build_tokenizer(out_dir: Path, target_vocab: int = 320) -> tuple[dict[str, int], int]:
    """A Gemma-style BPE (byte fallback, spaces as ``▁``, no pre-tokenizer split) with Gemma 4's special
    tokens in their real relative order, saved as ``tokenizer.json``. Returns ({token: id}, size)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    trainer_tok = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=target_vocab, min_frequency=2, show_progress=False,
                                  special_tokens=[])
    trainer_tok.train_from_iterator(_CORPUS, trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    pieces = sorted(learned["vocab"], key=learned["vocab"].get)

    vocab: dict[str, int] = {}
    for token, _ in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    for token, _ in MEDIA_TOKENS:
        vocab[token] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True,
                        dropout=None))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(  # <bos> first, as Gemma's tokenizer.json
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False,
                                       single_word=False) for t, _ in SPECIAL_TOKENS + MEDIA_TOKENS])
    assert all(tok.token_to_id(t) == vocab[t] for t, _ in SPECIAL_TOKENS + MEDIA_TOKENS)
    tok.save(str(out_dir / "tokenizer.json"))
    return vocab, len(vocab)


def _tokenizer_config(kind: str) -> dict:
    """``tokenizer_config.json`` as on the hub (tokens by name; no ``added_tokens_decoder``: they are in
    ``tokenizer.json``). ``response_schema`` (the tool-call / thinking parser) is left out."""
    return {
        **dict(sorted(NAMED_TOKENS.items())),
        "backend": "tokenizers",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "extra_special_tokens": ["<|video|>"],
        "mask_token": "<mask>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": PROCESSOR_CLASSES[kind],
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
    }


def _processor_config(kind: str) -> dict:
    """``processor_config.json``: the sub-processors nested, as the hub has it."""
    video = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "do_sample_frames": True, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
        "max_soft_tokens": 70, "num_frames": 32, "patch_size": 16, "pooling_kernel_size": 3, "resample": 3,
        "rescale_factor": 0.00392156862745098, "return_metadata": False,
    }
    image = {
        "do_convert_rgb": True, "do_normalize": False, "do_rescale": True, "do_resize": True,
        "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0], "max_soft_tokens": 280,
        "patch_size": 16, "pooling_kernel_size": 3, "resample": 3, "rescale_factor": 0.00392156862745098,
    }
    if kind == "unified":
        return {
            "audio_ms_per_token": 40,
            "audio_seq_length": 750,
            "feature_extractor": {
                "audio_samples_per_token": 640, "feature_extractor_type": "Gemma4UnifiedAudioFeatureExtractor",
                "feature_size": 640, "padding_side": "right", "padding_value": 0.0,
                "return_attention_mask": True, "sampling_rate": 16000,
            },
            "image_processor": {**image, "image_processor_type": "Gemma4UnifiedImageProcessor"},
            "image_seq_length": 280,
            "processor_class": "Gemma4UnifiedProcessor",
            "video_processor": {**video, "video_processor_type": "Gemma4UnifiedVideoProcessor"},
        }
    return {
        "audio_ms_per_token": 40,
        "audio_seq_length": 750,
        "feature_extractor": {
            "dither": 0.0, "feature_extractor_type": "Gemma4AudioFeatureExtractor", "feature_size": 128,
            "fft_length": 512, "fft_overdrive": False, "frame_length": 320, "hop_length": 160,
            "input_scale_factor": 1.0, "max_frequency": 8000.0, "mel_floor": 0.001, "min_frequency": 0.0,
            "padding_side": "right", "padding_value": 0.0, "per_bin_mean": None, "per_bin_stddev": None,
            "preemphasis": 0.0, "preemphasis_htk_flavor": True, "return_attention_mask": True,
            "sampling_rate": 16000,
        },
        "image_processor": {**image, "image_processor_type": "Gemma4ImageProcessor",
                            "image_seq_length": 280},
        "image_seq_length": 280,
        "processor_class": "Gemma4Processor",
        "video_processor": {**video, "video_processor_type": "Gemma4VideoProcessor"},
    }


# Tiny sizes: the decoder's width, the sliding window (the real ones: 3840 / 1024 for 12B, 1536 / 512 for
# E2B), the towers' widths (E2B).
T_HID, WINDOW, V_HID, A_HID = 64, 64, 32, 32


def _rope() -> dict:
    return {"full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}


def _build_config(kind: str, ids: dict[str, int], vocab_size: int) -> dict:
    """``config.json`` in the hub's form, tiny."""
    media = {
        "audio_token_id": ids["<|audio|>"], "boa_token_id": ids["<|audio>"], "boi_token_id": ids["<|image>"],
        "eoa_token_index": ids["<audio|>"], "eoi_token_id": ids["<image|>"], "image_token_id": ids["<|image|>"],
        "video_token_id": ids["<|video|>"],
    }
    text = {
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": ids["<bos>"],
        "enable_moe_block": False, "eos_token_id": ids["<eos>"], "final_logit_softcapping": 30.0,
        "global_head_dim": 64, "head_dim": 32, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": T_HID,
        "initializer_range": 0.02, "intermediate_size": 128,
        "layer_types": ["sliding_attention", "full_attention"], "moe_intermediate_size": None,
        "num_attention_heads": 2, "num_experts": None, "num_hidden_layers": 2, "num_key_value_heads": 1,
        "num_kv_shared_layers": 0, "pad_token_id": ids["<pad>"], "rms_norm_eps": 1e-06,
        "rope_parameters": _rope(), "sliding_window": WINDOW, "tie_word_embeddings": True,
        "top_k_experts": None, "use_cache": True, "vocab_size": vocab_size,
        "vocab_size_per_layer_input": vocab_size,
    }

    def top(model_type: str, version: str) -> dict:  # the top-level fields both configs have
        return {**media, "dtype": "bfloat16", "eos_token_id": [ids["<eos>"], ids["<turn|>"]],
                "initializer_range": 0.02, "model_type": model_type,
                "text_config": dict(sorted(text.items())), "tie_word_embeddings": True,
                "transformers_version": version}

    if kind == "unified":
        text.update({"attention_k_eq_v": True, "hidden_size_per_layer_input": 0, "max_position_embeddings": 262144,
                     "model_type": "gemma4_unified_text", "num_global_key_value_heads": 1,
                     "use_bidirectional_attention": "vision", "use_double_wide_mlp": False})
        return {
            "architectures": ["Gemma4UnifiedForConditionalGeneration"],
            "audio_config": {"audio_embed_dim": 640, "audio_samples_per_token": 640, "hidden_size": 640,
                             "initializer_range": 0.02, "model_type": "gemma4_unified_audio",
                             "output_proj_dims": 640, "rms_norm_eps": 1e-06},
            **top(MODEL_TYPES[kind], "5.10.0.dev0"),
            "vision_config": {"initializer_range": 0.02, "mm_embed_dim": T_HID, "mm_posemb_size": 1120,
                              "model_patch_size": 48, "model_type": "gemma4_unified_vision",
                              "num_soft_tokens": 280, "output_proj_dims": T_HID, "patch_size": 16,
                              "pooling_kernel_size": 3, "rms_norm_eps": 1e-06},
        }
    text.update({"attention_k_eq_v": False, "hidden_size_per_layer_input": 16, "max_position_embeddings": 131072,
                 "model_type": "gemma4_text", "num_global_key_value_heads": None,
                 "use_bidirectional_attention": None, "use_double_wide_mlp": True})
    return {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "audio_config": {
            "attention_chunk_size": 12, "attention_context_left": 13, "attention_context_right": 0,
            "attention_invalid_logits_value": -1000000000.0, "attention_logit_cap": 50.0,
            "conv_kernel_size": 5, "gradient_clipping": 10000000000.0, "hidden_act": "silu",
            "hidden_size": A_HID, "initializer_range": 0.02, "model_type": "gemma4_audio",
            "num_attention_heads": 2, "num_hidden_layers": 2, "output_proj_dims": A_HID, "residual_weight": 0.5,
            "rms_norm_eps": 1e-06, "subsampling_conv_channels": [128, 8], "use_clipped_linears": True,
        },
        **top(MODEL_TYPES[kind], "5.5.0.dev0"),
        "vision_config": {
            "attention_bias": False, "attention_dropout": 0.0, "head_dim": 16,
            "hidden_activation": "gelu_pytorch_tanh", "hidden_size": V_HID, "initializer_range": 0.02,
            "intermediate_size": 64, "max_position_embeddings": 131072, "model_type": "gemma4_vision",
            "num_attention_heads": 2, "num_hidden_layers": 2, "num_key_value_heads": 2, "patch_size": 16,
            "pooling_kernel_size": 3, "position_embedding_size": 1024, "rms_norm_eps": 1e-06,
            "rope_parameters": {"rope_theta": 100.0, "rope_type": "axial"}, "standardize": False,
            "use_clipped_linears": True,
        },
    }


def _generation_config(kind: str, ids: dict[str, int]) -> dict:
    config = {"bos_token_id": ids["<bos>"], "do_sample": True,
              "eos_token_id": [ids["<eos>"], ids["<turn|>"], ids["<|tool_response>"]],
              "pad_token_id": ids["<pad>"], "temperature": 1.0, "top_k": 64, "top_p": 0.95,
              "transformers_version": "5.10.0.dev0" if kind == "unified" else "5.5.0.dev0"}
    if kind == "unified":
        config["suppress_tokens"] = [ids["<audio|>"], ids["<image|>"]]
    return dict(sorted(config.items()))


def _readme(kind: str) -> str:
    repo = REPO_IDS[kind]
    return ("---\nlibrary_name: transformers\nlicense: apache-2.0\n"
            "license_link: https://ai.google.dev/gemma/docs/gemma_4_license\npipeline_tag: any-to-any\n---\n\n"
            f"# {repo.split('/')[1]} (tiny random test copy)\n\n"
            f"Random weights in the layout of [{repo}](https://huggingface.co/{repo}); not a model.\n")


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def make_tiny_gemma4(out_dir: str | os.PathLike, seed: int = 0, kind: str = "unified") -> Path:
    """A random-weight Gemma 4 checkpoint (1-2 MB) in the hub layout of ``REPO_IDS[kind]``:
    ``unified`` (``google/gemma-4-12B-it``, ``gemma4_unified``) or ``e2b`` (``google/gemma-4-E2B-it``,
    ``gemma4``; E4B has the same layout). Weights are made by the model class from ``seed`` (bfloat16),
    written by its ``save_pretrained``; the configs, tokenizer, processor config, chat template,
    generation config and model card are written in the hub's form (see the module notes).

    Returns:
        ``out_dir``.
    """
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids, vocab_size = _build_tokenizer(out)
    config = _build_config(kind, ids, vocab_size)
    _dump(out / "config.json", config)

    model_class = getattr(transformers, MODEL_CLASSES[kind])
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # save_pretrained's "Writing model shards"
    try:
        torch.manual_seed(seed)
        model = model_class(model_class.config_class.from_pretrained(out)).to(torch.bfloat16).eval()
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, max_shard_size="1GB")  # one file, the hub's key names
            state = load_file(Path(tmp) / "model.safetensors")
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    if kind == "e2b":  # one file, no index, as the E2B / E4B repos
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    else:  # two shards and an index, as the 12B repo (boundaries: the decoder, then the embedders)
        groups = [("model.language_model.",), ("model.vision_embedder.", "model.embed_vision.", "model.embed_audio.")]
        weight_map, total = {}, 0
        for i, prefixes in enumerate(groups):
            name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            shard = {k: v.contiguous() for k, v in sorted(state.items()) if k.startswith(prefixes)}
            save_file(shard, out / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            total += sum(v.numel() * v.element_size() for v in shard.values())
        assert set(weight_map) == set(state), sorted(set(state) - set(weight_map))[:5]
        _dump(out / "model.safetensors.index.json",
              {"metadata": {"total_parameters": sum(v.numel() for v in state.values()), "total_size": total},
               "weight_map": dict(sorted(weight_map.items()))})

    _dump(out / "generation_config.json", _generation_config(kind, ids))
    _dump(out / "tokenizer_config.json", _tokenizer_config(kind))
    _dump(out / "processor_config.json", _processor_config(kind))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATES[kind])
    (out / "README.md").write_text(_readme(kind))
    return out


# ------------------------------------------------------------------------------------------
# The model card's usage (see tests/test_gemma4_fixture.py's notes)


def pyav_sound(path: str, sampling_rate: int):
    """What torchcodec's ``AudioDecoder(path, sample_rate=..., num_channels=1).get_all_samples()``
    returns: the whole first audio stream, FFmpeg-resampled to ``sampling_rate`` Hz mono float32."""
    import av
    import numpy as np

    out = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sampling_rate)
        for frame in container.decode(audio=0):
            out += [f.to_ndarray()[0] for f in resampler.resample(frame)]
        out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32)


def card_decoders(monkeypatch) -> str:
    """The card's decoders: torchcodec when it is usable (returns ``"torchcodec"``), else PyAV in
    its place (``"pyav"``: transformers' own PyAV frame reader, FFmpeg's resampler through PyAV),
    patched with ``monkeypatch``."""
    import numpy as np
    from transformers import processing_utils, video_processing_utils
    from transformers.utils import is_torchcodec_usable
    from transformers.video_utils import load_video

    if is_torchcodec_usable(decode="video") and is_torchcodec_usable(decode="audio"):
        return "torchcodec"

    def load_audio(audio, sampling_rate=16000, timeout=None, backend="auto"):
        return audio if isinstance(audio, np.ndarray) else pyav_sound(audio, sampling_rate)

    def fetch_videos(self, video_url_or_urls, sample_indices_fn=None):
        if isinstance(video_url_or_urls, list):
            return list(zip(*[fetch_videos(self, x, sample_indices_fn) for x in video_url_or_urls]))
        return load_video(video_url_or_urls, backend="pyav", sample_indices_fn=sample_indices_fn)

    monkeypatch.setattr(processing_utils, "load_audio", load_audio)
    monkeypatch.setattr(video_processing_utils.VideoProcessorMixin, "fetch_videos", fetch_videos)
    return "pyav"


def card_messages(kind: str, path, prompt: str, sound: bool = True) -> tuple[list[dict], dict]:
    """The card's messages for a ``video`` (with its own track when ``sound``: an empty audio
    entry after it and ``load_audio_from_video``), an ``image`` or an ``audio`` file (after the
    text, as the card), and the extra ``apply_chat_template`` arguments."""
    if kind == "audio":
        return [{"role": "user", "content": [{"type": "text", "text": prompt},
                                             {"type": "audio", "audio": str(path)}]}], {}
    if kind == "image":
        content, extra = [{"type": "image", "url": str(path)}], {}
    elif sound:
        content = [{"type": "video", "video": str(path)}, {"type": "audio"}]
        extra = {"load_audio_from_video": True}
    else:
        content, extra = [{"type": "video", "video": str(path)}], {}
    return [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}], extra


def card_answer(processor, model, kind: str, path, prompt: str, *, new_tokens: int,
                sound: bool = True) -> list[int]:
    """The card's greedy answer (``apply_chat_template(..., tokenize=True, return_dict=True)``,
    ``generate(do_sample=False)``), new ids without the end-of-turn token."""
    import torch

    messages, extra = card_messages(kind, path, prompt, sound)
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True,
                                           return_tensors="pt", add_generation_prompt=True, **extra)
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs.to(model.device), do_sample=False, max_new_tokens=new_tokens)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    ids = out[0, n:].tolist()
    return ids[:next((i for i, t in enumerate(ids) if t in eos), len(ids))]
