"""``vlm eval``: accuracy of a model on an open-ended video QA set (MSVD-QA style)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlm_cli.commands.options import (Answers, BatchSize, Download, Dtype, Json, Limit,
                                      MaxNewTokens, Model, QAMediaRoot, Revision, System, Workers)

app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option(
        help="Questions in the Video-ChatGPT layout (video_name, question, question_id, type).")],
    model: Model = None,
    answers: Answers = None,
    media_root: QAMediaRoot = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output directory \\[default: eval/<model>-<data>].", show_default=False)] = None,
    limit: Limit = None,
    batch_size: BatchSize = 16,
    max_new_tokens: MaxNewTokens = 16,
    judge: Annotated[Optional[str], typer.Option(
        help="Also score each prediction with this local chat LLM (a run directory, a local "
             "directory or a cached hub id): yes/no + 0-5 as in Video-ChatGPT, greedy, strict "
             "JSON verdicts; recorded in the report.", show_default=False)] = None,
    judge_revision: Annotated[Optional[str], typer.Option(
        help="Hub revision of --judge.", show_default=False)] = None,
    workers: Workers = 2,
    dtype: Dtype = "auto",
    system: System = None,
    revision: Revision = None,
    download: Download = False,
    json_out: Json = False,
) -> None:
    """Answer every question greedily, write predictions.jsonl (question_id, question, answer,
    pred) and report.json (normalised exact-match and contains-match accuracy, per question
    type, with every setting that affects the score), and print a table. Resumable: a re-run
    skips answered ids. Under `accelerate launch` the questions are split over processes and
    merged by question id. With --judge, judgements.jsonl holds each verdict and the report
    a 'judge' section (the judge's identity, prompt hash, yes-rate and mean score per type)."""
    import dataclasses
    import hashlib

    from accelerate import PartialState

    from vlm_cli import console
    from vlm_cli.eval.qa import load_qa
    from vlm_cli.eval.run import (EvalSettings, answer_items, merge_predictions,
                                  model_identity, read_predictions, write_report)
    from vlm_cli.model.fingerprint import audio_frontend
    from vlm_cli.pipeline import PROMPT, Pipeline
    from vlm_cli.preprocess import preprocess
    from vlm_cli.runtime import pick_device, resolve_dtype

    state = PartialState(cpu=pick_device() == "cpu")
    items = load_qa(data, answers, media_root)[:limit]
    device = str(state.device)
    pipeline = Pipeline.load(model, revision=revision, download=download, device=device,
                             dtype=dtype, system=system)
    model_dir, recipe, vlm, store = (pipeline.directory, pipeline.loaded.recipe, pipeline.model,
                                     pipeline.store)
    out_dir = out or Path("eval") / f"{model_dir.name}-{data.stem}"
    out_dir.mkdir(parents=True, exist_ok=True)
    judge_model = None
    if judge is not None and state.is_main_process:  # fail before answering, not after
        from vlm_cli.eval.judge import Judge

        judge_model = Judge(judge, judge_revision, device=device,
                            dtype=resolve_dtype("auto", device))
    if state.is_main_process:  # decode + encode what is missing, in crash-isolated workers
        preprocess(list(dict.fromkeys(i.media for i in items)), store, workers=workers)
    state.wait_for_everyone()
    skip = set(read_predictions(out_dir / "predictions.jsonl")) if state.num_processes > 1 \
        else set()
    mine = items[state.process_index::state.num_processes]
    with console.progress_bar("questions") as bar:
        task = bar.add_task("eval", total=len(mine))
        answer_items(pipeline, mine, out_dir / f"predictions.rank{state.process_index}.jsonl",
                     batch_size=batch_size, max_new_tokens=max_new_tokens, skip=skip,
                     on_done=lambda n: bar.advance(task, n))
    state.wait_for_everyone()
    if not state.is_main_process:
        return
    predictions = merge_predictions(out_dir, items)
    answers_path = answers or data.with_name(data.name.replace("questions", "answers"))
    digest = hashlib.sha256(data.read_bytes() + answers_path.read_bytes()).hexdigest()
    settings = EvalSettings(
        data=str(data.resolve()), data_sha256=digest, frames=recipe.data.frame_sampling(),
        audio={**recipe.data.audio_sampling(), **(audio_frontend(recipe.model.audio)
                                                  if recipe.model.audio else {})},
        prompt=PROMPT, chat_template_sha256=hashlib.sha256(
            (vlm.tokenizer.chat_template or "").encode()).hexdigest(),
        decoding={"strategy": "greedy", "max_new_tokens": max_new_tokens})
    extra = {"model": model_identity(model_dir), **dataclasses.asdict(settings),
             "system": pipeline.system, "dtype": str(vlm.llm.dtype).removeprefix("torch.")}
    if judge_model is not None:
        extra["judge"] = run_judge(judge_model, items, predictions, out_dir,
                                   batch_size=batch_size)
    report = write_report(out_dir, items, predictions, extra)
    if json_out:
        console.print_json(report)
        return
    from rich.table import Table

    judged = report.get("judge", {}).get("accuracy", {})
    columns = ["type", "n", "exact", "contains"] + (["judge yes", "judge score", "invalid"]
                                                    if judged else [])
    table = Table(*columns, title=f"{model_dir.name} on {data.name}")
    for name, row in report["accuracy"].items():
        cells = [name, str(row["n"]), f"{row['exact']:.3f}", f"{row['contains']:.3f}"]
        if judged:
            j = judged.get(name, {})
            cells += ["-" if j.get("yes") is None else f"{j['yes']:.3f}",
                      "-" if j.get("score") is None else f"{j['score']:.2f}",
                      str(j.get("invalid", "-"))]
        table.add_row(*cells)
    console.stdout.print(table)
    console.stdout.print(f"predictions: {out_dir / 'predictions.jsonl'}  report: "
                         f"{out_dir / 'report.json'}")


def run_judge(judge, items: list, predictions: dict, out_dir: Path, *,
              batch_size: int) -> dict:
    """Judge the predictions with a loaded :class:`vlm_cli.eval.judge.Judge`; the report's
    ``judge`` section."""
    from vlm_cli import console
    from vlm_cli.eval.judge import judge_predictions, judge_summary

    with console.progress_bar("answers") as bar:
        task = bar.add_task("judge", total=len(predictions))
        judgements = judge_predictions(judge, items, predictions,
                                       out_dir / "judgements.jsonl", batch_size=batch_size,
                                       on_done=lambda n: bar.advance(task, n))
    summary = judge_summary(items, judgements)
    if summary.get("all", {}).get("invalid"):
        console.warn(f"judge {judge.identity['name']}: {summary['all']['invalid']} of {summary['all']['n']} "
                     "replies were not a valid JSON verdict (see judgements.jsonl)")
    return {"model": judge.identity, **judge.settings, "accuracy": summary}
