"""Chat formatting: LLaVA conversations -> chat messages -> token ids with an assistant-only loss.

The chat template lives with the tokenizer (its Jinja ``chat_template``); a recipe may override it.
Templates mark assistant text with ``{% generation %}`` so that transformers'
``apply_chat_template(..., return_assistant_tokens_mask=True)`` says which tokens carry the loss:
every assistant turn of a multi-turn sample is a target and all earlier rounds are context
(Video-LLaVA Eq. 3).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from vlm_cli.errors import DataError

#: Placeholders replaced by the connectors' soft prompts.
MEDIA_TOKENS = ("<video>", "<image>", "<audio>")

#: Vicuna v1.1 / Video-LLaVA conversation turns ("USER: ... ASSISTANT: ...</s>"), with an
#: optional system message, and generation markers for the assistant-token mask.
VICUNA_TURNS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }} "
    "{% elif message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
#: The same, starting with the BOS token (tokenizers that do not add one themselves).
VICUNA_TEMPLATE = "{{ bos_token }}" + VICUNA_TURNS

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
IGNORE_INDEX = -100


def to_messages(turns: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """LLaVA turns (``{"from": "human"|"gpt"|"system", "value"}``) -> chat messages."""
    return [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]


def encode_conversation(tokenizer: Any, turns: Sequence[dict[str, Any]],
                        max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of a training conversation.

    Returns:
        ``(input_ids, labels)``, equal lengths ≤ ``max_length``; labels are the ids on assistant
        tokens (answers and their end-of-sequence token) and ``IGNORE_INDEX`` (-100) elsewhere.

    Raises:
        DataError: the conversation has no assistant turn, or truncation to ``max_length`` would
            leave no target token.
    """
    out = tokenizer.apply_chat_template(to_messages(turns), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if _needs_bos(tokenizer, ids):
        ids, mask = [tokenizer.bos_token_id] + ids, [0] + mask
    labels = [i if m else IGNORE_INDEX for i, m in zip(ids, mask)]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise DataError("conversation has no assistant tokens within max_length")
    return ids, labels


def encode_prompt(tokenizer: Any, turns: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of a conversation ending in a user turn, plus the assistant prefix to generate."""
    ids = list(tokenizer.apply_chat_template(to_messages(turns), tokenize=True,
                                             add_generation_prompt=True, return_dict=True)
               ["input_ids"])
    return [tokenizer.bos_token_id] + ids if _needs_bos(tokenizer, ids) else ids


def _needs_bos(tokenizer: Any, ids: list[int]) -> bool:
    """Whether to put the BOS token before a rendered chat: the tokenizer adds one to plain text
    (``tokenizer(text)``, as ``VideoLlavaProcessor`` tokenises its prompt) but the template did
    not write it. transformers tokenises a rendered chat without special tokens; a template with
    ``{{ bos_token }}`` would also change how the text after it is split (a SentencePiece ``▁``
    prefix on the first word), so templates like Video-LLaVA's leave BOS to the tokenizer."""
    bos = tokenizer.bos_token_id
    if bos is None or (ids and ids[0] == bos):
        return False
    if tokenizer not in _ADDS_BOS:  # asked once per tokenizer, not once per sample
        _ADDS_BOS[tokenizer] = tokenizer("a")["input_ids"][:1] == [bos]
    return _ADDS_BOS[tokenizer]


_ADDS_BOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
