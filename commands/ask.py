"""``vlm ask``: ask a trained model about a video, image or audio file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlm_cli.commands.options import Download, allow_downloads

app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@app.command()
def ask(
    media: Annotated[Path, typer.Argument(help="A video, image or audio file.")],
    question: Annotated[Optional[str], typer.Argument(
        help="The question. Without it: an interactive chat about the file (also reads "
             "questions piped on stdin, one per line; /reset, /quit).", show_default=False)]
    = None,
    model: Annotated[Optional[str], typer.Option(
        help="A run directory (stage 1 or 2), a merged model, a Video-LLaVA-hf checkpoint, or "
             "a hub id in the Hugging Face cache \\[default: $VLM_MODEL, else "
             "$VLM_HOME/models/tiny-av].", show_default=False)] = None,
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
    revision: Annotated[Optional[str], typer.Option(
        help="Hub revision of --model when it is a hub id.", show_default=False)] = None,
    download: Download = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object per answer (answer, frames, audio, cache, "
                       "timings) instead of streaming text.")] = False,
) -> None:
    """Answer questions about MEDIA, streaming the answer to stdout token by token (greedy by
    default). Features are cached: a second question on the same file skips decoding and
    encoding. A file without an audio track is answered from the picture, with a note."""
    allow_downloads(download)
    import sys
    import time

    from vlm_cli import console
    from vlm_cli.ask import ChatSession, resolve_model
    from vlm_cli.cache import FeatureCache
    from vlm_cli.errors import MediaError
    from vlm_cli.eval.qa import placeholder_for
    from vlm_cli.features import FeatureStore
    from vlm_cli.media.kinds import media_kind

    if not media.exists():
        raise MediaError(media, "file not found")
    model_dir, hub_id = resolve_model(model, revision)
    started = time.perf_counter()
    import torch

    from vlm_cli.model.run_dir import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    recipe, vlm = load_model(model_dir, device=device, name=hub_id, revision=revision)
    console.info(f"model {hub_id or model_dir} on {device}, {vlm.llm.dtype} "
                 f"({vlm.llm.config._attn_implementation} attention)")
    if recipe.model.llm is not None and recipe.model.llm.tokenizer == "toy-av":
        console.info("note: a toy-av model: it knows only toy-av's colours, shapes, motion "
                     "directions and sounds, whatever the clip; for real clips pass --model "
                     "with a released checkpoint (README: what the demo model knows)")
    if fps is not None:
        recipe.data.sampling, recipe.data.fps, recipe.data.max_frames = "fps", fps, frames
    elif frames is not None:
        recipe.data.frames = frames
    load_s = time.perf_counter() - started
    store = FeatureStore(recipe, FeatureCache(), device=device)
    features, info = store.fetch(media, audio=not no_audio)
    if info["audio"] == "absent" and media_kind(media) != "image":
        console.warn(f"{media}: no audio track; answering from the picture only")
    session = ChatSession(vlm, features, placeholder_for(media))
    if seed is not None:
        torch.manual_seed(seed)

    def answer(text: str) -> None:
        stream = None if json_out else (lambda delta: (sys.stdout.write(delta),
                                                       sys.stdout.flush()))
        result = session.ask(text, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, on_text=stream)
        if json_out:
            console.print_json({
                "answer": result.text, "question": text, "model": str(model_dir),
                "media": str(media), "frames": info.get("frames"), "audio": info["audio"],
                "cache": info["cache"],
                "timings": {"load": round(load_s, 4), "decode": round(info["decode_s"], 4),
                            "encode": round(info["encode_s"], 4),
                            "prefill": round(result.prefill_s, 4),
                            "generate": round(result.generate_s, 4),
                            "tokens": result.tokens,
                            "tokens_per_s": round(result.tokens_per_s, 2)}})
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
        info["cache"], info["decode_s"], info["encode_s"] = "hit", 0.0, 0.0  # later turns

    if question is not None:
        answer(question)
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
            answer(line)
