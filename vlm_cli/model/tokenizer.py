"""Tokenizers: a pretrained one (hub id / directory) or the built-in word-level toy-av tokenizer.

Either way the media placeholders (``<video>``, ``<image>``, ``<audio>``) are single special
tokens, and a chat template with generation markers is set (the recipe's, else the tokenizer's,
else Vicuna's, which Video-LLaVA uses).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlm_cli.model.chat import MEDIA_TOKENS, VICUNA_TEMPLATE
from vlm_cli.recipe import LLMSpec

TOY_AV = "toy-av"
_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", *MEDIA_TOKENS]
#: Words a user may add around the toy world's own phrasings (questions, chat roles).
_EXTRA_WORDS = ("user assistant system is it the a an this that what which where how who do does "
                "you see hear can be in on of and or to playing played sound sounds colour color "
                "shape object moving move moves direction clip video audio describe tell me "
                "please there any")


def toy_av_vocabulary() -> list[str]:
    """Every word and punctuation mark of the toy-av annotations and of the chat format,
    lower-cased, sorted (deterministic: the tokenizer ids depend only on the code)."""
    from vlm_cli.toyav import COLOURS, DIRECTIONS, SHAPES, SOUNDS
    from vlm_cli.toyav.annotations import CAPTION_PROMPTS, QUESTION_TEMPLATES

    texts = [*CAPTION_PROMPTS, *(q for qs in QUESTION_TEMPLATES.values() for q in qs),
             *COLOURS, *SHAPES, *DIRECTIONS, *SOUNDS, "a moves while plays in silence .",
             "USER: ASSISTANT:", _EXTRA_WORDS]
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})


def build_toy_av_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over :func:`toy_av_vocabulary` (lower-cased,
    split on whitespace and punctuation; unknown words map to ``<unk>``)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS + toy_av_vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # join words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=list(MEDIA_TOKENS))


def load_tokenizer(spec: LLMSpec, source: str | Path | None = None) -> Any:
    """The tokenizer of an LLM spec, with media tokens and a chat template.

    Args:
        spec: the recipe's ``model.llm``.
        source: a directory holding a saved tokenizer (a run directory's), used instead of the
            spec's own source when given.

    Raises:
        VlmError: a hub tokenizer that is not in the local cache.
    """
    if source is None and spec.tokenizer == TOY_AV:
        tokenizer = build_toy_av_tokenizer()
    else:
        from transformers import AutoTokenizer

        from vlm_cli.model.hub import local_path

        name = source or spec.tokenizer or spec.pretrained
        directory = local_path(str(name), spec.revision if name == spec.pretrained else None)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    # A composite checkpoint (Video-LLaVA-hf) fixes its vocabulary: its own <image> / <video>.
    missing = [] if spec.component else [t for t in MEDIA_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                     replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if spec.chat_template:
        tokenizer.chat_template = spec.chat_template
    elif not tokenizer.chat_template or "generation" not in tokenizer.chat_template:
        tokenizer.chat_template = VICUNA_TEMPLATE
    return tokenizer
