"""Tiny random-weight Hugging Face checkpoints for tests (offline; torch + transformers + tokenizers).

Every function writes a directory in exactly the format ``save_pretrained`` produces with the
installed transformers (checked against 5.23: ``config.json`` + ``model.safetensors`` [+
``generation_config.json``], tokenizer / processor files), so the real ``from_pretrained`` /
``Auto*`` classes load it back. Weights are random, drawn under ``torch.manual_seed(seed)``:
the same seed gives byte-identical safetensors. Each call takes well under a second on CPU
(after the one-off ``import transformers``).

- :func:`make_tiny_tokenizer`: a Llama-style BPE tokenizer (``<unk>``/``<s>``/``</s>``, byte
  fallback, ``▁`` metaspace, BOS added, left padding) over a small English vocabulary, plus
  ``<image>``/``<video>`` and ``<pad>`` as added special tokens (same order as
  LanguageBind/Video-LLaVA-7B-hf: image, video, pad).
- :func:`make_tiny_video_llava`: ``VideoLlavaForConditionalGeneration`` (CLIP vision towers at
  224 px with 32 px patches -> 49 patches + CLS; 2-layer Llama) and the ``VideoLlavaProcessor``
  files (tokenizer, image processor, video processor, chat template).
- :func:`make_tiny_clip_vision`: ``CLIPVisionModel`` (or a whole ``CLIPModel`` like
  openai/clip-vit-large-patch14 with ``full_clip=True``) + ``CLIPImageProcessor`` config.
- :func:`make_tiny_ast`: ``ASTModel`` (or ``ASTForAudioClassification`` with labels) +
  ``ASTFeatureExtractor`` config (128 mel bins, 204 frames = 2.04 s at 16 kHz).
- :func:`make_tiny_llama`: ``LlamaForCausalLM`` + tokenizer + ``generation_config.json``.

Note: ``VideoLlavaProcessor`` (its video processor, ``VideoLlavaVideoProcessor``) needs torchvision
at *load* time; :func:`make_tiny_video_llava` writes the files without it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

__all__ = [
    "VOCAB_WORDS",
    "VIDEO_LLAVA_CHAT_TEMPLATE",
    "TINY_VIDEO_NUM_FRAMES",
    "make_tiny_tokenizer",
    "make_tiny_video_llava",
    "make_tiny_clip_vision",
    "make_tiny_ast",
    "make_tiny_llama",
    "video_llava_processor_config",
]

#: Whole-word pieces of the tiny tokenizer (each both as ``▁word`` and as ``word``).
VOCAB_WORDS: tuple[str, ...] = tuple(
    """
    USER ASSISTANT SYSTEM user assistant system
    what which who where when why how is are was were be do does did can could will would
    sound sounds playing play plays played hear heard see seen saw look looks listen
    colour color colours colors shape shapes size object objects thing things
    the a an of in on at to from with and or but not no yes this that these those there here
    it its it's i you he she they we me my your his her their our
    video image audio picture frame frames clip scene background foreground
    red green blue yellow orange purple pink black white grey gray brown
    circle square triangle rectangle star dot line ball box
    dog cat bird car man woman person people child baby
    music speech voice noise silence tone beep piano guitar drum drums violin bell
    singing speaking talking barking laughing clapping ringing
    loud quiet high low left right top bottom middle moving still
    one two three four five many some all any
    describe answer question please thank thanks
    """.split()
)

_CHARS = (
    "abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "0123456789"
    ".,?!:;'\"-()[]/"
)

#: The Llava-1.5 / Vicuna ``USER: ... ASSISTANT:`` chat template used by the *-hf Video-LLaVA
#: style checkpoints (rendering images, then videos, then text of each turn).
VIDEO_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: Frames per clip the tiny Video-LLaVA is configured for (``video_seq_length`` = 8 * 50).
TINY_VIDEO_NUM_FRAMES = 8

_OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# --------------------------------------------------------------------------- tokenizer


def _bpe_vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Llama-like layout: ids 0..2 = <unk>, <s>, </s>; 3..258 = byte-fallback ``<0xNN>``; then
    ``▁`` and single characters; then the prefix chains of every word.

    Each word ``w`` gets the left-to-right merge chain ``(w0, w1) -> w0w1, (w0w1, w2) -> ...``.
    All ``▁word`` chains rank before all bare-word chains, so a ``▁``-prefixed word always
    merges into one token (a bare merge can never pre-empt it)."""
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁" + _CHARS:
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    words = list(dict.fromkeys(words))

    def chain(word: str) -> None:
        cur = word[0]
        for ch in word[1:]:
            pair = (cur, ch)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            cur += ch
            vocab.setdefault(cur, len(vocab))

    for w in words:
        chain("▁" + w)
    for w in words:
        if len(w) > 1:
            chain(w)
    return vocab, merges


def make_tiny_tokenizer(
    out_dir: str | os.PathLike | None,
    extra_special: Sequence[str] = ("<image>", "<video>"),
    pad_token: str | None = "<pad>",
    words: Iterable[str] = VOCAB_WORDS,
    processor_class: str | None = None,
):
    """Build (and, unless ``out_dir`` is None, ``save_pretrained``) a tiny Llama tokenizer.

    Returns a ``transformers.LlamaTokenizer`` (the tokenizers-backed class; ``LlamaTokenizerFast``
    is the same class in transformers 5). Behaves like the real Llama-2 tokenizer: ``▁`` metaspace
    (prefix space on the first chunk only, ``legacy=False``), byte fallback (``"\\n"`` ->
    ``<0x0A>``), BOS ``<s>`` (id 1) prepended, no EOS appended, ``padding_side="left"``.
    ``extra_special`` are appended as special added tokens (ids ``base``, ``base+1``, ...), then
    ``pad_token`` (if not None). Writes ``tokenizer.json`` + ``tokenizer_config.json``.
    """
    from tokenizers import AddedToken
    from transformers import LlamaTokenizer

    vocab, merges = _bpe_vocab_and_merges(words)
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        model_max_length=4096,
    )
    if extra_special:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in extra_special], special_tokens=True)
    if pad_token is not None:
        tok.add_special_tokens({"pad_token": pad_token})
    tok.padding_side = "left"
    if out_dir is not None:
        if processor_class is not None:
            tok.init_kwargs["processor_class"] = processor_class
        tok.save_pretrained(str(out_dir))
    return tok


# --------------------------------------------------------------------------- helpers


def _save_model(model, out_dir: Path, rename: list[tuple[str, str]] = ()) -> None:
    """``save_pretrained``, then (optionally) rewrite ``model.safetensors`` with regex key renames
    (``re.sub(pattern, repl, key)``, first match wins) to reproduce the hub layout."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if rename:
        from safetensors.torch import load_file, save_file

        path = out_dir / "model.safetensors"
        state = load_file(str(path))
        renamed = {}
        for key, value in state.items():
            for pattern, repl in rename:
                new = re.sub(pattern, repl, key)
                if new != key:
                    key = new
                    break
            renamed[key] = value
        save_file(renamed, str(path), metadata={"format": "pt"})


def _seeded_model(cls, config, seed: int):
    torch.manual_seed(seed)
    model = cls(config)
    model.eval()
    return model


def _clip_vision_config(**overrides):
    from transformers import CLIPVisionConfig

    kw = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
        projection_dim=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    kw.update(overrides)
    return CLIPVisionConfig(**kw)


def _llama_config(tok, **overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def _generation_config(tok):
    from transformers import GenerationConfig

    # No max_length here: generate(max_new_tokens=...) would warn that both are set.
    return GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _clip_image_processor_dict(image_processor_type: str) -> dict:
    return {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(_OPENAI_CLIP_MEAN),
        "image_processor_type": image_processor_type,
        "image_std": list(_OPENAI_CLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 224},
    }


def video_llava_processor_config(
    patch_size: int = 32, vision_feature_select_strategy: str = "default"
) -> dict:
    """The ``processor_config.json`` that ``VideoLlavaProcessor.save_pretrained`` writes (transformers
    5.23 nests the image and video processor configs in it), for a processor built with
    ``VideoLlavaImageProcessor()`` / ``VideoLlavaVideoProcessor()`` defaults. Written by hand so
    that no torchvision is needed to *write* it (``VideoLlavaVideoProcessor`` cannot be
    instantiated without torchvision)."""
    video = _clip_image_processor_dict("VideoLlavaImageProcessor")
    del video["image_processor_type"]
    video.update({"do_sample_frames": False, "return_metadata": False, "video_processor_type": "VideoLlavaVideoProcessor"})
    return {
        "image_processor": _clip_image_processor_dict("VideoLlavaImageProcessor"),
        "image_token": "<image>",
        "num_additional_image_tokens": 1,
        "patch_size": patch_size,
        "processor_class": "VideoLlavaProcessor",
        "video_processor": dict(sorted(video.items())),
        "video_token": "<video>",
        "vision_feature_select_strategy": vision_feature_select_strategy,
    }


def _write_json(path: Path, obj: dict) -> None:
    # Same layout as transformers' to_json_string: indent 2, sorted keys, trailing newline.
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- Video-LLaVA


def make_tiny_video_llava(out_dir: str | os.PathLike, seed: int = 0, hub_layout: bool = True) -> Path:
    """A tiny ``VideoLlavaForConditionalGeneration`` + ``VideoLlavaProcessor`` files in ``out_dir``.

    Files: ``config.json``, ``generation_config.json``, ``model.safetensors``,
    ``tokenizer.json``, ``tokenizer_config.json``, ``processor_config.json`` (image + video
    processor, ``patch_size`` 32), ``chat_template.jinja``.

    ``model.safetensors`` keys (``hub_layout=True``, as in LanguageBind/Video-LLaVA-7B-hf):
    ``video_tower.vision_model.*``, ``image_tower.vision_model.*``,
    ``multi_modal_projector.linear_{1,2}.{weight,bias}``, ``language_model.model.*``,
    ``language_model.lm_head.weight``. With ``hub_layout=False`` the file is exactly what
    ``save_pretrained`` writes for a model built from a config: the same but without the
    ``vision_model.`` level (``video_tower.embeddings.*``). transformers loads both into its
    in-memory names ``model.video_tower.*``, ``model.image_tower.*``,
    ``model.multi_modal_projector.*``, ``model.language_model.*``, ``lm_head.weight``.

    Vision: CLIP, 224 px, 32 px patches (7x7 = 49 patches + CLS = 50 tokens per frame), hidden 32,
    2 layers. Text: Llama, hidden 64, 2 layers, vocab = ``len(tokenizer)``. ``<image>``/``<video>``
    ids come from the tokenizer; ``vision_feature_layer=-2``, strategy ``"default"``.
    """
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer(out, processor_class="VideoLlavaProcessor")
    image_id, video_id = tok.convert_tokens_to_ids(["<image>", "<video>"])
    vision = _clip_vision_config()
    tokens_per_frame = (vision.image_size // vision.patch_size) ** 2 + 1
    config = VideoLlavaConfig(
        vision_config=vision,
        text_config=_llama_config(tok),
        image_token_index=image_id,
        video_token_index=video_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=tokens_per_frame - 1,
        video_seq_length=tokens_per_frame * TINY_VIDEO_NUM_FRAMES,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = _seeded_model(VideoLlavaForConditionalGeneration, config, seed)
    model.generation_config = _generation_config(tok)
    _save_model(model, out, rename=[(r"^(video_tower|image_tower)\.", r"\1.vision_model.")] if hub_layout else [])
    _write_json(out / "processor_config.json", video_llava_processor_config(patch_size=vision.patch_size))
    (out / "chat_template.jinja").write_text(VIDEO_LLAVA_CHAT_TEMPLATE, encoding="utf-8")
    return out


# --------------------------------------------------------------------------- CLIP vision


def make_tiny_clip_vision(
    out_dir: str | os.PathLike, seed: int = 0, full_clip: bool = False, hub_layout: bool = True
) -> Path:
    """A tiny CLIP vision encoder (224 px, 32 px patches, hidden 32, 2 layers, quick_gelu).

    ``full_clip=False``: ``CLIPVisionModel`` (``config.json`` model_type ``clip_vision_model``);
    weights under ``vision_model.*`` like every hub CLIP checkpoint (``hub_layout=False``: the
    bare ``embeddings.*`` / ``encoder.*`` names transformers 5 ``save_pretrained`` writes for a
    freshly built ``CLIPVisionModel``; both load).
    ``full_clip=True``: a whole ``CLIPModel`` (text + vision + projections, model_type ``clip``),
    the layout of openai/clip-vit-large-patch14; ``CLIPVisionModel.from_pretrained`` loads its
    vision half. Both write ``config.json``, ``model.safetensors`` and
    ``preprocessor_config.json`` (``CLIPImageProcessor``: shortest edge 224, bicubic, centre crop
    224, OpenAI CLIP mean/std).
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision = _clip_vision_config()
    if full_clip:
        text = CLIPTextConfig(
            vocab_size=99,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            pad_token_id=1,
            bos_token_id=97,
            eos_token_id=98,
        )
        config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
        model = _seeded_model(CLIPModel, config, seed)
    else:
        model = _seeded_model(CLIPVisionModel, vision, seed)
    rename = [(r"^", "vision_model.")] if (hub_layout and not full_clip) else []
    _save_model(model, out, rename=rename)
    _write_json(out / "preprocessor_config.json", _clip_image_processor_dict("CLIPImageProcessor"))
    return out


# --------------------------------------------------------------------------- AST


def make_tiny_ast(
    out_dir: str | os.PathLike,
    seed: int = 0,
    max_length: int = 204,
    num_labels: int | None = None,
) -> Path:
    """A tiny Audio Spectrogram Transformer (hidden 32, 2 layers, 128 mel bins, ``max_length``
    frames of 10 ms: 204 = 2.04 s at 16 kHz; 16x16 patches, strides 10 -> 12 x 19 = 228 patches
    + CLS + distillation token).

    ``num_labels=None``: ``ASTModel``. Otherwise ``ASTForAudioClassification`` with that many
    labels (``label_0`` ...), the layout of MIT/ast-finetuned-audioset-10-10-0.4593 (527 labels).
    Writes ``config.json``, ``model.safetensors``, ``preprocessor_config.json``
    (``ASTFeatureExtractor``: 16 kHz, 128 mel bins, same ``max_length``, AudioSet mean/std).
    """
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification, ASTModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        patch_size=16,
        frequency_stride=10,
        time_stride=10,
        num_mel_bins=128,
        max_length=max_length,
    )
    if num_labels is not None:
        kw["id2label"] = {i: f"label_{i}" for i in range(num_labels)}
        kw["label2id"] = {f"label_{i}": i for i in range(num_labels)}
    config = ASTConfig(**kw)
    cls = ASTModel if num_labels is None else ASTForAudioClassification
    model = _seeded_model(cls, config, seed)
    _save_model(model, out)
    fe = ASTFeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        num_mel_bins=128,
        max_length=max_length,
        padding_value=0.0,
        do_normalize=True,
        mean=-4.2677393,
        std=4.5689974,
        return_attention_mask=False,
    )
    fe.save_pretrained(str(out))
    return out


# --------------------------------------------------------------------------- Llama


def make_tiny_llama(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny ``LlamaForCausalLM`` (hidden 64, 2 layers, 4 heads, vocab = ``len(tokenizer)``) with
    the :func:`make_tiny_tokenizer` tokenizer (no ``<image>``/``<video>``; ``<pad>`` added) and a
    ``generation_config.json``. Files: ``config.json``, ``generation_config.json``,
    ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``."""
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer(out, extra_special=())
    model = _seeded_model(LlamaForCausalLM, _llama_config(tok), seed)
    model.generation_config = _generation_config(tok)
    _save_model(model, out)
    return out
