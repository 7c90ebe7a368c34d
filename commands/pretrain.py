"""``vlm pretrain``: stage 1, aligning the connectors on caption pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlm_cli.commands.options import (Download, Encoders, Json, MediaRoot, Overrides, Resume,
                                     Workers, fetch_for)

app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@app.command()
def pretrain(
    recipe: Annotated[str, typer.Argument(help="Built-in recipe name (tiny-av) or a YAML path.")],
    overrides: Overrides = None,
    data: Annotated[Optional[Path], typer.Option(
        help="Caption pairs (LLaVA JSON/JSONL) \\[default: recipe train.stage1.data].",
        show_default=False)] = None,
    media_root: MediaRoot = None,
    stage: Annotated[str, typer.Option(
        help="stage1 (connectors on caption pairs), or encoders (align a recipe's own "
             "encoders to caption views first: tiny-av).")] = "stage1",
    encoders: Encoders = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Run directory \\[default: runs/<recipe>-<stage>].", show_default=False)] = None,
    resume: Resume = False,
    workers: Workers = 2,
    download: Download = False,
    json_out: Json = False,
) -> None:
    """Stage 1: train what the recipe's train.stage1.freeze leaves trainable (the connectors by
    default) on caption pairs (--stage encoders first aligns a recipe's own encoders), reading
    frozen-encoder features from the cache (clips that are
    missing are preprocessed first; the encoders are not loaded otherwise). AdamW with a cosine
    schedule and warmup, gradient accumulation, clipping; checkpoints, metrics.jsonl and loss.png
    in the run directory. Works under `accelerate launch` (DDP, or FSDP2 with
    recipes/accelerate/fsdp2.yaml)."""
    from vlm_cli.errors import UsageError
    from vlm_cli.recipe import load_recipe
    from vlm_cli.train.report import StageProgress, print_summary
    from vlm_cli.train.stages import run_stage

    if stage not in ("stage1", "encoders"):
        raise UsageError(f"--stage {stage!r}: expected stage1 or encoders")
    resolved = load_recipe(recipe, overrides or [])
    fetch_for(download, resolved)
    run_dir = out or Path("runs") / f"{resolved.name}-{stage}"
    if stage == "encoders":
        from vlm_cli.train.align import run_align

        with StageProgress("encoders") as progress:
            summary = run_align(resolved, run_dir, data=data, media_root=media_root,
                                workers=workers, resume=resume, on_step=progress.update)
        print_summary(summary, json_out)
        return
    if encoders is not None:
        from vlm_cli.train.align import use_aligned_encoders

        resolved = use_aligned_encoders(resolved, encoders)
    with StageProgress("stage 1") as progress:
        summary = run_stage(resolved, "stage1", run_dir, data=data, media_root=media_root,
                            resume=resume, workers=workers, on_step=progress.update)
    print_summary(summary, json_out)
