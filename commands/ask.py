"""``vlm ask``: ask a trained model about a video, image or audio file (or a batch of them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vlm_cli.commands.options import Download, Dtype, Model, Revision, System

if TYPE_CHECKING:
    from vlm_cli.features import FetchInfo

app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@app.command()
def ask(
    args: Annotated[Optional[list[str]], typer.Argument(
        metavar="MEDIA... [QUESTION]",
        help="One or more video, image or audio files, then the question. One file without a "
             "question: an interactive chat about it (also reads questions piped on stdin, one "
             "per line; /reset, /quit). Several files: the question about each, one answer per "
             "line, in one process.", show_default=False)] = None,
    model: Model = None,
    batch: Annotated[Optional[Path], typer.Option(
        help="Answer the requests of a JSONL file instead, one {\"id\", \"media\", \"question\"} "
             "per line (media relative to the file's folder); one JSON answer per line on stdout "
             "or in --out.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="--batch: write the answers here; a re-run skips ids already answered.",
        show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="--batch: questions answered at once.")]
    = 8,
    frames: Annotated[Optional[int], typer.Option(
        min=1, help="Frames sampled uniformly \\[default: the model's recipe].",
        show_default=False)] = None,
    fps: Annotated[Optional[float], typer.Option(
        min=0.01, help="Sample frames at this rate instead (capped by --frames if given).",
        show_default=False)] = None,
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Ignore the soundtrack.")] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Answer length limit in tokens.")]
    = 64,
    temperature: Annotated[float, typer.Option(
        min=0.0, help="0 = greedy (deterministic); > 0 samples.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Random seed for sampling.",
                                                show_default=False)] = None,
    dtype: Dtype = "auto",
    system: System = None,
    revision: Revision = None,
    download: Download = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object per answer (answer, frames, audio, branches, cache, "
                       "budget, timings) instead of streaming text.")] = False,
) -> None:
    """Answer questions about MEDIA, streaming the answer to stdout token by token (greedy by
    default). Features are cached: a second question on the same file skips decoding and
    encoding, and a follow-up question in a chat reuses the conversation's KV cache. A file
    without an audio track is answered from the picture, with a note. With --batch, many files
    are answered in one process (greedy, batched); a bad file is one error record and the rest go
    on. Several files and a question (`vlm ask *.mp4 "what sound is playing?"`) take the same
    batch path: one line per file (`file: answer`, or a JSON object with --json), in one
    process, so the start-up is paid once."""
    import sys
    import time

    from vlm_cli import console
    from vlm_cli.errors import UsageError
    from vlm_cli.pipeline import Pipeline

    media, question, several = _split_args(args or [], batch is not None)
    if out is not None and batch is None:
        raise UsageError("--out goes with --batch")
    started = time.perf_counter()
    requests = None
    if batch is not None:  # a malformed requests file fails before the model loads
        from vlm_cli.batch import read_requests

        requests = read_requests(batch)
    elif several:  # one question about each file, on the batch path
        requests = [{"id": str(i), "media": str(path), "question": question}
                    for i, path in enumerate(several)]
    elif not media.is_file():  # a missing file fails before the model loads
        from vlm_cli.errors import MediaError

        raise MediaError(media, "file not found")
    pipeline = Pipeline.load(model, revision=revision, download=download, frames=frames, fps=fps,
                             dtype=dtype, system=system)
    vlm = pipeline.model
    console.info(f"model {pipeline.name} on {pipeline.store.device}, {vlm.llm.dtype} "
                 f"({vlm.llm.config._attn_implementation} attention)")
    if pipeline.loaded.licence:
        console.info(f"weights licence: {pipeline.loaded.licence}; check that your use is "
                     "allowed")
    llm_spec = pipeline.loaded.recipe.model.llm
    if llm_spec is not None and llm_spec.tokenizer == "toy-av":
        console.info("note: a toy-av model: it knows only toy-av's colours, shapes, motion "
                     "directions and sounds, whatever the clip; for real clips pass --model "
                     "with a released checkpoint (README: what the demo model knows)")
    load_s = time.perf_counter() - started
    if requests is not None:
        from vlm_cli.batch import answer_requests

        counts = answer_requests(pipeline, requests, batch.parent if batch else Path("."), out,
                                 audio=not no_audio, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens,
                                 text=batch is None and not json_out)
        if several and counts["failed"]:
            from vlm_cli.errors import VlmError

            raise VlmError(f"{counts['failed']} of {len(several)} files could not be answered "
                           "(reasons above)")
        return
    ref = pipeline.media(media)
    features, info = pipeline.features(ref, audio=not no_audio)
    if info.audio == "absent" and ref.kind != "image":
        console.warn(f"{media}: no audio track; answering from the picture only")
    session = pipeline.chat(features, ref)
    if seed is not None:
        import torch

        torch.manual_seed(seed)

    def answer(text: str, info: FetchInfo) -> None:
        stream = None if json_out else (lambda delta: (sys.stdout.write(delta),
                                                       sys.stdout.flush()))
        result = session.ask(text, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, on_text=stream)
        if json_out:
            console.print_json({
                "answer": result.text, "thinking": result.thinking, "question": text,
                "model": pipeline.name,
                "media": str(media), "frames": info.frames, "audio": info.audio,
                "branches": info.branches, "cache": info.cache, "budget": info.budget,
                "timings": {"load": round(load_s, 4), "decode": round(info.decode_s, 4),
                            "encode": round(info.encode_s, 4),
                            "prefill": round(result.prefill_s, 4),
                            "prefill_tokens": result.prefill_tokens,
                            "generate": round(result.generate_s, 4),
                            "tokens": result.tokens,
                            "tokens_per_s": round(result.tokens_per_s, 2)}})
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()

    if question is not None:
        answer(question, info)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        console.stderr.print(f"chat about {media} (/reset to start over, /quit to leave)")
    while True:
        if interactive:
            console.stderr.print("> ", end="")
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            continue
        if line:
            answer(line, info)
            info = info.again()  # later turns reuse the features in memory


def _split_args(args: list[str], batch: bool) -> tuple[Path | None, str | None, list[Path]]:
    """``MEDIA... [QUESTION]`` -> ``(media, question, several)``: one file with an optional
    question, or several files (``several``) and the question that comes last.

    Raises:
        UsageError: arguments with --batch, none without it, or several files without a
            question.
    """
    from vlm_cli.errors import UsageError

    if batch:
        if args:
            raise UsageError("--batch FILE takes no MEDIA / QUESTION arguments")
        return None, None, []
    if not args:
        raise UsageError("vlm ask: give MEDIA (and a QUESTION), or --batch FILE")
    if len(args) == 1:
        return Path(args[0]), None, []
    if len(args) == 2 and not (Path(args[0]).is_file() and Path(args[1]).is_file()):
        return Path(args[0]), args[1], []
    *paths, question = args
    if Path(question).is_file():
        raise UsageError(f"vlm ask: {len(args)} files and no question; put the question last")
    return None, question, [Path(p) for p in paths]
