"""The tiny-av training chain on toy-av: wall time per stage, accuracy per question type, and
stage-1 throughput with cached features vs recomputing the frozen encoders every step.

Chain (each step is the installed `vlm` command, timed as a user sees it):
  vlm download toy-av -> vlm pretrain tiny-av --stage encoders -> vlm pretrain tiny-av
  --encoders ... (stage 1) -> vlm tune (stage 2) -> greedy QA on the test and probe splits.
Targets (issue 3): >= 90% normalised exact match on every question type of the test split with
<= 8 minutes of total training time on 2 CPU cores; probe within 10 points of test; stage-1
samples/s on cached features >= 3x recomputing the encoders.

Usage: .venv/bin/python bench/tiny_av_train.py [--clips 1000] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VLM = str(Path(sys.executable).with_name("vlm"))


def vlm(*args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run([VLM, *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"vlm {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - start, json.loads(out.stdout.strip().splitlines()[-1])


def evaluate(run_dir: Path, toy: Path) -> dict[str, dict]:
    from vlm_cli.eval.qa import load_qa, score
    from vlm_cli.eval.run import predict
    from vlm_cli.pipeline import Pipeline

    pipeline = Pipeline.load(str(run_dir), device="cpu")
    results = {}
    for split in ("test", "probe"):
        items = load_qa(toy / "qa" / f"{split}_questions.json")
        results[split] = score(items, predict(pipeline, items, max_new_tokens=6))
    return results


def stage1_throughput(encoders: Path, toy: Path, steps: int = 40) -> tuple[float, float]:
    """Samples/s of stage-1 steps reading cached features vs running the frozen encoders on
    the (already decoded, in-memory) frames and fbank of every sample at every step."""
    import torch

    from vlm_cli.cache import FeatureCache
    from vlm_cli.data import load_records
    from vlm_cli.features import AUDIO, VISION, FeatureStore
    from vlm_cli.model.llm import build_llm
    from vlm_cli.model.parts import set_trainable
    from vlm_cli.model.tokenizer import load_tokenizer
    from vlm_cli.model.vlm import MediaInput, VideoLanguageModel
    from vlm_cli.recipe import load_recipe
    from vlm_cli.train.align import decoded_inputs, use_aligned_encoders
    from vlm_cli.train.data import FeatureDataset
    from vlm_cli.train.loop import make_accelerator, train_stage
    from vlm_cli.train.stages import feature_dims

    recipe = use_aligned_encoders(load_recipe("tiny-av", [f"train.stage1.max_steps={steps}",
                                                          "train.stage1.save_every=null"]),
                                  encoders)
    store = FeatureStore(recipe, FeatureCache(), device="cpu")
    records = load_records(toy / "stage1.json")
    paths = [r.media[0].path for r in records]
    decoded = decoded_inputs(paths, store, workers=2)
    index = {p: i for i, p in enumerate(paths)}

    def recompute(path: Path) -> MediaInput:
        i = index[path]
        return MediaInput(vision=store.encoder(VISION).encode_frames(decoded["frames"][i]),
                          audio=store.encoder(AUDIO).encode_clips(decoded["spectrogram"][i]))

    rates = []
    for mode in ("cached", "recompute"):
        torch.manual_seed(0)
        tokenizer = load_tokenizer(recipe.model.llm)
        model = VideoLanguageModel(recipe.model, build_llm(recipe.model.llm, tokenizer),
                                   tokenizer, feature_dims(recipe))
        set_trainable(model, recipe.train.stage1.freeze, "train.stage1")
        dataset = FeatureDataset(records, model, store, 256)
        if mode == "recompute":
            dataset._features = recompute
        with tempfile.TemporaryDirectory() as tmp:
            result, _ = train_stage(model, dataset, recipe.train.stage1, Path(tmp),
                                    resume=False, accelerator=make_accelerator())
        rates.append(result.samples_per_s)
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="seed of every training stage")
    parser.add_argument("--keep", type=Path, help="keep the runs here instead of a temp dir")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    root = args.keep or Path(tmp.name)
    os.environ.setdefault("VLM_HOME", str(root / "vlm-home"))
    toy = root / "toy-av"
    seeds = [f"train.encoders.seed={args.seed}", f"train.stage1.seed={args.seed}",
             f"train.stage2.seed={args.seed}"]
    t, _ = vlm("download", "toy-av", "--out", str(toy), "--clips", str(args.clips))
    print(f"download toy-av ({args.clips} clips): {t:.1f} s wall", flush=True)
    stages = {}
    t, s = vlm("pretrain", "tiny-av", *seeds, "--stage", "encoders", "--data",
               str(toy / "stage1.json"), "--out", str(root / "encoders"))
    stages["encoders"] = (t, s["seconds"])
    t, s = vlm("pretrain", "tiny-av", *seeds, "--encoders", str(root / "encoders"), "--data",
               str(toy / "stage1.json"), "--out", str(root / "stage1"))
    stages["stage1"] = (t, s["seconds"])
    t, s = vlm("tune", "tiny-av", *seeds, "--from", str(root / "stage1"), "--data",
               str(toy / "stage2.json"), "--out", str(root / "stage2"))
    stages["stage2"] = (t, s["seconds"])
    for name, (wall, train) in stages.items():
        print(f"{name}: {train:.1f} s training, {wall:.1f} s wall (with start-up, decoding and "
              "feature extraction)", flush=True)
    total = sum(train for _, train in stages.values())
    print(f"total training time: {total:.1f} s = {total / 60:.2f} min (target <= 8 min); "
          f"wall {sum(w for w, _ in stages.values()):.1f} s", flush=True)
    results = evaluate(root / "stage2", toy)
    for split, rows in results.items():
        cells = "  ".join(f"{k} {v['exact']:.3f}" for k, v in rows.items() if k != "all")
        print(f"{split}: {cells}  (n={rows['all']['n']}, all {rows['all']['exact']:.3f})")
    worst = min(v["exact"] for k, v in results["test"].items() if k != "all")
    gap = max(results["test"][k]["exact"] - results["probe"][k]["exact"]
              for k in results["test"] if k != "all")
    print(f"worst test type {worst:.3f} (target >= 0.90); largest test-probe gap {gap:.3f} "
          "(target <= 0.10)", flush=True)
    cached, recompute = stage1_throughput(root / "encoders", toy)
    print(f"stage-1 samples/s: cached features {cached:.1f}, recomputing the encoders "
          f"{recompute:.1f}: {cached / recompute:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
