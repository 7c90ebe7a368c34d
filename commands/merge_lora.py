"""``vlm merge-lora``: fold a run's LoRA adapter into its LLM; write a self-contained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlm_cli.commands.options import Json

app = typer.Typer(add_completion=False, rich_markup_mode="rich")


@app.command("merge-lora")
def merge_lora(
    run: Annotated[Path, typer.Argument(help="A stage-2 run directory with a LoRA adapter.")],
    out: Annotated[Path, typer.Option(help="Directory to write the merged model to.")],
    dtype: Annotated[Optional[str], typer.Option(
        help="float32, bfloat16 or float16 \\[default: the recipe's LLM dtype, fp32 for auto].",
        show_default=False)] = None,
    verify: Annotated[bool, typer.Option(
        help="Compare merged vs base + adapter logits on a probe input; fail above "
             "--tolerance.")] = False,
    tolerance: Annotated[float, typer.Option(help="Max |logit difference| for --verify.")]
    = 1e-4,
    json_out: Json = False,
) -> None:
    """Merge RUN's LoRA adapter into the base LLM the run records (in fp32, then cast), and
    write a self-contained directory: sharded safetensors + index, config, tokenizer, connector
    weights, local encoders, and a model card with provenance. `vlm ask --model OUT` runs it
    without peft. A second merge of the same adapter into OUT is a no-op."""
    from vlm_cli import console
    from vlm_cli.merge import merge_lora as run_merge

    summary = run_merge(run, out, dtype=dtype, verify=verify, tolerance=tolerance)
    if json_out:
        console.print_json(summary)
        return
    if summary["skipped"]:
        digest = summary["adapter_sha256"][:12]
        console.stdout.print(f"{out}: already holds this merge (adapter {digest}); nothing to do")
        return
    console.stdout.print(f"merged {run} into {out} ({summary['dtype']}; base {summary['base']})")
    for key in ("max_abs_logit_diff_fp32", "max_abs_logit_diff_saved"):
        if key in summary:
            console.stdout.print(f"verify: {key.removeprefix('max_abs_logit_diff_')} max |logit "
                                 f"difference| {summary[key]:.2e} (tolerance {tolerance:.0e})")
