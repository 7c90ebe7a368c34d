"""``VideoLanguageModel``: connectors that turn cached encoder features into soft prompts, spliced
into the token embeddings of a causal LLM in place of the ``<video>`` / ``<image>`` / ``<audio>``
placeholders.

A ``<video>`` placeholder becomes the video connector's tokens followed by the audio connector's
tokens of the same clip when the recipe has audio and the clip has a track (Video-LLaMA §2.1
feeds both branches' soft prompts to the LLM); ``<image>`` uses the video connector (Video-LLaVA's
shared projector); ``<audio>`` the audio connector alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from vlm_cli.errors import DataError
from vlm_cli.model.chat import IGNORE_INDEX, MEDIA_TOKENS
from vlm_cli.model.connectors import build_connector
from vlm_cli.recipe import ModelSpec


@dataclasses.dataclass
class MediaInput:
    """Features of one placeholder's media file.

    Attributes:
        vision: ``[T, N, D_v]`` per-frame features (video or image), or None.
        audio: ``[K, D_a]`` (pooled) or ``[K, N, D_a]`` per-clip features, or None (no audio
            track, audio disabled, or a recipe without audio).
        vision_meta, audio_meta: the other tensors cached with them (frame timestamps in s,
            clip starts in s; a family's own, e.g. Qwen2.5-Omni's ``grid_thw``).
    """

    vision: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    vision_meta: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    audio_meta: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class VideoLanguageModel(nn.Module):
    """Connectors + a causal LLM (Video-LLaMA / Video-LLaVA, built from a recipe).

    Args:
        spec: the recipe's ``model`` section.
        llm: the causal LM (a transformers model, possibly wrapped by peft).
        tokenizer: its tokenizer, with the media tokens.
        feature_dims: encoder feature width per modality (``{"vision": D_v, "audio": D_a}``).
    """

    def __init__(self, spec: ModelSpec, llm: nn.Module, tokenizer: Any,
                 feature_dims: dict[str, int]) -> None:
        super().__init__()
        self.spec = spec
        self.llm = llm
        self.tokenizer = tokenizer
        self.feature_dims = dict(feature_dims)
        width = llm.get_input_embeddings().embedding_dim
        self.connectors = nn.ModuleDict()
        if spec.video_connector is not None:
            self.connectors["video"] = build_connector(spec.video_connector,
                                                       feature_dims["vision"], width)
        if spec.audio_connector is not None:
            self.connectors["audio"] = build_connector(spec.audio_connector,
                                                       feature_dims["audio"], width)
        vocab = tokenizer.get_vocab()  # a text-only LLM (an eval judge) may have none of them
        self.media_token_ids = {vocab[t]: t for t in MEDIA_TOKENS if t in vocab}

    #: Whether :meth:`encode_prompt` words the prompt after the media (a family's model, e.g.
    #: Video-LLaMA's, says so; callers then pass the conversation's media).
    prompt_uses_media = False
    #: No system turn unless the user gives one (``--system``); members of
    #: :class:`vlm_cli.model.protocol.LanguageModel`, as the two below.
    default_system: str | None = None
    #: Our connectors' soft prompts are fitted to the video token budget by the pipeline.
    fits_video_budget = True
    #: The LLM is a causal LM with its own head: peft's ``CAUSAL_LM`` task.
    lora_task_type = "CAUSAL_LM"

    def release_towers(self) -> None:
        """Nothing to release: the frozen encoders are not part of this module (see
        :class:`vlm_cli.model.protocol.LanguageModel`)."""

    def encode_prompt(self, turns: Sequence[dict[str, Any]],
                      media: Sequence[MediaInput] | None = None) -> list[int]:
        """Token ids of a conversation ending in a user turn, plus the assistant prefix
        (:func:`vlm_cli.model.chat.encode_prompt`: the tokenizer's chat template). ``media``
        (the conversation's files, in placeholder order) does not change the template here."""
        from vlm_cli.model.chat import encode_prompt

        return encode_prompt(self.tokenizer, turns)

    def encode_conversation(self, turns: Sequence[dict[str, Any]], max_length: int,
                            media: Sequence[MediaInput] | None = None,
                            ) -> tuple[list[int], list[int]]:
        """Ids and labels (assistant tokens only) of a training conversation
        (:func:`vlm_cli.model.chat.encode_conversation`); ``media`` as for
        :meth:`encode_prompt`."""
        from vlm_cli.model.chat import encode_conversation

        return encode_conversation(self.tokenizer, turns, max_length)

    # --- soft prompts --------------------------------------------------------------------------

    def _connect(self, name: str, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run connector ``name`` on a list of ``[T_i, N, D]`` tensors (batched, padded over T)."""
        connector = self.connectors[name]
        param = next(connector.parameters())
        t_max = max(f.shape[0] for f in feats)
        batch = torch.zeros(len(feats), t_max, *feats[0].shape[1:], dtype=param.dtype,
                            device=param.device)
        mask = torch.zeros(len(feats), t_max, dtype=torch.bool, device=param.device)
        for i, f in enumerate(feats):
            batch[i, : f.shape[0]] = f.to(param.device, param.dtype)
            mask[i, : f.shape[0]] = True
        out = connector(batch, mask)
        return [out[i, : connector.num_tokens(f.shape[0], f.shape[1])] for i, f in enumerate(feats)]

    def prompt_lengths(self, media: Sequence[MediaInput]) -> list[int]:
        """Soft-prompt rows per media input (what :meth:`soft_prompts` returns, counted from the
        feature shapes without running a connector).

        Raises:
            DataError: a modality without its connector, or an input with no features.
        """
        lengths = []
        for i, m in enumerate(media):
            n = 0
            for modality, name in (("vision", "video"), ("audio", "audio")):
                feats = getattr(m, modality)
                if feats is None:
                    continue
                if name not in self.connectors:
                    raise DataError(f"the model has no {name} connector for {modality} features")
                n += self.connectors[name].num_tokens(feats.shape[0],
                                                      feats.shape[1] if feats.dim() > 2 else 1)
            if not n:
                raise DataError(f"media input {i} has neither vision nor audio features")
            lengths.append(n)
        return lengths

    def soft_prompts(self, media: Sequence[MediaInput]) -> list[torch.Tensor]:
        """One ``[M_i, H]`` soft prompt per media input (video tokens, then audio tokens)."""
        parts: list[list[torch.Tensor]] = [[] for _ in media]
        for modality, name in (("vision", "video"), ("audio", "audio")):
            index = [i for i, m in enumerate(media) if getattr(m, modality) is not None]
            if not index:
                continue
            if name not in self.connectors:
                raise DataError(f"the model has no {name} connector for {modality} features")
            feats = [getattr(media[i], modality) for i in index]
            feats = [f[:, None] if f.dim() == 2 else f for f in feats]  # pooled audio: N = 1
            for i, prompt in zip(index, self._connect(name, feats)):
                parts[i].append(prompt)
        for i, p in enumerate(parts):
            if not p:
                raise DataError(f"media input {i} has neither vision nor audio features")
        return [torch.cat(p) for p in parts]

    # --- embedding and loss --------------------------------------------------------------------

    def expand(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[MediaInput]],
               labels: Sequence[Sequence[int]] | None = None,
               ) -> tuple[list[list[int]], list[list[int]] | None]:
        """Expand each placeholder token into as many copies as its soft prompt has rows (as
        transformers' Video-LLaVA processor expands ``<video>`` at tokenisation); the rows are
        counted by :meth:`prompt_lengths`, no connector runs.

        Returns:
            ``(ids, labels)``: per sample, the expanded ids (and labels, with ``IGNORE_INDEX`` on
            every placeholder copy; None without labels).

        Raises:
            DataError: a sample's placeholder count differs from its media count.
        """
        for b, ids in enumerate(input_ids):
            found = sum(t in self.media_token_ids for t in ids)
            if found != len(media[b]):
                raise DataError(f"sample {b}: {found} media placeholders but {len(media[b])} "
                                "media files")
        lengths = iter(self.prompt_lengths([m for sample in media for m in sample]))
        rows, label_rows = [], [] if labels is not None else None
        for b, ids in enumerate(input_ids):
            row, lab = [], []
            for j, t in enumerate(ids):
                copies = next(lengths) if t in self.media_token_ids else 1
                row += [t] * copies
                if labels is not None:
                    lab += [IGNORE_INDEX] * copies if copies > 1 or t in self.media_token_ids \
                        else [labels[b][j]]
            rows.append(row)
            if label_rows is not None:
                label_rows.append(lab)
        return rows, label_rows

    def _flat_prompts(self, media: Sequence[Sequence[MediaInput]]) -> list[torch.Tensor]:
        """The soft prompts of every sample's media, in placeholder order."""
        flat = [m for sample in media for m in sample]
        return self.soft_prompts(flat) if flat else []

    def embed(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[MediaInput]],
              labels: Sequence[Sequence[int]] | None = None, padding_side: str = "right",
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token ids with placeholders -> padded ``inputs_embeds`` with the soft prompts in place.

        Placeholders are expanded (:meth:`expand`), the ids embedded, and the soft prompts put in
        with one ``masked_scatter`` after a count check (transformers ``modeling_video_llava``).

        Args:
            input_ids: per sample, token ids (one placeholder per media input).
            media: per sample, one :class:`MediaInput` per placeholder, in order.
            labels: per sample, labels aligned with ``input_ids`` (or None at inference).
            padding_side: ``right`` for training, ``left`` for batched generation.

        Returns:
            ``inputs_embeds [B, L, H]``, ``attention_mask [B, L]`` (long), and ``labels [B, L]``
            with ``IGNORE_INDEX`` on soft-prompt and padding positions (None without labels).

        Raises:
            DataError: a sample's placeholder count differs from its media count, or the
                expanded placeholders and the soft-prompt rows differ in number.
        """
        rows, label_rows = self.expand(input_ids, media, labels)
        ids, mask, lab = self.pad(rows, label_rows, padding_side)
        return self.scatter(ids, mask, self.embed_tokens(ids), self._flat_prompts(media)), mask, lab

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """The LLM's input embeddings of ``ids [B, L]``; placeholder positions (replaced by the
        soft prompts afterwards) are looked up as id 0, so a family's placeholder ids need not be
        in the LLM's vocabulary."""
        media = torch.as_tensor(list(self.media_token_ids), dtype=ids.dtype, device=ids.device)
        return self.llm.get_input_embeddings()(ids.masked_fill(torch.isin(ids, media), 0))

    def pad(self, rows: Sequence[Sequence[int]], label_rows: Sequence[Sequence[int]] | None = None,
            padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Pad expanded id rows (and labels) to ``[B, L]`` tensors on the LLM's device:
        ``(ids, attention_mask, labels)``; padding is the pad token, mask 0, label
        ``IGNORE_INDEX``."""
        device = self.llm.get_input_embeddings().weight.device
        length = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        lab = (torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long, device=device)
               if label_rows is not None else None)
        for b, row in enumerate(rows):
            n = len(row)
            sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
            ids[b, sl] = torch.as_tensor(row, device=device)
            mask[b, sl] = 1
            if lab is not None:
                lab[b, sl] = torch.as_tensor(label_rows[b], device=device)
        return ids, mask, lab

    def scatter(self, ids: torch.Tensor, mask: torch.Tensor, embeds: torch.Tensor,
                prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Put the soft prompts ``[M_i, H]`` (in order) at the placeholder positions of
        ``embeds [B, L, H]``: one ``masked_scatter``.

        Raises:
            DataError: the number of placeholder positions differs from the soft-prompt rows.
        """
        where = torch.isin(ids, torch.as_tensor(list(self.media_token_ids), device=ids.device))
        where &= mask.bool()
        rows = sum(p.shape[0] for p in prompts)
        if int(where.sum()) != rows:
            raise DataError(f"media tokens: {int(where.sum())}, soft-prompt rows: {rows}")
        if not rows:
            return embeds
        values = torch.cat(list(prompts)).to(embeds.dtype)
        return embeds.masked_scatter(where[..., None].expand_as(embeds), values)

    def forward(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                media: Sequence[Sequence[MediaInput]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over target (assistant) tokens, and their count.

        Returns:
            ``(loss_sum, n_tokens)``: the caller divides by the token count of the whole global
            batch, so that accumulation steps and processes weigh every token equally.
        """
        embeds, mask, lab = self.embed(input_ids, media, labels)
        return next_token_loss(self.llm(inputs_embeds=embeds, attention_mask=mask).logits, lab)

    @torch.no_grad()
    def logits(self, input_ids: Sequence[int], media: Sequence[MediaInput]) -> torch.Tensor:
        """``[L, vocab]`` float logits of one prompt (merge verification, tests)."""
        embeds, mask, _ = self.embed([input_ids], [list(media)])
        return self.llm(inputs_embeds=embeds, attention_mask=mask).logits[0].float()

    # --- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def stream(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[MediaInput]], *,
               max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
               prefix: Prefix | None = None, ignore_eos: bool = False,
               ) -> Iterator[list[int | None]]:
        """The token generator everything else is built on: prefill, then one decode step per
        yield, with the LLM's KV cache (greedy when ``temperature`` is 0, else temperature and
        top-p sampling).

        Args:
            input_ids, media: as for :meth:`embed`; several prompts are left-padded into a batch.
            prefix: one prompt only: the KV cache of an earlier turn of the same conversation
                (:class:`Prefix`). The longest common prefix of its ids and this prompt's
                expanded ids is kept (when it covers every media token) and only the rest is
                prefilled; the prefix is then updated in place to hold this turn too.
            ignore_eos: run all ``max_new_tokens`` steps (benchmarks).

        Yields:
            Per step, one new token id per prompt; None for prompts that already ended (the
            end-of-sequence token is yielded once, then None). Stops when all have ended or after
            ``max_new_tokens`` steps.
        """
        from transformers import DynamicCache

        eos = self.tokenizer.eos_token_id
        rows, _ = self.expand(input_ids, media)
        ids, mask, _ = self.pad(rows, padding_side="left")
        keep = prefix.reusable(rows) if prefix is not None else 0
        if keep:  # continue the cached conversation: prefill only the new tokens (no padding)
            cache = prefix.cache
            cache.crop(keep - cache.get_seq_length())  # transformers 5: minus tokens to drop
            new = ids[:, keep:]
            embeds = self.embed_tokens(new)
            positions = torch.arange(keep, ids.shape[1], device=ids.device)[None]
            ids = new  # the mask stays [1, keep + new]: cached and new positions
        else:
            cache = DynamicCache()
            # the connectors run on a full prefill only
            embeds = self.scatter(ids, mask, self.embed_tokens(ids), self._flat_prompts(media))
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if prefix is not None:
            prefix.prefilled = int(ids.shape[1])
        fed = [list(r) for r in rows]
        step_input: dict[str, Any] = {"inputs_embeds": embeds}
        done = [False] * len(rows)
        for _ in range(max_new_tokens):
            out = self.llm(**step_input, attention_mask=mask, position_ids=positions,
                           cache=cache, use_cache=True)
            tokens = next_tokens(out.logits[:, -1].float(), temperature, top_p)
            yield [None if d else t for d, t in zip(done, tokens)]
            done = [d or (t == eos and not ignore_eos) for d, t in zip(done, tokens)]
            if all(done):
                break
            for row, t in zip(fed, tokens):
                row.append(t)
            nxt = torch.as_tensor(tokens, device=mask.device)[:, None]
            step_input = {"input_ids": nxt}
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        if prefix is not None:
            prefix.ids, prefix.cache = fed[0][: cache.get_seq_length()], cache

    def generate_batch(self, input_ids: Sequence[Sequence[int]],
                       media: Sequence[Sequence[MediaInput]], *,
                       max_new_tokens: int = 32) -> list[list[int]]:
        """Greedy answers for several prompts at once (left-padded; the same tokens as one by
        one). Returns each answer's ids without end-of-sequence."""
        return collect(self.stream(input_ids, media, max_new_tokens=max_new_tokens),
                       len(input_ids), self.tokenizer.eos_token_id)


@dataclasses.dataclass
class Prefix:
    """The KV cache of a conversation so far (:meth:`VideoLanguageModel.stream`), so that a
    follow-up question prefills only its new tokens, not the soft prompt again (mlx-vlm's prompt
    cache).

    Attributes:
        ids: the expanded token ids whose keys and values ``cache`` holds.
        cache: a transformers ``DynamicCache``, or None before the first turn.
        media_ids: the placeholder token ids (a reusable prefix must cover all of them).
        prefilled: tokens prefilled by the last turn (the whole prompt, or only its new part).
    """

    media_ids: set[int]
    ids: list[int] = dataclasses.field(default_factory=list)
    cache: Any = None
    prefilled: int = 0
    #: A native model's rope deltas of the conversation (TMRoPE: positions of later text).
    rope_deltas: Any = None

    def reusable(self, rows: Sequence[Sequence[int]]) -> int:
        """How many leading tokens of the single prompt in ``rows`` the cache can keep: their
        longest common prefix, if it covers every placeholder copy and leaves at least one token
        to prefill; else 0 (a full prefill)."""
        if self.cache is None or len(rows) != 1:
            return 0
        row = rows[0]
        n = 0
        for a, b in zip(self.ids, row):
            if a != b:
                break
            n += 1
        n = min(n, len(row) - 1)
        last_media = max((i for i, t in enumerate(row) if t in self.media_ids), default=-1)
        return n if n > last_media else 0


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of ``logits [B, L, V]`` against ``labels [B, L]``
    (shifted by one; ``IGNORE_INDEX`` carries no loss), in fp32, and the count of labelled
    tokens: ``(loss_sum, n_tokens)``."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    loss = nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                       shift_labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                       reduction="sum")
    return loss, (shift_labels != IGNORE_INDEX).sum()


def collect(steps: Iterator[list[int | None]], n: int, eos: int | None) -> list[list[int]]:
    """The answers of a token stream (:meth:`VideoLanguageModel.stream`) of ``n`` prompts: each
    prompt's ids in order, without the end-of-sequence token."""
    answers: list[list[int]] = [[] for _ in range(n)]
    for tokens in steps:
        for answer, t in zip(answers, tokens):
            if t is not None and t != eos:
                answer.append(t)
    return answers


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> list[int]:
    """Next token per row of ``logits [B, V]``: argmax when ``temperature`` is 0, else a sample
    from the temperature-scaled distribution restricted to the top-p mass (nucleus sampling,
    Holtzman et al. 2020, as transformers' ``TopPLogitsWarper``)."""
    if temperature <= 0:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the token crossing top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1)[:, 0].tolist()
