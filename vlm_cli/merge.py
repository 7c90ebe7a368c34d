"""``vlm merge-lora``: fold a run's LoRA adapter into its LLM and write a self-contained model.

The base LLM is the one the run records (an earlier run's ``llm/`` or the recipe's hub id and
revision), so nothing has to be repeated. The merge is done in fp32 (peft's
``merge_and_unload``), then the weights are cast to the output dtype. The output directory is a
run directory with no adapter and nothing referenced outside it: ``llm/`` (sharded safetensors +
index), ``tokenizer/``, ``connectors.safetensors``, local encoders copied under ``encoders/``,
``recipe.yaml``, ``config.json`` and a model card (``README.md``) with the provenance. It is
written under a temporary name and renamed, so an interrupted merge leaves nothing behind.

The output format is that of the run's family (:mod:`vlm_cli.model.families`): a run started
from a checkpoint of another family (``vlm tune --from`` a Video-LLaVA-hf checkpoint) is written
back in that checkpoint's format by its family's ``save`` (the base's towers, the trained
projector and the merged language model, loadable by transformers'
``VideoLlavaForConditionalGeneration.from_pretrained``), with the provenance in
``vlm_merge.json``; any other run as a vlm run directory (:func:`vlm_cli.model.families.vlm_run.save`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from vlm_cli.atomic import atomic_write_text
from vlm_cli.errors import UsageError, VlmError
from vlm_cli.runtime import DTYPE_NAMES


def adapter_sha256(run_dir: Path) -> str:
    """sha256 of the run's adapter weights and config (what a merge is "of")."""
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update((run_dir / "adapter" / name).read_bytes())
    return h.hexdigest()


def probe_logits(model: Any) -> Any:
    """Logits ``[L, V] float32`` of a fixed probe: one question about seeded random media
    features (the same for every model with these feature widths), or, for a model without
    connectors of ours (a family whose towers feed the LLM directly), the question alone."""
    import torch

    from vlm_cli.model.vlm import MediaInput

    generator = torch.Generator().manual_seed(0)
    dims = model.feature_dims
    media = MediaInput(
        vision=torch.randn(1, 1, dims["vision"], generator=generator) if "vision" in dims and
        "video" in model.connectors else None,
        audio=torch.randn(1, dims["audio"], generator=generator) if "audio" in dims and
        "audio" in model.connectors else None)
    with_media = media.vision is not None or media.audio is not None
    ids = model.encode_prompt([{"from": "human", "value": ("<video>\n" if with_media else "")
                                + "What sound is playing?"}], [media] if with_media else [])
    return model.logits(ids, [media] if with_media else [])


def merge_lora(run_dir: Path, out: Path, *, dtype: str | None = None, verify: bool = False,
               tolerance: float = 1e-4, max_shard_size: str = "2GB") -> dict[str, Any]:
    """Merge ``run_dir``'s adapter into its base LLM and write ``out``.

    Args:
        dtype: output weights dtype (``float32``, ``bfloat16``, ``float16``); default: the
            recipe's LLM dtype, or float32 when that is ``auto``.
        verify: compare the probe logits of the merged model with base + adapter (fp32 before
            the cast; in the output dtype after it) and fail above ``tolerance``.

    Returns:
        A summary: out, base, dtype, adapter sha256, skipped (a second merge of the same
        adapter into ``out`` is a no-op), and with ``verify`` the max abs logit difference.

    Raises:
        UsageError: the run has no adapter, ``out`` holds something else, or a bad dtype.
        VlmError: the base LLM is missing, or verification exceeds the tolerance.
    """
    import torch

    from vlm_cli.model.families import family_module, load_model, vlm_run
    from vlm_cli.model.families.vlm_run import load_run, read_run

    recipe, config = read_run(run_dir)
    if not config.adapter:
        raise UsageError(f"{run_dir}: the run has no LoRA adapter to merge")
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPE_NAMES)}")
    target = dtype or (recipe.model.llm.dtype if recipe.model.llm.dtype != "auto" else "float32")
    _check_base(run_dir, recipe, config)
    source = adapter_sha256(run_dir)
    spec = recipe.model.llm
    base = config.llm_weights or spec.pretrained + (f"@{spec.revision}" if spec.revision else "")
    summary = {"out": str(out), "run": str(run_dir), "base": base, "dtype": target,
               "adapter_sha256": source, "skipped": False}
    if (out / "config.json").exists() or (out / "vlm_merge.json").exists():
        if _merged_from(out).get("adapter_sha256") == source:
            return {**summary, "skipped": True}
        raise UsageError(f"{out}: exists and holds another model; choose another --out")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: exists and is not empty; choose another --out")

    _, model = load_run(run_dir, dtype=torch.float32)
    reference = probe_logits(model) if verify else None
    model.llm = model.llm.merge_and_unload()
    if verify:
        diff = (probe_logits(model) - reference).abs().max().item()
        summary["max_abs_logit_diff_fp32"] = diff
        if diff > tolerance:
            raise VlmError(f"merge verification failed: max |logit difference| {diff:.2e} > "
                           f"tolerance {tolerance:.0e}")
    model.llm.to(getattr(torch, target))

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        merged_from = {"run": str(run_dir.resolve()), "base": base, "adapter_sha256": source,
                       "dtype": target}
        if config.base:  # back into the format of the checkpoint the run started from
            from vlm_cli.hub import local_path

            base_dir = local_path(config.base["name"], config.base.get("revision"))
            family_module(config.base["family"]).save(model, tmp, base=base_dir,
                                                      dtype=getattr(torch, target),
                                                      max_shard_size=max_shard_size,
                                                      recipe=recipe)
            atomic_write_text(tmp / "vlm_merge.json", json.dumps(merged_from, indent=2) + "\n")
        else:
            vlm_run.save(model, tmp, run_dir=run_dir, recipe=recipe, config=config,
                         dtype=target, merged_from=merged_from, max_shard_size=max_shard_size)
        atomic_write_text(tmp / "README.md", _model_card(recipe.name, run_dir, base, source,
                                                         target))
        if verify:
            reloaded = load_model(tmp, dtype=getattr(torch, target)).model
            diff = (probe_logits(reloaded) - probe_logits(model)).abs().max().item()
            summary["max_abs_logit_diff_saved"] = diff
            if diff > tolerance:
                raise VlmError(f"merge verification failed after saving: max |logit "
                               f"difference| {diff:.2e} > tolerance {tolerance:.0e}")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _merged_from(out: Path) -> dict[str, Any]:
    """The provenance of an earlier merge into ``out`` (either layout), or {}."""
    if (out / "vlm_merge.json").exists():
        return json.loads((out / "vlm_merge.json").read_text())
    return json.loads((out / "config.json").read_text()).get("merged_from") or {}


def _check_base(run_dir: Path, recipe: Any, config: Any) -> None:
    """Refuse to merge onto a base other than the one the adapter was trained on.

    Raises:
        UsageError: the recorded base weights (local files' sha256, or hub commit) differ now.
    """
    from vlm_cli.cache import FeatureCache
    from vlm_cli.model.families.vlm_run import base_identity

    if config.llm_sha256 is None and config.llm_revision is None:
        return  # a randomly initialised base: nothing but its config to pin
    revision, files = base_identity(config, recipe, FeatureCache().file_digest)
    if (files or None) != config.llm_sha256 or (config.llm_sha256 is None
                                                 and revision != config.llm_revision):
        where = config.llm_weights or recipe.model.llm.pretrained
        raise UsageError(f"{run_dir}: the base LLM at {where} is not the one the adapter was "
                         "trained on (its weights changed); refusing to merge onto another base")


def _model_card(name: str, run_dir: Path, base: str, adapter: str, dtype: str) -> str:
    return (f"# {name} (merged)\n\n"
            "A self-contained vlm model: the LoRA adapter of a stage-2 run folded into its LLM "
            "(`vlm merge-lora`). Use it with `vlm ask --model <this directory>`.\n\n"
            "| provenance | |\n| --- | --- |\n"
            f"| run | `{run_dir.resolve()}` |\n| base LLM | `{base}` |\n"
            f"| adapter sha256 | `{adapter}` |\n| dtype | {dtype} |\n")
