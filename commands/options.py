"""Command-line options shared by several commands (typer ``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlm_cli.model.families import supported_titles

Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
Workers = Annotated[int, typer.Option(min=1, help="Decoder processes for missing features.")]
Resume = Annotated[bool, typer.Option(help="Continue the run from its last checkpoint.")]
Overrides = Annotated[Optional[list[str]], typer.Argument(
    help="Recipe overrides KEY=VALUE, e.g. train.stage1.lr=2e-4 data.frames=16.",
    show_default=False)]
MediaRoot = Annotated[Optional[Path], typer.Option(
    help="Media directory \\[default: recipe data.media_root, else the data file's directory].",
    show_default=False)]
Encoders = Annotated[Optional[Path], typer.Option(
    help="An encoders run (vlm pretrain --stage encoders) whose encoders to use.",
    show_default=False)]
Model = Annotated[Optional[str], typer.Option(
    help=f"A run directory, merged model, checkpoint directory ({supported_titles()}) or "
         "cached hub id \\[default: $VLM_MODEL, else $VLM_HOME/models/tiny-av].",
    show_default=False)]
Dtype = Annotated[str, typer.Option(
    help="Weights dtype: auto, bfloat16, float16 or float32. auto: the checkpoint's on a GPU "
         "(bf16 where supported); on CPU fp32 where it fits comfortably in memory, else the "
         "dtype the weights are stored in.")]
System = Annotated[Optional[str], typer.Option(
    help="The system turn sent before the conversation \\[default: the model card's, e.g. "
         "Qwen2.5-Omni's; none for vlm's own models]. --system '' sends none.",
    show_default=False)]
Revision = Annotated[Optional[str], typer.Option(
    help="Hub revision of --model when it is a hub id.", show_default=False)]
# A QA set (vlm eval, vlm probe).
Answers = Annotated[Optional[Path], typer.Option(
    help="Answers file \\[default: DATA with 'questions' replaced by 'answers'].",
    show_default=False)]
QAMediaRoot = Annotated[Optional[Path], typer.Option(
    "--media-root",
    help="Video directory \\[default: media/ beside DATA's folder, else DATA's folder].",
    show_default=False)]
Limit = Annotated[Optional[int], typer.Option(min=1, help="Only the first N questions.",
                                              show_default=False)]
BatchSize = Annotated[int, typer.Option(min=1, help="Answers generated at once.")]
MaxNewTokens = Annotated[int, typer.Option(min=1, help="Answer length limit in tokens.")]
Download = Annotated[bool, typer.Option(
    "--download", help="Fetch hub parts missing from the Hugging Face cache (as `vlm download` "
    "would) instead of stopping with the `vlm download` command to run.")]


def fetch_for(download: bool, recipe: object = None, *names: object) -> None:
    """``--download``: fetch the hub parts of ``recipe`` and the hub ids among ``names`` that are
    missing from the Hugging Face cache, before anything loads (without it: nothing; a missing
    part is reported where it is needed, with the ``vlm download`` command to run)."""
    if not download:
        return
    from vlm_cli.hub import fetch_missing, is_repo_id, recipe_repos

    repos = recipe_repos(recipe) if recipe is not None else []
    repos += [(str(n), None) for n in names if n is not None and is_repo_id(str(n))]
    fetch_missing(repos, download)
