"""``vlm probe``: does a model use the sound and the order of the frames?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlm_cli.commands.options import (Answers, BatchSize, Download, Dtype, Json, Limit,
                                      MaxNewTokens, Model, QAMediaRoot, Revision, System, Workers)

app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@app.command("probe")
def probe(
    data: Annotated[Path, typer.Argument(
        help="Questions: Video-ChatGPT layout (with its answers file) or LLaVA-style JSON.",
        show_default=False)],
    model: Model = None,
    variants: Annotated[str, typer.Option(
        help="Comma-separated: reverse, shuffle, still (frame order), swap-audio (another "
             "clip's soundtrack), mute (no audio).")] = "reverse,shuffle,still,swap-audio,mute",
    answers: Answers = None,
    labels: Annotated[Optional[Path], typer.Option(
        help="Clip labels JSONL ({video, colour, direction, sound, ...} per clip) giving each "
             "variant's truth \\[default: clips.jsonl beside DATA's folder, when there is one].",
        show_default=False)] = None,
    media_root: QAMediaRoot = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output directory \\[default: probe/<model>-<data>].", show_default=False)] = None,
    limit: Limit = None,
    batch_size: BatchSize = 16,
    max_new_tokens: MaxNewTokens = 16,
    workers: Workers = 2,
    dtype: Dtype = "auto",
    system: System = None,
    revision: Revision = None,
    download: Download = False,
    json_out: Json = False,
) -> None:
    """Answer every question on its clip and on counterfactual variants made on the fly from
    the cached features (no media file is written): frames reversed, shuffled or frozen on one
    frame, another clip's soundtrack, or none. Reports, per question type and variant, how often
    the answer changed and, where clip labels give the variant's truth (toy-av's clips.jsonl),
    the accuracy against it. Writes probe.jsonl (every answer; a re-run answers only what is
    missing), report.json and changes.png, and prints a table."""
    import hashlib

    from vlm_cli import console
    from vlm_cli.eval.probe import (default_labels, load_labels, parse_variants, run_probe,
                                    summarise, write_chart, write_report)
    from vlm_cli.eval.qa import load_qa
    from vlm_cli.eval.run import model_identity
    from vlm_cli.pipeline import PROMPT, Pipeline
    from vlm_cli.preprocess import preprocess

    chosen = parse_variants(variants)
    items = load_qa(data, answers, media_root)[:limit]
    labels_path = labels or default_labels(data)
    clip_labels = load_labels(labels_path) if labels_path is not None else {}
    pipeline = Pipeline.load(model, revision=revision, download=download, dtype=dtype,
                             system=system)
    out_dir = out or Path("probe") / f"{pipeline.directory.name}-{data.stem}"
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocess(list(dict.fromkeys(i.media for i in items)), pipeline.store, workers=workers)
    with console.progress_bar("answers") as bar:
        task = bar.add_task("probe", total=None)
        rows, notes = run_probe(pipeline, items, chosen, out_dir, labels=clip_labels,
                                batch_size=batch_size, max_new_tokens=max_new_tokens,
                                on_total=lambda n: bar.update(task, total=n),
                                on_done=lambda n: bar.advance(task, n))
    summary = summarise(rows, chosen)
    errors = sorted({r["media"]: r["error"] for r in rows.values() if "error" in r}.items())
    model_info = (model_identity(pipeline.directory)
                  if (pipeline.directory / "recipe.yaml").is_file() else {"name": pipeline.name})
    report = write_report(out_dir, summary, {
        "model": model_info, "data": str(data.resolve()),
        "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "labels": str(labels_path.resolve()) if labels_path else None,
        "variants": chosen, "prompt": PROMPT, "system": pipeline.system,
        "decoding": {"strategy": "greedy", "max_new_tokens": max_new_tokens},
        "questions": len(items), "notes": notes,
        "errors": [{"media": m, "error": e} for m, e in errors]})
    if summary:
        write_chart(out_dir / "changes.png", summary, chosen)
    for note in notes:
        console.warn(note)
    for media, error in errors:
        console.warn(f"{media}: {error}")
    if json_out:
        console.print_json(report)
        return
    from rich.table import Table

    table = Table("type", "variant", "n", "changed", "accuracy", "truth known",
                  title=f"{pipeline.directory.name} on {data.name}: answers under variants")
    for qtype, by_variant in summary.items():
        for variant, row in by_variant.items():
            accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
            table.add_row(qtype, variant, str(row["n"]),
                          "-" if variant == "original" else f"{row['changed']:.3f}",
                          accuracy, str(row["known"]))
    console.stdout.print(table)
    console.stdout.print(f"answers: {out_dir / 'probe.jsonl'}  report: {out_dir / 'report.json'}"
                         f"  chart: {out_dir / 'changes.png'}")
