"""Frozen encoders: a per-frame vision encoder and a per-clip audio encoder.

Both wrap transformers classes (CLIPVisionModel / SiglipVisionModel, ASTModel) and add only what
the papers specify on top: the vision feature layer and CLS selection of Video-LLaVA §3.1, and one
embedding per 2 s audio clip as in Video-LLaMA §2.1 (AST's pooled output standing in for
ImageBind's). Their feature-cache keys are built beside them, from the same recipe sections, by
:mod:`vlm_cli.model.fingerprint`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import math

import numpy as np
import torch
from torch import nn

from vlm_cli.model.fingerprint import VisionPreprocess, resolve_source, vision_preprocess
from vlm_cli.recipe import AudioEncoderSpec, VisionEncoderSpec
from vlm_cli.runtime import resolve_dtype


def vision_classes(arch: str) -> tuple[type, type]:
    """(config class, model class) of a vision ``arch``; imports that family's modules only
    (``transformers.models.<family>``), not every vision family transformers has."""
    import importlib

    module, config, model = {"clip": ("clip", "CLIPVisionConfig", "CLIPVisionModel"),
                             "siglip": ("siglip", "SiglipVisionConfig", "SiglipVisionModel"),
                             "vivit": ("vivit", "VivitConfig", "VivitModel")}[arch]
    configs = importlib.import_module(f"transformers.models.{module}.configuration_{module}")
    models = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    return getattr(configs, config), getattr(models, model)


def _build(spec: VisionEncoderSpec | AudioEncoderSpec, config_cls: type, model_cls: type,
           digest: Callable[[Path], str]) -> nn.Module:
    """Instantiate ``model_cls`` from the spec's config (seeded random init) or local weights."""
    dtype = resolve_dtype(spec.dtype, "cpu")
    directory, _ = resolve_source(spec, digest)
    if directory is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.init_seed)
            model = model_cls(config_cls(**spec.config)).to(dtype)
    else:
        model = model_cls.from_pretrained(directory, dtype=dtype)
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def only_layers_up_to(model: nn.Module, layer: int) -> Iterator[int]:
    """Run a CLIP / SigLIP vision tower only as deep as hidden state ``layer`` needs.

    ``hidden_states[layer]`` (``layer`` counted as transformers does: 0 is the embeddings'
    output, L the last layer's, -1 = L, -2 = L - 1) depends on the first ``layer mod (L + 1)``
    encoder layers alone; the layers after them (one of ViT-B/16's 12 for Video-LLaVA's layer
    -2) are computed for nothing. Within the block the tower's list of encoder layers is that
    prefix (the same modules; the whole list is restored on exit), so the state is the same
    tensor, bit for bit, computed without them (LLaVA-OneVision's SigLIP tower
    deletes its last layer for good; here it is left out of one forward, so that a tower shared
    with a language model, Video-LLaVA-hf's, keeps all its layers). The tower's encoder is
    ``model.encoder`` (transformers 5's ``CLIPVisionModel``, ``SiglipVisionModel``) or
    ``model.vision_model.encoder`` (older layouts). transformers records hidden states by hooks
    it installs on the layers present at the first forward that asks for them; they are
    installed before any layer is left out, so that later whole forwards record every layer.

    Yields:
        The index of hidden state ``layer`` in that forward's ``hidden_states`` (``layer``
        itself where nothing is cut: ``layer`` -1 or L, whose ``last_hidden_state`` may be
        post-normalised, and 0; towers without ``encoder.layers``, e.g. ViViT's ``encoder.layer``).
    """
    encoder = getattr(getattr(model, "vision_model", model), "encoder", None)
    layers = getattr(encoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        yield layer
        return
    count = len(layers)
    index = layer if layer >= 0 else count + 1 + layer
    if not 0 < index < count:
        yield layer
        return
    from transformers import PreTrainedModel
    from transformers.utils.output_capturing import maybe_install_capturing_hooks

    if isinstance(model, PreTrainedModel):
        # transformers hooks the layers it records hidden states from on the first forward that
        # asks for them, the layers present then: hook them all before any is left out.
        maybe_install_capturing_hooks(model)
    encoder.layers = layers[:index]
    try:
        yield index
    finally:
        encoder.layers = layers


class VisionEncoder(nn.Module):
    """Frozen image encoder applied to every sampled frame (CLIP, SigLIP), or video encoder
    applied once per clip on tubelets spanning several frames (ViViT).

    Args:
        spec: the recipe's ``model.vision`` section.
        digest: file sha256 function used to find local weights (and pin them).
        model: an already loaded vision model, when a checkpoint family provides the tower
            (e.g. Video-LLaVA-hf's ``video_tower``); by default built from ``spec``.
        preprocess: its input size and normalisation (the one of its cache key); by default
            :func:`vlm_cli.model.fingerprint.vision_preprocess` of ``spec``.

    Raises:
        VlmError: pretrained weights not found locally (see :func:`resolve_pretrained`).
    """

    def __init__(self, spec: VisionEncoderSpec, digest: Callable[[Path], str], *,
                 model: nn.Module | None = None,
                 preprocess: VisionPreprocess | None = None) -> None:
        super().__init__()
        self.spec = spec
        pre = preprocess or vision_preprocess(spec, resolve_source(spec, digest)[0])
        self.model = model if model is not None else _build(spec, *vision_classes(spec.arch),
                                                            digest)
        #: The input size and normalisation (S px, mean, std).
        self.preprocessing = pre
        self.image_size = pre.size
        self.per_clip = spec.arch == "vivit"
        self.has_cls = spec.arch in ("clip", "vivit")  # SigLIP's ViT has no CLS token
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames ``[T, H, W, 3] uint8`` RGB -> pixel values ``[T, 3, S, S] float32``.

        CLIP's processing, bit for bit as transformers' torchvision image and video processors
        do it on CPU (``CLIPImageProcessor``, ``VideoLlavaVideoProcessor``): the shortest-edge
        bicubic antialiased resize and centre crop of :func:`vlm_cli.media.resize.clip_resize_crop`
        (a no-op on frames the decode worker already brought to S×S), then
        ``(x - 255 mean) / (255 std)``. S = ``image_size``.
        """
        from vlm_cli.media.resize import clip_resize_crop

        frames = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        x = torch.as_tensor(clip_resize_crop(frames, self.image_size))
        x = x.permute(0, 3, 1, 2).contiguous().float()
        return (x - 255 * self.mean) / (255 * self.std)

    def _select(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.has_cls or self.spec.select == "cls_patch":
            return hidden
        return hidden[:, :1] if self.spec.select == "cls" else hidden[:, 1:]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixel values -> features ``[B, T', N, D]``.

        Per-frame encoders take ``[T, 3, S, S]`` (one clip) and return ``[1, T, N, D]``;
        ViViT takes ``[B, T, 3, S, S]`` (B clips of exactly ``num_frames`` frames) and returns
        ``[B, T / tubelet_t, N, D]`` (or ``[B, 1, 1, D]`` with ``select: cls``). N counts the
        patch tokens (plus the CLS token with ``cls_patch``). The hidden state is
        ``feature_layer``'s; -1 is the final output (``last_hidden_state``).

        Raises:
            VlmError: a ViViT clip with another frame count than the model was built for
                (:meth:`encode_frames` cuts any frame count into clips of the right length).
        """
        from vlm_cli.errors import VlmError

        pixel_values = pixel_values.to(self.model.device, self.model.dtype)
        if self.per_clip and pixel_values.shape[1] != self.model.config.num_frames:
            raise VlmError(f"the vivit vision encoder takes {self.model.config.num_frames} "
                           f"frames per clip, got {pixel_values.shape[1]} (set data.frames)")
        layer = self.spec.feature_layer
        with only_layers_up_to(self.model, layer) as index:
            out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        feats = self._select(out.last_hidden_state if layer == -1 else out.hidden_states[index])
        if not self.per_clip:
            return feats[None]
        b, n, d = feats.shape
        if self.spec.select != "patch":  # CLS alone, or CLS + every tubelet token: one group
            return feats.reshape(b, 1, n, d)
        times = self.model.config.num_frames // self.model.config.tubelet_size[0]
        return feats.reshape(b, times, n // times, d)

    @property
    def clip_frames(self) -> int:
        """Frames the encoder sees at once: ``num_frames`` for a per-clip encoder (ViViT), 1
        for a per-frame one. Frames given in windows whose lengths are multiples of it encode
        to the same features as given all at once (:meth:`encode_frames`)."""
        return int(self.model.config.num_frames) if self.per_clip else 1

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray | torch.Tensor,
                      fps: float | None = None, *, pad: bool = False) -> torch.Tensor:
        """Frames ``[T, H, W, 3] uint8`` -> features ``[T', N, D]`` on CPU in the encoder dtype.

        Per-frame encoders: T' = T. A per-clip encoder (ViViT, ``num_frames`` = C frames per
        clip) encodes consecutive windows of C frames as clips, ``ceil(T / C)`` of them, and
        returns their features one after the other (T' = windows × token groups per clip). A
        still image (T = 1) is a static clip (its frame repeated C times). With ``pad``, a last
        window shorter than C is filled by repeating its last frame (rate sampling, where T
        depends on the file's length; the caller reports it). ``fps`` (the frames' rate) does
        not change these encoders' features.

        Raises:
            VlmError: a per-clip encoder given T > 1 frames, not a multiple of C, without
                ``pad`` (the message names ``data.frames``).
        """
        from vlm_cli.errors import VlmError

        pixels = self.preprocess(frames)
        if not self.per_clip:
            return self(pixels)[0].cpu()
        clip = self.clip_frames
        short = -pixels.shape[0] % clip
        if short and pixels.shape[0] > 1 and not pad:
            raise VlmError(f"the vivit vision encoder takes {clip} frames per clip, got "
                           f"{pixels.shape[0]} (set data.frames to a multiple of {clip})")
        if short:
            pixels = torch.cat([pixels, pixels[-1:].expand(short, -1, -1, -1)])
        clips = pixels.reshape(-1, clip, *pixels.shape[1:])
        out = torch.cat([self(clips[i:i + 16]) for i in range(0, clips.shape[0], 16)])
        return out.flatten(0, 1).cpu()


class AudioEncoder(nn.Module):
    """Frozen audio encoder applied to each 2 s clip's spectrogram: AST on Kaldi fbank, or the
    encoder of a Whisper model on Whisper's log-mel.

    Args:
        spec: the recipe's ``model.audio`` section.
        digest: file sha256 function used to find local weights (and pin them).
        clip_seconds: length of the clips (Whisper: only the encoder positions covering the clip,
            not its padding to ``target_frames``, are pooled / kept).

    Raises:
        VlmError: pretrained weights not found locally, or a Whisper encoder whose input length
            (2 × ``max_source_positions``) differs from ``target_frames``.
    """

    def __init__(self, spec: AudioEncoderSpec, digest: Callable[[Path], str],
                 clip_seconds: float = 2.0) -> None:
        super().__init__()
        from vlm_cli.errors import VlmError

        self.spec = spec
        if spec.arch == "ast":
            from transformers import ASTConfig, ASTModel

            self.model = _build(spec, ASTConfig, ASTModel, digest)
            self.positions = None
            return
        from transformers import WhisperConfig, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        directory, _ = resolve_source(spec, digest)
        if directory is None:
            self.model = _build(spec, WhisperConfig, WhisperEncoder, digest)
        else:  # a released checkpoint holds the whole model; keep its encoder
            self.model = WhisperModel.from_pretrained(directory, dtype=resolve_dtype(spec.dtype, "cpu")) \
                .get_encoder().eval().requires_grad_(False)
        expected = 2 * self.model.config.max_source_positions
        if spec.target_frames != expected:
            raise VlmError(f"recipe key 'model.audio.target_frames': this Whisper encoder takes "
                           f"{expected} frames (2 x max_source_positions), not "
                           f"{spec.target_frames}")
        self.positions = min(self.model.config.max_source_positions,
                             max(1, math.ceil(clip_seconds * 50)))  # 100 frames/s, stride 2

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """AST: fbank ``[K, target_frames, num_mel_bins]``; Whisper: log-mel ``[K, num_mel_bins,
        target_frames]`` -> ``[K, D]`` (``select: pooled``) or ``[K, N, D]`` (``all``, from
        ``feature_layer``; -1 = the final output). AST pools as its pooler (mean of the CLS and
        distillation tokens); Whisper averages the positions that cover the clip."""
        x = spectrogram.to(self.model.device, self.model.dtype)
        if self.positions is None:
            if self.spec.select == "pooled":
                return self.model(input_values=x).pooler_output
            out = self.model(input_values=x, output_hidden_states=True)
            return out.hidden_states[self.spec.feature_layer]
        out = self.model(input_features=x, output_hidden_states=True)
        layer = self.spec.feature_layer
        hidden = (out.last_hidden_state if layer == -1 else out.hidden_states[layer])
        hidden = hidden[:, : self.positions]
        return hidden.mean(dim=1) if self.spec.select == "pooled" else hidden

    @torch.no_grad()
    def encode_clips(self, spectrogram: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Spectrograms of K clips -> features on CPU in the encoder dtype."""
        return self(torch.as_tensor(np.asarray(spectrogram))).cpu()
