"""The released Video-LLaMA checkpoints (arXiv 2306.02858): ``DAMO-NLP-SG/Video-LLaMA-2-7B-Finetuned``,
``-13B-Finetuned`` and the ``-Pretrained`` ones, both branches, and ``vlm merge-lora``'s output.

A release holds ``VL_*.pth`` (the vision-language branch), ``AL_*.pth`` (the audio-language branch),
``imagebind_huge.pth`` (ImageBind, six modalities) and ``llama-2-*-chat-hf/`` (the LLM, pickled
``.bin`` shards). Each ``.pth`` is a training checkpoint ``{model, optimizer, config, scaler,
epoch}`` whose ``model`` holds the trained tensors and buffers; it is read with
``torch.load(weights_only=True, mmap=True)``, so nothing is unpickled but tensors and the optimizer
state is never read from disk.

The model, as the original's ``VideoLLAMA`` runs it (``video_llama/models/video_llama.py``):

- vision (frozen, cached per frame): BLIP-2's EVA ViT-g/14 → ``ln_vision`` → the image Q-Former
  (32 queries), taken from ``Salesforce/blip2-flan-t5-xxl`` (transformers' ``Blip2VisionModel``
  and ``Blip2QFormerModel``; only the index shards holding ``vision_model.*``, ``qformer.*`` and
  ``query_tokens`` are fetched): ``[T, 32, 768]`` per video;
- audio (frozen, cached per 2 s clip): ImageBind's audio tower (:mod:`vlm_cli.model.imagebind`,
  reading only the ``modality_*.audio.*`` tensors) on 8 clips: ``[8, 1024]``;
- the Video Q-Former (frame position embeddings, 32 queries) and the Audio Q-Former (clip position
  embeddings, 8 queries), each followed by its projection into the LLM: our
  :class:`~vlm_cli.model.connectors.QFormerConnector`, keys converted by :data:`KEY_MAP`;
- LLaMA-2-chat, prompted as the released demo (``conversation_video.py``): a clip with sound gets
  the audio soft prompt, then ``<Video>…</Video>`` in the original's wording; a clip without sound
  (or ``--no-audio``) the video alone with its frame times; both with the empty system prompt
  ``demo_audiovideo.py`` sets for videos; an image ``<Image>…</Image>`` under the demo's image
  system prompt; an audio file the audio half of the audio-visual wording (our addition: the
  demo takes no audio files). The prompt is
  split at each soft prompt and the pieces tokenised separately, BOS on the first only.

Media as the original reads it: 8 frames at ``np.arange(0, n, n / 8)`` decoded straight to 224 ×
224 (aspect not kept), CLIP mean/std; images resized to 224 × 224 bicubic; audio from the first
channel at 16 kHz, Kaldi fbank (128 bins, 204 frames) of 8 clips of 2 s spread over the track.

Licences: LLaMA 2 Community License (the LLM); ImageBind weights CC BY-NC-SA 4.0 (non-commercial);
BLIP-2 (Salesforce) MIT. The released audio branch was trained on images through ImageBind's
vision tower; its authors call its audio understanding limited (issue #134).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_cli.errors import DataError, UsageError, VlmError
from vlm_cli.keys import EncoderKey
from vlm_cli.model.families import EncoderSource, Loaded
from vlm_cli.model.vlm import MediaInput, VideoLanguageModel

FORMAT = "vlm-video-llama/1"
#: The family's name in its towers' cache keys.
FAMILY = "video_llama"
#: The BLIP-2 checkpoint holding EVA ViT-g and the image Q-Former (LAVIS
#: ``blip2_pretrained_flant5xxl.pth``, the file the original downloads), and the weight-key
#: prefixes taken from it.
BLIP2_REPO = "Salesforce/blip2-flan-t5-xxl"
BLIP2_PREFIXES = ("vision_model.", "qformer.", "query_tokens")
#: LAVIS's ``ln_vision`` LayerNorm eps (transformers' ``post_layernorm`` takes the blocks' 1e-6).
LN_VISION_EPS = 1e-5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224
LICENCE = ("LLaMA 2 Community License (LLM); CC BY-NC-SA 4.0, non-commercial (ImageBind audio "
           "encoder); MIT (BLIP-2 vision encoder and Q-Former)")
#: The demo's system prompt for an image (``demo_audiovideo.py``); a video gets "".
IMAGE_SYSTEM = ("You are able to understand the visual content that the user provides. Follow the "
                "instructions carefully and explain your answers in detail.")
#: The default LLaMA-2 system prompt of the demo (``conv_llava_llama_2``).
SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
          "content that the user provides, and assist the user with a variety of tasks using "
          "natural language.")
SLOT = "<ImageHere>"


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionTowerKey(EncoderKey):
    """The cache key of the vision tower (EVA ViT-g + BLIP-2's image Q-Former): an encoder key
    with LAVIS's ``ln_vision`` epsilon too."""

    ln_vision_eps: float
_INDENT = " " * 16  # the demo's message continues string lines with "\" and indentation
#: ``Chat.upload_video`` with an audio track: the audio soft prompt, then the video's.
AV_MESSAGE = (f"Close your eyes, open your ears and you imagine only based on the sound that: "
              f"{SLOT}. {_INDENT}Close your ears, open your eyes and you see that "
              f"<Video>{SLOT}</Video>.  {_INDENT}Now answer my question based on what you have "
              "just seen and heard.")
#: An audio file (ours): the audio half of the same wording.
AUDIO_MESSAGE = (f"Close your eyes, open your ears and you imagine only based on the sound that: "
                 f"{SLOT}. {_INDENT}Now answer my question based on what you have just heard.")
PLACEHOLDERS = ("<video>", "<image>", "<audio>")

#: Release weight-key prefixes (and the BERT names inside the Q-Formers) -> ours, as data: used by
#: :func:`connector_state` (load) and :func:`release_state` (save). Ours are the keys of
#: ``VideoLanguageModel.connectors`` (``video.*``, ``audio.*``: ``QFormerConnector``).
KEY_MAP = {
    "branches": {
        "video_Qformer.bert.": "video.qformer.", "video_query_tokens": "video.query_tokens",
        "video_frame_position_embedding.": "video.position_embedding.",
        "llama_proj.": "video.proj.",
        "audio_Qformer.bert.": "audio.qformer.", "audio_query_tokens": "audio.query_tokens",
        "audio_position_embedding.": "audio.position_embedding.",
        "audio_llama_proj.": "audio.proj.",
    },
    # LAVIS BERT (Video-LLaMA's Qformer.py) -> transformers' Blip2QFormerModel, inside a key
    "qformer": {"qformer.embeddings.LayerNorm.": "qformer.layernorm.",
                ".attention.self.": ".attention.attention.",
                ".crossattention.self.": ".crossattention.attention."},
}


def _to_ours(key: str) -> str | None:
    for theirs, ours in KEY_MAP["branches"].items():
        if key.startswith(theirs):
            key = ours + key[len(theirs):]
            for a, b in KEY_MAP["qformer"].items():
                key = key.replace(a, b)
            return key
    return None


def _to_release(key: str) -> str:
    for theirs, ours in KEY_MAP["branches"].items():
        if key.startswith(ours):
            for a, b in KEY_MAP["qformer"].items():
                key = key.replace(b, a)
            return theirs + key[len(ours):]
    raise KeyError(key)


# --- the release on disk -------------------------------------------------------------------------

def _one(directory: Path, pattern: str) -> Path | None:
    found = sorted(directory.glob(pattern))
    return found[0] if found else None


def _paths(directory: Path) -> dict[str, Any]:
    """The parts of a release (``VL_*.pth`` …) or of a merged directory (``video_llama.json``;
    its ``sources``: what pinned the towers it was merged from)."""
    directory = Path(directory)
    meta = directory / "video_llama.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        parts: dict[str, Any] = {k: (directory / v if v else None)
                                 for k, v in info.get("parts", {}).items()}
        return {**parts, "sources": info.get("sources"), "data": info.get("data")}
    llm = next((p for p in sorted(directory.iterdir()) if p.is_dir()
                and (p / "config.json").is_file()), None) if directory.is_dir() else None
    return {"vl": _one(directory, "VL_*.pth"), "al": _one(directory, "AL_*.pth"),
            "imagebind": _one(directory, "imagebind_huge.pth"), "llm": llm, "blip2": None,
            "sources": None, "data": None}


def detect(directory: str | Path) -> bool:
    """Whether ``directory`` holds a Video-LLaMA release (``VL_*.pth`` / ``AL_*.pth`` beside a
    LLaMA directory) or a merged one (``video_llama.json``)."""
    directory = Path(directory)
    if (directory / "video_llama.json").is_file():
        return True
    if not directory.is_dir():
        return False
    parts = _paths(directory)
    return (parts["vl"] is not None or parts["al"] is not None) and parts["llm"] is not None


def read_tensors(path: Path, prefixes: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a release ``.pth`` (its ``model`` entry; ``weights_only=True``,
    memory-mapped: only what is used is read) or of a ``.safetensors`` file, optionally only the
    keys starting with ``prefixes``.

    Raises:
        VlmError: the file is not a weights-only checkpoint (we never unpickle code).
    """
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()
                    if prefixes is None or k.startswith(prefixes)}
    import pickle

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:  # weights_only refuses anything but tensors
        raise VlmError(f"{path}: not a weights-only PyTorch checkpoint ({str(err).splitlines()[0]}"
                       "); refusing to unpickle it") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise VlmError(f"{path}: cannot be read, corrupt or truncated "
                       f"({str(err).splitlines()[0]}); run `vlm download` again") from None
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise VlmError(f"{path}: no 'model' state dict in this checkpoint")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)
            and (prefixes is None or k.startswith(prefixes))}


def blip2_directory(parts: dict[str, Any], *, download: bool = False,
                    fetch: str = "run `vlm download` for this Video-LLaMA release",
                    ) -> tuple[Path, dict]:
    """The directory of the BLIP-2 parts (a merged model's own ``blip2/``, else
    :data:`BLIP2_REPO`'s snapshot, only the shards holding :data:`BLIP2_PREFIXES`) and what pins
    it (hub commit or file hashes).

    Raises:
        VlmError: not downloaded (the message names ``vlm download``).
    """
    from vlm_cli.hub import resolve_snapshot

    if parts.get("blip2") is not None:  # a merge: its copy, pinned as what it was copied from
        return parts["blip2"], parts["sources"]["vision"]
    try:
        path = resolve_snapshot(BLIP2_REPO, None, download=download, prefixes=BLIP2_PREFIXES)
    except VlmError:  # its own message would fetch all of BLIP-2, T5-XXL included
        raise VlmError(f"{BLIP2_REPO}: its vision tower and Q-Former are not in the Hugging Face "
                       f"cache; {fetch}") from None
    return path, {"repo_id": BLIP2_REPO, "revision": path.name}


def blip2_state(directory: Path) -> dict[str, torch.Tensor]:
    """``vision_model.*``, ``qformer.*`` and ``query_tokens`` of a BLIP-2 checkpoint (safetensors
    or ``.bin`` shards, through their index when there is one; other shards never opened)."""
    files: list[Path] = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({directory / s for k, s in weight_map.items()
                            if k.startswith(BLIP2_PREFIXES)})
            break
    else:
        files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            state.update(read_tensors(f, BLIP2_PREFIXES))
        else:
            state.update({k: v for k, v in torch.load(f, map_location="cpu", weights_only=True,
                                                       mmap=True).items()
                          if k.startswith(BLIP2_PREFIXES)})
    return state


# --- the frozen towers ---------------------------------------------------------------------------

class VisionTower(nn.Module):
    """BLIP-2's EVA ViT-g + ``ln_vision`` + image Q-Former, run per frame (frozen).

    Args:
        directory: a BLIP-2 checkpoint (``config.json``: ``Blip2Config``; weights: see
            :func:`blip2_state`).
        dtype: compute dtype.
    """

    def __init__(self, directory: Path, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        from transformers import Blip2Config, Blip2QFormerModel, Blip2VisionModel

        config = Blip2Config.from_pretrained(directory)
        self.vision = Blip2VisionModel(config.vision_config)
        self.vision.post_layernorm.eps = LN_VISION_EPS
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens,
                                                     config.qformer_config.hidden_size))
        state = blip2_state(directory)
        missing, unexpected = self.load_state_dict(
            {k.replace("vision_model.", "vision.", 1): v for k, v in state.items()}, strict=False)
        if missing or unexpected:
            raise VlmError(f"{directory}: not BLIP-2's vision tower and Q-Former (missing "
                           f"{missing[:2]}, unexpected {unexpected[:2]}); run `vlm download` "
                           "for the Video-LLaMA release again")
        self.to(dtype).eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD)[:, None, None], persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[T, 3, 224, 224]`` normalised pixels -> image Q-Former output ``[T, Q, H]``
        (``encode_videoQformer_visual`` up to the frame position embeddings)."""
        dtype = self.query_tokens.dtype
        image = self.vision(pixel_values=pixels.to(dtype)).last_hidden_state  # ln_vision applied
        mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        queries = self.query_tokens.expand(image.shape[0], -1, -1)
        return self.qformer(query_embeds=queries, encoder_hidden_states=image,
                            encoder_attention_mask=mask).last_hidden_state

    @torch.no_grad()
    def encode_frames(self, frames: Any, fps: float | None = None) -> torch.Tensor:
        """Frames ``[T, 224, 224, 3] uint8`` (scaled in the decoder) -> ``[T, Q, H]`` on CPU.

        Raises:
            ValueError: frames of another size (the decode settings were not applied).
        """
        x = torch.as_tensor(frames)
        if tuple(x.shape[1:3]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"Video-LLaMA takes {IMAGE_SIZE} x {IMAGE_SIZE} frames, got "
                             f"{tuple(x.shape[1:3])}")
        x = x.to(self.mean.device).permute(0, 3, 1, 2).float() / 255.0
        return self((x - self.mean) / self.std).cpu()


# --- the model -------------------------------------------------------------------------------------

class VideoLlama(VideoLanguageModel):
    """Video-LLaMA: the Video / Audio Q-Formers as connectors, LLaMA-2-chat, and the released
    demo's prompts (which depend on the media: :meth:`encode_prompt` takes them).

    A video with its audio fills two soft-prompt slots, audio then video (:meth:`slots`); the
    placeholder ids are outside the LLM's vocabulary (they are never embedded, only replaced).
    """

    #: The prompt depends on what the media hold (a video with or without its sound).
    prompt_uses_media = True

    def __init__(self, spec: Any, llm: nn.Module, tokenizer: Any,
                 feature_dims: dict[str, int]) -> None:
        super().__init__(spec, llm, tokenizer, feature_dims)
        if tokenizer.pad_token_id is None:  # LLaMA-2 has none; padding is masked anyway
            tokenizer.pad_token = tokenizer.unk_token
        self.placeholder_id = len(tokenizer)
        self.media_token_ids = {self.placeholder_id: "<video>"}

    @staticmethod
    def slots(media: MediaInput) -> list[MediaInput]:
        """The soft prompts of one file, in prompt order: audio then video for a video with its
        sound, else the file's single one."""
        if media.vision is not None and media.audio is not None:
            return [MediaInput(audio=media.audio, audio_meta=media.audio_meta),
                    MediaInput(vision=media.vision, vision_meta=media.vision_meta)]
        return [media]

    def expand(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[MediaInput]],
               labels: Sequence[Sequence[int]] | None = None) -> Any:
        return super().expand(input_ids, [[s for m in sample for s in self.slots(m)]
                                          for sample in media], labels)

    def _flat_prompts(self, media: Sequence[Sequence[MediaInput]]) -> list[torch.Tensor]:
        return super()._flat_prompts([[s for m in sample for s in self.slots(m)]
                                      for sample in media])

    # --- prompts ----------------------------------------------------------------------------------

    @staticmethod
    def _is_image(media: MediaInput) -> bool:
        """A still image (its features were cached with the ``still`` marker)."""
        return media.vision is not None and "still" in media.vision_meta

    def _media_message(self, media: MediaInput) -> str:
        if media.vision is not None and media.audio is not None:
            return AV_MESSAGE
        if media.vision is None:
            return AUDIO_MESSAGE
        if self._is_image(media):
            return f"<Image>{SLOT}</Image> "  # Chat.upload_img, msg ""
        stamps = media.vision_meta["timestamps"]
        times = ", ".join(str(round(float(t), 1)) for t in stamps)
        return (f"<Video>{SLOT}</Video> The video contains {len(stamps)} frames sampled at "
                f"{times} seconds. ")

    def _text(self, turns: Sequence[dict[str, Any]], media: Sequence[MediaInput] | None,
              ) -> tuple[str, list[tuple[int, int]]]:
        """The LLaMA-2 conversation string (``Conversation.get_prompt``, ``SeparatorStyle.LLAMA_2``)
        and each assistant answer's character span."""
        media = list(media or [])
        count = sum(str(t["value"]).count(p) for t in turns for p in PLACEHOLDERS)
        if len(media) != count:
            raise DataError(f"{count} media placeholders but {len(media)} media files (the "
                            "Video-LLaMA prompt is worded after its media)")
        files = iter(media)
        # demo_audiovideo.py's upload_imgorvideo: "" for a video (with or without its sound),
        # its own line for an image; the template's default for text alone.
        system = SYSTEM if not media else IMAGE_SYSTEM if self._is_image(media[0]) else ""
        text, spans = "", []
        for i, turn in enumerate(turns):
            value = str(turn["value"])
            if turn["from"] == "gpt":
                start = len(text) + 1
                text += f" {value.strip()} </s>"
                spans.append((start, len(text)))
                continue
            pieces = re.split("(" + "|".join(PLACEHOLDERS) + ")", value)
            parts = [self._media_message(next(files)) for p in pieces if p in PLACEHOLDERS]
            question = "".join(p for p in pieces if p not in PLACEHOLDERS).strip()
            # Chat.upload_* then Chat.ask: the question joins the media message with " "
            message = " ".join(parts + [question])
            if i == 0:
                message = f"<<SYS>>\n{system}\n<</SYS>>\n\n{message}"
            text += ("<s>" if text else "") + f"[INST] {message} [/INST]"
        return text, spans

    def _tokenize(self, text: str) -> list[int]:
        """``text`` split at each soft-prompt slot, the pieces tokenised separately (BOS on the
        first only, ``Chat.get_context_emb``), joined by placeholder ids."""
        ids: list[int] = []
        for i, piece in enumerate(text.split(SLOT)):
            if i:
                ids.append(self.placeholder_id)
            ids += self.tokenizer(piece, add_special_tokens=i == 0)["input_ids"]
        return ids

    def encode_prompt(self, turns: Sequence[dict[str, Any]],
                      media: Sequence[MediaInput] | None = None) -> list[int]:
        """Token ids of a conversation ending in a user turn (LLaMA-2 chat, the demo's wording for
        ``media``: the conversation's files, in placeholder order)."""
        return self._tokenize(self._text(turns, media)[0])

    def encode_conversation(self, turns: Sequence[dict[str, Any]], max_length: int,
                            media: Sequence[MediaInput] | None = None,
                            ) -> tuple[list[int], list[int]]:
        """Ids and labels of a training conversation: each answer and its ``</s>`` carry the loss.

        Raises:
            DataError: no answer within ``max_length``.
        """
        from vlm_cli.model.chat import IGNORE_INDEX

        text, spans = self._text(turns, media)
        ids = self._tokenize(text)
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            a, b = len(self._tokenize(text[:start - 1])), len(self._tokenize(text[:end]))
            labels[a:b] = ids[a:b]
        ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise DataError("conversation has no assistant tokens within max_length")
        return ids, labels


# --- loading -----------------------------------------------------------------------------------------

def connector_specs(state: dict[str, torch.Tensor], heads: int | None = None) -> dict[str, Any]:
    """The Q-Former connector specs (``video``, ``audio``) of converted release weights
    (:func:`connector_state`), from their shapes; ``heads`` default ``hidden / 64`` (BERT-base:
    768 / 64 = 12, as ``bert-base-uncased`` that the original instantiates)."""
    from vlm_cli.recipe import ConnectorSpec

    specs = {}
    for name in ("video", "audio"):
        if f"{name}.query_tokens" not in state:
            continue
        queries = state[f"{name}.query_tokens"]
        hidden = queries.shape[-1]
        layers = 1 + max(int(k.split(".")[4]) for k in state
                         if k.startswith(f"{name}.qformer.encoder.layer."))
        specs[name] = ConnectorSpec(
            type="qformer", num_query_tokens=queries.shape[1], hidden_size=hidden,
            num_layers=layers, num_heads=heads or max(1, hidden // 64),
            intermediate_size=state[f"{name}.qformer.encoder.layer.0.intermediate_query.dense"
                                    ".weight"].shape[0],
            max_positions=state[f"{name}.position_embedding.weight"].shape[0], dropout=0.1)
    return specs


#: Tensors a release checkpoint holds besides the Q-Formers: buffers of its frozen parts
#: (``RunnerBase._save_checkpoint`` keeps every buffer), never trained weights.
BUFFER_SUFFIXES = ("position_ids", "inv_freq", "log_logit_scale", ".mask")


def connector_state(branches: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Our connectors' state dict from the VL / AL branch tensors (by file, :data:`KEY_MAP`);
    the frozen parts' buffers the checkpoints also hold (:data:`BUFFER_SUFFIXES`) are left out.

    Raises:
        VlmError: a trained tensor we would not load (e.g. a fine-tuned ``ln_vision``), rather
            than ignoring it.
    """
    out = {}
    for name, state in branches.items():
        for key, value in state.items():
            ours = _to_ours(key)
            if key.endswith(BUFFER_SUFFIXES):
                continue
            if ours is None:
                raise VlmError(f"{name.upper()} checkpoint: tensor {key!r} is not part of the "
                               "Video / Audio Q-Formers this release is loaded with")
            out[ours] = value
    return out


def release_state(connectors: dict[str, torch.Tensor], branch: str) -> dict[str, torch.Tensor]:
    """The inverse of :func:`connector_state` for one branch (``video`` -> the VL keys)."""
    return {_to_release(k): v.detach().contiguous().cpu() for k, v in connectors.items()
            if k.startswith(branch + ".")}


def audio_source(parts: dict[str, Any], directory: Path) -> dict[str, Any]:
    """What pins the ImageBind weights: the hub commit of the release's snapshot (a directory in
    the Hugging Face cache), the merged model's record of it, else the file's sha256."""
    from vlm_cli.cache import FeatureCache

    if parts.get("sources"):
        return parts["sources"]["audio"]
    path = parts["imagebind"]
    directory = Path(directory)
    if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith("models--"):
        repo = directory.parent.parent.name.removeprefix("models--").replace("--", "/", 1)
        return {"repo_id": repo, "revision": directory.name, "file": path.name}
    return {"file": path.name, "sha256": FeatureCache().file_digest(path)}


def check_media(path: Path, *, fps: float | None, frames: int | None, audio: bool,
                positions: int = 32) -> None:
    """Refuse ``--frames`` beyond the Video Q-Former's frame positions (rate sampling, ``--fps``,
    may take more: they are subsampled uniformly to ``positions`` and reported, see
    :mod:`vlm_cli.model.budget`).

    Raises:
        UsageError: the message names ``--frames``.
    """
    del path, audio
    if fps is None and frames is not None and frames > positions:
        raise UsageError(f"--frames {frames}: Video-LLaMA's Video Q-Former has {positions} frame "
                         f"positions; use --frames {positions} or fewer (or --fps: more frames "
                         f"are subsampled to {positions})")


def load(directory: Path, *, device: str = "cpu", dtype: Any = None, name: str | None = None,
         revision: str | None = None, download: bool = False, heads: int | None = None,
         ) -> Loaded:
    """A Video-LLaMA release (or merge) as a :class:`~vlm_cli.model.families.Loaded`: the
    Q-Former connectors and LLaMA-2 in ``dtype`` (default: bf16 / fp16 / fp32 by device) on
    ``device``; the towers built on the first cache miss.

    Args:
        heads: Q-Former and ImageBind attention heads when not ``width / 64`` (tests).

    Raises:
        VlmError: a part is missing (BLIP-2 not downloaded: the message names ``vlm download``),
            or a checkpoint that is not weights-only.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    from vlm_cli.recipe import DataSpec, LLMSpec, ModelSpec, Recipe, TrainSpec
    from vlm_cli.runtime import resolve_dtype, transformers_errors_only

    parts = _paths(directory)
    dtype = dtype or resolve_dtype("auto", device)
    tower_dtype = resolve_dtype("auto", device)
    label = name or str(directory)
    fetch = f"run `vlm download {label}` (or pass --download)"
    if parts["sources"] is None:  # a release: both branches and everything they need, up front
        for part, what in (("vl", "VL_*.pth (vision-language branch)"),
                           ("al", "AL_*.pth (audio-language branch)"),
                           ("imagebind", "imagebind_huge.pth (ImageBind)"),
                           ("llm", "the llama-2-*-chat-hf directory")):
            if parts[part] is None:
                raise VlmError(f"{directory}: this Video-LLaMA release has no {what}; {fetch}")
    elif parts["llm"] is None:
        raise VlmError(f"{directory}: no llm/ directory in this merged Video-LLaMA model")
    branches = {p: read_tensors(parts[p]) for p in ("vl", "al") if parts[p] is not None}
    state = connector_state(branches)
    specs = connector_specs(state, heads)
    if "audio" in specs and parts["imagebind"] is None:
        raise VlmError(f"{directory}: the audio branch needs the ImageBind audio tower")
    blip2, pinned = blip2_directory(parts, download=download, fetch=fetch) \
        if "video" in specs else (None, None)
    tokenizer = AutoTokenizer.from_pretrained(parts["llm"])
    with transformers_errors_only():  # LLaMA-2-chat's generation_config sets sampling flags
        llm = LlamaForCausalLM.from_pretrained(parts["llm"], dtype=dtype).eval()
    spec = ModelSpec(video_connector=specs.get("video"), audio_connector=specs.get("audio"),
                     llm=LLMSpec(pretrained=label, revision=revision), towers="video-llama")
    dims = {"vision": state["video.position_embedding.weight"].shape[1]} if "video" in specs \
        else {}
    if "audio" in specs:
        dims["audio"] = state["audio.position_embedding.weight"].shape[1]
    model = VideoLlama(spec, llm, tokenizer, dims)
    model.connectors.load_state_dict(state)
    encoders = {}
    if blip2 is not None:
        key = VisionTowerKey(family=FAMILY, modality="vision", arch="blip2-qformer",
                             source=pinned, dtype=str(tower_dtype).removeprefix("torch."),
                             ln_vision_eps=LN_VISION_EPS,
                             preprocess={"size": [IMAGE_SIZE, IMAGE_SIZE],
                                         "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                                         "scaler": "swscale / PIL bicubic"})
        encoders["vision"] = EncoderSource(  # BLIP-2's Q-Former runs on each frame alone
            key, lambda: VisionTower(blip2, tower_dtype),
            decode={"size": (IMAGE_SIZE, IMAGE_SIZE)}, per_frame=True)
    if "audio" in specs:
        imagebind = parts["imagebind"]
        decode = {"frontend": "imagebind_fbank", "mix": "channels", "num_clips": 8,
                  "clip_seconds": 2.0,
                  "num_mel_bins": 128, "target_frames": 204, "mean": -4.268, "std": 9.138}
        key = EncoderKey(family=FAMILY, modality="audio", arch="imagebind-audio",
                         source=audio_source(parts, directory),
                         dtype=str(tower_dtype).removeprefix("torch."),
                         preprocess={**decode, "clip_first_sample": "int(start * rate)"})

        def build_audio() -> nn.Module:
            from vlm_cli.model.imagebind import AUDIO_PREFIXES, ImageBindAudio

            try:
                tower = ImageBindAudio.from_state(read_tensors(imagebind, AUDIO_PREFIXES), heads)
            except KeyError as err:
                raise VlmError(f"{imagebind}: not an ImageBind checkpoint with an audio tower "
                               f"({err.args[0]})") from None
            return tower.to(tower_dtype)

        encoders["audio"] = EncoderSource(key, build_audio, decode=decode)
    data = DataSpec(**{"frames": 8, "sampling": "segment_start", "audio_clips": 8,
                       **(parts.get("data") or {})})
    recipe = Recipe(name="video-llama", model=spec, data=data, train=TrainSpec())
    positions = specs["video"].max_positions if "video" in specs else 32
    return Loaded(recipe, model.to(device).eval(), "video-llama", encoders,
                  check=lambda path, **kw: check_media(path, positions=positions, **kw),
                  licence=LICENCE)


def requires(directory: Path) -> list[tuple[str, str | None, tuple[str, ...]]]:
    """Other hub repositories a release needs, as ``(repo id, revision, weight-key prefixes)``:
    BLIP-2's vision tower and Q-Former for the vision branch (none for a merged model)."""
    parts = _paths(directory)
    return [(BLIP2_REPO, None, BLIP2_PREFIXES)] if parts["vl"] is not None \
        and parts.get("blip2") is None else []


def save(model: VideoLlama, out: Path, *, base: str | Path, dtype: Any,
         max_shard_size: str = "2GB", recipe: Any = None) -> None:
    """Write ``model`` (its LLM merged, no adapter) as a self-contained Video-LLaMA directory
    (safetensors only): ``VL.safetensors`` / ``AL.safetensors`` (the branches in the release's key
    names), ``imagebind_audio.safetensors`` (the audio keys of ``imagebind_huge.pth``),
    ``blip2/`` (the BLIP-2 config and vision / Q-Former weights), ``llm/`` (LLaMA and its
    tokenizer), ``video_llama.json`` (what is where, what pinned the towers, and ``recipe``'s frame
    and clip sampling, so the merge is asked as it was trained). :func:`load` reads it back."""
    from safetensors.torch import save_file

    from vlm_cli.atomic import atomic_write_text
    from vlm_cli.model.imagebind import AUDIO_PREFIXES

    parts = _paths(Path(base))
    state = model.connectors.state_dict()
    written: dict[str, str | None] = {"vl": None, "al": None, "imagebind": None}
    sources: dict[str, Any] = {}  # the towers are copied: their features stay cached
    for branch, key, filename in (("video", "vl", "VL.safetensors"),
                                  ("audio", "al", "AL.safetensors")):
        if branch in model.connectors:
            save_file(release_state(state, branch), str(out / filename))
            written[key] = filename
    if parts["imagebind"] is not None and "audio" in model.connectors:
        tensors = {k: v.contiguous() for k, v in read_tensors(parts["imagebind"],
                                                              AUDIO_PREFIXES).items()}
        save_file(tensors, str(out / "imagebind_audio.safetensors"))
        written["imagebind"] = "imagebind_audio.safetensors"
        sources["audio"] = audio_source(parts, Path(base))
    if "video" in model.connectors:
        blip2, sources["vision"] = blip2_directory(parts)
        (out / "blip2").mkdir()
        (out / "blip2" / "config.json").write_text((blip2 / "config.json").read_text())
        save_file({k: v.contiguous() for k, v in blip2_state(blip2).items()},
                  str(out / "blip2" / "model.safetensors"))
        written["blip2"] = "blip2"
    model.llm.to(dtype).save_pretrained(out / "llm", safe_serialization=True,
                                        max_shard_size=max_shard_size)
    model.tokenizer.save_pretrained(out / "llm")
    written["llm"] = "llm"
    atomic_write_text(out / "video_llama.json", json.dumps(
        {"format": FORMAT, "parts": written, "sources": sources, "licence": LICENCE,
         "data": None if recipe is None else {k: getattr(recipe.data, k) for k in (
             "frames", "sampling", "fps", "max_frames", "audio_clips", "clip_seconds")}},
        indent=2) + "\n")
