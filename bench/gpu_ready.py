"""GPU readiness: a 7B-shaped Video-LLaVA with random weights, timed on one GPU.

The model is built through the toolkit's own package: built-in recipe ``video-llava-7b`` with
overrides (a LLaMA-7B config instead of the hub weights, the built-in ``toy-av`` tokenizer), then
embeddings and LM head resized to 32000 x 4096. Measured:

1. ``vlm ask``-style generation (``VideoLanguageModel.generate``, greedy, KV cache): random
   features shaped like cached CLIP ViT-L/14 ones ``[8, 256, 1024]`` through the 2-layer GELU
   projector (2048 visual tokens) + the chat prompt's text. Time to first token, prefill and
   decode tokens/s (``min_new_tokens`` keeps the random model from stopping early).
2. The stage-1 training step (projector trainable, LLM frozen): ``VideoLanguageModel.forward``,
   backward, clipping, AdamW, under bf16 autocast like the training loop; ms/step, samples/s.
3. Peak GPU memory (``torch.cuda.max_memory_allocated``, reset between phases) of each phase.

Medians after warm-up runs. The LLM is built on the GPU in ``resolve_dtype("auto")`` (bf16
where supported, as ``vlm ask`` and ``vlm pretrain`` (frozen LLM) load it); the projector
stays fp32 as in both.

Run on a GPU machine: ``.venv/bin/python bench/gpu_ready.py [--batch-size 4] [--json]``; on a
CPU, ``--tiny`` (a small shape) is a smoke test. Record the figures in bench/RESULTS.md with the
GPU model. No downloads, no network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

LLAMA_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
TINY = {**LLAMA_7B, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4}
VOCAB = 32000      # LLaMA / Vicuna vocabulary
CLIP_WIDTH = 1024  # CLIP ViT-L/14 feature width (penultimate layer, patch tokens)
#: option: (default, default with --tiny, help). Batch 4 x ~2140 tokens: ~13 GiB of saved
#: activations per sample (flash sdpa) + 12.6 GiB of bf16 weights, ~65 GiB: fits 80 GB.
SIZES = {"frames": (8, 2, "frames per video"), "patches": (256, 16, "tokens per frame"),
         "new_tokens": (128, 16, "decoded tokens"), "repeats": (3, 2, "timed generate() calls"),
         "batch_size": (4, 2, "training batch"), "steps": (10, 3, "timed training steps")}
QUESTION = "<video>\nWhat is happening in this video? Describe it in detail."
CAPTION = ("a red square moves to the left while a high tone plays and a small blue circle "
           "moves up in the corner of the clip , then the sound stops and the shape keeps "
           "moving to the left of the video in silence .")


def build(args: argparse.Namespace, device: str, dtype: torch.dtype):
    """The recipe, the VideoLanguageModel (LLM on ``device`` in ``dtype``) and its tokenizer."""
    import yaml

    from vlm_cli.model.llm import build_llm
    from vlm_cli.model.tokenizer import load_tokenizer
    from vlm_cli.model.vlm import VideoLanguageModel
    from vlm_cli.recipe import load_recipe
    from vlm_cli.train.stages import feature_dims

    # safe_dump writes 1e-05 as 1.0e-05: PyYAML reads a bare 1e-05 as a string
    config = yaml.safe_dump(TINY if args.tiny else LLAMA_7B, default_flow_style=True,
                            width=1 << 16).strip()
    recipe = load_recipe("video-llava-7b", [
        "model.vision.pretrained=null", f"model.vision.config={{hidden_size: {CLIP_WIDTH}}}",
        "model.llm.pretrained=null", f"model.llm.config={config}",
        "model.llm.tokenizer=toy-av", *args.set])
    tokenizer = load_tokenizer(recipe.model.llm)
    with torch.device(device):
        llm = build_llm(recipe.model.llm, tokenizer, dtype=dtype)  # vocab = len(tokenizer)
        llm.resize_token_embeddings(VOCAB, mean_resizing=False)    # 7B-shaped embeddings/head
        model = VideoLanguageModel(recipe.model, llm, tokenizer, feature_dims(recipe))
    return recipe, model, tokenizer


def sync(device: str, reset_peak: bool = False) -> None:
    """Wait for ``device``'s queued work; optionally reset its peak memory."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        if reset_peak:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def gib(device: str, peak: bool = True) -> float | None:
    """Peak (else current) memory allocated by tensors on ``device``; None off CUDA."""
    if device.startswith("cuda"):
        cuda = torch.cuda
        return (cuda.max_memory_allocated if peak else cuda.memory_allocated)(device) / 2**30
    return None


def bench_generate(model, tokenizer, args, device: str) -> dict:
    from vlm_cli.model.chat import encode_prompt
    from vlm_cli.model.vlm import MediaInput

    ids = encode_prompt(tokenizer, [{"from": "human", "value": QUESTION}])
    media = [MediaInput(vision=torch.randn(args.frames, args.patches, CLIP_WIDTH, device=device))]
    model.eval()
    sync(device, reset_peak=True)
    ttft, decode, n_out = [], [], 0
    for run in range(1 + args.repeats):  # run 0 is the warm-up
        times = []
        sync(device)
        start = time.perf_counter()
        for _ in model.stream([ids], [media], max_new_tokens=args.new_tokens, ignore_eos=True):
            times.append(time.perf_counter())  # each token reaches the host (.tolist() syncs)
        sync(device)
        if run:
            n_out = len(times)
            ttft.append(times[0] - start)
            decode.append((len(times) - 1) / (times[-1] - times[0]))
    prompt = len(ids) - 1 + args.frames * args.patches  # the placeholder becomes the soft prompt
    return {"prompt_tokens": prompt, "visual_tokens": args.frames * args.patches,
            "text_tokens": len(ids) - 1, "new_tokens": n_out, "repeats": args.repeats,
            "ttft_ms": 1000 * statistics.median(ttft),
            "prefill_tokens_per_s": prompt / statistics.median(ttft),
            "decode_tokens_per_s": statistics.median(decode), "peak_gib": gib(device)}


def bench_train(model, tokenizer, recipe, args, device: str, dtype: torch.dtype) -> dict:
    from vlm_cli.model.chat import encode_conversation
    from vlm_cli.model.parts import set_trainable
    from vlm_cli.model.vlm import MediaInput

    stage = recipe.train.stage1
    trained = set_trainable(model, stage.freeze, "train.stage1")
    if stage.gradient_checkpointing:
        model.llm.activation_checkpointing_enable()
        model.llm.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    # each caption 3 words shorter than the last: the batch is right-padded with an attention
    # mask like real ones (equal lengths would let sdpa drop the mask)
    words = CAPTION.split()
    samples = [encode_conversation(tokenizer, [{"from": "human", "value": QUESTION}, {
        "from": "gpt", "value": " ".join(words[: max(4, len(words) - 3 * i)])}], args.max_length)
        for i in range(args.batch_size)]
    batch = [s[0] for s in samples], [s[1] for s in samples], [
        [MediaInput(vision=torch.randn(args.frames, args.patches, CLIP_WIDTH, device=device))]
        for _ in samples]
    autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype == torch.bfloat16)
    model.train()
    sync(device, reset_peak=True)
    times, loss = [], float("nan")
    for step in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        with autocast:
            loss_sum, n_tokens = model(*batch)
        (loss_sum / n_tokens).backward()
        if stage.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, stage.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        loss = (loss_sum / n_tokens).item()
    lengths = [len(ids) - 1 + args.frames * args.patches for ids in batch[0]]
    step_s = statistics.median(times)
    return {"trained": trained, "trainable_params": sum(p.numel() for p in params),
            "batch_size": args.batch_size, "seq_tokens": max(lengths), "tokens": sum(lengths),
            "target_tokens": int(n_tokens), "gradient_checkpointing": stage.gradient_checkpointing,
            "autocast": dtype == torch.bfloat16, "warmup": args.warmup, "steps": args.steps,
            "step_ms": 1000 * step_s, "samples_per_s": args.batch_size / step_s,
            "tokens_per_s": sum(lengths) / step_s, "loss": loss, "peak_gib": gib(device)}


def table(r: dict) -> str:
    mem = lambda v: "n/a (not a CUDA device)" if v is None else f"{v:.2f} GiB"  # noqa: E731
    g, t, m = r["generate"], r["train"], r["model"]
    rows = [
        ("device", f"{r['device']} ({r['gpu']})"),
        ("dtype / attention", f"{r['dtype']} / {r['attn_implementation']}"),
        ("versions", f"torch {r['torch']}, transformers {r['transformers']}"),
        ("LLM", f"{m['layers']} layers x {m['hidden']}, vocab {m['vocab']}: "
                f"{m['llm_params'] / 1e9:.3f} B params (random)"),
        ("projector", f"{m['projector_params'] / 1e6:.1f} M params ({m['projector_dtype']})"),
        ("weights resident", mem(m["weights_gib"])),
        ("-- ask (generate, batch 1)", ""),
        ("prompt", f"{g['visual_tokens']} visual + {g['text_tokens']} text = "
                   f"{g['prompt_tokens']} tokens"),
        ("time to first token", f"{g['ttft_ms']:.1f} ms (median of {g['repeats']})"),
        ("prefill", f"{g['prefill_tokens_per_s']:,.0f} tokens/s"),
        ("decode", f"{g['decode_tokens_per_s']:,.1f} tokens/s ({g['new_tokens']} new, greedy)"),
        ("peak memory", mem(g["peak_gib"])), ("-- stage-1 step", "")]
    if "error" in t:
        rows.append(("error", t["error"]))
    else:
        rows += [
            ("trained", f"{', '.join(t['trained'])} ({t['trainable_params'] / 1e6:.1f} M params)"),
            ("batch", f"{t['batch_size']} x <= {t['seq_tokens']} tokens ({t['tokens']} real, "
                      f"{t['target_tokens']} target), grad ckpt {t['gradient_checkpointing']}"),
            ("step", f"{t['step_ms']:.1f} ms (median of {t['steps']}, {t['warmup']} warm-up)"),
            ("throughput", f"{t['samples_per_s']:.2f} samples/s, "
                           f"{t['tokens_per_s']:,.0f} tokens/s"),
            ("peak memory", mem(t["peak_gib"]))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(k if k.startswith("--") else f"{k.ljust(width)}  {v}" for k, v in rows)


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu", help="default: cuda if any")
    p.add_argument("--tiny", action="store_true", help="small shape: a CPU smoke test")
    for name, (full, tiny, text) in SIZES.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int,
                       help=f"{text} (default {full}; with --tiny {tiny})")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--max-length", type=int, default=2048, help="text token limit per sample")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override, e.g. train.stage1.gradient_checkpointing=true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    for name, (full, tiny, _) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    on_gpu = args.device.startswith("cuda") and cuda
    if not on_gpu and (not args.tiny or args.device.startswith("cuda")):
        sys.exit(f"gpu_ready: {'--device ' + args.device if args.tiny else 'the 7B shape'} "
                 f"needs a CUDA GPU (CUDA {'available' if cuda else 'not available'}); "
                 "use --tiny --device cpu for a CPU smoke test")
    import transformers

    from vlm_cli.runtime import resolve_dtype

    dtype = resolve_dtype("auto", args.device)
    torch.manual_seed(0)
    recipe, model, tokenizer = build(args, args.device, dtype)
    sync(args.device)
    projector, cfg = model.connectors["video"], model.llm.config
    result = {
        "device": args.device, "gpu": torch.cuda.get_device_name(args.device) if on_gpu
        else "no GPU", "dtype": str(dtype)[6:], "attn_implementation": cfg._attn_implementation,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": {"hidden": cfg.hidden_size, "vocab": cfg.vocab_size,
                  "layers": cfg.num_hidden_layers,
                  "llm_params": sum(q.numel() for q in model.llm.parameters()),
                  "projector_params": sum(q.numel() for q in projector.parameters()),
                  "projector_dtype": str(next(projector.parameters()).dtype)[6:],
                  "weights_gib": gib(args.device, peak=False)}}
    result["generate"] = bench_generate(model, tokenizer, args, args.device)
    try:
        result["train"] = bench_train(model, tokenizer, recipe, args, args.device, dtype)
    except torch.OutOfMemoryError:
        result["train"] = {"error": f"out of memory at batch size {args.batch_size} (try a "
                                    "smaller --batch-size, or gradient checkpointing)",
                           "batch_size": args.batch_size, "peak_gib": gib(args.device)}
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
