"""The vlm run directory family: what a training stage (or ``vlm merge-lora``) writes, and
loading a model back from one.

Layout::

    RUN/recipe.yaml               the resolved recipe (overrides applied)
    RUN/config.json               format, stage, feature widths, where the LLM weights are
    RUN/tokenizer/                the tokenizer (with media tokens and chat template)
    RUN/connectors.safetensors    connector weights
    RUN/llm/                      LLM weights (safetensors), only when this run changed them
                                  (full fine-tuning, or a randomly initialised tiny LLM)
    RUN/adapter/                  PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors)
    RUN/metrics.jsonl, loss.png   training curves
    RUN/checkpoints/step-N/       resumable state (see vlm_cli.train.checkpoint)

Frozen parts are referenced, never copied: the LLM by hub id + resolved revision, or by the path
of an earlier run's ``llm/`` directory; the encoders by the recipe (their features are cached).
A run started from a checkpoint of another family (``vlm tune --from`` a Video-LLaVA-hf
checkpoint) records it as its ``base``: that family loads the LLM, tokenizer and encoders, and
the run adds its connectors and adapter.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from vlm_cli.atomic import atomic_write_bytes, atomic_write_text
from vlm_cli.errors import UsageError
from vlm_cli.model.families import Loaded, read_config
from vlm_cli.recipe import Recipe

FORMAT = "vlm-run/1"


@dataclasses.dataclass
class RunConfig:
    """``RUN/config.json``.

    Attributes:
        stage: ``stage1`` or ``stage2``. recipe: recipe name.
        feature_dims: encoder feature width per modality.
        llm_weights: directory of the LLM weights to load (absolute), or None for the recipe's
            ``model.llm`` source (a hub id + revision, or a random init from config).
        llm_revision: resolved hub commit of the base LLM, when it came from the hub.
        adapter: True when ``RUN/adapter`` holds a LoRA adapter to apply on top.
        trained: the parts this stage trained. parent: the run this one started from.
        steps: optimizer steps done.
        llm_sha256: sha256 of each weight file of a local base LLM (``llm_weights``), recorded
            when an adapter is trained on it, so a merge onto changed weights is refused.
        merged_from: for a ``vlm merge-lora`` output: the run, base and adapter hash merged.
        base: the checkpoint of another family this run started from, ``{"family", "name",
            "revision"}`` (name: a hub id or an absolute directory), or None.
    """

    stage: str
    recipe: str
    feature_dims: dict[str, int]
    llm_weights: str | None = None
    llm_revision: str | None = None
    adapter: bool = False
    trained: list[str] = dataclasses.field(default_factory=list)
    parent: str | None = None
    steps: int = 0
    llm_sha256: dict[str, str] | None = None
    merged_from: dict[str, Any] | None = None
    base: dict[str, Any] | None = None
    format: str = FORMAT


def base_identity(config: RunConfig, recipe: Recipe,
                  digest: Any) -> tuple[str | None, dict[str, str] | None]:
    """What pins a run's base LLM: ``(hub commit, None)`` for a hub id, ``(None, {file: sha256})``
    for local weights (``config.llm_weights``, or a local checkpoint directory), ``(None, None)``
    for a seeded random init.

    Raises:
        VlmError: a hub base that is not in the local cache.
    """
    if config.llm_weights:
        files = sorted(Path(config.llm_weights).glob("*.safetensors"))
        return None, {p.name: digest(p) for p in files}
    spec = recipe.model.llm
    if spec.pretrained:
        from vlm_cli.hub import resolve_pretrained

        _, pinned = resolve_pretrained(spec.pretrained, spec.revision, digest)
        return pinned.get("revision"), pinned.get("weights")
    return None, None


def save_run(run_dir: Path, recipe: Recipe, model: Any, config: RunConfig,
             save_llm: bool) -> None:
    """Write the final artefacts of a stage into ``run_dir`` (each file atomically).

    Args:
        model: the trained :class:`VideoLanguageModel`.
        save_llm: write the full LLM to ``RUN/llm`` (full fine-tuning or random init).
    """
    import yaml
    from safetensors.torch import save

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    model.tokenizer.save_pretrained(run_dir / "tokenizer")
    state = {k: v.detach().contiguous().cpu() for k, v in model.connectors.state_dict().items()}
    atomic_write_bytes(run_dir / "connectors.safetensors", save(state))
    llm = model.llm
    if config.adapter:
        llm.save_pretrained(run_dir / "adapter")
        llm = llm.get_base_model()
    if save_llm:
        llm.save_pretrained(run_dir / "llm", safe_serialization=True)
        config.llm_weights = str((run_dir / "llm").resolve())
    atomic_write_text(run_dir / "config.json",
                      json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def read_run(run_dir: Path) -> tuple[Recipe, RunConfig]:
    """The recipe and config of a run directory.

    Raises:
        UsageError: not a run directory (no config.json / recipe.yaml), or another format.
    """
    from vlm_cli.schema import from_dict as schema_from_dict, load_yaml

    try:
        raw = json.loads((run_dir / "config.json").read_text())
        recipe_data = load_yaml((run_dir / "recipe.yaml").read_text())
    except FileNotFoundError as err:
        raise UsageError(f"{run_dir}: not a vlm run directory (missing {Path(err.filename).name})"
                         ) from err
    if raw.get("format") != FORMAT:
        raise UsageError(f"{run_dir}: unsupported run format {raw.get('format')!r}")
    recipe, config = schema_from_dict(Recipe, recipe_data), RunConfig(**raw)
    # Paths inside a self-contained directory (vlm merge-lora) are relative to it.
    if config.llm_weights and not Path(config.llm_weights).is_absolute():
        config.llm_weights = str((run_dir / config.llm_weights).resolve())
    for part in ("vision", "audio"):
        spec = getattr(recipe.model, part)
        if spec is not None and spec.pretrained and (run_dir / spec.pretrained).is_dir() \
                and not Path(spec.pretrained).is_absolute():
            spec.pretrained = str((run_dir / spec.pretrained).resolve())
    return recipe, config


def detect(directory: str | Path) -> bool:
    """Whether ``directory`` is a vlm run directory or merged model (config.json ``format``)."""
    return read_config(directory).get("format") == FORMAT


def load_base(config: RunConfig, *, device: str, dtype: Any, download: bool = False) -> Loaded:
    """The checkpoint of another family a run started from (``config.base``).

    Raises:
        VlmError: the base is not available locally (the message names the download)."""
    from vlm_cli.hub import local_path
    from vlm_cli.model.families import family_module

    base = config.base
    directory = local_path(base["name"], base.get("revision"), download=download)
    return family_module(base["family"]).load(directory, device=device, dtype=dtype,
                                              name=base["name"], revision=base.get("revision"))


def load(directory: Path, *, device: str = "cpu", dtype: Any = None, name: str | None = None,
         revision: str | None = None, download: bool = False) -> Loaded:
    """Rebuild the model of a run directory (LLM + adapter + connectors), in eval mode on
    ``device``; the LLM in ``dtype`` (default: the recipe's, ``auto`` choosing by device).

    Args:
        download: fetch hub parts the run references that are not cached (``--download``).

    Raises:
        UsageError: not a run directory. VlmError: a referenced base model is missing.
    """
    import warnings

    from safetensors.torch import load_file

    from vlm_cli.hub import fetch_missing, recipe_repos
    from vlm_cli.model.llm import build_llm
    from vlm_cli.model.tokenizer import load_tokenizer
    from vlm_cli.model.vlm import VideoLanguageModel
    from vlm_cli.runtime import resolve_dtype

    recipe, config = read_run(directory)
    dtype = dtype or resolve_dtype(recipe.model.llm.dtype, device)
    encoders, check = None, None
    if config.base:  # the base family's model, its LLM then adapted or replaced
        base = load_base(config, device=device, dtype=dtype, download=download)
        model, encoders, check = base.model, base.encoders, base.check
        if config.llm_weights:  # a fully fine-tuned LLM replaces the base's
            model.llm = build_llm(recipe.model.llm, model.tokenizer, weights=config.llm_weights,
                                  dtype=dtype)
    else:
        fetch_missing(recipe_repos(recipe), download)
        tokenizer = load_tokenizer(recipe.model.llm, source=directory / "tokenizer")
        llm = build_llm(recipe.model.llm, tokenizer, weights=config.llm_weights, dtype=dtype)
        model = VideoLanguageModel(recipe.model, llm, tokenizer, config.feature_dims)
    if config.adapter:
        from peft import PeftModel

        with warnings.catch_warnings():  # peft calls a transformers attribute deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model.llm = PeftModel.from_pretrained(model.llm, directory / "adapter")
    model.connectors.load_state_dict(load_file(directory / "connectors.safetensors"))
    return Loaded(recipe, model.to(device).eval(), "vlm-run", encoders, check)


def load_run(run_dir: Path, *, device: str = "cpu", dtype: Any = None) -> tuple[Recipe, Any]:
    """``(recipe, VideoLanguageModel)`` of a run directory (see :func:`load`)."""
    loaded = load(run_dir, device=device, dtype=dtype)
    return loaded.recipe, loaded.model


def save(model: Any, out: Path, *, run_dir: Path, recipe: Recipe, config: RunConfig,
         dtype: str, merged_from: dict[str, Any], max_shard_size: str = "2GB") -> None:
    """A merged model (``vlm merge-lora``) as a self-contained run directory in ``out``: ``llm/``
    (sharded safetensors + index), ``tokenizer/``, ``connectors.safetensors``, encoders loaded from
    local directories copied under ``encoders/``, ``recipe.yaml`` and ``config.json`` (no adapter,
    nothing referenced outside it)."""
    import yaml
    from safetensors.torch import save as save_tensors

    model.llm.save_pretrained(out / "llm", safe_serialization=True,
                              max_shard_size=max_shard_size)
    model.tokenizer.save_pretrained(out / "tokenizer")
    state = {k: v.detach().contiguous().cpu() for k, v in model.connectors.state_dict().items()}
    atomic_write_bytes(out / "connectors.safetensors", save_tensors(state))
    for part in ("vision", "audio"):  # local encoders travel with the model; hub ids stay refs
        spec = getattr(recipe.model, part)
        if spec is not None and spec.pretrained and Path(spec.pretrained).is_dir():
            shutil.copytree(spec.pretrained, out / "encoders" / part)
            spec.pretrained = f"encoders/{part}"
    recipe.model.llm.dtype = dtype
    atomic_write_text(out / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    merged = dataclasses.asdict(RunConfig(
        stage=config.stage, recipe=config.recipe, feature_dims=config.feature_dims,
        llm_weights="llm", llm_revision=config.llm_revision, adapter=False,
        trained=config.trained, parent=str(run_dir.resolve()), steps=config.steps,
        merged_from=merged_from))
    atomic_write_text(out / "config.json", json.dumps(merged, indent=2) + "\n")
