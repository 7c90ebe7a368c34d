"""Connectors: encoder features -> a soft prompt in the LLM's embedding space.

- :class:`MLPProjector`: Video-LLaVA's projector (§3.1, Table 7: two linear layers with GELU),
  shared by images and videos, applied to every visual token; optionally average-pools each
  frame's patch grid to fewer tokens first.
- :class:`QFormerConnector`: Video-LLaMA's Video / Audio Q-Former (§2.1): learned position
  embeddings (one per frame or audio clip) are added to the encoder features, N learned query
  tokens cross-attend to all of them in every layer of a transformers ``Blip2QFormerModel``, and a
  linear layer projects the queries to the LLM width.

Inputs are features ``[B, T, N, D]`` (T frames or clips, N tokens each; audio pooled per clip is
``N = 1``) with a mask ``[B, T]`` (True = real frame / clip) for batches of different lengths.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlm_cli.recipe import ConnectorSpec


class MLPProjector(nn.Module):
    """Linear -> GELU -> Linear on every token (Video-LLaVA §3.1).

    Args:
        in_dim: encoder feature width D. out_dim: LLM hidden size.
        spec: ``hidden_size`` (None = out_dim) and ``tokens_per_frame`` (pooling; None = all).
    """

    def __init__(self, in_dim: int, out_dim: int, spec: ConnectorSpec) -> None:
        super().__init__()
        hidden = spec.hidden_size or out_dim
        self.tokens_per_frame = spec.tokens_per_frame
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def num_tokens(self, frames: int, tokens: int) -> int:
        """Soft-prompt length for ``frames`` frames of ``tokens`` tokens each."""
        return frames * (self.tokens_per_frame or tokens)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T, N, D]`` -> ``[B, T * N', out_dim]`` (N' = tokens_per_frame or N).

        Masked frames are projected too; the caller drops them (see :meth:`num_tokens`).

        Raises:
            ValueError: pooling asked for but N is not a square patch grid.
        """
        b, t, n, d = features.shape
        if self.tokens_per_frame is not None and self.tokens_per_frame != n:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"cannot pool {n} tokens per frame: not a square patch grid "
                                 "(use select: patch to drop the CLS token)")
            out = math.isqrt(self.tokens_per_frame)
            grid = features.reshape(b * t, side, side, d).permute(0, 3, 1, 2)
            grid = nn.functional.adaptive_avg_pool2d(grid, out)
            features = grid.permute(0, 2, 3, 1).reshape(b, t, out * out, d)
        return self.net(features.flatten(1, 2))


class QFormerConnector(nn.Module):
    """Video-LLaMA's Video / Audio Q-Former with position embeddings and a linear projection.

    Args:
        in_dim: encoder feature width D. out_dim: LLM hidden size.
        spec: query tokens, Q-Former size, ``max_positions`` (frames or clips).
    """

    def __init__(self, in_dim: int, out_dim: int, spec: ConnectorSpec) -> None:
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        hidden = spec.hidden_size
        config = Blip2QFormerConfig(
            hidden_size=hidden, num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=spec.intermediate_size or 4 * hidden,
            encoder_hidden_size=in_dim, cross_attention_frequency=1,
            hidden_dropout_prob=spec.dropout, attention_probs_dropout_prob=spec.dropout)
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.randn(1, spec.num_query_tokens, hidden) * 0.02)
        self.position_embedding = nn.Embedding(spec.max_positions, in_dim)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.proj = nn.Linear(hidden, out_dim)
        self.num_query_tokens = spec.num_query_tokens

    def num_tokens(self, frames: int, tokens: int) -> int:
        """Soft-prompt length: the number of query tokens, whatever the input length."""
        return self.num_query_tokens

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T, N, D]`` (+ mask ``[B, T]``) -> ``[B, num_query_tokens, out_dim]``.

        Raises:
            ValueError: more frames / clips than ``max_positions``.
        """
        b, t, n, d = features.shape
        if t > self.position_embedding.num_embeddings:
            raise ValueError(f"{t} frames/clips but the Q-Former has "
                             f"{self.position_embedding.num_embeddings} position embeddings")
        pos = self.position_embedding(torch.arange(t, device=features.device))
        states = (features + pos[None, :, None, :].to(features.dtype)).flatten(1, 2)
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=features.device)
        attn = mask[:, :, None].expand(b, t, n).reshape(b, t * n).long()
        queries = self.query_tokens.expand(b, -1, -1).to(features.dtype)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=states,
                           encoder_attention_mask=attn).last_hidden_state
        return self.proj(out)


def build_connector(spec: ConnectorSpec, in_dim: int, out_dim: int) -> nn.Module:
    """The connector named by ``spec.type`` (``mlp`` or ``qformer``)."""
    cls = {"mlp": MLPProjector, "qformer": QFormerConnector}[spec.type]
    return cls(in_dim, out_dim, spec)
