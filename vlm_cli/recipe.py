"""Recipes: the typed schema of a model + data (+ later training) configuration, and its loader.

A recipe is a YAML file (``recipes/<name>.yaml`` ships with the package; any path works too),
validated into the dataclasses below by :mod:`vlm_cli.schema`: unknown keys and wrong types are
errors naming the key. ``key=value`` overrides from the command line are applied before validation.
Every key carries its type and default here, and a comment in the shipped YAML (LitGPT style).
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from vlm_cli.errors import RecipeError
from vlm_cli.schema import apply_overrides, from_dict, load_yaml, to_dict

#: CLIP's image normalisation (OpenAI CLIP; also LanguageBind / Video-LLaVA towers).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_source(spec: Any, prefix: str) -> None:
    if (spec.pretrained is None) == (spec.config is None):
        raise RecipeError(f"recipe key {prefix!r}: set exactly one of 'pretrained' (hub id or "
                          "local directory) and 'config' (random initialisation)")


@dataclasses.dataclass
class VisionEncoderSpec:
    """A frozen image encoder run per frame (Video-LLaMA §2.1; Video-LLaVA §3.1).

    Attributes:
        arch: transformers class: ``clip`` (CLIPVisionModel) or ``siglip`` (SiglipVisionModel),
            run per frame; or ``vivit`` (VivitModel), run once per clip on tubelets spanning
            several frames (a spatio-temporal encoder: motion is in its features).
        pretrained: hub repo id or local directory (``from_pretrained``); or None with ``config``.
        revision: hub revision (branch, tag or commit); None = the cached default branch.
        config: a transformers config dict for a randomly initialised encoder (tiny recipes).
        init_seed: torch seed for that random initialisation.
        feature_layer: hidden-state index whose output is used (Video-LLaVA: -2); -1 is the
            model's final output (``last_hidden_state``, after ViViT's final layer norm).
        select: ``patch`` drops the CLS token (Video-LLaVA), ``cls_patch`` keeps it, ``cls``
            keeps only the CLS token (one vector per frame, or per clip for ``vivit``).
        image_size: input size in px (square); None = the config's ``image_size``.
        image_mean, image_std: per-channel normalisation of [0, 1] pixels; None = CLIP's.
        dtype: weights/compute dtype of the encoder.
    """

    arch: Literal["clip", "siglip", "vivit"] = "clip"
    pretrained: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    init_seed: int = 0
    feature_layer: int = -2
    select: Literal["patch", "cls_patch", "cls"] = "patch"
    image_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def validate(self, prefix: str) -> None:
        _check_source(self, prefix)


@dataclasses.dataclass
class AudioEncoderSpec:
    """A frozen audio encoder run on 2 s clips (Video-LLaMA §2.1).

    Attributes:
        arch: ``ast`` (transformers ASTModel, fed the 128-mel Kaldi fbank of AST and ImageBind),
            or ``whisper`` (the encoder of a transformers Whisper model, fed Whisper's log-mel;
            ``fbank_mean`` / ``fbank_std`` do not apply).
        pretrained, revision, config, init_seed, dtype: as for :class:`VisionEncoderSpec`.
        feature_layer: hidden-state index used when ``select`` is ``all`` (-1 = last).
        select: ``pooled`` gives one vector per clip (AST's pooler: mean of CLS and distillation
            tokens, like ImageBind's one embedding per clip); ``all`` keeps every token.
        num_mel_bins: mel bins (AST: 128; Whisper: its config's, 80 or 128). target_frames:
            spectrogram frames per clip after padding or cropping, at a 10 ms shift (AST /
            ImageBind 2 s clips: 204; AST's 10 s checkpoints: 1024; Whisper: twice its
            ``max_source_positions``, 3000 for the released checkpoints).
        fbank_mean, fbank_std: normalisation ``(fbank - mean) / std``. ImageBind: -4.268 / 9.138.
            AST checkpoints divide by twice AudioSet's std (transformers' ASTFeatureExtractor:
            ``(fbank - mean) / (2 * std)``), so for them use -4.2677393 / 9.1379948.
    """

    arch: Literal["ast", "whisper"] = "ast"
    pretrained: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    init_seed: int = 0
    feature_layer: int = -1
    select: Literal["pooled", "all"] = "pooled"
    num_mel_bins: int = 128
    target_frames: int = 204
    fbank_mean: float = -4.268
    fbank_std: float = 9.138
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def validate(self, prefix: str) -> None:
        _check_source(self, prefix)


@dataclasses.dataclass
class ConnectorSpec:
    """A connector from an encoder's features to the LLM's input embeddings (the soft prompt).

    Attributes:
        type: ``mlp``: Linear-GELU-Linear applied to every token (Video-LLaVA §3.1, Table 7);
            ``qformer``: transformers Blip2QFormerModel with learned query tokens cross-attending
            to all frame (or clip) tokens plus learned position embeddings, then a linear
            projection to the LLM width (Video-LLaMA §2.1).
        tokens_per_frame: ``mlp`` only: average-pool each frame's patch tokens to this many
            (a square number) before projecting; None keeps every token.
        num_query_tokens: ``qformer``: learned queries (Video-LLaMA: 32 video, 8 audio).
        hidden_size, num_layers, num_heads, intermediate_size: ``qformer`` transformer size
            (None = 4 × hidden_size); ``mlp``: hidden_size is the inner width (None = LLM width).
        max_positions: ``qformer``: frame / clip position embeddings available.
        dropout: ``qformer`` hidden and attention dropout (BLIP-2 uses 0.1).
        max_tokens: the video connector's soft-prompt budget in tokens at inference (``vlm
            ask``, ``eval``): frames beyond it are average-pooled in time (``mlp``); None = the
            LLM's context less ``min(1024, context // 2)`` (see :mod:`vlm_cli.model.budget`).
            Applied after the feature cache: it does not change cached features.
    """

    type: Literal["mlp", "qformer"] = "mlp"
    tokens_per_frame: int | None = None
    num_query_tokens: int = 32
    hidden_size: int | None = None
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int | None = None
    max_positions: int = 32
    dropout: float = 0.1
    max_tokens: int | None = None

    def validate(self, prefix: str) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RecipeError(f"recipe key '{prefix}.max_tokens': must be >= 1 or null")
        tpf = self.tokens_per_frame
        if tpf is not None and (tpf < 1 or round(tpf ** 0.5) ** 2 != tpf):
            raise RecipeError(f"recipe key '{prefix}.tokens_per_frame': must be a square number "
                              "(1, 4, 9, ...) or null")
        if self.type == "qformer" and self.hidden_size is None:
            raise RecipeError(f"recipe key '{prefix}.hidden_size': required for a qformer")


@dataclasses.dataclass
class LLMSpec:
    """The language model: any ``AutoModelForCausalLM`` (LlamaForCausalLM in tests).

    Attributes:
        pretrained, revision, config, init_seed, dtype: as for :class:`VisionEncoderSpec`
            (``config`` is a LlamaConfig dict for a random tiny LLM).
        tokenizer: hub id or directory of the tokenizer; None = ``pretrained``'s; ``toy-av`` =
            the built-in word-level tokenizer of the toy-av world.
        chat_template: a Jinja chat template overriding the tokenizer's; None = the tokenizer's.
        attn_implementation: ``sdpa`` (default) or ``eager``.
    """

    pretrained: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    init_seed: int = 0
    tokenizer: str | None = None
    chat_template: str | None = None
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    def validate(self, prefix: str) -> None:
        _check_source(self, prefix)
        if self.pretrained is None and self.tokenizer is None:
            raise RecipeError(f"recipe key '{prefix}.tokenizer': required when the LLM is "
                              "built from a config")


@dataclasses.dataclass
class ModelSpec:
    """The model's parts. Each is optional: a recipe may use one modality.

    Images go through the video connector (Video-LLaVA's shared projector), encoded by
    ``image`` when set (Video-LLaVA-hf's separate image tower), else by ``vision``.

    ``towers`` names the checkpoint family whose own frozen towers feed the connectors (a
    released model described by its family, e.g. ``video-llama``: BLIP-2's and ImageBind's
    towers, which no encoder spec describes); None when ``vision`` / ``audio`` name them.
    """

    vision: VisionEncoderSpec | None = None
    image: VisionEncoderSpec | None = None
    audio: AudioEncoderSpec | None = None
    video_connector: ConnectorSpec | None = None
    audio_connector: ConnectorSpec | None = None
    llm: LLMSpec | None = None
    towers: str | None = None

    def validate(self, prefix: str) -> None:
        for encoder, connector in (("vision", "video_connector"), ("audio", "audio_connector")):
            if getattr(self, connector) is not None and getattr(self, encoder) is None \
                    and self.towers is None:
                raise RecipeError(f"recipe key '{prefix}.{connector}': needs model.{encoder}")
        if self.image is not None and self.vision is None:
            raise RecipeError(f"recipe key '{prefix}.image': needs model.vision (videos)")


@dataclasses.dataclass
class DataSpec:
    """Frame and audio-clip sampling, and where media files are found.

    Attributes:
        frames: frames per video under ``uniform`` sampling (Video-LLaVA: 8).
        sampling: ``uniform`` (Video-LLaVA: linspace over the frames that decode),
            ``segment_start`` (Video-LLaMA: the first frame of each of ``frames`` equal segments,
            ``np.arange(0, n, n / frames)``; fewer frames when the video has fewer) or ``fps``.
        fps: frames per second under ``fps`` sampling.
        max_frames: cap under ``fps`` sampling (frames are then spread uniformly).
        audio_clips: number of 2 s audio clips per file (Video-LLaMA §2.1: 8).
        clip_seconds: audio clip length in seconds.
        media_root: directory media paths are relative to; None = the data file's directory.
    """

    frames: int = 8
    sampling: Literal["uniform", "segment_start", "fps"] = "uniform"
    fps: float | None = None
    max_frames: int | None = None
    audio_clips: int = 8
    clip_seconds: float = 2.0
    media_root: str | None = None

    def validate(self, prefix: str) -> None:
        p = f"{prefix}." if prefix else ""
        if self.sampling == "fps" and (self.fps is None or self.fps <= 0):
            raise RecipeError(f"recipe key '{p}fps': a positive number is required when "
                              "sampling is 'fps'")
        for name in ("frames", "audio_clips"):
            if getattr(self, name) < 1:
                raise RecipeError(f"recipe key '{p}{name}': must be at least 1")
        if self.clip_seconds <= 0:
            raise RecipeError(f"recipe key '{p}clip_seconds': must be positive")

    def frame_sampling(self) -> dict[str, Any]:
        """The settings that decide which frames are taken (part of the vision cache key)."""
        if self.sampling == "fps":
            return {"strategy": "fps", "fps": self.fps, "max_frames": self.max_frames}
        return {"strategy": self.sampling, "frames": self.frames}

    def audio_sampling(self) -> dict[str, Any]:
        """The settings that decide which audio clips are taken (part of the audio cache key)."""
        return {"clips": self.audio_clips, "clip_seconds": self.clip_seconds}


#: Model parts that ``freeze`` and ``train`` lists may name (see vlm_cli.model.parts).
PARTS = ("vision", "audio", "video_connector", "audio_connector", "llm")


@dataclasses.dataclass
class LoraSpec:
    """LoRA on the LLM through peft (stage 2). Rank r, scaling alpha / r."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclasses.dataclass
class OptimSpec:
    """The optimisation settings every training stage shares (the encoder alignment and stages
    1 and 2 run on one engine, :func:`vlm_cli.train.loop.fit`).

    Attributes:
        lr, weight_decay, max_grad_norm: AdamW settings (gradients clipped to that norm; 0 =
            no clipping).
        schedule: ``cosine`` (with linear warmup over ``warmup_ratio`` of the steps), ``linear``
            or ``constant`` (after warmup).
        batch_size: global batch (samples per optimizer step, over all processes and
            accumulation steps). grad_accum: micro-batches per step per process.
        save_every: checkpoint every N optimizer steps (and always at the end); None = end only.
        log_every: metrics line every N steps. seed: data order and dropout.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.03
    batch_size: int = 32
    grad_accum: int = 1
    save_every: int | None = None
    log_every: int = 10
    seed: int = 0

    def validate(self, prefix: str) -> None:
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise RecipeError(f"recipe key '{prefix}.batch_size': must be a positive multiple "
                              f"of grad_accum ({self.grad_accum})")
        if not 0 <= self.warmup_ratio < 1:
            raise RecipeError(f"recipe key '{prefix}.warmup_ratio': must be in [0, 1)")


@dataclasses.dataclass
class StageSpec(OptimSpec):
    """One training stage (stage 1: caption pairs; stage 2: multi-turn instructions), with the
    optimisation settings of :class:`OptimSpec`.

    Attributes:
        data: LLaVA / Video-LLaVA JSON or JSONL; relative paths are resolved against the current
            directory; ``--data`` on the command line overrides it.
        freeze: parts kept frozen (everything else in the model is trained; LoRA, when set,
            trains adapters on the LLM even though ``llm`` is frozen).
        lora: LoRA settings, or None for no adapters.
        epochs: passes over the data (ignored when ``max_steps`` is set).
        max_length: token limit per sample (longer ones are truncated).
        gradient_checkpointing: recompute LLM activations in the backward pass.
    """

    data: str | None = None
    freeze: list[str] = dataclasses.field(default_factory=lambda: ["vision", "audio", "llm"])
    lora: LoraSpec | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    max_length: int = 2048
    gradient_checkpointing: bool = False

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        unknown = sorted(set(self.freeze) - set(PARTS))
        if unknown:
            raise RecipeError(f"recipe key '{prefix}.freeze': unknown part {unknown[0]!r}; "
                              f"parts: {', '.join(PARTS)}")


@dataclasses.dataclass
class ViewSpec:
    """A caption view: one attribute that captions name with one of ``words``.

    Attributes:
        name: the view's name (``colour``, ``sound``, ...).
        modality: the encoder that must predict it from its input (``vision`` or ``audio``).
        words: the phrases captions use for it (``[red, green, ...]``), matched as whole words,
            case-insensitively; a caption naming none of them leaves the view out of its loss.
    """

    name: str
    modality: Literal["vision", "audio"]
    words: list[str]


@dataclasses.dataclass
class AlignSpec(OptimSpec):
    """Encoder alignment, for recipes whose encoders the toolkit trains itself (tiny-av:
    nothing pretrained can be downloaded). Each caption is split into views naming one attribute
    at a time; the vision and audio encoders learn to predict the views of their modality from
    their pooled output (a linear head per view over its words, and one per ``joint`` group over
    the combinations). The aligned encoders are then frozen like any pretrained ones.

    Attributes:
        data: caption pairs (LLaVA JSON); ``--data`` overrides it.
        views, joint: the views, and groups of vision views predicted jointly.
        steps: optimizer steps; the rest of :class:`OptimSpec` as for stages 1 and 2.
    """

    data: str | None = None
    views: list[ViewSpec] = dataclasses.field(default_factory=list)
    joint: list[list[str]] = dataclasses.field(default_factory=list)
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    steps: int = 700
    log_every: int = 50

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        names = [v.name for v in self.views]
        if not names:
            raise RecipeError(f"recipe key '{prefix}.views': at least one view is required")
        for group in self.joint:
            unknown = [n for n in group if n not in names]
            if unknown:
                raise RecipeError(f"recipe key '{prefix}.joint': unknown view {unknown[0]!r}; "
                                  f"views: {', '.join(names)}")


@dataclasses.dataclass
class TrainSpec:
    """The training stages (``encoders`` only for recipes that train their own encoders)."""

    encoders: AlignSpec | None = None
    stage1: StageSpec = dataclasses.field(default_factory=StageSpec)
    stage2: StageSpec = dataclasses.field(default_factory=lambda: StageSpec(
        freeze=["vision", "audio"], lr=2e-5))


@dataclasses.dataclass
class Recipe:
    """A whole recipe. ``name`` identifies it in run directories and reports."""

    name: str
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    train: TrainSpec = dataclasses.field(default_factory=TrainSpec)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (saved into every run directory)."""
        return to_dict(self)


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped in ``vlm_cli.recipes`` (``recipes/`` in the repository)."""
    return sorted(p.name[:-5] for p in resources.files("vlm_cli.recipes").iterdir()
                  if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, override and validate a recipe.

    Args:
        name_or_path: a built-in recipe name (``tiny-av``) or a path to a YAML file.
        overrides: ``dotted.key=value`` strings applied before validation.

    Raises:
        RecipeError: unknown recipe name, unreadable or invalid YAML, or a schema violation.
    """
    import yaml

    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        try:
            text = path.read_text()
        except OSError as err:
            raise RecipeError(f"recipe {name_or_path}: {err.strerror or err}") from err
        where = str(path)
    else:
        if name_or_path not in builtin_recipes():
            raise RecipeError(f"unknown recipe {name_or_path!r}; built-in recipes: "
                              f"{', '.join(builtin_recipes())} (or give a path to a YAML file)")
        text = (resources.files("vlm_cli.recipes") / f"{name_or_path}.yaml").read_text()
        where = f"built-in recipe {name_or_path}"
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{where}: invalid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level")
    return from_dict(Recipe, apply_overrides(data, list(overrides)))
