"""``vlm download``: a Hugging Face hub repository (or every part of a recipe) into the hub cache,
or the built-in toy-av dataset, generated locally."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, rich_markup_mode="rich")

TOY_DATASETS = ("toy-av",)


@app.command()
def download(
    name: Annotated[Optional[str], typer.Argument(
        help="A hub repository id (org/name), or toy-av (the built-in synthetic audio-visual "
             "dataset, generated offline).", show_default=False)] = None,
    revision: Annotated[Optional[str], typer.Option(
        help="Branch, tag or commit \\[default: the default branch].", show_default=False)] = None,
    include: Annotated[Optional[list[str]], typer.Option(
        help="Only files matching this glob (repeatable); replaces the default selection.",
        show_default=False)] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        help="Skip files matching this glob (repeatable).", show_default=False)] = None,
    repo_type: Annotated[str, typer.Option(help="model or dataset.")] = "model",
    recipe: Annotated[Optional[str], typer.Option(
        help="Fetch every hub part this recipe references (encoders, LLM, tokenizer).",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="toy-av: directory to create.")] = Path("toy-av"),
    clips: Annotated[int, typer.Option(min=1, help="toy-av: number of clips.")] = 1000,
    seed: Annotated[int, typer.Option(min=0, help="toy-av: random seed (same seed, same "
                                      "bytes).")] = 0,
    size: Annotated[int, typer.Option(help="toy-av: frame width and height in px.")] = 64,
    fps: Annotated[int, typer.Option(help="toy-av: frames per second.")] = 8,
    seconds: Annotated[float, typer.Option(help="toy-av: clip length in seconds.")] = 2.0,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="toy-av: render processes \\[default: CPU count].", show_default=False)]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")]
    = False,
) -> None:
    """Download a Hugging Face hub repository into the standard hub cache (HF_HOME /
    HF_HUB_CACHE; no second copy) and print the commit it resolved to and its local path. By
    default a model repository gives only what the model needs: every non-weight file and one
    format of weights (safetensors over .bin; the shards its index names), and what its family
    needs from other repositories (a Video-LLaMA release: BLIP-2's vision tower and Q-Former
    shards only, never its T5). Honours HF_TOKEN,
    HF_ENDPOINT (mirrors) and HF_HUB_OFFLINE (then it resolves from the cache only). Interrupted
    transfers continue where they stopped.

    [bold]vlm download toy-av[/] generates the toy-av dataset instead: mp4 clips (h264 + AAC) of a
    coloured shape moving in one of 4 directions with one of 5 sounds, plus stage-1 captions,
    stage-2 instructions and QA files for the train / val / test / probe splits; deterministic
    for a seed, a re-run with the same settings is a no-op."""
    from vlm_cli.errors import UsageError

    if (name is None) == (recipe is None):
        raise UsageError("vlm download: give a repository id, toy-av, or --recipe NAME")
    if name in TOY_DATASETS:
        _toy_av(name, out, clips=clips, seed=seed, size=size, fps=fps, seconds=seconds,
                workers=workers, json_out=json_out)
        return
    if repo_type not in ("model", "dataset"):
        raise UsageError(f"--repo-type {repo_type}: expected model or dataset")
    _hub(name, recipe, revision=revision, include=include, exclude=exclude,
         repo_type=repo_type, json_out=json_out)


def _hub(name: Optional[str], recipe: Optional[str], *, revision: Optional[str],
         include: Optional[list[str]], exclude: Optional[list[str]], repo_type: str,
         json_out: bool) -> None:
    """Download one repository, or every repository a recipe references."""
    import dataclasses

    from vlm_cli import console
    from vlm_cli.hub import download_snapshot as fetch
    from vlm_cli.hub import recipe_repos
    from vlm_cli.model.families import skipped_for_config

    if recipe is not None:
        from vlm_cli.recipe import load_recipe

        targets = [(repo, rev, None) for repo, rev in recipe_repos(load_recipe(recipe))]
        if not targets:
            console.info(f"{recipe}: references no hub repository; nothing to download")
    else:
        targets = [(name, revision, None)]
    results = []
    for repo_id, rev, prefixes in targets:
        with console.progress_bar("MB") as bar:
            tasks: list[int] = []  # one, added when the transfer starts (none when offline)

            def on_bytes(done: int, total: int, repo_id: str = repo_id) -> None:
                if not tasks:
                    tasks.append(bar.add_task(repo_id, total=round(total / 1e6, 1)))
                bar.update(tasks[0], completed=round(done / 1e6, 1))

            got = fetch(repo_id, revision=rev, repo_type=repo_type,
                        include=include if recipe is None else None,
                        exclude=exclude if recipe is None else None, on_bytes=on_bytes,
                        prefixes=prefixes, skip_for=skipped_for_config)
        results.append(got)
        if repo_type == "model" and not include and prefixes is None:
            targets += _required(Path(got.path), [t[0] for t in targets])
        if got.offline:
            console.info(f"{repo_id}: HF_HUB_OFFLINE is set: resolved from the cache only")
        if not json_out:
            size = "" if got.bytes is None else f", {got.bytes / 1e6:.1f} MB"
            console.stdout.print(f"{repo_id} @ {got.commit} ({len(got.files)} files{size})")
            console.stdout.print(f"  {got.path}")
    if json_out:
        rows = [dataclasses.asdict(r) for r in results]
        console.print_json(rows[0] if recipe is None and len(rows) == 1 else
                           {"recipe": recipe, "repos": rows} if recipe else
                           {**rows[0], "requires": rows[1:]})


def _required(directory: Path, queued: list[str]) -> list[tuple[str, None, tuple[str, ...]]]:
    """Other hub parts the downloaded checkpoint's family needs (Video-LLaMA: BLIP-2's vision
    tower and Q-Former, only the shards holding them), not already queued."""
    from vlm_cli.model.families import family_module, family_of

    family = family_of(directory)
    requires = getattr(family_module(family), "requires", None) if family else None
    return [t for t in (requires(directory) if requires else []) if t[0] not in queued]


def _toy_av(name: str, out: Path, *, clips: int, seed: int, size: int, fps: int,
            seconds: float, workers: Optional[int], json_out: bool) -> None:
    """Generate the toy-av dataset."""
    from vlm_cli import console
    from vlm_cli.toyav import generate_toy_av

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
