"""The streamed text equals the final answer, character for character, for a byte-fallback
tokenizer (LLaMA's SentencePiece: "€" and "日" are split into byte tokens, and a prefix of them
decodes to U+FFFD)."""

from __future__ import annotations

from pathlib import Path

import pytest

TOKENIZER = Path(__file__).parent / "fixtures" / "video_llama" / "tokenizer"
ANSWER = " a € costs 3 日本 yen ✓ "


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def test_the_tokenizer_splits_characters_into_bytes(tokenizer):
    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    partial = [tokenizer.decode(ids[:k], skip_special_tokens=True) for k in range(1, len(ids))]
    assert any(text.endswith("\ufffd") for text in partial)  # the case the stream must hold


def test_text_stream_pieces_add_up_to_the_answer(tokenizer):
    from vlm_cli.pipeline import TextStream

    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer)
    pieces = [stream.push(t) for t in ids] + [stream.finish()]
    assert "".join(pieces) == stream.text == tokenizer.decode(ids,
                                                              skip_special_tokens=True).strip()
    assert "€" in stream.text and "日本" in stream.text
    assert not any("\ufffd" in p for p in pieces)


class _Scripted:
    """A model whose stream yields a fixed answer, then end-of-sequence."""

    media_token_ids: dict = {}

    def __init__(self, tokenizer, ids):
        self.tokenizer, self.ids = tokenizer, ids

    def encode_prompt(self, turns, media=None):
        return [1]

    def stream(self, input_ids, media, *, prefix=None, **kwargs):
        prefix.prefilled = 1
        for t in self.ids + [self.tokenizer.eos_token_id]:
            yield [t]


def test_chat_session_streams_exactly_the_answer(tokenizer):
    from vlm_cli.pipeline import ChatSession

    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    session = ChatSession(_Scripted(tokenizer, ids), media=None, placeholder="<video>")
    shown: list[str] = []
    answer = session.ask("what does it cost?", on_text=shown.append)
    assert "".join(shown) == answer.text
    assert answer.text == "a € costs 3 日本 yen ✓"


def test_a_reasoning_block_is_never_streamed(tokenizer):
    """A reasoning model's ``<think>`` ... ``</think>`` block (not special tokens: byte-level
    pieces) stays out of the stream and the answer; the answer after it streams as usual."""
    from vlm_cli.pipeline import ChatSession, split_reasoning

    ids = tokenizer("<think>\nmaybe a € boat\n</think>\n\n" + ANSWER,
                    add_special_tokens=False)["input_ids"]
    session = ChatSession(_Scripted(tokenizer, ids), media=None, placeholder="<video>")
    shown: list[str] = []
    answer = session.ask("what does it cost?", on_text=shown.append)
    assert "".join(shown) == answer.text == "a € costs 3 日本 yen ✓"
    assert answer.thinking == "maybe a € boat"
    assert split_reasoning("<think>unfinished") == ("", "unfinished")
