"""Run directories: what a training stage writes, and loading a model back from one.

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
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from vlm_cli.atomic import atomic_write_bytes, atomic_write_text
from vlm_cli.errors import UsageError
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
        from vlm_cli.model.hub import resolve_pretrained

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
    import yaml

    from vlm_cli.schema import from_dict as schema_from_dict

    try:
        raw = json.loads((run_dir / "config.json").read_text())
        recipe_data = yaml.safe_load((run_dir / "recipe.yaml").read_text())
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


def load_run(run_dir: Path, *, device: str = "cpu", dtype: Any = None) -> tuple[Recipe, Any]:
    """Rebuild the model of a run directory (LLM + adapter + connectors), in eval mode.

    Raises:
        UsageError: not a run directory. VlmError: a referenced base model is missing.
    """
    from safetensors.torch import load_file

    from vlm_cli.model.llm import build_llm
    from vlm_cli.model.tokenizer import load_tokenizer
    from vlm_cli.model.vlm import VideoLanguageModel

    recipe, config = read_run(run_dir)
    tokenizer = load_tokenizer(recipe.model.llm, source=run_dir / "tokenizer")
    llm = build_llm(recipe.model.llm, tokenizer, weights=config.llm_weights, dtype=dtype)
    if config.adapter:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # peft calls a transformers attribute deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            llm = PeftModel.from_pretrained(llm, run_dir / "adapter")
    model = VideoLanguageModel(recipe.model, llm, tokenizer, config.feature_dims)
    model.connectors.load_state_dict(load_file(run_dir / "connectors.safetensors"))
    return recipe, model.to(device).eval()



def load_model(model_dir: Path, *, device: str = "cpu", dtype: Any = None,
               name: str | None = None, revision: str | None = None) -> tuple[Recipe, Any]:
    """The model of a run directory, a merged directory (``vlm merge-lora``) or a
    Video-LLaVA-hf checkpoint, in eval mode on ``device``.

    Args:
        dtype: LLM dtype; default: the recipe's (``auto``: bf16 / fp16 / fp32 by device).
        name, revision: the hub id a checkpoint directory was resolved from (recorded in the
            recipe instead of the directory, so features are keyed by the hub commit).

    Raises:
        UsageError: neither kind of directory. VlmError: a referenced part is missing.
    """
    from vlm_cli.model.composite import composite_type, load_video_llava
    from vlm_cli.model.llm import resolve_dtype

    if composite_type(model_dir):
        return load_video_llava(model_dir, name, revision, device=device, dtype=dtype)
    if dtype is None:
        recipe, _ = read_run(model_dir)
        dtype = resolve_dtype(recipe.model.llm.dtype, device)
    return load_run(model_dir, device=device, dtype=dtype)
