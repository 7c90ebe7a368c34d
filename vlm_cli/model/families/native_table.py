"""The checkpoints transformers runs natively through their processor, one entry per
``model_type`` (as mlx-vlm maps ``model_type`` to a module): data, read by
:mod:`vlm_cli.model.families.native`. Adding a model is an entry here, its tests and a README row.

Importing this module imports nothing heavy (``detect``, download skip-lists and help texts read
it without torch).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FrameSampling:
    """The reference pipeline's frame sampling and resizing: ``qwen`` (qwen-omni-utils'
    ``fetch_video``: ``smart_nframes`` at ``fps`` Hz, at least ``min_frames`` and at most
    ``max_frames``, indices ``linspace(0, n - 1, k).round()``; frames resized with torchvision's
    float bicubic kernel to multiples of ``factor`` px within a pixel budget; pictures with PIL,
    as ``fetch_image``) or ``transformers`` (the processor's own: ``num_frames`` by
    ``arange(n) * total // n`` from torchcodec's frames, resized by the processor; the other
    fields unused).

    Attributes:
        rule: ``qwen`` or ``transformers`` (a ``sampling`` of :func:`vlm_cli.media.load_video`;
            the name goes into the cache key).
        num_frames: a fixed frame count (``transformers``), or None (sampled by rate).
        fps: default rate, Hz. min_frames, max_frames: frame-count bounds.
        factor: px, patch size x spatial merge size.
        video_min_tokens, video_max_tokens: per-frame token bounds (min/max pixels / factor²).
        image_min_tokens, image_max_tokens: per-picture token bounds.
        total_tokens: the sequence budget shared by a video's frames (``MODEL_SEQ_LEN``).
    """

    rule: str = "qwen"
    num_frames: int | None = None
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    factor: int = 28
    video_min_tokens: int = 128
    video_max_tokens: int = 768
    image_min_tokens: int = 4
    image_max_tokens: int = 16384
    total_tokens: int = 128000


@dataclasses.dataclass(frozen=True, eq=False)
class NativeModelSpec:
    """How vlm runs one ``model_type`` (checkpoint family) through transformers.

    Attributes:
        name: the family name (``Loaded.family``, recipes, messages), e.g. ``qwen2.5-omni``.
        title: how people call it in help and error texts.
        model_types: ``config.json`` ``model_type`` values this entry takes.
        model_class, processor_class: transformers class names loaded with ``from_pretrained``.
        layout: how media tokens, positions and cached tower outputs reach the model (a layout
            of :mod:`vlm_cli.model.families.native`: ``qwen-omni``, or ``gemma4``,
            :mod:`vlm_cli.model.families.native_gemma4`).
        sampling: the reference pipeline's frames (:class:`FrameSampling`).
        resampler: how audio reaches 16 kHz in the reference (``soxr``: librosa.load's
            ``soxr_hq``, from 16-bit PCM as ffmpeg decodes it; ``ffmpeg``: torchcodec's
            libswresample, as transformers' ``load_audio``).
        audio_in_video: ``interleave`` (the clip's own track interleaved with its frames in
            2 s chunks, placed by TMRoPE), ``after`` (the track as an audio item right after
            its video, transformers' ``load_audio_from_video``), or None (the model takes no
            audio with a video).
        system: the system turn the model card sends (``--system`` replaces it).
        audio_after_text: the card puts an audio file after the question (Gemma 4's): a
            prompt that starts with ``<audio>`` is sent in that order.
        skip_prefixes: weight-key prefixes never downloaded nor loaded (speech output).
        tower_prefixes: weight-key prefixes whose tensors the cached features depend on
            (the feature-cache identity of a local checkpoint hashes only these).
        tower_modules: the towers' module names in the loaded model by modality (``vision``,
            ``audio``; a tower and its projection may be two modules): left on disk (accelerate's offload, read from the checkpoint's own
            files) until a feature is not cached.
        text_modules: the other modules (the language model and its head), loaded on the
            device.
        licence: the licence when the model card does not state one, else None.
    """

    name: str
    title: str
    model_types: tuple[str, ...]
    model_class: str
    processor_class: str
    layout: str
    sampling: FrameSampling
    resampler: str
    audio_in_video: str | None
    system: str | None
    audio_after_text: bool = False
    skip_prefixes: tuple[str, ...] = ()
    tower_prefixes: tuple[str, ...] = ()
    tower_modules: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    text_modules: tuple[str, ...] = ()
    licence: str | None = None


QWEN_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable "
               "of perceiving auditory and visual inputs, as well as generating text and speech.")

#: Qwen2.5-Omni: the thinker (text out) of ``Qwen/Qwen2.5-Omni-3B`` / ``-7B`` (config
#: ``qwen2_5_omni``) and merged thinkers (``qwen2_5_omni_thinker``), fed as its model card feeds
#: it (qwen-omni-utils ``process_mm_info(..., use_audio_in_video=True)``, the card's system turn,
#: greedy ``generate``).
QWEN2_5_OMNI = NativeModelSpec(
    name="qwen2.5-omni", title="Qwen2.5-Omni",
    model_types=("qwen2_5_omni", "qwen2_5_omni_thinker"),
    model_class="Qwen2_5OmniThinkerForConditionalGeneration",
    processor_class="Qwen2_5OmniProcessor", layout="qwen-omni",
    sampling=FrameSampling(), resampler="soxr", audio_in_video="interleave",
    system=QWEN_SYSTEM, skip_prefixes=("talker.", "token2wav."),
    tower_prefixes=("thinker.visual.", "thinker.audio_tower.", "visual.", "audio_tower."),
    tower_modules={"vision": ("model.visual",), "audio": ("model.audio_tower",)},
    text_modules=("model.language_model", "lm_head"))

#: ``model_type`` -> spec (through :data:`BY_MODEL_TYPE`).
MODELS: tuple[NativeModelSpec, ...] = (
    QWEN2_5_OMNI,
    # Qwen3-Omni's thinker (Qwen/Qwen3-Omni-30B-A3B-Instruct, -Thinking, -Captioner: a mixture of
    # experts, 3 B active): Qwen2.5-Omni's processor API, card route and module layout, with
    # DeepStack vision features, audio at 13 tokens a second, no system turn on its card; the
    # talker and code2wav never loaded.
    dataclasses.replace(
        QWEN2_5_OMNI, name="qwen3-omni", title="Qwen3-Omni",
        model_types=("qwen3_omni_moe", "qwen3_omni_moe_thinker"),
        model_class="Qwen3OmniMoeThinkerForConditionalGeneration",
        processor_class="Qwen3OmniMoeProcessor", system=None,
        skip_prefixes=("talker.", "code2wav.")),
)

#: Gemma 4 12B (``google/gemma-4-12B-it``, ``gemma4_unified``: encoder-free, pixels and samples
#: projected straight into the decoder), fed as its model card feeds it (the processor's own
#: frames, 32 a clip, from torchcodec's decoding; the clip's track after its video; no system
#: turn).
GEMMA4_UNIFIED = NativeModelSpec(
    name="gemma4-12b", title="Gemma 4 12B", model_types=("gemma4_unified",),
    model_class="Gemma4UnifiedForConditionalGeneration", processor_class="Gemma4UnifiedProcessor",
    layout="gemma4", sampling=FrameSampling(rule="transformers", num_frames=32),
    resampler="ffmpeg", audio_in_video="after", system=None, audio_after_text=True,
    tower_prefixes=("model.vision_embedder.", "model.embed_vision.", "model.embed_audio."),
    tower_modules={"vision": ("model.embed_vision",), "audio": ("model.embed_audio",)},
    text_modules=("model.language_model", "lm_head"))

MODELS = (*MODELS, GEMMA4_UNIFIED,
          # Gemma 4 E2B / E4B (google/gemma-4-E2B-it, -E4B-it; ``gemma4``): a SigLIP-style vision
          # tower and a conformer audio tower (30 s at most) before their projections.
          dataclasses.replace(
              GEMMA4_UNIFIED, name="gemma4", title="Gemma 4 E2B / E4B", model_types=("gemma4",),
              model_class="Gemma4ForConditionalGeneration", processor_class="Gemma4Processor",
              tower_prefixes=("model.vision_tower.", "model.embed_vision.", "model.audio_tower.",
                              "model.embed_audio."),
              tower_modules={"vision": ("model.vision_tower", "model.embed_vision"),
                             "audio": ("model.audio_tower", "model.embed_audio")}))

BY_MODEL_TYPE: dict[str, NativeModelSpec] = {t: spec for spec in MODELS for t in spec.model_types}


def spec_for(config: dict) -> NativeModelSpec | None:
    """The entry for a checkpoint's ``config.json`` (its ``model_type``), or None."""
    return BY_MODEL_TYPE.get(str(config.get("model_type")))
