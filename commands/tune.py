"""``vlm tune``: stage 2, instruction tuning from a stage-1 run (full or LoRA)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlm_cli.commands.options import (Download, Json, MediaRoot, Overrides, Resume, Workers,
                                     fetch_for)

app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@app.command()
def tune(
    recipe: Annotated[str, typer.Argument(help="Built-in recipe name (tiny-av) or a YAML path.")],
    overrides: Overrides = None,
    from_run: Annotated[Path, typer.Option("--from", help=(
        "The stage-1 run to continue, or a Video-LLaVA-hf checkpoint (directory or cached hub "
        "id) whose towers, projector and LLM to start from."))] = Path("runs/tiny-av-stage1"),
    data: Annotated[Optional[Path], typer.Option(
        help="Multi-turn instructions (LLaVA JSON/JSONL) \\[default: recipe train.stage2.data].",
        show_default=False)] = None,
    media_root: MediaRoot = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Run directory \\[default: runs/<recipe>-stage2].", show_default=False)] = None,
    resume: Resume = False,
    workers: Workers = 2,
    download: Download = False,
    json_out: Json = False,
) -> None:
    """Stage 2: instruction-tune connectors + LLM on multi-turn conversations, fully or with
    LoRA (train.stage2.lora: rank, alpha, dropout, target modules), starting from a stage-1 run
    or a released Video-LLaVA-hf checkpoint. The model comes from --from; the training settings
    from RECIPE. Works under `accelerate launch` (DDP, or FSDP2 with
    recipes/accelerate/fsdp2.yaml)."""
    from vlm_cli.recipe import load_recipe
    from vlm_cli.train.report import StageProgress, print_summary
    from vlm_cli.train.stages import run_stage

    resolved = load_recipe(recipe, overrides or [])
    fetch_for(download, resolved, from_run)
    run_dir = out or Path("runs") / f"{resolved.name}-stage2"
    with StageProgress("stage 2") as progress:
        summary = run_stage(resolved, "stage2", run_dir, data=data, media_root=media_root,
                            from_run=from_run, resume=resume, workers=workers,
                            on_step=progress.update)
    print_summary(summary, json_out)
