"""The family of checkpoints transformers runs natively through their processor (the thinkers
of Qwen2.5-Omni and Qwen3-Omni, Gemma 4), driven by the table
:mod:`vlm_cli.model.families.native_table`.

transformers does the model: its class (``from_pretrained``), its processor's pieces (video /
image processor, feature extractor, placeholder expansion), its rope index (TMRoPE) and its
``generate`` (greedy or sampled, a streamer, ``past_key_values`` kept between chat turns,
left-padded batches). vlm adds what it exists for: the feature cache of the towers' outputs (a
second question encodes nothing), the budget check before decoding, the reference pipeline of the
model card from the file (frames, resize kernel, resampler, system turn), the CLI, tune/merge and
the probe. There is no token loop of ours here.

How cached tower outputs go back in (the ``qwen-omni`` layout): image / video outputs through
``mm_encoder_outputs`` (transformers' pre-encoded multimodal outputs, in ``forward`` and
``generate``); audio outputs through the model's own ``get_audio_features``, which returns the
cached outputs while a call runs (:func:`serving_audio`), so the thinker's forward scatters them
and its rope index places them exactly as for a fresh encode. The ``gemma4`` layout is in
:mod:`vlm_cli.model.families.native_gemma4`.

Shapes: ``B`` prompts, ``L`` tokens, ``N`` tower tokens, ``H`` the LLM width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_cli.errors import DataError, MediaError, UsageError, VlmError
from vlm_cli.model.families import EncoderSource, Loaded, read_config
from vlm_cli.model.families.native_table import NativeModelSpec, spec_for

#: Prompt tokens besides the media (system turn, question, turn markers): the context check's
#: margin.
TEXT_MARGIN = 256
#: Our conversations' roles in the chat template.
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
PLACEHOLDERS = {"<video>": "video", "<image>": "image", "<audio>": "audio"}


def detect(directory: str | Path) -> bool:
    """Whether ``directory`` holds a checkpoint of a :data:`MODELS` entry (``model_type``)."""
    return spec_for(read_config(directory)) is not None


#: Cache-entry tensors only a video's entry has, by layout.
VIDEO_META = ("second_per_grid", "soft_tokens_per_frame")


def media_kind_of(media: Any) -> str:
    """What a :class:`~vlm_cli.model.vlm.MediaInput` holds: ``video`` (frames placed in time:
    ``second_per_grid`` or ``soft_tokens_per_frame``), ``image`` (one picture) or ``audio`` (no
    frames)."""
    if media.vision is None:
        return "audio"
    return "video" if any(k in media.vision_meta for k in VIDEO_META) else "image"


def audio_tokens(processor: Any, mel_frames: int) -> int:
    """Audio tower output tokens for ``mel_frames`` 10 ms frames, by the processor's own rule
    (its module's ``_get_feat_extract_output_lengths``: Qwen2.5-Omni 40 ms a token, Qwen3-Omni
    13 a second)."""
    import sys

    rule = sys.modules[type(processor).__module__]._get_feat_extract_output_lengths
    return int(rule(torch.as_tensor(mel_frames)))


@contextlib.contextmanager
def serving_audio(model: Any, features: Any) -> Iterator[None]:
    """Within the block, ``model.get_audio_features`` returns the cached outputs of the audio
    tower for every audio of the batch, in order, instead of running the tower; the model's
    forward then scatters them into the audio tokens. ``features``: ``[N, H]`` (``qwen-omni``:
    served as ``last_hidden_state``), an output object as the model's own method returns it
    (``gemma4``), or None (nothing changed). Restored on exit."""
    if features is None:
        yield
        return
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    def cached(*args: Any, **kwargs: Any) -> Any:
        if not isinstance(features, torch.Tensor):
            return features
        return BaseModelOutputWithPooling(last_hidden_state=features)

    model.get_audio_features = cached  # an instance attribute shadows the method
    try:
        yield
    finally:
        del model.get_audio_features


@dataclasses.dataclass
class Budget:
    """How many tokens one media file makes (from its header, before decoding)."""

    frames: int
    video: int
    audio: int

    @property
    def total(self) -> int:
        return self.video + self.audio


class _TokenQueue:
    """A ``generate`` streamer (transformers' ``BaseStreamer`` protocol: ``put`` / ``end``) that
    hands each step's tokens ``[B]`` to the consuming thread; the prompt (the first ``put``) is
    not passed on."""

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.items.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.items.put(None)


class NativeModel(nn.Module):
    """A transformers model run through its processor, behind
    :class:`vlm_cli.model.protocol.LanguageModel`, fed with cached tower outputs.

    Args:
        spec: its table entry. hf: the transformers model in eval mode (e.g.
            ``Qwen2_5OmniThinkerForConditionalGeneration``). processor: its processor.
    """

    prompt_uses_media = False
    fits_video_budget = False
    lora_task_type = None

    def __init__(self, spec: NativeModelSpec, hf: Any, processor: Any) -> None:
        super().__init__()
        self.spec, self.hf, self.processor = spec, hf, processor
        self.tokenizer = processor.tokenizer
        config = hf.config
        self.ids = {"video": config.video_token_id, "image": config.image_token_id,
                    "audio": config.audio_token_id}
        self.media_token_ids = {v: k for k, v in self.ids.items()}
        self.context = int(config.text_config.max_position_embeddings)
        self.default_system = spec.system
        #: A clip's track is a placeholder of its own after the video (``after``): the prompt
        #: depends on whether the media carry audio.
        self.prompt_uses_media = spec.audio_in_video == "after"
        #: The language model (the thinker's own decoder): what LoRA adapts, in place.
        self.llm = hf.model.language_model
        self.connectors = nn.ModuleDict()
        self.feature_dims: dict[str, int] = {}
        eos = hf.generation_config.eos_token_id
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self.eos_ids = {int(t) for t in eos if t is not None} | {self.tokenizer.eos_token_id}

    def to(self, *args: Any, **kwargs: Any) -> NativeModel:
        """``nn.Module.to`` of the language model and head (:attr:`NativeModelSpec.text_modules`):
        the towers stay where :func:`load` put them (on disk until a feature is missing, then
        on the language model's device). A model spread over several GPUs (:func:`place_modules`)
        stays where accelerate dispatched it."""
        placed = getattr(self.hf, "hf_device_map", {}) or {}
        if len({d for d in placed.values() if isinstance(d, int)}) > 1:
            return self
        for name in self.spec.text_modules:
            self.hf.get_submodule(name).to(*args, **kwargs)
        return self

    def release_towers(self) -> None:
        """Take the towers out of the model (training: their outputs come from the feature
        cache; under FSDP2 nothing of them is sharded or gathered, and accelerate sees one
        device). Their encoders cannot be built afterwards."""
        for name in tower_names(self.spec):
            parent, _, child = name.rpartition(".")
            setattr(self.hf.get_submodule(parent), child, None)
        self.hf.__dict__.pop("hf_device_map", None)

    @property
    def device(self) -> torch.device:
        """Where the language model runs (the towers may be offloaded: see :func:`load`)."""
        return self.llm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The language model's dtype (the towers run in it too)."""
        return self.llm.get_input_embeddings().weight.dtype

    # --- prompts -------------------------------------------------------------------------------

    def _messages(self, turns: Sequence[dict[str, Any]],
                  media: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """LLaVA turns -> chat messages with typed content (placeholders become media items;
        with :attr:`NativeModelSpec.audio_in_video` ``after``, a video whose ``media`` carries
        its track is followed by an audio item, as transformers' ``load_audio_from_video``)."""
        pieces = iter(media or ())
        after = self.spec.audio_in_video == "after"
        messages = []
        for turn in turns:
            text, content = str(turn["value"]), []
            while True:
                found = [(text.find(p), p) for p in PLACEHOLDERS if p in text]
                if not found:
                    break
                at, placeholder = min(found)
                if text[:at].strip():
                    content.append({"type": "text", "text": text[:at]})
                content.append({"type": PLACEHOLDERS[placeholder]})
                m = next(pieces, None)
                if after and placeholder == "<video>" and m is not None and m.audio is not None:
                    content.append({"type": "audio"})
                text = text[at + len(placeholder):].lstrip("\n")
            if text:
                content.append({"type": "text", "text": text})
            if self.spec.audio_after_text and len(content) > 1 and content[0]["type"] == "audio" \
                    and all(item["type"] == "text" for item in content[1:]):
                content = content[1:] + content[:1]  # the card's order: the question, then the sound
            messages.append({"role": ROLES[turn["from"]], "content": content})
        return messages

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
        rendered = self.processor.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False)
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, turns: Sequence[dict[str, Any]],
                      media: Sequence[Any] | None = None) -> list[int]:
        """Token ids of a conversation (LLaVA turns; ``<video>``, ``<image>``, ``<audio>``
        placeholders; a ``system`` turn first if any) ending in a user turn, through the
        processor's chat template, plus the assistant prefix."""
        return self._render(self._messages(turns, media), True)

    def encode_conversation(self, turns: Sequence[dict[str, Any]], max_length: int,
                            media: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
        """Token ids and labels of a training conversation: labels on each assistant turn's
        tokens and its ``<|im_end|>`` (found as the difference between the conversation rendered
        up to the turn's header and up to its end), ``IGNORE_INDEX`` elsewhere; cut to
        ``max_length``.

        Raises:
            DataError: no assistant turn, or none left within ``max_length``.
        """
        from vlm_cli.model.chat import IGNORE_INDEX

        messages = self._messages(turns, media)
        ids = self._render(messages, False)
        labels = [IGNORE_INDEX] * len(ids)
        newline = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(self._render(messages[:k], True))
            end = len(self._render(messages[:k + 1], False))
            end -= len(newline) if ids[end - len(newline):end] == newline else 0
            labels[start:end] = ids[start:end]  # the answer and <|im_end|>
        ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise DataError("conversation has no assistant tokens within max_length")
        return ids, labels

    def expand(self, ids: Sequence[int], media: Sequence[Any],
               labels: Sequence[int] | None = None) -> Any:
        """Replace each media token by its tokens, as the processor does when it tokenises:
        ``qwen-omni``: a video with its audio interleaved in 2 s chunks
        (``replace_video_with_audio_token``), a video alone, an image, or an audio file;
        ``gemma4``: the processor's ``replace_*_token`` for each (a clip's own track is the
        audio placeholder after its video, see :mod:`vlm_cli.model.families.native_gemma4`).

        Returns:
            The expanded ids; with ``labels``, ``(ids, labels)``, media tokens ``IGNORE_INDEX``.

        Raises:
            DataError: the placeholders do not match the media (count, or a placeholder of
                another kind than its file); or, for ``qwen-omni``, videos with and without
                audio in one row (the rope index takes one audio-in-video setting per call).
        """
        from vlm_cli.model.chat import IGNORE_INDEX
        from vlm_cli.model.families import native_gemma4

        gemma = self.spec.layout == "gemma4"
        wanted = [(m, kind) for m in media for kind in (
            ("video", "audio") if gemma and media_kind_of(m) == "video" and m.audio is not None
            else (media_kind_of(m),))]
        found = [self.media_token_ids[t] for t in ids if t in self.media_token_ids]
        if len(found) != len(wanted):
            raise DataError(f"{len(found)} media placeholders but {len(media)} media files")
        for got, (m, kind) in zip(found, wanted):
            if got != kind:
                raise DataError(f"a <{got}> placeholder for a {media_kind_of(m)}: "
                                f"{self.spec.title} needs the placeholder of the file's kind")
        if not gemma and len({m.audio is not None for m in media
                              if media_kind_of(m) == "video"}) > 1:
            raise DataError(f"videos with and without audio in one sample: {self.spec.title} "
                            "places them with one audio-in-video setting; split the sample")
        pieces = iter(wanted)
        out: list[int] = []
        out_labels: list[int] = []
        for j, t in enumerate(ids):
            if t not in self.media_token_ids:
                out.append(t)
                out_labels.append(labels[j] if labels is not None else IGNORE_INDEX)
                continue
            (m, kind), before = next(pieces), len(out)
            if gemma:
                out += native_gemma4.expand_media(self, kind, m)
            elif kind == "video" and m.audio is not None:
                out += self._interleaved(m)
            else:
                out += [t] * (m.audio if kind == "audio" else m.vision).shape[0]
            out_labels += [IGNORE_INDEX] * (len(out) - before)  # media tokens carry no loss
        return out if labels is None else (out, out_labels)

    def _interleaved(self, m: Any) -> list[int]:
        """A video's tokens with its audio's, in 2 s chunks (Qwen's processor)."""
        config = self.hf.config
        text = self.processor.replace_video_with_audio_token(
            {"video_grid_thw": [[int(x) for x in m.vision_meta["grid_thw"]]],
             "video_second_per_grid": [float(m.vision_meta["second_per_grid"])]}, 0,
            {"num_audio_tokens": [m.audio.shape[0]]}, 0, **{
                name: getattr(config, name) for name in
                ("position_id_per_seconds", "seconds_per_chunk") if hasattr(config, name)})
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # --- model inputs --------------------------------------------------------------------------

    def model_inputs(self, rows: Sequence[list[int]], media: Sequence[Sequence[Any]],
                     side: str) -> tuple[dict[str, Any], torch.Tensor | None]:
        """The keyword arguments of the model's ``forward`` / ``generate`` for expanded rows
        padded on ``side`` (``left`` to generate, ``right`` to train), as the processor's
        outputs would be, with the towers' outputs from the cache (``gemma4``:
        :func:`vlm_cli.model.families.native_gemma4.model_inputs`): ``input_ids`` and
        ``attention_mask [B, L]``, ``mm_encoder_outputs`` (image / video), the grids, seconds
        per grid, ``feature_attention_mask [A, M]`` (audio lengths for the rope index),
        ``use_audio_in_video``; and the audio outputs ``[sum N, H]`` to serve
        (:func:`serving_audio`), or None."""
        device = self.device
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for b, row in enumerate(rows):
            where = slice(length - len(row), length) if side == "left" else slice(0, len(row))
            ids[b, where] = torch.as_tensor(row)
            mask[b, where] = 1
        if self.spec.layout == "gemma4":
            from vlm_cli.model.families import native_gemma4

            return native_gemma4.model_inputs(self, ids, mask, rows, media, side)
        outputs: dict[str, list[torch.Tensor]] = {"image": [], "video": []}
        stacks: dict[str, list[torch.Tensor]] = {"image": [], "video": []}
        grids: dict[str, list[torch.Tensor]] = {"image": [], "video": []}
        seconds, audio, mel, in_video = [], [], [], False
        for row_media in media:
            for m in row_media:
                kind = media_kind_of(m)
                if m.vision is not None:
                    outputs[kind].append(m.vision.to(device))
                    if "deepstack" in m.vision_meta:  # [layers, N, H]
                        stacks[kind].append(m.vision_meta["deepstack"].to(device))
                    grids[kind].append(torch.as_tensor(m.vision_meta["grid_thw"]))
                    if kind == "video":
                        seconds.append(float(m.vision_meta["second_per_grid"]))
                if m.audio is not None:
                    audio.append(m.audio)
                    mel.append(int(m.audio_meta["mel_frames"]))
                    in_video = in_video or kind == "video"
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        encoded = {kind: self._tower_output(feats, stacks[kind])
                   for kind, feats in outputs.items() if feats}
        if encoded:
            kwargs["mm_encoder_outputs"] = encoded
        for kind in ("image", "video"):
            if grids[kind]:
                kwargs[f"{kind}_grid_thw"] = torch.stack(grids[kind]).to(device)
        if seconds:
            kwargs["video_second_per_grid"] = torch.as_tensor(seconds, device=device)
        served = None
        if audio:
            served = torch.cat(audio).to(device)
            frames = torch.zeros(len(mel), max(mel), dtype=torch.long)
            for a, n in enumerate(mel):
                frames[a, :n] = 1
            kwargs["feature_attention_mask"] = frames.to(device)
            kwargs["input_features"] = served  # stands for the log-mel: the tower is served
        kwargs["use_audio_in_video"] = in_video
        return kwargs, served

    def _tower_output(self, features: list[torch.Tensor], deepstack: list[torch.Tensor]) -> Any:
        """Cached vision outputs as the model's ``get_*_features`` return them: per-item
        ``pooler_output``; with DeepStack (Qwen3-Omni), per layer the items' features of that
        layer (``deepstack_features``, the output class of the model's own module)."""
        import sys

        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if not deepstack:
            return BaseModelOutputWithPooling(pooler_output=tuple(features))
        output = sys.modules[type(self.hf).__module__].BaseModelOutputWithDeepstackFeatures
        layers = [tuple(item[layer] for item in deepstack) for layer in range(len(deepstack[0]))]
        return output(pooler_output=tuple(features), deepstack_features=layers)

    # --- training and logits -------------------------------------------------------------------

    def forward(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                media: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over the labelled tokens, and their count (as
        :meth:`vlm_cli.model.vlm.VideoLanguageModel.forward`): rows expanded and right-padded,
        the model's own forward (its rope index places the media), one forward per group of
        rows whose media share a layout (videos with their audio, videos without: the rope
        index takes one audio-in-video setting per call), the sums added."""
        from vlm_cli.model.chat import IGNORE_INDEX
        from vlm_cli.model.vlm import next_token_loss

        total, count = None, None
        for members in _by_layout(media):
            rows, label_rows = zip(*(self.expand(input_ids[i], media[i], labels[i])
                                     for i in members))
            kwargs, served = self.model_inputs(rows, [media[i] for i in members], "right")
            target = torch.full(kwargs["attention_mask"].shape, IGNORE_INDEX, dtype=torch.long)
            for b, lab in enumerate(label_rows):
                target[b, :len(lab)] = torch.as_tensor(lab)
            with serving_audio(self.hf.model, served):
                logits = self.hf(**kwargs, use_cache=False).logits
            loss, n = next_token_loss(logits, target.to(logits.device))
            total, count = (loss, n) if total is None else (total + loss, count + n)
        return total, count

    @torch.no_grad()
    def logits(self, input_ids: Sequence[int], media: Sequence[Any]) -> torch.Tensor:
        """``[L, V]`` float logits of one prompt (the tests' comparison with transformers)."""
        kwargs, served = self.model_inputs([self.expand(input_ids, media)], [media], "left")
        with serving_audio(self.hf.model, served):
            return self.hf(**kwargs, use_cache=False).logits[0].float()

    # --- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def stream(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[Any]], *,
               max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
               prefix: Any = None, ignore_eos: bool = False) -> Iterator[list[int | None]]:
        """transformers' ``generate`` on left-padded rows (run in a thread, its streamer feeding
        this generator): per step one token per prompt, None once a prompt has ended (its
        end-of-sequence token is yielded once). Greedy when ``temperature`` is 0.

        Args:
            prefix: one prompt only: a chat's :class:`vlm_cli.model.vlm.Prefix`. The KV cache
                of the conversation so far is passed as ``past_key_values`` when it covers every
                media token (cropped to the longest common prefix), so only the new tokens are
                prefilled; it then holds this turn too.
            ignore_eos: run all ``max_new_tokens`` steps (benchmarks).

        Raises:
            DataError: rows whose media cannot share one call (videos with and without their
                audio: :meth:`generate_batch` splits such batches).
        """
        from transformers import DynamicCache

        rows = [self.expand(ids, m) for ids, m in zip(input_ids, media)]
        if len({_layout_key(m) for m in media}) > 1:
            raise DataError("videos with and without their audio in one batch: "
                            "generate_batch answers them in separate calls")
        keep = prefix.reusable(rows) if prefix is not None else 0
        if keep:  # a follow-up turn: text only after the cached media
            cache = prefix.cache
            cache.crop(keep - cache.get_seq_length())  # transformers 5: minus tokens to drop
            row = torch.as_tensor(rows, device=self.device)
            kwargs, served = {"input_ids": row, "attention_mask": torch.ones_like(row)}, None
            if prefix.rope_deltas is not None:  # TMRoPE models: positions of later text
                self.hf.model.rope_deltas = prefix.rope_deltas
        else:
            cache = DynamicCache(config=self.hf.config.text_config)
            if prefix is not None:  # sliding-window layers (Gemma 4) keep what a later turn
                for layer in cache.layers:  # may crop back to (rolled back by ``crop``)
                    if hasattr(layer, "activate_past_recording"):
                        layer.activate_past_recording()
            kwargs, served = self.model_inputs(rows, media, "left")
        if prefix is not None:
            prefix.prefilled = len(rows[0]) - keep
        sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
                    if temperature > 0 else {"do_sample": False})
        if ignore_eos:
            sampling["min_new_tokens"] = max_new_tokens
        streamer = _TokenQueue()
        failure: list[BaseException] = []
        sequences: list[torch.Tensor] = []

        def run() -> None:
            try:
                with serving_audio(self.hf.model, served):
                    sequences.append(self.hf.generate(
                        **kwargs, cache=cache, max_new_tokens=max_new_tokens,
                        streamer=streamer, **sampling))
            except BaseException as err:  # re-raised in the consuming thread below
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=run, name="vlm-generate", daemon=True)
        worker.start()
        done = [False] * len(rows)
        while (tokens := streamer.items.get()) is not None:
            yield [None if d else t for d, t in zip(done, tokens)]
            done = [d or (t in self.eos_ids and not ignore_eos) for d, t in zip(done, tokens)]
        worker.join()
        if failure:
            raise failure[0]
        if prefix is not None:
            fed = sequences[0][0].tolist()[: cache.get_seq_length()]
            prefix.ids, prefix.cache = fed, cache
            prefix.rope_deltas = getattr(self.hf.model, "rope_deltas", None)

    def generate_batch(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[Any]],
                       *, max_new_tokens: int = 32) -> list[list[int]]:
        """Greedy answers of several prompts (ids without end-of-sequence): one left-padded
        ``generate`` per group of rows whose media share a layout (videos with their audio,
        videos without), the same tokens as one by one."""
        from vlm_cli.model.vlm import collect

        answers: list[list[int]] = [[] for _ in input_ids]
        for members in _by_layout(media):
            got = collect(self.stream([input_ids[i] for i in members], [media[i] for i in members],
                                      max_new_tokens=max_new_tokens), len(members), None)
            for i, ids in zip(members, got):
                answers[i] = [t for t in ids if t not in self.eos_ids]
        return answers

    # --- media ---------------------------------------------------------------------------------

    def check_budget(self, path: Path, *, fps: float | None, frames: int | None,
                     audio: bool) -> Budget:
        """The tokens ``path`` will make with these frame settings, from its header only: the
        frame count of the reference sampling (:func:`vlm_cli.media.sampling.qwen_frame_indices`
        on the header's frame count and rate), the per-frame pixel budget and the audio's
        duration (within a token of the decoded track's).

        Raises:
            UsageError: more than the context (less a text margin), or audio longer than the
                feature extractor takes: one line naming the setting to lower.
            MediaError: the file cannot be probed, or the model refuses its picture size.
        """
        from vlm_cli.media import probe_media
        from vlm_cli.media.resize import qwen_video_max_pixels, smart_resize

        info = probe_media(path)
        budget, sampling = Budget(0, 0, 0), self.spec.sampling
        if self.spec.layout == "gemma4":
            budget = self._gemma_budget(path, info, fps=fps, frames=frames, audio=audio)
        elif info.has_video and info.kind != "audio":
            if not info.height or not info.width:
                raise MediaError(path, "no picture size in the file's header")
            count = 1
            if info.kind == "video":
                count = _header_frame_count(info, fps or sampling.fps,
                                            frames or sampling.max_frames, sampling)
            factor = sampling.factor
            try:
                if info.kind == "video":
                    low = sampling.video_min_tokens * factor ** 2
                    h, w = smart_resize(info.height, info.width, factor=factor, min_pixels=low,
                                        max_pixels=qwen_video_max_pixels(count, factor=factor))
                else:
                    h, w = smart_resize(info.height, info.width, factor=factor)
            except ValueError as err:  # e.g. an aspect ratio over 200
                raise MediaError(path, f"{self.spec.title}'s processor refuses this picture "
                                       f"({info.width} x {info.height} px): {err}") from None
            grids = math.ceil(count / 2) if info.kind == "video" else 1
            budget.frames = count
            budget.video = grids * (h // sampling.factor) * (w // sampling.factor)
        if info.has_audio and info.kind != "image" and audio and self.spec.layout != "gemma4":
            seconds = info.duration or 0.0
            extractor = self.processor.feature_extractor
            limit = extractor.nb_max_frames * extractor.hop_length / extractor.sampling_rate
            if seconds > limit:
                raise UsageError(f"{path}: {seconds:.0f} s of audio; {self.spec.title}'s audio "
                                 f"front end takes at most {limit:.0f} s: pass --no-audio or "
                                 "cut the clip")
            budget.audio = audio_tokens(self.processor, math.ceil(seconds * 100))
        if budget.total + TEXT_MARGIN > self.context:
            lower = "--fps or --frames" if info.kind == "video" else "the image size"
            raise UsageError(
                f"{path}: {budget.frames} frames make {budget.video} video tokens"
                f"{f' and the audio {budget.audio}' if budget.audio else ''}: "
                f"{budget.total} tokens, over the model's context of {self.context}; "
                f"lower {lower}{' or pass --no-audio' if budget.audio else ''}")
        return budget

    def _gemma_budget(self, path: Path, info: Any, *, fps: float | None, frames: int | None,
                      audio: bool) -> Budget:
        """:meth:`check_budget`'s count for the ``gemma4`` layout: frames by transformers'
        default sampling on the header's frame count, tokens by the processor's own count.

        Raises:
            UsageError: more frames than the clip has, or a track longer than the feature
                extractor keeps (E2B / E4B: 30 s).
            MediaError: the processor refuses the picture size.
        """
        from vlm_cli.media.sampling import transformers_frame_indices
        from vlm_cli.model.families import native_gemma4

        budget, count = Budget(0, 0, 0), 1
        visual = info.has_video and info.kind != "audio"
        if visual and (not info.height or not info.width):
            raise MediaError(path, "no picture size in the file's header")
        if visual and info.kind == "video":
            rate = info.fps or 25.0
            total = max(1, round((info.duration or 0.0) * rate))
            try:
                count = len(transformers_frame_indices(
                    total, rate, num_frames=None if fps else (frames or self.spec.sampling.num_frames),
                    fps=fps, max_frames=frames if fps else None))
            except ValueError as err:
                raise UsageError(f"{path}: {err}") from None
        seconds = (info.duration or 0.0) if info.has_audio and info.kind != "image" and audio \
            else None
        limit = native_gemma4.audio_limit_samples(self.processor)
        rate = self.processor.feature_extractor.sampling_rate
        if seconds is not None and limit is not None and seconds * rate > limit:
            raise UsageError(f"{path}: {seconds:.0f} s of audio; {self.spec.title}'s audio front "
                             f"end takes at most {limit / rate:.0f} s (its model card would cut "
                             "the rest): pass --no-audio or cut the clip")
        try:
            budget.video, budget.audio = native_gemma4.budget_tokens(
                self, kind=info.kind if visual else "audio", height=info.height or 0,
                width=info.width or 0, frames=count, audio_seconds=seconds)
        except ValueError as err:
            raise MediaError(path, f"{self.spec.title}'s processor refuses this picture "
                                   f"({info.width} x {info.height} px): {err}") from None
        budget.frames = count if visual else 0
        return budget


def _layout_key(media: Sequence[Any]) -> tuple:
    """What must agree between rows generated in one call: whether videos carry audio."""
    return tuple(sorted({media_kind_of(m) == "video" and m.audio is not None for m in media}))


def _by_layout(media: Sequence[Sequence[Any]]) -> list[list[int]]:
    """Indices of the rows, grouped by :func:`_layout_key` (first-seen order): the rows one
    call of the model can take together."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(media):
        groups.setdefault(_layout_key(m), []).append(i)
    return list(groups.values())


def _header_frame_count(info: Any, fps: float, max_frames: int, sampling: Any) -> int:
    """The frames the reference sampling takes, from the header's frame count (else duration x
    rate) and average rate."""
    from vlm_cli.media.sampling import qwen_frame_indices

    rate = info.fps or 25.0
    total = max(1, round((info.duration or 0.0) * rate))
    try:
        indices, _ = qwen_frame_indices(total, rate, fps=fps, min_frames=sampling.min_frames,
                                        max_frames=max_frames)
    except ValueError:
        return max(2, min(total, max_frames))
    return len(indices)


# --- towers (outputs cached) ---------------------------------------------------------------------

class NativeTower:
    """One tower of a native model, fed as the model card's pipeline feeds it, for the feature
    cache: frames resized by the reference (qwen-omni-utils: torchvision's float bicubic kernel;
    pictures with PIL), then the processor and ``get_video_features`` / ``get_image_features`` /
    ``get_audio_features``. Outputs stay in the tower's dtype. Built on the first cache miss:
    the tower's weights are then read from the checkpoint (:func:`materialize`).

    Args:
        model: the native model (its towers are used, not copied). kind: ``video``, ``image``
            or ``audio``.
    """

    def __init__(self, model: NativeModel, kind: str) -> None:
        self.native, self.kind = model, kind
        modality = "audio" if kind == "audio" else "vision"
        for name in model.spec.tower_modules.get(modality, ()):
            materialize(model.hf.get_submodule(name), model.device)

    def to(self, device: Any) -> NativeTower:
        """Already on the model's device (the store's ``.to`` is a no-op here)."""
        return self

    @torch.no_grad()
    def encode_frames(self, frames: Any, fps: float | None = None) -> dict[str, torch.Tensor]:
        """Frames ``[T, H, W, 3] uint8`` (``T`` = 1 for a picture) -> ``{"features": [N, H_llm],
        "grid_thw": [3] long, "second_per_grid": [] float64 (videos)}``. ``fps``: the rate the
        reference reports for the sampled frames (its ``sample_fps``): ``temporal_patch_size /
        fps`` seconds per grid."""
        from vlm_cli.media.resize import qwen_resize_frames

        native, sampling = self.native, self.native.spec.sampling
        processor, hf = native.processor, native.hf
        if native.spec.layout == "gemma4":
            from vlm_cli.model.families import native_gemma4

            return native_gemma4.encode_frames(native, self.kind, frames, fps)
        # The processor itself (text: the bare placeholder), so its pixels are the reference's.
        if self.kind == "image":  # resized by the decoder (qwen_load_image: PIL)
            inputs = processor(text=[processor.image_token], images=[frames[0]],
                               return_tensors="pt")
            grid = inputs["image_grid_thw"]
            out = hf.model.get_image_features(
                inputs["pixel_values"].to(native.device, native.dtype), grid.to(native.device))
            return {**_vision_entry(out), "grid_thw": grid[0]}
        video = qwen_resize_frames(frames, factor=sampling.factor)
        # Frames already within the reference's per-frame cap and multiples of the patch: the
        # processor's own resize leaves them as they are, capped or not (the flag only silences
        # its notice about the cap).
        inputs = processor(text=[processor.video_token], videos=[video], return_tensors="pt",
                           cap_pixels_per_frame=True)
        grid = inputs["video_grid_thw"]
        out = hf.model.get_video_features(
            inputs["pixel_values_videos"].to(native.device, native.dtype),
            grid.to(native.device))
        return {**_vision_entry(out), "grid_thw": grid[0],
                "second_per_grid": torch.tensor(
                    processor.video_processor.temporal_patch_size / (fps or sampling.fps),
                    dtype=torch.float64)}

    @torch.no_grad()
    def encode_clips(self, spectrogram: Any) -> dict[str, torch.Tensor]:
        """The whole track's log-mel ``[1, 128, M]`` -> ``{"features": [N, H_llm],
        "mel_frames": [] long}`` (``get_audio_features``, 40 ms a token); ``gemma4``: the
        track's samples ``[1, S]`` (:func:`vlm_cli.model.families.native_gemma4.encode_audio`)."""
        native = self.native
        if native.spec.layout == "gemma4":  # the track's samples: its extractor runs here
            from vlm_cli.model.families import native_gemma4

            return native_gemma4.encode_audio(native, spectrogram)
        mel = torch.as_tensor(spectrogram, dtype=torch.float32).to(native.device)
        mask = torch.ones(mel.shape[0], mel.shape[-1], dtype=torch.long, device=mel.device)
        out = native.hf.model.get_audio_features(mel.to(native.dtype), mask)
        return {"features": out.last_hidden_state.cpu(), "mel_frames": torch.tensor(mel.shape[-1])}


def _vision_entry(out: Any) -> dict[str, torch.Tensor]:
    """One item's vision tower output as cache-entry tensors: ``features [N, H]`` and, for a
    DeepStack model, ``deepstack [layers, N, H]`` (each layer's features of that item)."""
    entry = {"features": out.pooler_output[0].cpu()}
    layers = getattr(out, "deepstack_features", None)
    if layers:
        entry["deepstack"] = torch.stack([layer[0] if isinstance(layer, (list, tuple))
                                          else layer for layer in layers]).cpu()
    return entry


def _fingerprints(spec: NativeModelSpec, source: dict[str, Any], processor: Any,
                  dtype: Any) -> dict[str, dict[str, Any]]:
    """What changes each tower's output: the weights, the reference pipeline, the processor's
    settings, the dtype."""
    common = {"family": spec.name, "source": source, "dtype": str(dtype).removeprefix("torch."),
              "reference": dataclasses.asdict(spec.sampling)}
    if spec.layout == "gemma4":
        from vlm_cli.model.families import native_gemma4

        pre = native_gemma4.fingerprints(processor)
        return {feature: {"modality": "audio" if feature == "audio" else "vision",
                          "tower": {"vision": "video"}.get(feature, feature), **common,
                          "preprocess": {**pre[feature], "resampler": spec.resampler}
                          if feature == "audio" else pre[feature]}
                for feature in ("vision", "image", "audio")}
    vp, ip, fe = processor.video_processor, processor.image_processor, processor.feature_extractor
    video = {"size": type(processor).videos_kwargs.get("size"), "mean": list(vp.image_mean),
             "std": list(vp.image_std), "patch": vp.patch_size, "merge": vp.merge_size,
             "temporal_patch": vp.temporal_patch_size, "resize": "torchvision-bicubic-float"}
    image = {"size": dict(ip.size), "mean": list(ip.image_mean), "std": list(ip.image_std),
             "patch": ip.patch_size, "merge": ip.merge_size, "resize": "pil"}
    return {"vision": {"modality": "vision", "tower": "video", **common, "preprocess": video},
            "image": {"modality": "vision", "tower": "image", **common, "preprocess": image},
            "audio": {"modality": "audio", "tower": "audio", **common,
                      "preprocess": {"frontend": "whisper_track", "mel_bins": fe.feature_size,
                                     "hop": fe.hop_length, "n_fft": fe.n_fft,
                                     "resampler": spec.resampler}}}


def without_skipped(directory: Path, skip: tuple[str, ...]) -> Path:
    """``directory`` itself when every shard its weight index names is present; else a view of
    it (symbolic links, under ``$VLM_HOME/views``; rebuilt when the directory's files change)
    whose index names only the shards of keys outside ``skip`` (e.g. Qwen2.5-Omni's talker),
    which is what ``vlm download`` fetches (:func:`vlm_cli.hub.index_shards`).

    Raises:
        VlmError: a shard holding weights the model needs is missing.
    """
    import os
    import shutil
    import tempfile

    from vlm_cli.cache import cache_root

    index_path = directory / "model.safetensors.index.json"
    if not index_path.is_file():
        return directory
    index = json.loads(index_path.read_text())
    weight_map = index.get("weight_map", {})
    if all((directory / shard).is_file() for shard in set(weight_map.values())):
        return directory
    kept = {k: v for k, v in weight_map.items() if not k.startswith(skip)}
    absent = sorted({v for v in kept.values() if not (directory / v).is_file()})
    if absent:
        raise VlmError(f"{directory}: weight shard {absent[0]} is missing; run "
                       "`vlm download` for this model again")
    digest = hashlib.sha256(f"{directory.resolve()}\n{index_path.read_text()}".encode())
    view = cache_root() / "views" / digest.hexdigest()[:16]
    files = {p.name: p.resolve() for p in directory.iterdir()
             if p.is_file() and p.name != index_path.name}
    if (view / index_path.name).is_file() and {
            p.name: p.resolve() for p in view.iterdir() if p.is_symlink()} == files:
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=view.parent, prefix=".tmp-"))
    try:
        for name, target in files.items():
            os.symlink(target, tmp / name)
        (tmp / index_path.name).write_text(json.dumps({**index, "weight_map": kept}, indent=1))
        shutil.rmtree(view, ignore_errors=True)  # stale: files were added since
        os.replace(tmp, view)
    except OSError:  # another process made it first, or the disk refused: leave no partial view
        shutil.rmtree(tmp, ignore_errors=True)
        if not (view / index_path.name).is_file():
            raise
    return view


def load(directory: Path, *, device: str = "cpu", dtype: Any = None, name: str | None = None,
         revision: str | None = None, download: bool = False) -> Loaded:
    """A checkpoint of a :data:`MODELS` entry as a :class:`~vlm_cli.model.families.Loaded`:
    the model in ``dtype`` (default: :func:`vlm_cli.runtime.resolve_dtype` ``auto``) on
    ``device``, the weights its entry skips left out; its towers' outputs are cached (encoder
    sources ``vision``, ``image``, ``audio``).

    Raises:
        VlmError: weights the model needs are missing.
    """
    from concurrent.futures import ThreadPoolExecutor

    import transformers

    from vlm_cli.cache import FeatureCache
    from vlm_cli.hub import resolve_pretrained
    from vlm_cli.recipe import DataSpec, LLMSpec, ModelSpec, Recipe, TrainSpec
    from vlm_cli.runtime import resolve_dtype, transformers_errors_only

    spec = spec_for(read_config(directory))
    assert spec is not None, directory  # load_model dispatched here through detect
    dtype = dtype or resolve_dtype("auto", device)
    source_dir = without_skipped(directory, spec.skip_prefixes)
    # The towers stay in the checkpoint's files (accelerate's disk offload reads them from
    # there, no copy) until a feature is missing from the cache: a cached question never holds
    # them in memory.
    device_map = place_modules(spec, source_dir, dtype, device)
    # The weights' identity for the feature cache (a local checkpoint's first load hashes its
    # towers' tensors, ~1 s a GB) is computed while transformers builds the model: hashing
    # runs in C without the GIL.
    with ThreadPoolExecutor(1) as pool, transformers_errors_only():
        identity = pool.submit(resolve_pretrained, name or str(directory), revision,
                               FeatureCache().file_digest, prefixes=spec.tower_prefixes)
        processor = getattr(transformers, spec.processor_class).from_pretrained(source_dir)
        hf = getattr(transformers, spec.model_class).from_pretrained(
            source_dir, dtype=dtype, device_map=device_map).eval().requires_grad_(False)
        _, source = identity.result()
    model = NativeModel(spec, hf, processor)
    fingerprints = _fingerprints(spec, source, processor, dtype)
    decode = {"vision": {"sampling": spec.sampling.rule}, "image": {"sampling": spec.sampling.rule},
              "audio": {"frontend": "whisper_track", "processor": str(source_dir),
                        "resampler": spec.resampler}}
    if spec.layout == "gemma4":  # the extractor runs with the tower, on the samples
        decode["audio"] = {"frontend": "waveform", "resampler": spec.resampler}
    towers = {"vision": "video", "image": "image", "audio": "audio"}
    encoders = {feature: EncoderSource(fingerprints[feature],
                                       lambda kind=kind: NativeTower(model, kind),
                                       decode=decode[feature])
                for feature, kind in towers.items()}
    recipe = Recipe(name=spec.name, model=ModelSpec(llm=LLMSpec(
        pretrained=name or str(directory), revision=revision)),
        data=DataSpec(sampling="fps", fps=spec.sampling.fps, max_frames=spec.sampling.max_frames)
        if spec.sampling.num_frames is None else DataSpec(sampling="uniform",
                                                          frames=spec.sampling.num_frames),
        train=TrainSpec())
    return Loaded(recipe, model, spec.name, encoders, check=model.check_budget,
                  licence=spec.licence)


#: GPU memory kept free beside the language model's weights (KV cache, activations), bytes.
GPU_HEADROOM = 4 << 30


def place_modules(spec: NativeModelSpec, directory: Path, dtype: Any, device: str,
                  free: dict[int, int] | None = None) -> dict[str, Any]:
    """The ``device_map`` of :func:`load`: the towers on ``disk`` (accelerate's offload, until a
    feature is missing), the language model and head on ``device``; on ``cuda`` (no index) when
    they do not fit the first GPU with :data:`GPU_HEADROOM` to spare, spread over the visible
    GPUs by accelerate's big-model inference (``infer_auto_device_map`` on the model built on
    the meta device, whole decoder layers per GPU, each GPU's free memory less the headroom).

    Args:
        directory: the checkpoint (its safetensors headers give the weights' size).
        free: free bytes per GPU index (default: ``torch.cuda.mem_get_info`` of each visible
            GPU).

    Raises:
        UsageError: the language model does not fit the GPUs there are: one line with what it
            needs and what is free.
    """
    from vlm_cli.weights import stored_weights

    place = device if ":" in device or device == "cpu" else f"{device}:0"
    towers = {name: "disk" for name in tower_names(spec)}
    if not device.startswith("cuda"):
        return {**{name: place for name in spec.text_modules}, **towers}
    if free is None:
        free = {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}
    stored, kind = stored_weights(directory, skip=spec.skip_prefixes + spec.tower_prefixes)
    itemsize = {"F32": 4, "F64": 8, "I8": 1, "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1}.get(kind or "", 2)
    needed = stored * torch.empty(0, dtype=dtype).element_size() // itemsize
    first = int(place.split(":")[1])
    if needed + GPU_HEADROOM <= free.get(first, 0) or ":" in device:
        return {**{name: place for name in spec.text_modules}, **towers}
    budget = {i: max(0, f - GPU_HEADROOM) for i, f in free.items()}
    gib = 1 << 30
    if sum(budget.values()) < needed:
        raise UsageError(
            f"{spec.title}'s language model needs {needed / gib:.1f} GiB in "
            f"{str(dtype).removeprefix('torch.')} plus {GPU_HEADROOM / gib:.0f} GiB for its cache "
            f"and activations on each GPU; the {len(free)} visible GPU(s) have "
            f"{sum(free.values()) / gib:.1f} GiB free: use more GPUs, or --device cpu")
    import transformers
    from accelerate import infer_auto_device_map, init_empty_weights

    model_class = getattr(transformers, spec.model_class)
    config = model_class.config_class.from_pretrained(directory)
    with init_empty_weights():
        meta = model_class._from_config(config, dtype=dtype)
    meta.tie_weights()
    for name in towers:  # not counted: they stay on disk
        parent, _, child = name.rpartition(".")
        setattr(meta.get_submodule(parent), child, None)
    planned = infer_auto_device_map(meta, max_memory={**budget, "cpu": 0}, dtype=dtype,
                                    no_split_module_classes=meta._no_split_modules)
    if any(not isinstance(where, int) for where in planned.values()):
        raise UsageError(f"{spec.title}'s language model ({needed / gib:.1f} GiB) does not split "
                         f"over the {len(free)} visible GPU(s) with {GPU_HEADROOM / gib:.0f} GiB "
                         "to spare on each: use more GPUs, or --device cpu")
    return {**planned, **towers}


def tower_names(spec: NativeModelSpec) -> list[str]:
    """The module names of every tower of ``spec`` (each modality's, in order)."""
    return [name for names in spec.tower_modules.values() for name in names]


def materialize(module: nn.Module, device: str) -> nn.Module:
    """Load an offloaded module's weights (accelerate's disk offload, see :func:`load`) onto
    ``device`` and drop its hooks: its forwards then run without reading the disk again.
    Each tensor is copied out of the checkpoint's memory map (a view would keep a second
    mapping of the shard resident beside transformers' own: 1.7 GB more RSS for
    Qwen2.5-Omni-3B's towers). Returns the module."""
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import set_module_tensor_to_device

    for sub in module.modules():
        hook = getattr(sub, "_hf_hook", None)
        if hook is None or not getattr(hook, "offload", False) or hook.weights_map is None:
            continue
        for name, _ in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
            if name in hook.weights_map:
                set_module_tensor_to_device(sub, name, device,
                                            value=hook.weights_map[name].clone())
    remove_hook_from_module(module, recurse=True)
    return module


#: Our weight keys -> the checkpoint's: none of ours (no connector); transformers maps the
#: hub's keys (``thinker.model.*``, ``thinker.visual.*``, ...) itself, both ways.
KEY_MAP: dict[str, str] = {}


def save(model: NativeModel, out: Path, *, base: str | Path, dtype: Any,
         max_shard_size: str = "2GB", recipe: Any = None) -> None:
    """Write ``model`` (its language model merged, no adapter) as a checkpoint of its class
    (``save_pretrained``: for Qwen2.5-Omni a *thinker*, config ``qwen2_5_omni_thinker``) with the
    processor's files (tokenizer, image / video processor, feature extractor, chat template),
    cast to ``dtype``; transformers' ``from_pretrained`` of the same classes loads it."""
    del base, recipe  # everything is in the loaded model and processor
    for name in tower_names(model.spec):
        materialize(model.hf.get_submodule(name), model.device)
    model.hf.to(dtype).save_pretrained(out, safe_serialization=True,
                                       max_shard_size=max_shard_size)
    model.processor.save_pretrained(out)
