"""The Qwen2.5-Omni family (``Qwen/Qwen2.5-Omni-3B``, ``-7B``): the *thinker* only, text out.

transformers loads the thinker (``Qwen2_5OmniThinkerForConditionalGeneration``: a Qwen2.5 LLM with
its own vision tower, audio tower and TMRoPE); the talker and token2wav (speech output) are neither
downloaded (:data:`vlm_cli.hub.SPEECH_OUTPUT_PREFIXES`) nor loaded. The processor
(``Qwen2_5OmniProcessor``) does what it does for the released model, and we call its own pieces:

- frames: sampled by the toolkit (``fps`` 2 by default, at most 768 frames, as the processor's
  video defaults), resized and patched by the processor's video processor with the processor's
  pixel limits and the reference per-frame cap of qwen-vl-utils (``cap_pixels_per_frame``: a
  long video's frames share a total pixel budget); ``video_second_per_grid`` =
  ``temporal_patch_size`` / the frames' rate;
- audio: the clip's own track, mono 16 kHz, Whisper log-mel of the whole track (the processor's
  feature extractor; at most 300 s, its limit) — interleaved with the frames in 2 s chunks
  (``replace_video_with_audio_token``) and placed in time by TMRoPE (``get_rope_index`` with
  ``use_audio_in_video``);
- the towers' outputs (one LLM-width vector per token: ``get_video_features`` /
  ``get_image_features`` / ``get_audio_features``) are what the feature cache holds, so a second
  question never encodes again.

Before any decoding, :meth:`OmniThinker.check_budget` computes how many tokens a clip will make
(from its header: duration, picture size, audio track) and stops with one line naming the setting
to lower when that exceeds the model's context.

Qwen3-Omni's thinker (``qwen3_omni_moe``) has the same processor API but needs DeepStack features
with each vision output and a different audio rate; it is not served by this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_cli.errors import DataError, MediaError, UsageError, VlmError
from vlm_cli.model.families import EncoderSource, Loaded, read_config

MODEL_TYPES = ("qwen2_5_omni", "qwen2_5_omni_thinker")
#: The processor's frame-sampling defaults (``Qwen2VLVideoProcessor``): 2 fps, at most 768.
DEFAULT_FPS, MAX_FRAMES = 2.0, 768
#: Seconds of audio the processor's feature extractor takes (``nb_max_frames`` 30000 × 10 ms).
MAX_AUDIO_SECONDS = 300.0
#: Prompt tokens besides the media (system prompt, question, turn markers): a margin for the
#: context check.
TEXT_MARGIN = 256
#: The roles of our conversations in the chat template.
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
PLACEHOLDERS = {"<video>": "video", "<image>": "image", "<audio>": "audio"}


def detect(directory: str | Path) -> bool:
    """Whether ``directory`` holds a Qwen2.5-Omni checkpoint (config.json ``model_type``)."""
    return read_config(directory).get("model_type") in MODEL_TYPES


# --- token counts (before encoding) --------------------------------------------------------------

def smart_resize(height: int, width: int, factor: int, min_pixels: int,
                 max_pixels: int) -> tuple[int, int]:
    """The processor's resize rule (``qwen2_vl`` ``smart_resize``): both sides multiples of
    ``factor`` px, area within ``[min_pixels, max_pixels]``, aspect kept as far as possible."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as resize

    return resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def audio_tokens(mel_frames: int) -> int:
    """Audio tower output tokens for ``mel_frames`` 10 ms frames (two stride-2 stages: 40 ms
    per token), as ``_get_feat_extract_output_lengths``."""
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


@dataclasses.dataclass
class Budget:
    """How many tokens one media file makes (computed from its header, before decoding)."""

    frames: int
    video: int
    audio: int

    @property
    def total(self) -> int:
        return self.video + self.audio


def media_kind_of(media: Any) -> str:
    """What a :class:`~vlm_cli.model.vlm.MediaInput` of this family holds: ``video`` (frames
    placed in time: ``second_per_grid``), ``image`` (one grid) or ``audio`` (no frames)."""
    if media.vision is None:
        return "audio"
    return "video" if "second_per_grid" in media.vision_meta else "image"


# --- the model -----------------------------------------------------------------------------------

class OmniThinker(nn.Module):
    """A Qwen2.5-Omni thinker behind the interface of :class:`~vlm_cli.model.vlm.VideoLanguageModel`
    (``tokenizer``, ``media_token_ids``, :meth:`encode_prompt`, :meth:`stream`,
    :meth:`generate_batch`), fed with cached tower outputs.

    Args:
        thinker: ``Qwen2_5OmniThinkerForConditionalGeneration`` in eval mode.
        processor: its ``Qwen2_5OmniProcessor``.
    """

    def __init__(self, thinker: Any, processor: Any) -> None:
        super().__init__()
        self.thinker, self.processor = thinker, processor
        self.tokenizer = processor.tokenizer
        config = thinker.config
        self.ids = {"video": config.video_token_id, "image": config.image_token_id,
                    "audio": config.audio_token_id}
        self.media_token_ids = {v: k for k, v in self.ids.items()}
        self.context = int(config.text_config.max_position_embeddings)
        #: The language model (``Qwen2_5OmniThinkerTextModel``, the thinker's own module): what
        #: LoRA adapts. peft injects its layers into that module in place (and merges them back
        #: in place), so the thinker's own path, which everything here calls, runs them.
        self.llm = thinker.model.language_model
        #: No connector of ours: the towers' merger already outputs LLM-width tokens.
        self.connectors = nn.ModuleDict()
        self.feature_dims: dict[str, int] = {}

    # --- prompts -------------------------------------------------------------------------------

    #: The chat template does not depend on the media (their tokens come in :meth:`expand`).
    prompt_uses_media = False

    def encode_prompt(self, turns: Sequence[dict[str, Any]],
                      media: Sequence[Any] | None = None) -> list[int]:
        """Token ids of a conversation (LLaVA turns; ``<video>``, ``<image>``, ``<audio>``
        placeholders) ending in a user turn, through the processor's chat template (one
        ``<|VIDEO|>`` / ``<|IMAGE|>`` / ``<|AUDIO|>`` per media file, between its bos/eos
        tokens), plus the assistant prefix."""
        return self._render(self._messages(turns), True)

    def _messages(self, turns: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """LLaVA turns -> chat messages with typed content (placeholders become media items)."""
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
                text = text[at + len(placeholder):].lstrip("\n")
            if text:
                content.append({"type": "text", "text": text})
            messages.append({"role": ROLES[turn["from"]], "content": content})
        return messages

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
        rendered = self.processor.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False)
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def encode_conversation(self, turns: Sequence[dict[str, Any]], max_length: int,
                            media: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
        """Token ids and labels of a training conversation: labels on each assistant turn's
        tokens and its ``<|im_end|>`` (the template has no generation markers, so each turn's
        tokens are found as the difference between the conversation rendered up to the turn's
        header and up to its end), ``IGNORE_INDEX`` elsewhere; cut to ``max_length``.

        Raises:
            DataError: no assistant turn, or none left within ``max_length``.
        """
        from vlm_cli.model.chat import IGNORE_INDEX

        messages = self._messages(turns)
        ids = self._render(messages, False)
        labels = [IGNORE_INDEX] * len(ids)
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(self._render(messages[:k], True))
            end = len(self._render(messages[:k + 1], False))
            newline = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
            end -= len(newline) if ids[end - len(newline):end] == newline else 0
            labels[start:end] = ids[start:end]  # the answer and <|im_end|>
        ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise DataError("conversation has no assistant tokens within max_length")
        return ids, labels

    def expand(self, ids: Sequence[int], media: Sequence[Any],
               labels: Sequence[int] | None = None) -> Any:
        """Replace each media token by its tokens, as the processor does at tokenisation: a
        video with its audio interleaved in 2 s chunks (``replace_video_with_audio_token``), a
        video alone, an image, or an audio file.

        Returns:
            The expanded ids; with ``labels``, ``(ids, labels)``, the media tokens labelled
            ``IGNORE_INDEX``.

        Raises:
            DataError: the placeholder count differs from the media count; a placeholder of
                another kind than its file (``<image>`` for a video: the processor's layouts
                differ); or a row with several videos, some with audio and some without
                (TMRoPE takes one audio-in-video setting per row).
        """
        found = [t for t in ids if t in self.media_token_ids]
        if len(found) != len(media):
            raise DataError(f"{len(found)} media placeholders but {len(media)} media files")
        for t, m in zip(found, media):
            if self.media_token_ids[t] != media_kind_of(m):
                raise DataError(f"a <{self.media_token_ids[t]}> placeholder for a "
                                f"{media_kind_of(m)}: Qwen2.5-Omni needs the placeholder of the "
                                "file's kind")
        videos = {m.audio is not None for t, m in zip(found, media)
                  if self.media_token_ids[t] == "video"}
        if len(videos) > 1:
            raise DataError("videos with and without audio in one sample: Qwen2.5-Omni places "
                            "them with one audio-in-video setting; split the sample")
        from vlm_cli.model.chat import IGNORE_INDEX

        pieces = iter(media)
        out: list[int] = []
        out_labels: list[int] = []
        for j, t in enumerate(ids):
            if t not in self.media_token_ids:
                out.append(t)
                out_labels.append(labels[j] if labels is not None else IGNORE_INDEX)
                continue
            m = next(pieces)
            kind = self.media_token_ids[t]
            before = len(out)
            if kind == "video" and m.vision is not None and m.audio is not None:
                text = self.processor.replace_video_with_audio_token(
                    {"video_grid_thw": [[int(x) for x in m.vision_meta["grid_thw"]]],
                     "video_second_per_grid": [float(m.vision_meta["second_per_grid"])]}, 0,
                    {"num_audio_tokens": [m.audio.shape[0]]}, 0,
                    position_id_per_seconds=self.thinker.config.position_id_per_seconds,
                    seconds_per_chunk=self.thinker.config.seconds_per_chunk)
                out += self.tokenizer(text, add_special_tokens=False)["input_ids"]
            elif kind in ("video", "image"):
                if m.vision is None:
                    raise DataError(f"a <{kind}> placeholder without frames")
                out += [t] * m.vision.shape[0]
            else:
                if m.audio is None:
                    raise DataError("an <audio> placeholder without an audio track")
                out += [t] * m.audio.shape[0]
            out_labels += [IGNORE_INDEX] * (len(out) - before)  # media tokens carry no loss
        return out if labels is None else (out, out_labels)

    def positions(self, row: list[int], media: Sequence[Any]) -> tuple[torch.Tensor, int]:
        """TMRoPE position ids ``[3, L]`` of one expanded row and its rope delta (the position
        of the next token minus ``L``), from the thinker's own ``get_rope_index``.
        """
        device = self.thinker.device
        ids = torch.as_tensor([row], device=device)
        grids: dict[str, list[torch.Tensor]] = {"image": [], "video": []}
        seconds, mel, in_video = [], [], False
        for m in media:
            kind = media_kind_of(m)  # the placeholder's, checked by expand
            if m.vision is not None:
                grids[kind].append(torch.as_tensor(m.vision_meta["grid_thw"]))
                if kind == "video":
                    seconds.append(float(m.vision_meta["second_per_grid"]))
            if m.audio is not None:
                mel.append(int(m.audio_meta["mel_frames"]))
                in_video = in_video or (kind == "video" and m.vision is not None)
        stack = (lambda g: torch.stack(g).to(device) if g else None)  # noqa: E731
        position_ids, delta = self.thinker.model.get_rope_index(
            ids, stack(grids["image"]), stack(grids["video"]), torch.ones_like(ids),
            in_video, torch.as_tensor(mel, device=device) if mel else None,
            torch.as_tensor(seconds, device=device) if seconds else None)
        return position_ids[:, 0], int(torch.as_tensor(delta).reshape(-1)[0])

    def embed_row(self, row: list[int], media: Sequence[Any]) -> torch.Tensor:
        """``[L, H]`` input embeddings of one expanded row: token embeddings with the tower
        outputs put in place of the image/video and audio tokens (one ``masked_scatter`` each,
        after a count check)."""
        table = self.thinker.get_input_embeddings()
        ids = torch.as_tensor(row, device=table.weight.device)
        embeds = table(ids)
        for kind, attr in (("vision", "vision"), ("audio", "audio")):
            feats = [getattr(m, attr) for m in media if getattr(m, attr) is not None]
            token_ids = ([self.ids["video"], self.ids["image"]] if kind == "vision"
                         else [self.ids["audio"]])
            where = torch.isin(ids, torch.as_tensor(token_ids, device=ids.device))
            rows = sum(f.shape[0] for f in feats)
            if int(where.sum()) != rows:
                raise DataError(f"{kind} tokens: {int(where.sum())}, features: {rows}")
            if rows:
                values = torch.cat(feats).to(embeds.device, embeds.dtype)
                embeds = embeds.masked_scatter(where[:, None].expand_as(embeds), values)
        return embeds

    def batch(self, rows: Sequence[list[int]], media: Sequence[Sequence[Any]], side: str,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Expanded rows padded into a batch on ``side`` (``left`` for generation, ``right``
        for training): ``inputs_embeds [B, L, H]``, ``attention_mask [B, L]``, TMRoPE
        ``position_ids [3, B, L]``, and per row the rope delta on the padded index (the next
        position minus ``L``)."""
        length = max(len(r) for r in rows)
        device = self.thinker.device
        hidden = self.thinker.config.text_config.hidden_size
        dtype = self.thinker.get_input_embeddings().weight.dtype
        embeds = torch.zeros(len(rows), length, hidden, dtype=dtype, device=device)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        positions = torch.ones(3, len(rows), length, dtype=torch.long, device=device)
        deltas = []
        for b, (row, m) in enumerate(zip(rows, media)):
            n = len(row)
            where = slice(length - n, length) if side == "left" else slice(0, n)
            embeds[b, where] = self.embed_row(row, m)
            mask[b, where] = 1
            positions[:, b, where], delta = self.positions(row, m)
            deltas.append(delta - (length - n))
        return embeds, mask, positions, deltas

    def forward(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                media: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over the labelled tokens, and their count (as
        :meth:`vlm_cli.model.vlm.VideoLanguageModel.forward`): rows expanded, right-padded,
        TMRoPE positions per row, the language model and LM head."""
        from vlm_cli.model.chat import IGNORE_INDEX
        from vlm_cli.model.vlm import next_token_loss

        rows, label_rows = zip(*(self.expand(ids, m, lab)
                                 for ids, lab, m in zip(input_ids, labels, media)))
        embeds, mask, positions, _ = self.batch(rows, media, "right")
        target = torch.full(mask.shape, IGNORE_INDEX, dtype=torch.long, device=mask.device)
        for b, lab in enumerate(label_rows):
            target[b, :len(lab)] = torch.as_tensor(lab, device=mask.device)
        out = self.thinker.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                                position_ids=positions)
        return next_token_loss(self.thinker.lm_head(out.last_hidden_state), target)

    # --- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def stream(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[Any]], *,
               max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
               prefix: Any = None, ignore_eos: bool = False) -> Iterator[list[int | None]]:
        """As :meth:`vlm_cli.model.vlm.VideoLanguageModel.stream` (same yields): left-padded
        prefill of the whole prompt with TMRoPE positions, then one token per step at position
        ``cache length + rope delta``. A chat ``prefix`` is refilled each turn (TMRoPE positions
        of a follow-up depend on the whole conversation), and ``prefilled`` says so."""
        from transformers import DynamicCache

        from vlm_cli.model.vlm import next_tokens

        rows = [self.expand(ids, m) for ids, m in zip(input_ids, media)]
        embeds, mask, positions, deltas = self.batch(rows, media, "left")
        device = mask.device
        if prefix is not None:
            prefix.prefilled = mask.shape[1]
        eos = self.tokenizer.eos_token_id
        cache = DynamicCache(config=self.thinker.config.text_config)
        language_model, head = self.thinker.model.language_model, self.thinker.lm_head
        step: dict[str, Any] = {"inputs_embeds": embeds}
        delta = torch.as_tensor(deltas, device=device)  # the cache index counts left padding
        done = [False] * len(rows)
        for _ in range(max_new_tokens):
            out = language_model(**step, attention_mask=mask, position_ids=positions, cache=cache,
                                 use_cache=True)
            logits = head(out.last_hidden_state[:, -1]).float()
            tokens = next_tokens(logits, temperature, top_p)
            yield [None if d else t for d, t in zip(done, tokens)]
            done = [d or (t == eos and not ignore_eos) for d, t in zip(done, tokens)]
            if all(done):
                break
            nxt = torch.as_tensor(tokens, device=device)[:, None]
            step = {"inputs_embeds": self.thinker.get_input_embeddings()(nxt)}
            index = cache.get_seq_length()
            positions = (index + delta)[None, :, None].expand(3, -1, 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)

    @torch.no_grad()
    def logits(self, input_ids: Sequence[int], media: Sequence[Any]) -> torch.Tensor:
        """``[L, vocab]`` float logits of one prompt (the tests' comparison with transformers)."""
        row = self.expand(input_ids, media)
        pos, _ = self.positions(row, media)
        out = self.thinker.model.language_model(
            inputs_embeds=self.embed_row(row, media)[None], position_ids=pos[:, None],
            attention_mask=torch.ones(1, len(row), dtype=torch.long, device=self.thinker.device))
        return self.thinker.lm_head(out.last_hidden_state)[0].float()

    def generate_batch(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[Any]],
                       *, max_new_tokens: int = 32) -> list[list[int]]:
        """Greedy answers for several prompts at once (ids without end-of-sequence)."""
        from vlm_cli.model.vlm import collect

        return collect(self.stream(input_ids, media, max_new_tokens=max_new_tokens),
                       len(input_ids), self.tokenizer.eos_token_id)

    # --- media ---------------------------------------------------------------------------------

    def check_budget(self, path: Path, *, fps: float | None, frames: int | None,
                     audio: bool) -> Budget:
        """The tokens ``path`` will make with these frame settings, from its header only (the
        frames ``ceil(duration × fps)``, as the fps sampler; the audio from the header's
        duration, within a token of the decoded track's).

        Raises:
            UsageError: more than the context (``max_position_embeddings`` less a text margin),
                or audio longer than the processor's 300 s: one line naming the setting to lower.
            MediaError: the file cannot be probed.
        """
        from vlm_cli.media import probe_media

        info = probe_media(path)
        budget = Budget(0, 0, 0)
        if info.has_video and info.kind != "audio":
            vp = self.processor.video_processor if info.kind == "video" \
                else self.processor.image_processor
            count = 1
            if info.kind == "video":
                duration = info.duration or 0.0
                count = (min(math.ceil(duration * fps), frames or MAX_FRAMES) if fps
                         else (frames or math.ceil(duration * DEFAULT_FPS)))
                count = max(count, 1)
            factor = vp.patch_size * vp.merge_size
            low, high = _pixel_limits(self.processor, info.kind)
            if info.kind == "video":  # the reference per-frame cap (cap_pixels_per_frame)
                share = int(vp.max_video_tokens * factor * factor * 0.9)
                high = max(min(high, share * vp.temporal_patch_size // count), int(low * 1.05))
            if not info.height or not info.width:
                raise MediaError(path, "no picture size in the file's header")
            try:
                h, w = smart_resize(info.height, info.width, factor, low, high)
            except ValueError as err:  # e.g. an aspect ratio over 200
                raise MediaError(path, f"Qwen2.5-Omni's processor refuses this picture "
                                       f"({info.width} x {info.height} px): {err}") from None
            grids = math.ceil(count / vp.temporal_patch_size) if info.kind == "video" else 1
            budget.frames = count
            budget.video = grids * (h // (vp.patch_size * vp.merge_size)) * (
                w // (vp.patch_size * vp.merge_size))
        if info.has_audio and info.kind != "image" and audio:
            seconds = info.duration or 0.0
            if seconds > MAX_AUDIO_SECONDS:
                raise UsageError(f"{path}: {seconds:.0f} s of audio; Qwen2.5-Omni's audio "
                                 f"front end takes at most {MAX_AUDIO_SECONDS:.0f} s: pass "
                                 "--no-audio or cut the clip")
            budget.audio = audio_tokens(math.ceil(seconds * 100))
        if budget.total + TEXT_MARGIN > self.context:
            lower = "--fps or --frames" if info.kind == "video" else "the image size"
            raise UsageError(
                f"{path}: {budget.frames} frames make {budget.video} video tokens"
                f"{f' and the audio {budget.audio}' if budget.audio else ''}: "
                f"{budget.total} tokens, over the model's context of {self.context}; "
                f"lower {lower}{' or pass --no-audio' if budget.audio else ''}")
        return budget


def _pixel_limits(processor: Any, kind: str) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` the processor resizes to: for videos the processor-level
    ``videos_kwargs['size']`` (it overrides the video processor's own), for images the image
    processor's ``size``."""
    if kind == "video":
        size = type(processor).videos_kwargs.get("size") or processor.video_processor.size
    else:
        size = processor.image_processor.size
    return int(size["shortest_edge"]), int(size["longest_edge"])


# --- encoders (tower outputs, cached) ------------------------------------------------------------

class OmniTower(nn.Module):
    """One of the thinker's towers run as the processor would feed it, for the feature cache.

    Args:
        thinker: the loaded thinker (its ``visual`` / ``audio_tower`` are used, not copied).
        processor: its processor. kind: ``video``, ``image`` or ``audio``.
    """

    def __init__(self, thinker: Any, processor: Any, kind: str) -> None:
        super().__init__()
        self.thinker, self.processor, self.kind = thinker, processor, kind

    @torch.no_grad()
    def encode_frames(self, frames: Any, fps: float | None = None) -> dict[str, torch.Tensor]:
        """Frames ``[T, H, W, 3] uint8`` (``T`` = 1 for an image) -> ``{"features": [N, H_llm],
        "grid_thw": [3] long, "second_per_grid": [] float (videos)}``: the processor's resize
        and patches, then ``get_video_features`` / ``get_image_features`` (post-merger, LLM
        width). ``fps``: the frames' rate (frames per second), which places them in time
        (``temporal_patch_size / fps`` seconds per grid, as the processor); default 2."""
        import numpy as np

        model = self.thinker.model
        if self.kind == "image":
            inputs = self.processor.image_processor(images=[np.asarray(frames[0])],
                                                    return_tensors="pt")
            grid = inputs["image_grid_thw"]
            out = model.get_image_features(inputs["pixel_values"].to(self.thinker.device),
                                           grid.to(self.thinker.device))
            return {"features": out.pooler_output[0].float().cpu(), "grid_thw": grid[0]}
        fps = fps or DEFAULT_FPS
        size = type(self.processor).videos_kwargs.get("size")
        inputs = self.processor.video_processor(videos=[np.asarray(frames)], size=size,
                                                cap_pixels_per_frame=True, return_tensors="pt")
        grid = inputs["video_grid_thw"]
        out = model.get_video_features(inputs["pixel_values_videos"].to(self.thinker.device),
                                       grid.to(self.thinker.device))
        return {"features": out.pooler_output[0].float().cpu(), "grid_thw": grid[0],
                "second_per_grid": torch.tensor(
                    self.processor.video_processor.temporal_patch_size / fps,
                    dtype=torch.float64)}

    @torch.no_grad()
    def encode_clips(self, spectrogram: Any) -> dict[str, torch.Tensor]:
        """The whole track's log-mel ``[1, 128, M]`` -> ``{"features": [N, H_llm],
        "mel_frames": [] long}`` (``get_audio_features``, 40 ms per token)."""
        mel = torch.as_tensor(spectrogram, dtype=torch.float32).to(self.thinker.device)
        mask = torch.ones(mel.shape[0], mel.shape[-1], dtype=torch.long, device=mel.device)
        out = self.thinker.model.get_audio_features(mel.to(self.thinker.dtype), mask)
        return {"features": out.last_hidden_state.float().cpu(),
                "mel_frames": torch.tensor(mel.shape[-1])}


def _fingerprints(source: dict[str, Any], processor: Any,
                  dtype: Any) -> dict[str, dict[str, Any]]:
    """What changes each tower's output: the weights, the processor's settings, the dtype."""
    vp, ip, fe = processor.video_processor, processor.image_processor, processor.feature_extractor
    common = {"family": "qwen2_5_omni", "source": source,
              "dtype": str(dtype).removeprefix("torch.")}
    video = {"min_max_pixels": _pixel_limits(processor, "video"), "cap_pixels_per_frame": True,
             "max_video_tokens": vp.max_video_tokens, "mean": list(vp.image_mean),
             "std": list(vp.image_std), "patch": vp.patch_size, "merge": vp.merge_size,
             "temporal_patch": vp.temporal_patch_size}
    image = {"min_max_pixels": _pixel_limits(processor, "image"), "mean": list(ip.image_mean),
             "std": list(ip.image_std), "patch": ip.patch_size, "merge": ip.merge_size}
    return {"vision": {"modality": "vision", "tower": "video", **common, "preprocess": video},
            "image": {"modality": "vision", "tower": "image", **common, "preprocess": image},
            "audio": {"modality": "audio", "tower": "audio", **common,
                      "preprocess": {"frontend": "whisper_track", "mel_bins": fe.feature_size,
                                     "hop": fe.hop_length, "n_fft": fe.n_fft}}}


def thinker_directory(directory: Path) -> Path:
    """``directory`` itself when every shard its weight index names is present; else a view of
    it (symbolic links, under ``$VLM_HOME/views``; rebuilt when the directory's files change)
    whose index names only the thinker's shards, which is what ``vlm download`` fetches
    (:func:`vlm_cli.hub.index_shards`).

    Raises:
        VlmError: a shard holding thinker weights is missing.
    """
    import os
    import shutil
    import tempfile

    from vlm_cli.cache import cache_root
    from vlm_cli.hub import SPEECH_OUTPUT_PREFIXES

    index_path = directory / "model.safetensors.index.json"
    if not index_path.is_file():
        return directory
    index = json.loads(index_path.read_text())
    weight_map = index.get("weight_map", {})
    if all((directory / shard).is_file() for shard in set(weight_map.values())):
        return directory
    kept = {k: v for k, v in weight_map.items() if not k.startswith(SPEECH_OUTPUT_PREFIXES)}
    absent = sorted({v for v in kept.values() if not (directory / v).is_file()})
    if absent:
        raise VlmError(f"{directory}: thinker weight shard {absent[0]} is missing; run "
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
    """A Qwen2.5-Omni checkpoint's thinker as a :class:`~vlm_cli.model.families.Loaded`, in
    ``dtype`` (default: bf16 on CUDA, fp32 on CPU) on ``device``; the towers' outputs are
    cached (encoder sources ``vision``, ``image``, ``audio``).

    Raises:
        VlmError: thinker weights are missing.
    """
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from vlm_cli.cache import FeatureCache
    from vlm_cli.hub import resolve_pretrained
    from vlm_cli.recipe import DataSpec, LLMSpec, ModelSpec, Recipe, TrainSpec
    from vlm_cli.runtime import resolve_dtype, transformers_errors_only

    dtype = dtype or resolve_dtype("auto", device)
    source_dir = thinker_directory(directory)
    with transformers_errors_only():  # the talker's config (never loaded) names thinker ids
        processor = Qwen2_5OmniProcessor.from_pretrained(source_dir)
        thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            source_dir, dtype=dtype).to(device).eval().requires_grad_(False)
    model = OmniThinker(thinker, processor)
    _, source = resolve_pretrained(name or str(directory), revision, FeatureCache().file_digest)
    fingerprints = _fingerprints(source, processor, dtype)
    towers = {"vision": "video", "image": "image", "audio": "audio"}
    encoders = {feature: EncoderSource(fingerprints[feature],
                                       lambda kind=kind: OmniTower(thinker, processor, kind),
                                       decode=({"frontend": "whisper_track",
                                                "processor": str(source_dir)}
                                               if feature == "audio" else None))
                for feature, kind in towers.items()}
    recipe = Recipe(name="qwen2.5-omni", model=ModelSpec(llm=LLMSpec(
        pretrained=name or str(directory), revision=revision)),
        data=DataSpec(sampling="fps", fps=DEFAULT_FPS, max_frames=MAX_FRAMES),
        train=TrainSpec())
    return Loaded(recipe, model, "qwen2.5-omni", encoders, check=model.check_budget)


#: Our weight keys -> the checkpoint's: none of ours (no connector); transformers maps the hub's
#: ``thinker.model.*`` / ``thinker.visual.*`` / ``thinker.audio_tower.*`` keys itself, both ways.
KEY_MAP: dict[str, str] = {}


def save(model: OmniThinker, out: Path, *, base: str | Path, dtype: Any,
         max_shard_size: str = "2GB", recipe: Any = None) -> None:
    """Write ``model`` (its LLM merged, no adapter) as a Qwen2.5-Omni *thinker* checkpoint into
    ``out``: ``Qwen2_5OmniThinkerForConditionalGeneration.save_pretrained`` (config
    ``model_type`` ``qwen2_5_omni_thinker``, keys in the hub's ``thinker.*`` layout) and the
    processor's files (tokenizer, image / video processor, feature extractor, chat template),
    cast to ``dtype``. ``Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(out)`` and
    ``Qwen2_5OmniProcessor.from_pretrained(out)`` load it; the talker is not part of it."""
    del base, recipe  # everything is in the loaded thinker and processor
    model.thinker.to(dtype).save_pretrained(out, safe_serialization=True,
                                            max_shard_size=max_shard_size)
    model.processor.save_pretrained(out)
