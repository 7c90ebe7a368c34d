"""A tiny random-weight Qwen2.5-Omni checkpoint in exactly the hub layout (see
:func:`make_tiny_qwen_omni`), for the Qwen2.5-Omni family tests."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

SPECIAL_TOKENS = [  # Qwen2.5-Omni added tokens, original order (real ids 151643 ... 151664)
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|AUDIO|>", True),
    ("<|audio_bos|>", True),
    ("<|audio_eos|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_bos|>", True),
    ("<|vision_eos|>", True),
    ("<|vision_pad|>", True),
    ("<|IMAGE|>", True),
    ("<|VIDEO|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]

# Stock Qwen2.5-Omni chat template (identical to the one shipped with Qwen/Qwen2.5-Omni-*)
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

CORPUS = [
    "system", "user", "assistant", "You are a helpful assistant.",
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech.",
    "Describe the video and the audio. What is in this image? What do you hear in this audio clip?",
    "The quick brown fox jumps over the lazy dog. A man is speaking while music plays in the background.",
    "Thoroughly describe everything in the video, capturing every detail, including the sound.",
    "hello world, this is a tiny tokenizer for testing the Qwen2.5-Omni thinker pipeline 0123456789",
] * 20


def byte_level_bpe(corpus, target_vocab):
    """A Qwen-style byte-level BPE (NFC, Qwen's pre-tokenising regex) trained on ``corpus``,
    without added tokens: the tiny Qwen2.5-Omni and Qwen3-Omni tokenizers start from it."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                        byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=target_vocab, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def _build_tokenizer(out_dir, target_vocab=400):
    from tokenizers import AddedToken

    tok = byte_level_bpe(CORPUS, target_vocab)
    base_vocab_size = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=s, normalized=False, lstrip=False, rstrip=False, single_word=False)
                            for t, s in SPECIAL_TOKENS if s])
    # non-special added tokens keep their original position in the list (ids are assigned in call order)
    ids = {}
    for t, s in SPECIAL_TOKENS:
        if not s:
            tok.add_tokens([AddedToken(t, special=False, normalized=False)])
        ids[t] = tok.token_to_id(t)
    # ids must be consecutive in the original order
    expected = list(range(base_vocab_size, base_vocab_size + len(SPECIAL_TOKENS)))
    assert [ids[t] for t, _ in SPECIAL_TOKENS] == expected, ids
    tok.save(os.path.join(out_dir, "tokenizer.json"))

    # vocab.json / merges.txt (the slow-tokenizer files, present on the hub)
    model_json = json.loads(tok.to_str())["model"]
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(model_json["vocab"], f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in model_json["merges"]:
            f.write((" ".join(m) if isinstance(m, list) else m) + "\n")

    with open(os.path.join(out_dir, "added_tokens.json"), "w") as f:
        json.dump({t: ids[t] for t, _ in sorted(SPECIAL_TOKENS)}, f, indent=2)

    additional = [t for t, s in SPECIAL_TOKENS if s and t != "<|endoftext|>"]
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({
            "additional_special_tokens": additional,
            "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False},
            "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False},
        }, f, indent=2)

    tok_cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": s}
            for t, s in SPECIAL_TOKENS
        },
        "additional_special_tokens": additional,
        # model-specific named tokens: transformers turns every `*_token` key into tokenizer.<name> and
        # tokenizer.<name>_id; Qwen2_5OmniProcessor.__init__ reads exactly these ten.
        "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>",
        "audio_token": "<|AUDIO|>",
        "image_token": "<|IMAGE|>",
        "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>",
        "vision_eos_token": "<|vision_eos|>",
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "processor_class": "Qwen2_5OmniProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
    return ids, base_vocab_size + len(SPECIAL_TOKENS), tok


def _build_config(ids, tok_len, user_id):
    vocab_size = int(math.ceil((tok_len + 16) / 64) * 64)  # padded like 151665 -> 151936
    # ids that live in the padded region on the real model (151859.. for talker text tokens / speakers)
    pad_region = list(range(tok_len + 1, vocab_size))
    tts_text_pad, tts_text_start, tts_text_end = pad_region[0], pad_region[1], pad_region[2]
    speaker_bos = {"Chelsie": pad_region[10], "Ethan": pad_region[11]}

    T_HID, V_HID, A_HID = 64, 32, 32
    mrope = {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"}  # sums to head_dim/2 = 8
    thinker = {
        "architectures": ["Qwen2OmniNaViTThinkerForConditionalGeneration"],
        "model_type": "qwen2_5_omni_thinker",
        "audio_config": {
            "model_type": "qwen2_5_omni_audio_encoder",
            "activation_dropout": 0.0, "activation_function": "gelu", "attention_dropout": 0.0,
            "d_model": A_HID, "dropout": 0.0, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
            "encoder_layerdrop": 0.0, "encoder_layers": 2, "init_std": 0.02, "initializer_range": 0.02,
            "max_source_positions": 1500, "n_window": 100, "num_hidden_layers": 2, "num_mel_bins": 128,
            "output_dim": T_HID, "scale_embedding": False, "torch_dtype": "bfloat16",
        },
        "vision_config": {
            "model_type": "qwen2_5_omni_vision_encoder",
            "depth": 2, "embed_dim": V_HID, "hidden_size": V_HID, "fullatt_block_indexes": [1],
            "hidden_act": "silu", "in_channels": 3, "in_chans": 3, "init_std": 0.02, "initializer_range": 0.02,
            "intermediate_size": 64, "num_heads": 2, "out_hidden_size": T_HID, "patch_size": 14,
            "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2,
            "tokens_per_second": 25, "window_size": 112, "torch_dtype": "bfloat16",
        },
        "text_config": {
            "model_type": "qwen2_5_omni_text",
            "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "hidden_act": "silu", "hidden_size": T_HID, "init_std": 0.02, "initializer_range": 0.02,
            "intermediate_size": 128, "max_position_embeddings": 32768, "max_window_layers": 2,
            "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
            "rope_scaling": mrope, "rope_theta": 1000000.0, "sliding_window": 32768,
            "tie_word_embeddings": False, "use_cache": True, "use_sliding_window": False,
            "vocab_size": vocab_size, "torch_dtype": "bfloat16",
        },
        "audio_token_index": ids["<|AUDIO|>"],
        "image_token_index": ids["<|IMAGE|>"],
        "video_token_index": ids["<|VIDEO|>"],
        "audio_start_token_id": ids["<|audio_bos|>"],
        "audio_end_token_id": ids["<|audio_eos|>"],
        "vision_start_token_id": ids["<|vision_bos|>"],   # NOT a declared field, but get_rope_index reads it
        "vision_end_token_id": ids["<|vision_eos|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "ignore_index": -100,
        "init_std": 0.02,
        "initializer_range": 0.02,
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        "user_token_id": user_id,
        "torch_dtype": "bfloat16",
    }
    talker = {
        "architectures": ["Qwen2OmniTalkerForConditionalGeneration"],
        "model_type": "qwen2_5_omni_talker",
        "attention_dropout": 0.0,
        "audio_end_token_id": ids["<|audio_eos|>"], "audio_start_token_id": ids["<|audio_bos|>"],
        "audio_token_index": ids["<|AUDIO|>"], "image_token_index": ids["<|IMAGE|>"],
        "video_token_index": ids["<|VIDEO|>"],
        "vision_start_token_id": ids["<|vision_bos|>"], "vision_end_token_id": ids["<|vision_eos|>"],
        "embedding_size": T_HID, "head_dim": 16, "hidden_act": "silu", "hidden_size": 32,
        "init_std": 0.02, "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 32768,
        "max_window_layers": 1, "num_attention_heads": 2, "num_hidden_layers": 1, "num_key_value_heads": 1,
        "position_id_per_seconds": 25, "rms_norm_eps": 1e-06, "rope_scaling": mrope, "rope_theta": 1000000.0,
        "seconds_per_chunk": 2, "sliding_window": 32768, "spatial_merge_size": 2,
        "tts_codec_end_token_id": 8294, "tts_codec_mask_token_id": 8296, "tts_codec_pad_token_id": 8292,
        "tts_codec_start_token_id": 8293, "tts_text_end_token_id": tts_text_end,
        "tts_text_pad_token_id": tts_text_pad, "tts_text_start_token_id": tts_text_start,
        "use_cache": True, "use_sliding_window": False, "vocab_size": 8448, "torch_dtype": "bfloat16",
    }
    token2wav = {
        "model_type": "qwen2_5_omni_token2wav",
        "dit_config": {
            "model_type": "qwen2_5_omni_dit",
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 16, "ff_mult": 2,
            "emb_dim": 16, "max_position_embeddings": 32768, "block_size": 24,
            "look_ahead_layers": [1], "look_backward_layers": [0, 1], "repeats": 2, "num_embeds": 8193,
            "mel_dim": 80, "dropout": 0.1, "enc_emb_dim": 192, "enc_dim": 16,
            "enc_channels": [32, 32, 32, 32, 96], "enc_kernel_sizes": [5, 3, 3, 3, 1],
            "enc_dilations": [1, 2, 3, 4, 1], "enc_attention_channels": 16, "enc_res2net_scale": 2,
            "enc_se_channels": 16, "rope_theta": 10000.0,
        },
        "bigvgan_config": {
            "model_type": "qwen2_5_omni_bigvgan",
            "mel_dim": 80, "upsample_initial_channel": 64, "resblock_kernel_sizes": [3, 7, 11],
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "upsample_rates": [5, 3, 2, 2, 2, 2], "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4],
        },
    }
    config = {
        "architectures": ["Qwen2_5OmniModel"],
        "model_type": "qwen2_5_omni",
        "enable_audio_output": True,
        "enable_talker": True,
        "thinker_config": thinker,
        "talker_config": talker,
        "token2wav_config": token2wav,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
    }
    return config, speaker_bos


def _hub_key(k):
    """transformers-5 module path -> original hub key (inverse of the conversion_mapping for the thinker)."""
    for src, dst in (("thinker.model.language_model.", "thinker.model."),
                     ("thinker.model.visual.", "thinker.visual."),
                     ("thinker.model.audio_tower.", "thinker.audio_tower.")):
        if k.startswith(src):
            return dst + k[len(src):]
    return k


def make_tiny_qwen_omni(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A random-weight Qwen2.5-Omni checkpoint (a few MB) in the hub layout of
    ``Qwen/Qwen2.5-Omni-3B``: config.json with thinker / talker / token2wav configs in the hub's
    (transformers 4.5x) form, three safetensors shards with the hub's key names (the thinker's
    language model and head; its vision and audio towers; the talker and token2wav, which a
    text-only client never needs), the index, ``spk_dict.pt``, the tokenizer files,
    ``preprocessor_config.json`` (image processor + Whisper feature extractor) and
    ``chat_template.json``. The vocabulary is a small byte-level BPE plus Qwen2.5-Omni's 22 added
    tokens in their order (compact ids, not the real 151643+)."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    out = str(out_dir)
    os.makedirs(out, exist_ok=True)
    ids, tok_len, tok = _build_tokenizer(out)
    user_ids = tok.encode("user", add_special_tokens=False).ids
    user_id = user_ids[0] if len(user_ids) == 1 else ids["<|im_start|>"]
    config, speaker_bos = _build_config(ids, tok_len, user_id)
    _dump(out, "config.json", config)
    _dump(out, "generation_config.json", {
        "_from_model_config": True, "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "transformers_version": "4.50.0.dev0"})
    _dump(out, "preprocessor_config.json", {
        "processor_class": "Qwen2_5OmniProcessor",
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "max_pixels": 12845056, "min_pixels": 3136, "merge_size": 2, "patch_size": 14,
        "resample": 3, "rescale_factor": 0.00392156862745098, "temporal_patch_size": 2,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "chunk_length": 300, "dither": 0.0, "feature_size": 128, "hop_length": 160,
        "n_fft": 400, "n_samples": 4800000, "nb_max_frames": 30000, "padding_side": "right",
        "padding_value": 0.0, "return_attention_mask": True, "sampling_rate": 16000})
    _dump(out, "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    with open(os.path.join(out, "README.md"), "w") as f:  # the model card's front matter
        f.write("---\nlicense: other\nlicense_name: qwen-research\nlicense_link: "
                "https://huggingface.co/Qwen/Qwen2.5-Omni-3B/blob/main/LICENSE\n"
                "pipeline_tag: any-to-any\n---\n# Qwen2.5-Omni (tiny random test copy)\n")

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig.from_pretrained(out)).eval()
    state = {_hub_key(k): v.detach().to(torch.bfloat16).contiguous().clone()
             if v.is_floating_point() else v.detach().clone()
             for k, v in model.state_dict().items()}
    groups = [("thinker.model.", "thinker.lm_head."), ("thinker.visual.", "thinker.audio_tower."),
              ("talker.", "token2wav.")]
    weight_map, total = {}, 0
    for i, prefixes in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {k: v for k, v in state.items() if k.startswith(prefixes)}
        save_file(shard, os.path.join(out, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        total += sum(v.numel() * v.element_size() for v in shard.values())
    assert set(weight_map) == set(state), set(state) - set(weight_map)
    _dump(out, "model.safetensors.index.json",
          {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    dit = config["token2wav_config"]["dit_config"]
    g = torch.Generator().manual_seed(seed)
    torch.save({name: {"bos_token": bos, "cond": torch.randn(1, dit["enc_emb_dim"], generator=g),
                       "ref_mel": torch.randn(1, 60, dit["mel_dim"], generator=g)}
                for name, bos in speaker_bos.items()}, os.path.join(out, "spk_dict.pt"))
    return Path(out)


def _dump(out: str, name: str, obj: dict) -> None:
    with open(os.path.join(out, name), "w") as f:
        json.dump(obj, f, indent=2)


@contextlib.contextmanager
def card_pipeline(bin_dir: str | os.PathLike):
    """qwen-omni-utils (PyPI, the model card's ``process_mm_info``) as the card runs it here,
    for the block: its decord reader (a decord failure fails the test instead of falling back
    to torchvision's reader), ``MODEL_SEQ_LEN`` at its default, and an ``ffmpeg`` on PATH for
    audioread (imageio-ffmpeg's binary, linked into ``bin_dir``). Yields the package; skips
    the test when it or imageio-ffmpeg is not installed."""
    import warnings

    import pytest

    vision_process = pytest.importorskip("qwen_omni_utils.v2_5.vision_process")
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    import qwen_omni_utils

    def no_fallback(ele):
        raise AssertionError(f"decord failed on {ele['video']}: the reference fell back")

    link = Path(bin_dir) / "ffmpeg"
    if not link.exists():
        link.symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # librosa: audioread
        mp.setattr(vision_process, "get_video_reader_backend", lambda: "decord")
        mp.setitem(vision_process.VIDEO_READER_BACKENDS, "torchvision", no_fallback)
        mp.setattr(vision_process, "MODEL_SEQ_LEN", 128000)
        mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        yield qwen_omni_utils


def load_reference(checkpoint, processor_class: str, model_class: str):
    """``(processor, thinker)`` of a tiny checkpoint through transformers' own classes (by name),
    the thinker in fp32 and eval mode: the model card's side of the omni tests."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    processor = getattr(transformers, processor_class).from_pretrained(checkpoint)
    thinker = getattr(transformers, model_class).from_pretrained(
        checkpoint, dtype=torch.float32).eval()
    return processor, thinker


def card_answer(reference, omni_utils, path, kind: str, *, system: str | None, question: str,
                new_tokens: int, fps: float | None = None, max_frames: int | None = None,
                audio: bool = True) -> list[int]:
    """The model card's route for a Qwen omni thinker, from the file: the system turn (None:
    none), qwen-omni-utils' ``process_mm_info`` with the clip's own audio
    (``use_audio_in_video``; transformers 5.24 needs the track's video named:
    ``audio_from_video_indices``), the processor (the frames' ``sample_fps``), greedy
    ``generate``.

    Args:
        reference: ``(processor, thinker)`` loaded by transformers. omni_utils: the package, as
            :func:`card_pipeline` yields it.

    Returns:
        The answer's token ids without the end-of-sequence token.
    """
    import torch

    from vlm_cli.media import probe_media

    processor, thinker = reference
    element = {"type": kind, kind: str(path)}
    if fps is not None:
        element["fps"] = fps
    if max_frames is not None:
        element["max_frames"] = max_frames
    conversation = [{"role": "user", "content": [element, {"type": "text", "text": question}]}]
    if system is not None:
        conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    in_video = kind == "video" and audio and probe_media(path).has_audio
    text = processor.apply_chat_template(conversation, add_generation_prompt=True,
                                         tokenize=False)
    audios, images, videos, video_kwargs = omni_utils.process_mm_info(
        conversation, use_audio_in_video=in_video, return_video_kwargs=True)
    rate = {"fps": video_kwargs["fps"][0]} if videos else {}
    track = {"audio_from_video_indices": [0]} if in_video else {}
    inputs = processor(text=text, audio=audios, images=images, videos=videos,
                       return_tensors="pt", padding=True, use_audio_in_video=in_video,
                       **rate, **track)
    with torch.no_grad():
        out = thinker.generate(**inputs, use_audio_in_video=in_video, do_sample=False,
                               max_new_tokens=new_tokens)
    ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = processor.tokenizer.eos_token_id
    return ids[: ids.index(eos)] if eos in ids else ids
