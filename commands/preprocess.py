"""``vlm preprocess``: decode every clip of a dataset, run the frozen encoders, fill the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlm_cli.commands.options import (Download, Encoders, Json, MediaRoot, Overrides, Workers,
                                     fetch_for)

app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@app.command()
def preprocess(
    data: Annotated[Path, typer.Argument(help="LLaVA / Video-LLaVA JSON or JSONL, a Video-ChatGPT "
                                         "QA file, or a single media file.")],
    overrides: Overrides = None,
    recipe: Annotated[str, typer.Option(help="Built-in recipe name (tiny-av) or a YAML path.")]
    = "tiny-av",
    encoders: Encoders = None,
    media_root: MediaRoot = None,
    workers: Workers = 2,
    shard: Annotated[str, typer.Option(help="Process shard I of N (I/N), e.g. 0/4.")] = "0/1",
    on_error: Annotated[str, typer.Option(
        help="skip: report failed clips and go on (exit 0 unless every clip failed); fail: exit 1 "
             "at the end if any clip failed.")] = "skip",
    error_log: Annotated[Optional[Path], typer.Option(
        help="Where to write failed clips as JSONL \\[default: $VLM_HOME/logs/...].",
        show_default=False)] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Per-clip decode limit in seconds.")] = 300,
    device: Annotated[str, typer.Option(help="Encoder device: auto, cpu, cuda, cuda:1, ...")]
    = "auto",
    download: Download = False,
    json_out: Json = False,
) -> None:
    """Decode every referenced clip, run the recipe's frozen encoders and fill the feature cache.

    Idempotent: a second run computes nothing. Failed clips are listed with path and reason and
    written to a JSONL error log; nothing is ever substituted for them.
    """
    import os
    import time

    # Before torch (and its OpenMP runtime) is first imported on this path: OpenMP threads that
    # finish a parallel region sleep instead of spinning, so they do not take the cores the
    # decoder workers need between the encoder's operators. An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from vlm_cli import console
    from vlm_cli.cache import FeatureCache
    from vlm_cli.data import load_records, unique_media
    from vlm_cli.errors import MediaError, UsageError
    from vlm_cli.features import FeatureStore
    from vlm_cli.media.kinds import MEDIA_EXTENSIONS
    from vlm_cli.preprocess import parse_shard, preprocess as run, write_error_log
    from vlm_cli.recipe import load_recipe

    if on_error not in ("skip", "fail"):
        raise UsageError(f"--on-error {on_error!r}: expected skip or fail")
    shard_index = parse_shard(shard)
    resolved = load_recipe(recipe, overrides or [])
    if encoders is not None:
        from vlm_cli.train.align import use_aligned_encoders

        resolved = use_aligned_encoders(resolved, encoders)
    fetch_for(download, resolved)
    root = media_root or (Path(resolved.data.media_root) if resolved.data.media_root else None)
    single = data.suffix.lower() in MEDIA_EXTENSIONS
    refs = unique_media(load_records(data, root))
    cache = FeatureCache(on_corrupt=lambda path, why: console.warn(
        f"cache entry {path} is corrupt ({why}); recomputing it"))

    with console.progress_bar("clips") as bar:
        task = bar.add_task("preprocess", total=None)
        summary = run([r.path for r in refs], FeatureStore(resolved, cache, device),
                      workers=workers, timeout_s=timeout, shard=shard_index,
                      on_clip=lambda path, status: bar.advance(task))
        bar.update(task, total=summary.clips, completed=summary.clips)

    if single and summary.failed:
        raise MediaError(data, summary.failed[0].reason)
    result = summary.to_dict()
    if summary.failed:
        log = error_log or cache.root / "logs" / time.strftime("preprocess-%Y%m%d-%H%M%S.jsonl")
        write_error_log(log, summary.failed)
        result["error_log"] = str(log)
    if json_out:
        console.print_json(result)
    else:
        _print_summary(result, console)
    if summary.failed and (on_error == "fail" or len(summary.failed) == summary.clips):
        raise typer.Exit(1)


def _print_summary(result: dict, console) -> None:
    out = console.stdout
    verdict = "nothing to compute" if result["computed"] == 0 and not result["failed"] else ""
    out.print(f"clips: {result['clips']}  cache hits: {result['hits']}  computed: "
              f"{result['computed']}  failed: {len(result['failed'])}  "
              f"({result['seconds']:.1f} s, {result['clips_per_s']:.1f} clips/s, shard "
              f"{result['shard']}){'  — ' + verdict if verdict else ''}")
    for failure in result["failed"]:
        out.print(f"failed: {failure['path']}: {failure['reason']}")
    if "error_log" in result:
        out.print(f"error log: {result['error_log']}")
