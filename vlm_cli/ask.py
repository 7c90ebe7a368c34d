"""``vlm ask``: questions about one media file, answered by a trained model, token by token.

The path from the command to a generated token: :func:`resolve_model` ->
:func:`vlm_cli.model.run_dir.load_model` -> :meth:`vlm_cli.features.FeatureStore.fetch` (cached
features, or decode + encode once) -> :class:`ChatSession.ask` -> chat template
(:func:`vlm_cli.model.chat.encode_prompt`) -> :meth:`VideoLanguageModel.generate` (soft prompt
spliced into the embeddings, transformers ``generate`` with the KV cache).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm_cli.errors import UsageError

NO_MODEL = ("no model: pass --model RUN_DIR, set VLM_MODEL, or run `make demo` to train and "
            "install the toy-av model under $VLM_HOME/models/tiny-av")


def resolve_model(model: str | None, revision: str | None = None) -> tuple[Path, str | None]:
    """``--model`` (a directory, or a hub id ``org/name`` in the Hugging Face cache), else
    ``$VLM_MODEL``, else ``$VLM_HOME/models/tiny-av``.

    Returns:
        ``(directory, hub id or None)``: the hub id when ``model`` was one.

    Raises:
        UsageError (exit 2): none of them exists; the message says how to get a model.
        VlmError: a hub id that is not (completely) in the cache; the message names the
            ``vlm download`` to run.
    """
    from vlm_cli.cache import cache_root
    from vlm_cli.model.hub import is_repo_id

    if model:
        path = Path(model).expanduser()
        if path.is_dir():
            return path, None
        if is_repo_id(model):
            from vlm_cli.model.hub import resolve_snapshot

            return resolve_snapshot(model, revision), model
        raise UsageError(f"--model {model}: no such model directory")
    if os.environ.get("VLM_MODEL"):
        path = Path(os.environ["VLM_MODEL"]).expanduser()
        if not path.is_dir():
            raise UsageError(f"VLM_MODEL={path}: no such model directory")
        return path, None
    default = cache_root() / "models" / "tiny-av"
    if not (default / "config.json").exists():
        raise UsageError(NO_MODEL)
    return default, None


@dataclasses.dataclass
class Answer:
    """One answer: its text, and timings in seconds (prefill = time to the first token)."""

    text: str
    tokens: int
    prefill_s: float
    generate_s: float

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: the tokens after the first (which ends the prefill) per second."""
        return (self.tokens - 1) / self.generate_s if self.generate_s > 0 else 0.0


class _Streamer:
    """A transformers streamer that times the first token and emits decoded text deltas."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.text = ""
        self.first: float | None = None

    def put(self, value: Any) -> None:
        ids = value.reshape(-1).tolist()
        if not ids:
            return
        if self.first is None:
            self.first = time.perf_counter()
        self.ids += [i for i in ids if i != self.tokenizer.eos_token_id]
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.on_text is not None and text.startswith(self.text) and len(text) > len(self.text):
            self.on_text(text[len(self.text):])
        self.text = text

    def end(self) -> None:
        pass


class ChatSession:
    """A conversation about one media file (multi-turn: earlier rounds are context).

    Args:
        model: a :class:`VideoLanguageModel` in eval mode.
        media: the file's :class:`MediaInput` (from :meth:`FeatureStore.fetch`).
        placeholder: ``<video>``, ``<image>`` or ``<audio>``, put before the first question.
    """

    def __init__(self, model: Any, media: Any, placeholder: str) -> None:
        self.model, self.media, self.placeholder = model, media, placeholder
        self.turns: list[dict[str, str]] = []

    def reset(self) -> None:
        """Forget the conversation (the media stays)."""
        self.turns = []

    def ask(self, question: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
            top_p: float = 1.0, on_text: Callable[[str], None] | None = None) -> Answer:
        """Answer ``question`` (greedy unless ``temperature`` > 0), streaming text to ``on_text``.
        The answer is appended to the history."""
        from vlm_cli.model.chat import encode_prompt

        first = not self.turns
        value = f"{self.placeholder}\n{question}" if first else question
        turns = self.turns + [{"from": "human", "value": value}]
        streamer = _Streamer(self.model.tokenizer, on_text)
        start = time.perf_counter()
        ids = self.model.generate(encode_prompt(self.model.tokenizer, turns), [self.media],
                                  max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p, streamer=streamer)
        end = time.perf_counter()
        text = self.model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        self.turns = turns + [{"from": "gpt", "value": text}]
        first_token = streamer.first or end
        return Answer(text, len(ids), first_token - start, end - first_token)
