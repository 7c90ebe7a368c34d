"""Test helper: one prompt's greedy answer from a model's token generator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def generate(model: Any, input_ids: Sequence[int], media: Sequence[Any], *,
             max_new_tokens: int = 32) -> list[int]:
    """The greedy answer of one prompt (ending with the assistant prefix): the tokens of
    ``model.stream`` (a :class:`vlm_cli.model.vlm.VideoLanguageModel`'s), without the prompt
    and without the end-of-sequence token."""
    eos = model.tokenizer.eos_token_id
    return [t for (t,) in model.stream([input_ids], [list(media)],
                                       max_new_tokens=max_new_tokens) if t != eos]
