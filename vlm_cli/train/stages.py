"""Stages 1 and 2 end to end: parent -> data (cached features) -> model -> engine -> run dir.

- Stage 1 (``vlm pretrain``): caption pairs; builds the model from the recipe and trains what the
  stage's ``freeze`` leaves trainable (the connectors by default).
- Stage 2 (``vlm tune --from RUN``): multi-turn instructions; continues the model of a stage-1
  run (or of a checkpoint of another family) and trains connectors + LLM, fully or through LoRA
  adapters (peft).

The set-up reads as torchtune's recipes do (:func:`setup_stage`): the parent loaded through its
family (:func:`load_parent`), then :func:`setup_data`, then :func:`setup_model`; the engine
(:func:`vlm_cli.train.loop.fit`) sets up the optimiser and trains; :func:`save_stage` writes the
run directory. The LLM's dtype is :func:`vlm_cli.runtime.training_dtype`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm_cli.errors import UsageError
from vlm_cli.recipe import Recipe, StageSpec
from vlm_cli.train.loop import StageResult


@dataclasses.dataclass
class StageSummary(StageResult):
    """What ``vlm pretrain`` / ``vlm tune`` print: the loop's result and what was trained."""

    run_dir: str = ""
    stage: str = ""
    samples: int = 0
    trained: list[str] = dataclasses.field(default_factory=list)
    trainable_params: int = 0
    processes: int = 1


def feature_dims(recipe: Recipe) -> dict[str, int]:
    """Encoder feature width per modality of a recipe (no weights loaded)."""
    from vlm_cli.model.fingerprint import encoder_hidden_size

    dims = {}
    if recipe.model.vision is not None:
        dims["vision"] = encoder_hidden_size(recipe.model.vision)
    if recipe.model.audio is not None:
        dims["audio"] = encoder_hidden_size(recipe.model.audio)
    return dims


def _check_out(run_dir: Path, resume: bool) -> None:
    if resume:
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"{run_dir}: run directory exists; pass --resume to continue it or "
                         "choose another --out")


def _apply_lora(model: Any, stage: StageSpec) -> None:
    from peft import LoraConfig, get_peft_model

    lora = stage.lora
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules),
                        task_type=model.lora_task_type)
    import warnings

    with warnings.catch_warnings():  # peft calls a transformers attribute deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model.llm = get_peft_model(model.llm, config)


@dataclasses.dataclass
class Parent:
    """The model a stage continues (``--from``), loaded through its family
    (:func:`vlm_cli.model.families.load_model`): a vlm run, or a checkpoint of another family.

    Attributes:
        loaded: its recipe, model, encoder sources and media check.
        name: what the new run records as its parent (a hub id or an absolute directory).
        base: the checkpoint of another family the model comes from (``{"family", "name",
            "revision"}``; the checkpoint itself, or a run's own ``base``), or None.
        llm_weights: a run's LLM weights directory (``RunConfig.llm_weights``), or None.
    """

    loaded: Any
    name: str
    base: dict[str, Any] | None
    llm_weights: str | None


def load_parent(source: Path, device: str, *, trained_llm: bool) -> Parent:
    """Load the model ``--from`` names (a run directory, a checkpoint directory, or a hub id in
    the Hugging Face cache) through its family, its LLM in the training dtype
    (:func:`vlm_cli.runtime.training_dtype`: the run recipe's ``llm.dtype``, ``auto`` for a
    checkpoint, on ``device``).

    Raises:
        UsageError: no such directory, or not a run directory nor a supported checkpoint.
    """
    from vlm_cli.hub import is_repo_id, resolve_snapshot
    from vlm_cli.model.families import family_of, load_model, supported_titles
    from vlm_cli.model.families.vlm_run import read_run
    from vlm_cli.runtime import training_dtype

    if source.is_dir():
        directory, name = source, str(source.resolve())
    elif is_repo_id(str(source)):
        directory, name = resolve_snapshot(str(source), None), str(source)
    else:
        raise UsageError(f"--from {source}: no such run directory or checkpoint")
    family = family_of(directory)
    if family is None:
        raise UsageError(f"--from {source}: not a run directory nor a supported checkpoint "
                         f"({supported_titles()})")
    if family == "vlm-run":
        recipe, config = read_run(directory)
        dtype = training_dtype(recipe.model.llm.dtype, device, trained=trained_llm)
        return Parent(load_model(directory, dtype=dtype), name, config.base, config.llm_weights)
    dtype = training_dtype("auto", device, trained=trained_llm)
    return Parent(load_model(directory, name=name, dtype=dtype), name,
                  {"family": family, "name": name, "revision": None}, None)


@dataclasses.dataclass
class StageSetup:
    """What :func:`setup_stage` prepares for the engine: the model with its trainable parts
    chosen, the dataset over cached features, and what the run directory will record."""

    recipe: Recipe
    stage_name: str
    stage: StageSpec
    model: Any
    dataset: Any
    store: Any
    accelerator: Any
    trained: list[str]
    llm_weights: str | None
    base: dict[str, Any] | None
    parent: str | None


def run_stage(recipe: Recipe, stage_name: str, run_dir: Path, *, data: Path | None,
              media_root: Path | None = None, from_run: Path | None = None,
              resume: bool = False, workers: int = 2,
              on_step: Callable[[Any], None] | None = None,
              on_clip: Callable[[str, str], None] | None = None) -> StageSummary | None:
    """Run stage ``stage1`` or ``stage2`` of ``recipe`` into ``run_dir``: :func:`setup_stage`,
    the engine (:func:`vlm_cli.train.loop.train_stage`), :func:`save_stage`.

    Args:
        data: training data (overrides the stage's ``data``).
        media_root: media directory (overrides ``data.media_root``; default: the data's folder).
        from_run: stage 2: the stage-1 run whose model to continue (its ``model`` section is
            used; ``recipe`` supplies the stage-2 settings), or a checkpoint of another family
            (a Video-LLaVA-hf directory or cached hub id) whose towers, projector and LLM to
            start from.
        resume: continue ``run_dir`` from its last checkpoint.

    Returns:
        The summary on the main process; None on the other processes of a distributed run.

    Raises:
        UsageError: no data given, ``run_dir`` exists without ``resume``, bad freeze list.
        DataError / VlmError: unreadable data or media (named).
    """
    from vlm_cli.train.loop import train_stage

    setup = setup_stage(recipe, stage_name, run_dir, data=data, media_root=media_root,
                        from_run=from_run, resume=resume, workers=workers, on_clip=on_clip)
    result, trained = train_stage(setup.model, setup.dataset, setup.stage, run_dir,
                                  resume=resume, accelerator=setup.accelerator, on_step=on_step)
    return save_stage(setup, result, run_dir, trained)


def setup_stage(recipe: Recipe, stage_name: str, run_dir: Path, *, data: Path | None,
                media_root: Path | None = None, from_run: Path | None = None,
                resume: bool = False, workers: int = 2,
                on_clip: Callable[[str, str], None] | None = None) -> StageSetup:
    """Everything before the first step, as torchtune's recipes set up: the parent model
    (:func:`load_parent`, through its family) or none, then the data (the features of every
    clip in the cache, preprocessed here if missing: :func:`setup_data`), then the model (a new
    one or the parent; its trainable parts: :func:`setup_model`). The optimiser is the
    engine's (:func:`vlm_cli.train.loop.setup_optimizer`).

    One seed (``train.<stage>.seed``) before any model is built or loaded, so that the random
    numbers the stage draws (new connectors; a parent's construction, then the LoRA matrices)
    do not depend on what ran before; the data set-up draws none of them (it may build the
    encoders to fill a cold cache).
    """
    import torch

    from vlm_cli.train.data import FeatureDataset
    from vlm_cli.train.loop import make_accelerator

    stage: StageSpec = getattr(recipe.train, stage_name)
    data_path = data or (Path(stage.data) if stage.data else None)
    if data_path is None:
        raise UsageError(f"no training data: pass --data or set train.{stage_name}.data")
    _check_out(run_dir, resume)
    accelerator = make_accelerator()
    device = str(accelerator.device)
    # A frozen LLM (LoRA included) is held in the recipe's dtype (bf16 on GPUs that support it);
    # a fully trained one in fp32 (master weights; the forward pass runs under autocast).
    trained_llm = "llm" not in stage.freeze
    torch.manual_seed(stage.seed)
    parent = load_parent(from_run, device, trained_llm=trained_llm) if from_run else None
    if parent is not None:  # the parent's model and sampling, this recipe's training settings
        recipe = dataclasses.replace(recipe, model=parent.loaded.recipe.model,
                                     data=parent.loaded.recipe.data)
    with torch.random.fork_rng(devices=[]):
        records, store = setup_data(recipe, data_path, media_root, parent, accelerator,
                                    workers=workers, on_clip=on_clip)
    model, trained = setup_model(recipe, stage_name, parent, accelerator,
                                 trained_llm=trained_llm)
    dataset = FeatureDataset(records, model, store, stage.max_length)
    run_dir.mkdir(parents=True, exist_ok=True)
    return StageSetup(recipe, stage_name, stage, model, dataset, store, accelerator, trained,
                      parent.llm_weights if parent else None, parent.base if parent else None,
                      parent.name if parent else None)


def setup_data(recipe: Recipe, data_path: Path, media_root: Path | None, parent: Parent | None,
               accelerator: Any, *, workers: int = 2,
               on_clip: Callable[[str, str], None] | None = None) -> tuple[list[Any], Any]:
    """The stage's records and its feature store (the parent family's encoders, else the
    recipe's), with every clip's features in the cache: preprocessed on the main process
    (:func:`vlm_cli.train.data.ensure_features`) while the others wait.

    Raises:
        DataError / VlmError: unreadable data or media (named).
    """
    from vlm_cli.cache import FeatureCache
    from vlm_cli.data import load_records
    from vlm_cli.features import FeatureStore
    from vlm_cli.train.data import ensure_features

    root = media_root or (Path(recipe.data.media_root) if recipe.data.media_root else None)
    records = load_records(data_path, root)
    loaded = parent.loaded if parent is not None else None
    store = FeatureStore(recipe, FeatureCache(), device=str(accelerator.device),
                         encoders=loaded.encoders if loaded else None,
                         check=loaded.check if loaded else None)
    if accelerator.is_main_process:
        ensure_features(records, store, workers=workers, on_clip=on_clip)
    accelerator.wait_for_everyone()
    return records, store


def setup_model(recipe: Recipe, stage_name: str, parent: Parent | None, accelerator: Any, *,
                trained_llm: bool) -> tuple[Any, list[str]]:
    """The model to train: the parent's (its towers released: every feature is cached) or a
    new one built from ``recipe`` (its LLM in :func:`vlm_cli.runtime.training_dtype`), with
    fp32 connectors, the stage's frozen parts, its LoRA adapters and gradient checkpointing.

    Returns:
        ``(model, trained)``: the model and the names of its trained parts.

    Raises:
        UsageError: a bad freeze list, or a model that trains through LoRA only without it.
    """
    from vlm_cli.model.llm import build_llm
    from vlm_cli.model.parts import set_trainable
    from vlm_cli.model.tokenizer import load_tokenizer
    from vlm_cli.model.vlm import VideoLanguageModel
    from vlm_cli.runtime import training_dtype
    from vlm_cli.train.fsdp import checkpoints_activations

    stage: StageSpec = getattr(recipe.train, stage_name)
    device = str(accelerator.device)
    if parent is not None:
        model = parent.loaded.model
        model.release_towers()  # every feature is cached now: training never runs a tower
    else:
        tokenizer = load_tokenizer(recipe.model.llm)
        dtype = training_dtype(recipe.model.llm.dtype, device, trained=trained_llm)
        model = VideoLanguageModel(recipe.model, build_llm(recipe.model.llm, tokenizer,
                                                           dtype=dtype),
                                   tokenizer, feature_dims(recipe))
    model.connectors.float()  # trained parts keep fp32 weights
    if accelerator.is_main_process:
        from vlm_cli import console

        console.info(f"{stage_name} on {device}: LLM "
                     f"{str(model.llm.dtype).removeprefix('torch.')} "
                     f"({'trained' if trained_llm else 'frozen'}), connectors "
                     f"float32, autocast {accelerator.mixed_precision}")
    if not model.connectors and trained_llm:
        family = (parent.base or {}).get("family", "this") if parent else "this"
        raise UsageError(f"train.{stage_name}.freeze: a {family} model is tuned through LoRA "
                         f"only: freeze [vision, audio, llm] and set train.{stage_name}.lora")
    trained = set_trainable(model, stage.freeze, f"train.{stage_name}")
    if stage.lora is not None:
        _apply_lora(model, stage)
        trained.append("lora")
    if stage.gradient_checkpointing and not checkpoints_activations(accelerator):
        model.llm.activation_checkpointing_enable()  # transformers 5.24's name
        model.llm.enable_input_require_grads()
    return model, trained


def save_stage(setup: StageSetup, result: Any, run_dir: Path, model: Any) -> StageSummary | None:
    """Write the run directory (main process) from ``model``, the trained model with its full
    weights (gathered from the shards under FSDP2: None on the other processes), and return the
    summary (None elsewhere)."""
    from vlm_cli.model.families.vlm_run import RunConfig, base_identity, save_run
    from vlm_cli.train.loop import plot_loss

    accelerator, recipe, stage = setup.accelerator, setup.recipe, setup.stage
    if accelerator.is_main_process:
        random_llm = recipe.model.llm.config is not None and setup.llm_weights is None
        config = RunConfig(stage=setup.stage_name, recipe=recipe.name,
                           feature_dims=model.feature_dims, llm_weights=setup.llm_weights,
                           adapter=stage.lora is not None, trained=setup.trained,
                           parent=setup.parent, steps=result.total_steps, base=setup.base)
        if stage.lora is not None:  # pin the base the adapter belongs to (checked by merges)
            config.llm_revision, config.llm_sha256 = base_identity(
                config, recipe, setup.store.cache.file_digest)
        save_run(run_dir, recipe, model, config,
                 save_llm="llm" in setup.trained or random_llm)
        plot_loss(run_dir)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return StageSummary(**dataclasses.asdict(result), run_dir=str(run_dir),
                        stage=setup.stage_name, samples=len(setup.dataset),
                        trained=setup.trained, trainable_params=trainable,
                        processes=accelerator.num_processes)
