"""ImageBind's audio tower (Girdhar et al., CVPR 2023, §3-4), ported small: the frozen audio
encoder of Video-LLaMA's audio branch (arXiv 2306.02858, §2.1.2).

No well-kept library ships ImageBind (transformers and timm do not), so this module rebuilds the
audio path of ``ImageBindModel`` alone, with torch's own ``nn.MultiheadAttention``, and reads only
the ``modality_*.audio.*`` tensors of a released ``imagebind_huge.pth`` (:data:`KEY_MAP`). It is
proven against the original code by golden fixtures (``tests/fixtures/video_llama``).

Per 2 s clip: a ``[1, 128, 204]`` Kaldi fbank (:func:`vlm_cli.media.audio_clip_fbanks` with
ImageBind's settings) → Conv2d 16×16 stride 10 without bias (12 × 19 patches) → LayerNorm →
CLS token + learned positions (229 × D) → ``num_blocks`` pre-LN blocks (multi-head attention with
``add_bias_kv``, GELU MLP of 4 D; LayerNorm eps 1e-6) → head LayerNorm (eps 1e-6) → the CLS token
→ Linear D → E without bias → L2 normalisation × 20 (``LearnableLogitScaling(20, learnable=False)``,
capped at 100). ImageBind-Huge's audio tower: D = 768, 12 blocks, 12 heads, E = 1024.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

#: ImageBind checkpoint key (regex) -> our key, for the audio modality; every other key of the
#: checkpoint (vision, text, depth, thermal, IMU) is never read.
KEY_MAP = {
    r"modality_preprocessors\.audio\.cls_token": "cls_token",
    r"modality_preprocessors\.audio\.rgbt_stem\.proj\.weight": "stem.weight",
    r"modality_preprocessors\.audio\.rgbt_stem\.norm_layer\.(weight|bias)": r"stem_norm.\1",
    r"modality_preprocessors\.audio\.pos_embedding_helper\.pos_embed": "pos_embed",
    r"modality_trunks\.audio\.blocks\.(\d+)\.(.+)": r"blocks.\1.\2",
    r"modality_heads\.audio\.0\.(weight|bias)": r"head_norm.\1",
    r"modality_heads\.audio\.2\.weight": "head.weight",
    r"modality_postprocessors\.audio\.1\.log_logit_scale": "log_logit_scale",
}
#: Prefix of every key the audio tower reads.
AUDIO_PREFIXES = ("modality_preprocessors.audio.", "modality_trunks.audio.",
                  "modality_heads.audio.", "modality_postprocessors.audio.")


def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageBind's audio keys -> :class:`ImageBindAudio`'s (:data:`KEY_MAP`); other keys dropped."""
    out = {}
    for key, value in state.items():
        if not key.startswith(AUDIO_PREFIXES):
            continue
        for pattern, ours in KEY_MAP.items():
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, ours, key)] = value
                break
    return out


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-LN transformer block (ImageBind's ``BlockWithMasking`` without layer scale)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=True)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[L, B, D]`` (sequence first, as ImageBind's trunk) -> same."""
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class ImageBindAudio(nn.Module):
    """ImageBind's audio encoder: fbank clips -> one embedding per clip.

    Args:
        embed_dim: trunk width D (768 in ImageBind-Huge).
        num_blocks: transformer blocks (12). num_heads: attention heads (12).
        out_dim: embedding width E (1024).
        kernel, stride: the patch stem's (16, 10), in fbank bins / frames.
        num_mel_bins, target_frames: the fbank's shape (128 × 204).
    """

    def __init__(self, embed_dim: int = 768, num_blocks: int = 12, num_heads: int = 12,
                 out_dim: int = 1024, kernel: int = 16, stride: int = 10,
                 num_mel_bins: int = 128, target_frames: int = 204) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, embed_dim, kernel, stride, bias=False)
        self.stem_norm = nn.LayerNorm(embed_dim)  # eps 1e-5, as ImageBind's stem
        patches = ((num_mel_bins - kernel) // stride + 1) * ((target_frames - kernel) // stride + 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads) for _ in range(num_blocks))
        self.head_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, out_dim, bias=False)
        self.register_buffer("log_logit_scale", torch.tensor(math.log(20.0)))
        self.num_mel_bins, self.target_frames = num_mel_bins, target_frames

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], num_heads: int | None = None,
                   ) -> ImageBindAudio:
        """Build from an ImageBind checkpoint's state dict (only the audio keys are read; widths
        and depth from their shapes).

        Args:
            num_heads: attention heads; default ``D / 64`` (ImageBind-Huge: 768 / 64 = 12).

        Raises:
            KeyError: an audio tensor of the tower is missing from ``state``.
        """
        ours = convert_state(state)
        dim = ours["cls_token"].shape[-1]
        blocks = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("blocks."))
        kernel, stride = ours["stem.weight"].shape[-1], 10
        model = cls(dim, blocks, num_heads or max(1, dim // 64), ours["head.weight"].shape[0],
                    kernel, stride)
        missing, unexpected = model.load_state_dict(ours, strict=False)
        if missing or unexpected:
            raise KeyError(f"ImageBind audio tower: missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}")
        return model.eval().requires_grad_(False)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """``[K, 1, num_mel_bins, target_frames]`` (or ``[K, target_frames, num_mel_bins]``, our
        fbank layout) float -> ``[K, E]`` embeddings, L2-normalised × 20."""
        x = fbank
        if x.dim() == 3:  # [K, frames, bins] -> ImageBind's [K, 1, bins, frames]
            x = x.transpose(1, 2)[:, None]
        x = self.stem_norm(self.stem(x.to(self.stem.weight.dtype)).flatten(2).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = x.transpose(0, 1)
        for block in self.blocks:
            x = block(x)
        x = self.head(self.head_norm(x.transpose(0, 1))[:, 0])
        scale = self.log_logit_scale.exp().clamp(max=100.0)
        return nn.functional.normalize(x, dim=-1) * scale

    @torch.no_grad()
    def encode_clips(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """fbank clips ``[K, target_frames, num_mel_bins]`` -> ``[K, E]`` on CPU."""
        return self(torch.as_tensor(spectrogram).to(self.stem.weight.device)).cpu()
