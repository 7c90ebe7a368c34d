"""Tokenizers: a pretrained one (hub id / directory) or a built-in one (the word-level toy-av
tokenizer, an ordinary tokenizer directory shipped with the package).

Either way the media placeholders (``<video>``, ``<image>``, ``<audio>``) are single special
tokens, and a chat template with generation markers is set (the recipe's, else the tokenizer's,
else Vicuna's, which Video-LLaVA uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm_cli.model.chat import MEDIA_TOKENS, VICUNA_TEMPLATE
from vlm_cli.recipe import LLMSpec

#: Built-in tokenizers by name: ordinary tokenizer directories shipped as package data
#: (``vlm_cli/toyav/tokenizer-files``, written by ``python -m vlm_cli.toyav.tokenizer``).
BUILTIN_TOKENIZERS = {"toy-av": ("vlm_cli.toyav", "tokenizer-files")}


def builtin_tokenizer_dir(name: str) -> Path | None:
    """The directory of built-in tokenizer ``name`` (``toy-av``), or None."""
    if name not in BUILTIN_TOKENIZERS:
        return None
    from importlib import resources

    package, folder = BUILTIN_TOKENIZERS[name]
    return Path(str(resources.files(package) / folder))


def load_tokenizer(spec: LLMSpec, source: str | Path | None = None, *,
                   add_media_tokens: bool = True) -> Any:
    """The tokenizer of an LLM spec, with media tokens and a chat template.

    Args:
        spec: the recipe's ``model.llm``.
        source: a directory holding a saved tokenizer (a run directory's), used instead of the
            spec's own source when given.
        add_media_tokens: add the media placeholders the vocabulary lacks as special tokens
            (off for a checkpoint whose vocabulary is fixed, e.g. Video-LLaVA-hf's own
            ``<image>`` / ``<video>``).

    Raises:
        VlmError: a hub tokenizer that is not in the local cache.
    """
    from transformers import AutoTokenizer

    from vlm_cli.hub import local_path

    name = source or spec.tokenizer or spec.pretrained
    directory = builtin_tokenizer_dir(str(name)) or local_path(
        str(name), spec.revision if name == spec.pretrained else None)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    missing = [t for t in MEDIA_TOKENS if t not in tokenizer.get_vocab()]
    if missing and add_media_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                     replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if spec.chat_template:
        tokenizer.chat_template = spec.chat_template
    elif not tokenizer.chat_template or "generation" not in tokenizer.chat_template:
        tokenizer.chat_template = VICUNA_TEMPLATE
    return tokenizer
