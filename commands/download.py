"""``vlm download``: fetch a dataset. Today: the built-in toy-av world, generated locally."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, rich_markup_mode="rich")

DATASETS = ("toy-av",)


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="What to fetch: toy-av (the built-in synthetic "
                                        "audio-visual dataset, generated offline).")],
    out: Annotated[Path, typer.Option(help="Directory to create.")] = Path("toy-av"),
    clips: Annotated[int, typer.Option(min=1, help="Number of clips.")] = 1000,
    seed: Annotated[int, typer.Option(min=0, help="Random seed (same seed, same bytes).")] = 0,
    size: Annotated[int, typer.Option(help="Frame width and height in px.")] = 64,
    fps: Annotated[int, typer.Option(help="Frames per second.")] = 8,
    seconds: Annotated[float, typer.Option(help="Clip length in seconds.")] = 2.0,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Render processes [default: CPU count].", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")]
    = False,
) -> None:
    """Generate the toy-av dataset: mp4 clips (h264 + AAC) of a coloured shape moving in one of
    4 directions with one of 5 sounds, plus stage-1 captions, stage-2 instructions and QA files
    for the train / val / test / probe splits. Deterministic for a seed; re-running with the same
    settings is a no-op."""
    from vlm_cli import console
    from vlm_cli.errors import UsageError
    from vlm_cli.toyav import generate_toy_av

    if name not in DATASETS:
        raise UsageError(f"vlm download {name!r}: unknown dataset; available: "
                         f"{', '.join(DATASETS)}")
    with console.progress_bar("clips") as bar:
        task = bar.add_task(f"generate {name}", total=clips)
        summary = generate_toy_av(out, clips=clips, seed=seed, size=size, fps=fps,
                                  seconds=seconds, workers=workers,
                                  progress=lambda done, total: bar.update(task, completed=done))
        bar.update(task, completed=clips)
    if json_out:
        console.print_json(summary)
        return
    counts = ", ".join(f"{split} {n}" for split, n in summary["counts"].items())
    state = "already present" if summary["existing"] else f"written in {summary['elapsed_s']:.1f} s"
    console.stdout.print(f"{name}: {summary['clips']} clips ({counts}) in {summary['out_dir']}, "
                         f"{state}")
    console.stdout.print(f"stage 1: {summary['annotations']['stage1']}")
    console.stdout.print(f"stage 2: {summary['annotations']['stage2']}")
