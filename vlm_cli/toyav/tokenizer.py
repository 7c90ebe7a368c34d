"""The toy-av world's word-level tokenizer: every word of its annotations and chat format.

Shipped as an ordinary tokenizer directory, ``tokenizer-files/`` beside this module (the recipe
name ``tokenizer: toy-av``, see :data:`vlm_cli.model.tokenizer.BUILTIN_TOKENIZERS`), so the model
layer loads it like any other tokenizer. ``python -m vlm_cli.toyav.tokenizer`` rewrites it from
:func:`build_toy_av_tokenizer`; a test checks the two agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from vlm_cli.model.chat import MEDIA_TOKENS

DIRECTORY = Path(__file__).with_name("tokenizer-files")
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


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DIRECTORY
    build_toy_av_tokenizer().save_pretrained(out)
    print(f"wrote {out}")
