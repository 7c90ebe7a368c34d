"""The video soft prompt's token budget: fit a long video's features to what the LLM can take.

The feature cache holds the features of every sampled frame (or clip window); how many of them
reach the LLM is decided here, per connector family, and always reported (:class:`VideoBudget`):

- Q-Former (Video-LLaMA §2.1): the soft prompt is ``num_query_tokens`` long whatever the frame
  count, but one learned position embedding is added per frame, so at most ``max_positions``
  frames can go in: beyond that the frames are **subsampled uniformly** (Video-LLaVA's rule,
  :func:`~vlm_cli.media.sampling.sample_frame_indices`) down to ``max_positions``.
- MLP projector (Video-LLaVA §3.1): every token of every frame becomes a soft-prompt token
  (``tokens_per_frame`` after spatial pooling, if the recipe asks for it). When the frames make
  more than the budget, consecutive frames are **averaged in time** (temporal average pooling,
  as PLLaVA / Video-ChatGPT pool frame features) into as many groups as the budget allows.
- A per-clip encoder (ViViT) has already cut the frames into clip windows
  (:meth:`vlm_cli.model.encoders.VisionEncoder.encode_frames`): its windows are the rows pooled.

The budget is the recipe's ``model.video_connector.max_tokens`` when set, else the LLM's context
less room for the text: ``context - min(1024, context // 2)`` (tiny-av: 256 - 128 = 128; a 4096
context: 3072, which Video-LLaVA's 8 × 257 tokens fit).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vlm_cli.errors import UsageError

if TYPE_CHECKING:
    from vlm_cli.model.vlm import MediaInput, VideoLanguageModel


@dataclasses.dataclass
class VideoBudget:
    """What of a video's features reached the LLM.

    Attributes:
        frames_sampled: frames taken from the file (``len(timestamps)``).
        frames_used: feature rows given to the connector: frames, or clip windows of a per-clip
            encoder, after pooling / subsampling.
        pooled: ``"none"``, or what was done, e.g. ``"temporal mean pooling 450 -> 128 rows"``.
        tokens: video soft-prompt tokens. max_tokens: the budget.
        clip_windows: windows of ``clip_frames`` frames a per-clip encoder made (None for a
            per-frame encoder); padded_frames: frames repeated to fill the last window.
    """

    frames_sampled: int
    frames_used: int
    pooled: str
    tokens: int
    max_tokens: int
    clip_windows: int | None = None
    clip_frames: int | None = None
    padded_frames: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``vlm ask --json``'s ``budget``)."""
        return dataclasses.asdict(self)


def video_token_budget(model: VideoLanguageModel) -> int:
    """The recipe's ``model.video_connector.max_tokens``, else the LLM's context
    (``max_position_embeddings``) less ``min(1024, context // 2)`` for the text."""
    spec = model.spec.video_connector
    if spec is not None and spec.max_tokens is not None:
        return int(spec.max_tokens)
    context = int(getattr(model.llm.config, "max_position_embeddings", 0) or 4096)
    return context - min(1024, context // 2)


def fit_video(model: VideoLanguageModel, media: MediaInput, *,
              clip_frames: int | None = None) -> tuple[MediaInput, VideoBudget | None]:
    """``media`` with its vision features fitted to the video token budget.

    Args:
        model: the model (its video connector decides the rule: see the module notes).
        media: features from the cache; ``vision [R, N, D]`` rows, ``vision_meta["timestamps"]
            [T]`` seconds of the sampled frames.
        clip_frames: frames per clip of a per-clip encoder (ViViT), else None.

    Returns:
        ``(media, budget)``: a new :class:`MediaInput` when rows were pooled or subsampled (the
        original is unchanged; subsampled frames keep their own timestamps); ``budget`` is None when there are no vision features or the
        connector is a family's own (nothing is changed then).

    Raises:
        UsageError: a single frame already makes more tokens than the budget.
    """
    from vlm_cli.media.sampling import sample_frame_indices
    from vlm_cli.model.connectors import MLPProjector, QFormerConnector

    feats = media.vision
    connector = model.connectors["video"] if "video" in model.connectors else None
    if feats is None or not isinstance(connector, (MLPProjector, QFormerConnector)):
        return media, None
    rows, n = int(feats.shape[0]), int(feats.shape[1])
    stamps = media.vision_meta.get("timestamps")
    sampled = int(stamps.numel()) if stamps is not None else rows
    budget = video_token_budget(model)
    windows = padded = None
    if clip_frames and clip_frames > 1:
        windows = -(-sampled // clip_frames)
        padded = windows * clip_frames - sampled if sampled > 1 else 0
    pooled = "none"
    meta = media.vision_meta
    if isinstance(connector, QFormerConnector):
        cap = connector.position_embedding.num_embeddings
        if rows > cap:
            keep = torch.as_tensor(sample_frame_indices(rows, cap))
            feats = feats[keep]
            if stamps is not None and stamps.numel() == rows:  # per-frame rows: their times too
                meta = {**meta, "timestamps": stamps[keep]}
            pooled = (f"uniform subsampling {rows} -> {cap} rows (the Q-Former's frame "
                      "position embeddings)")
    else:
        per = connector.tokens_per_frame or n
        allowed = budget // per
        if allowed < 1:
            raise UsageError(f"one frame makes {per} video tokens, over the budget of {budget} "
                             "(raise model.video_connector.max_tokens or set tokens_per_frame)")
        if rows > allowed:
            edges = np.linspace(0, rows, allowed + 1).round().astype(int)
            feats = torch.stack([feats[a:b].float().mean(0).to(feats.dtype)
                                 for a, b in zip(edges[:-1], edges[1:])])
            pooled = (f"temporal mean pooling {rows} -> {allowed} rows (groups of "
                      f"{rows / allowed:.2f} consecutive rows, to fit {budget} tokens)")
    if feats is not media.vision:
        media = dataclasses.replace(media, vision=feats, vision_meta=meta)
    tokens = connector.num_tokens(int(feats.shape[0]), n)
    return media, VideoBudget(sampled, int(feats.shape[0]), pooled, int(tokens), budget,
                              windows, clip_frames if windows else None, padded or 0)
