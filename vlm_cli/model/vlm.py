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
from collections.abc import Sequence
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
    """

    vision: torch.Tensor | None = None
    audio: torch.Tensor | None = None


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

    def embed(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[MediaInput]],
              labels: Sequence[Sequence[int]] | None = None, padding_side: str = "right",
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token ids with placeholders -> padded ``inputs_embeds``.

        Args:
            input_ids: per sample, token ids (placeholders included).
            media: per sample, one :class:`MediaInput` per placeholder, in order.
            labels: per sample, labels aligned with ``input_ids`` (or None at inference).
            padding_side: ``right`` for training, ``left`` for batched generation.

        Returns:
            ``inputs_embeds [B, L, H]``, ``attention_mask [B, L]`` (long), and ``labels [B, L]``
            with ``IGNORE_INDEX`` on soft-prompt and padding positions (None without labels).

        Raises:
            DataError: a sample's placeholder count differs from its media count.
        """
        embed_tokens = self.llm.get_input_embeddings()
        device = embed_tokens.weight.device
        flat = [m for sample in media for m in sample]
        prompts = iter(self.soft_prompts(flat)) if flat else iter(())
        rows, row_labels = [], []
        for b, ids in enumerate(input_ids):
            ids_t = torch.as_tensor(list(ids), dtype=torch.long, device=device)
            tok_embeds = embed_tokens(ids_t)
            where = [j for j, t in enumerate(ids) if t in self.media_token_ids]
            if len(where) != len(media[b]):
                raise DataError(f"sample {b}: {len(where)} media placeholders but "
                                f"{len(media[b])} media files")
            pieces, lab = [], []
            lab_src = list(labels[b]) if labels is not None else None
            start = 0
            for j in where:
                pieces.append(tok_embeds[start:j])
                prompt = next(prompts).to(tok_embeds.dtype)
                pieces.append(prompt)
                if lab_src is not None:
                    lab += lab_src[start:j] + [IGNORE_INDEX] * prompt.shape[0]
                start = j + 1
            pieces.append(tok_embeds[start:])
            if lab_src is not None:
                lab += lab_src[start:]
            rows.append(torch.cat(pieces))
            row_labels.append(lab)
        length = max(r.shape[0] for r in rows)
        hidden = rows[0].shape[1]
        embeds = rows[0].new_zeros(len(rows), length, hidden)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        out_labels = (torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long,
                                 device=device) if labels is not None else None)
        for b, row in enumerate(rows):
            n = row.shape[0]
            sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
            embeds[b, sl] = row
            mask[b, sl] = 1
            if out_labels is not None:
                out_labels[b, sl] = torch.as_tensor(row_labels[b], device=device)
        return embeds, mask, out_labels

    def forward(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                media: Sequence[Sequence[MediaInput]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over target (assistant) tokens, and their count.

        Returns:
            ``(loss_sum, n_tokens)``: the caller divides by the token count of the whole global
            batch, so that accumulation steps and processes weigh every token equally.
        """
        embeds, mask, lab = self.embed(input_ids, media, labels)
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = lab[:, 1:]
        loss = nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                           shift_labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                           reduction="sum")
        return loss, (shift_labels != IGNORE_INDEX).sum()

    @torch.no_grad()
    def generate_batch(self, input_ids: Sequence[Sequence[int]],
                       media: Sequence[Sequence[MediaInput]], *,
                       max_new_tokens: int = 32) -> list[list[int]]:
        """Greedy answers for several prompts at once (left-padded; the same tokens as
        :meth:`generate` one by one). Returns each answer's ids without end-of-sequence."""
        embeds, mask, _ = self.embed(input_ids, media, padding_side="left")
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask,
                                max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=self.tokenizer.eos_token_id,
                                pad_token_id=self.tokenizer.pad_token_id)
        answers = []
        for row in out.tolist():
            eos = self.tokenizer.eos_token_id
            answers.append(row[: row.index(eos)] if eos in row else row)
        return answers

    @torch.no_grad()
    def generate(self, input_ids: Sequence[int], media: Sequence[MediaInput], *,
                 max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                 streamer: Any = None) -> list[int]:
        """Generate an answer for one prompt (ending with the assistant prefix).

        Greedy when ``temperature`` is 0 (deterministic), else sampling with temperature and
        top-p. Uses the LLM's KV cache (transformers ``generate``).

        Returns:
            The generated token ids, without the prompt and without the end-of-sequence token.
        """
        embeds, mask, _ = self.embed([input_ids], [list(media)], padding_side="left")
        sample = temperature > 0
        out = self.llm.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
            do_sample=sample, temperature=temperature if sample else None,
            top_p=top_p if sample else None, top_k=None,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            streamer=streamer)
        ids = out[0].tolist()
        if self.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(self.tokenizer.eos_token_id)]
        return ids
