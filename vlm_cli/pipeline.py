"""One inference pipeline, shared by ``vlm ask``, ``vlm eval`` and the judge.

The route from a question to a token, top to bottom:

1. :meth:`Pipeline.load` resolves ``--model`` (:func:`resolve_model`) and loads it once with its
   family (:func:`vlm_cli.model.families.load_model`): recipe, model, frozen-encoder sources;
2. :meth:`Pipeline.media` names a file once (:class:`~vlm_cli.features.MediaFile`: path, kind,
   content hash);
3. :meth:`Pipeline.features` reads its features from the cache, or decodes and encodes them
   once (:meth:`vlm_cli.features.FeatureStore.fetch`), with a typed
   :class:`~vlm_cli.features.FetchInfo`;
4. :class:`ChatSession` (one clip, several turns, the KV cache of the conversation kept) or
   :meth:`Pipeline.answer_batch` (many clips, greedy, batched) encode the chat
   (:func:`vlm_cli.model.chat.encode_prompt`) and run
   :meth:`vlm_cli.model.vlm.VideoLanguageModel.stream`: soft prompts put in place of the
   placeholders, prefill, then one token per step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm_cli.errors import UsageError

if TYPE_CHECKING:
    from vlm_cli.features import FeatureStore, FetchInfo, MediaFile
    from vlm_cli.model.families import Loaded
    from vlm_cli.model.vlm import MediaInput, VideoLanguageModel

#: The user turn of a single question about a media file (``vlm ask``, ``--batch``, ``vlm eval``).
PROMPT = "{placeholder}\n{question}"
NO_MODEL = ("no model: pass --model RUN_DIR, set VLM_MODEL, or run `make demo` to train and "
            "install the toy-av model under $VLM_HOME/models/tiny-av")


def resolve_model(model: str | None, revision: str | None = None, *,
                  download: bool = False) -> tuple[Path, str | None]:
    """``--model`` (a directory, or a hub id ``org/name`` in the Hugging Face cache), else
    ``$VLM_MODEL``, else ``$VLM_HOME/models/tiny-av``.

    Args:
        download: fetch a hub id missing from the cache (``--download``).

    Returns:
        ``(directory, hub id or None)``: the hub id when ``model`` was one.

    Raises:
        UsageError (exit 2): none of them exists; the message says how to get a model.
        VlmError: a hub id that is not (completely) in the cache; the message names the
            ``vlm download`` to run.
    """
    from vlm_cli.cache import cache_root
    from vlm_cli.hub import is_repo_id, resolve_snapshot

    if model:
        path = Path(model).expanduser()
        if path.is_dir():
            return path, None
        if is_repo_id(model):
            return resolve_snapshot(model, revision, download=download), model
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
    """One answer: its text, token counts, and timings in seconds (prefill = time to the first
    token; ``prefill_tokens``: tokens prefilled this turn, fewer when the KV cache of earlier
    turns was kept)."""

    text: str
    tokens: int
    prefill_tokens: int
    prefill_s: float
    generate_s: float
    #: A reasoning model's reasoning before the answer (:func:`split_reasoning`), or None.
    thinking: str | None = None

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: the tokens after the first (which ends the prefill) per second."""
        return (self.tokens - 1) / self.generate_s if self.generate_s > 0 else 0.0


class Pipeline:
    """A loaded model with its feature store: media in, answers out.

    Args:
        loaded: the model, its recipe and encoder sources (:func:`load_model`).
        store: the feature store of that recipe (its sampling may differ from the recipe's);
            None for a text-only pipeline (the judge: :meth:`replies` without media).
        name: how the model was named (``--model``, a hub id, or the default directory).
        directory: where it was loaded from (a hub id's snapshot directory).
    """

    def __init__(self, loaded: Loaded, store: FeatureStore | None, name: str,
                 directory: Path, system: str | None = None) -> None:
        self.loaded, self.store, self.name, self.directory = loaded, store, name, directory
        #: The system turn sent before every conversation (``--system``; default the model
        #: card's, :attr:`~vlm_cli.model.protocol.LanguageModel.default_system`), or None.
        self.system = loaded.model.default_system if system is None else (system or None)

    @classmethod
    def load(cls, model: str | None = None, *, revision: str | None = None,
             download: bool = False, device: str = "auto", dtype: Any = "auto",
             frames: int | None = None, fps: float | None = None,
             system: str | None = None) -> Pipeline:
        """Resolve and load a model once (see :func:`resolve_model`).

        Args:
            dtype: ``--dtype``: ``auto`` (:func:`vlm_cli.runtime.choose_dtype`: on CPU fp32
                where it fits comfortably, else the checkpoint's stored dtype), a dtype name,
                or a torch dtype.
            system: the system turn (``--system``): None for the model card's default, "" for
                none.
            frames: frames sampled uniformly per clip instead of the recipe's; with ``fps``, or
                for a model that samples by rate (Qwen2.5-Omni), the cap on the frames sampled
                at that rate.

        Raises:
            UsageError: no model. VlmError: a part missing from the cache.
        """
        from vlm_cli.cache import FeatureCache
        from vlm_cli.features import FeatureStore
        from vlm_cli.model.families import load_model, skipped_weights
        from vlm_cli.runtime import choose_dtype, cpu_threads_for_width, pick_device

        directory, hub_id = resolve_model(model, revision, download=download)
        device = pick_device(device)
        if isinstance(dtype, str):
            stored_bytes, stored = (0, None)
            if dtype == "auto" and device.startswith("cpu"):
                from vlm_cli.weights import stored_weights

                stored_bytes, stored = stored_weights(directory, skipped_weights(directory))
            dtype = choose_dtype(dtype, device, stored_bytes=stored_bytes, stored=stored)
        loaded = load_model(directory, device=device, dtype=dtype, name=hub_id,
                            revision=revision, download=download)
        cpu_threads_for_width(loaded.model.llm.get_input_embeddings().embedding_dim, device)
        data = loaded.recipe.data
        if fps is not None:
            data = dataclasses.replace(data, sampling="fps", fps=fps,
                                       max_frames=frames or data.max_frames)
        elif frames is not None and data.sampling == "fps":
            data = dataclasses.replace(data, max_frames=frames)
        elif frames is not None:
            data = dataclasses.replace(data, frames=frames)
        recipe = dataclasses.replace(loaded.recipe, data=data)
        store = FeatureStore(recipe, FeatureCache(), device=device, encoders=loaded.encoders,
                             check=loaded.check)
        return cls(loaded, store, hub_id or str(directory), directory, system)

    @property
    def model(self) -> VideoLanguageModel:
        return self.loaded.model

    @property
    def has_audio(self) -> bool:
        """Whether the model has an audio branch."""
        return self.store is not None and "audio" in self.store.sources

    def _store(self) -> FeatureStore:
        if self.store is None:
            raise UsageError(f"{self.name}: a text-only model; it cannot read media files")
        return self.store

    def media(self, path: str | Path) -> MediaFile:
        """Name a media file once (:meth:`vlm_cli.features.FeatureStore.media`).

        Raises:
            MediaError: the file does not exist or cannot be read.
        """
        return self._store().media(path)

    def features(self, ref: MediaFile, *, audio: bool = True) -> tuple[MediaInput, FetchInfo]:
        """The file's features (from the cache, else decoded and encoded once and cached),
        fitted to the model's video token budget (:func:`vlm_cli.model.budget.fit_video`:
        frames pooled or subsampled when there are more than the connector takes; reported in
        :attr:`FetchInfo.budget`).

        Args:
            audio: False leaves the soundtrack out (``--no-audio``).

        Raises:
            MediaError: the file cannot be decoded. UsageError: the file would not fit the
                model (e.g. more tokens than its context); the message names what to lower.
        """
        store = self._store()
        store.check_media(ref, audio=audio)  # over the model's limits: before decoding
        features, info = store.fetch(ref, audio=audio)
        if features.vision is None and features.audio is None:
            raise UsageError(f"{ref.path}: nothing to answer from (an audio file with "
                             "--no-audio, or a kind of file this model has no encoder for)")
        if features.vision is not None and self.model.fits_video_budget:
            from vlm_cli.model.budget import fit_video

            spec = store.recipe.model.vision  # ViViT's clip length, without loading it
            clip = (spec.config or {}).get("num_frames") if spec is not None and \
                spec.arch == "vivit" and ref.kind == "video" else None
            features, fitted = fit_video(self.model, features, clip_frames=clip)
            if fitted is not None:
                info = dataclasses.replace(info, budget=fitted.as_dict())
            if fitted is not None and fitted.pooled != "none":
                from vlm_cli import console

                console.info(f"{ref.path}: {fitted.frames_sampled} frames sampled; "
                             f"{fitted.pooled}")
        return features, info

    def chat(self, media: MediaInput, ref: MediaFile) -> ChatSession:
        """A conversation about one file (its features from :meth:`features`)."""
        return ChatSession(self.model, media, ref.placeholder, self.system)

    def answer_batch(self, questions: Sequence[tuple[MediaInput, MediaFile, str]], *,
                     max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to one question per file, as one left-padded batch (the same tokens
        as one by one)."""
        return self.replies([[{"from": "human", "value": PROMPT.format(
            placeholder=ref.placeholder, question=question)}] for _, ref, question in questions],
            [[media] for media, _, _ in questions], max_new_tokens=max_new_tokens)

    def replies(self, conversations: Sequence[list[dict[str, str]]],
                media: Sequence[list[MediaInput]] | None = None, *,
                max_new_tokens: int = 32) -> list[str]:
        """Greedy replies to whole conversations (LLaVA turns ``{"from", "value"}`` ending in a
        user turn), as one left-padded batch: what :meth:`answer_batch` and the judge run.

        Args:
            media: per conversation, the :class:`MediaInput` of its placeholders, in order;
                None for text-only conversations.
        """
        tokenizer = self.model.tokenizer
        system = [{"from": "system", "value": self.system}] if self.system else []
        prompts = [self.model.encode_prompt(system + list(turns), m) for turns, m in
                   zip(conversations, media if media is not None else [None] * len(conversations))]
        answers = self.model.generate_batch(
            prompts, list(media) if media is not None else [[] for _ in prompts],
            max_new_tokens=max_new_tokens)
        return [split_reasoning(tokenizer.decode(ids, skip_special_tokens=True))[0]
                for ids in answers]


#: A reasoning model's markup (Qwen3-Omni-Thinking): what it writes between these two, before
#: its answer, is its reasoning, kept out of the answer.
REASONING = ("<think>", "</think>")


def split_reasoning(text: str) -> tuple[str, str | None]:
    """``(answer, reasoning)`` of a model's reply: the reasoning is the text of a leading
    ``<think>`` ... ``</think>`` block (None without one; the whole rest while it is still open),
    the answer what follows it; both stripped."""
    opened, closed = REASONING
    body = text.lstrip()
    if not body.startswith(opened):
        return text.strip(), None
    reasoning, _, answer = body[len(opened):].partition(closed)
    return answer.strip(), reasoning.strip()


class TextStream:
    """Incremental detokenisation whose pieces add up to the final answer, character for
    character, for any tokenizer: ``"".join(pieces) == decode(ids, skip_special_tokens=True)
    .strip()``.

    A token can end in the middle of a character (byte-fallback tokenizers such as LLaMA's and
    Qwen's split "€" into three byte tokens): while the decoded text ends in U+FFFD, nothing is
    shown; leading and trailing white space is held back (the final answer is stripped); and
    text that a later token rewrites (rare: a tokenizer whose decoding of earlier ids changes)
    is held until :meth:`finish`. A leading reasoning block (:func:`split_reasoning`) is never
    shown: only the answer after it.

    Args:
        tokenizer: anything with ``decode(ids, skip_special_tokens=True)``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def push(self, token: int) -> str:
        """Add one token id; returns the text that can be shown now (maybe "")."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if REASONING[0].startswith(text):  # maybe the start of a reasoning block: wait
            return ""
        if text.startswith(REASONING[0]):
            text = text.partition(REASONING[1])[2].lstrip()
        return self._advance(text.rstrip("\ufffd").rstrip())

    def finish(self) -> str:
        """The rest of the answer (the complete text is :attr:`text`)."""
        return self._advance(self.text)

    @property
    def text(self) -> str:
        """The answer so far, decoded, without its reasoning, stripped."""
        return split_reasoning(self.tokenizer.decode(self.ids, skip_special_tokens=True))[0]

    @property
    def reasoning(self) -> str | None:
        """The reasoning block before the answer (:func:`split_reasoning`), or None."""
        return split_reasoning(self.tokenizer.decode(self.ids, skip_special_tokens=True))[1]

    def _advance(self, text: str) -> str:
        if not text.startswith(self.shown):
            return ""  # earlier text changed: wait for the end
        delta, self.shown = text[len(self.shown):], text
        return delta


class ChatSession:
    """A conversation about one media file (multi-turn: earlier rounds are context). The KV
    cache of the conversation is kept between turns, so a follow-up question prefills only its
    own tokens, not the soft prompt again.

    Args:
        model: a :class:`VideoLanguageModel` in eval mode.
        media: the file's :class:`MediaInput` (from :meth:`Pipeline.features`).
        placeholder: ``<video>``, ``<image>`` or ``<audio>``, put before the first question.
        system: the system turn sent first, or None.
    """

    def __init__(self, model: Any, media: Any, placeholder: str,
                 system: str | None = None) -> None:
        from vlm_cli.model.vlm import Prefix

        self.model, self.media, self.placeholder = model, media, placeholder
        self.system = system
        self.turns: list[dict[str, str]] = []
        self.prefix = Prefix(set(model.media_token_ids))

    def reset(self) -> None:
        """Forget the conversation and its KV cache (the media stays)."""
        from vlm_cli.model.vlm import Prefix

        self.turns = []
        self.prefix = Prefix(set(self.model.media_token_ids))

    def ask(self, question: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
            top_p: float = 1.0, on_text: Callable[[str], None] | None = None) -> Answer:
        """Answer ``question`` (greedy unless ``temperature`` > 0), streaming text deltas to
        ``on_text``. The answer is appended to the history."""
        value = (PROMPT.format(placeholder=self.placeholder, question=question)
                 if not self.turns else question)
        turns = self.turns + [{"from": "human", "value": value}]
        system = [{"from": "system", "value": self.system}] if self.system else []
        eos = self.model.tokenizer.eos_token_id
        text, first = TextStream(self.model.tokenizer), None
        start = time.perf_counter()
        for (token,) in self.model.stream([self.model.encode_prompt(system + turns,
                                                                    [self.media])],
                                          [[self.media]],
                                          max_new_tokens=max_new_tokens, temperature=temperature,
                                          top_p=top_p, prefix=self.prefix):
            first = first or time.perf_counter()
            if token is None or token == eos:
                continue
            delta = text.push(token)
            if on_text is not None and delta:
                on_text(delta)
        end = time.perf_counter()
        rest = text.finish()
        if on_text is not None and rest:
            on_text(rest)
        self.turns = turns + [{"from": "gpt", "value": text.text}]
        first = first or end
        return Answer(text.text, len(text.ids), self.prefix.prefilled, first - start,
                      end - first, text.reasoning)
