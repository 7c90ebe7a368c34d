"""Start-up of repeated `vlm ask` on cached clips, against the import floor, in one run.

- floor: ``python -c "import torch; from transformers import LlamaForCausalLM"`` (what any
  LLaMA-based answer must import), and the same ending with ``os._exit(0)`` ("floor, no
  teardown"): `vlm` skips the interpreter's teardown of the loaded modules too, so this is the
  like-for-like floor;
- single: ``vlm ask CLIP QUESTION --model M`` on a clip whose features are cached;
- twenty: ``vlm ask CLIP1 ... CLIP20 QUESTION --model M``, all cached.

Each is a subprocess timed from start to exit, ``--repeat`` times interleaved; the median is
printed. Targets: single <= floor + 0.5 s; twenty <= floor + 2 s. Then where the start-up goes:
the modules `vlm ask` imports beyond the floor, the largest import costs (``python -X
importtime``, self time summed per top-level package), and whether torchvision / peft / vision
families are imported.

Model: ``--model`` (a run directory or hub id), else the demo model at
``~/.cache/vlm/models/tiny-av`` (``make demo``), else a micro run built here (toy-av clips, a
1-layer recipe, 3 stage-1 steps).

Usage: .venv/bin/python bench/ask_startup.py [--model DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
VLM = str(BIN / "vlm")
REPO = Path(__file__).resolve().parents[1]
FLOOR = [sys.executable, "-c", "import torch; from transformers import LlamaForCausalLM"]
BARE_FLOOR = [sys.executable, "-c", "import os, torch; from transformers import LlamaForCausalLM; "
              "os._exit(0)"]
DEMO = Path.home() / ".cache" / "vlm" / "models" / "tiny-av"
QUESTION = "What sound is playing?"
MICRO = """
name: micro
model:
  vision: {arch: clip, config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
           num_attention_heads: 2, image_size: 32, patch_size: 16}, feature_layer: -1}
  audio: {arch: ast, config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
          num_attention_heads: 2, num_mel_bins: 128, max_length: 204, patch_size: 16,
          frequency_stride: 32, time_stride: 32}}
  video_connector: {type: mlp, tokens_per_frame: 1}
  audio_connector: {type: mlp}
  llm: {config: {model_type: llama, hidden_size: 32, intermediate_size: 64,
        num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2,
        max_position_embeddings: 256}, tokenizer: toy-av}
data: {frames: 4, audio_clips: 2}
train:
  stage1: {freeze: [vision, audio], batch_size: 4, max_steps: 3, max_length: 128}
"""


def run(cmd: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd[:6])} ...\n{done.stderr[-2000:]}")
    return done


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    run(cmd, env)
    return time.perf_counter() - start


def micro_model(tmp: Path, env: dict[str, str]) -> str:
    run([VLM, "download", "toy-av", "--out", str(tmp / "toy"), "--clips", "24"], env)
    (tmp / "micro.yaml").write_text(MICRO)
    run([VLM, "pretrain", str(tmp / "micro.yaml"), "--data", str(tmp / "toy" / "stage1.json"),
         "--out", str(tmp / "run")], env)
    return str(tmp / "run")


def import_costs(path: Path) -> dict[str, tuple[int, int]]:
    """module -> (self µs, cumulative µs) from ``-X importtime`` output."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            own, total, name = line.removeprefix("import time:").split("|")
            if own.strip().isdigit():
                out[name.strip()] = (int(own), int(total))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run directory or hub id [default: demo, else micro]")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # Bytecode for vlm's own modules, as `make install` and a wheel install leave it: where
    # none is ever written (PYTHONDONTWRITEBYTECODE) each call would compile them again.
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(REPO / d) for d in
                    ("vlm_cli", "commands"))], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "VLM_HOME": str(tmp / "home")}
        model = args.model or (str(DEMO) if DEMO.is_dir() else micro_model(tmp, env))
        if not (tmp / "toy").is_dir():
            run([VLM, "download", "toy-av", "--out", str(tmp / "toy"), "--clips", "20"], env)
        clips = sorted(str(p) for p in (tmp / "toy" / "media").glob("*.mp4"))[:20]
        single = [VLM, "ask", clips[0], QUESTION, "--model", model]
        twenty = [VLM, "ask", *clips, QUESTION, "--model", model]
        run(twenty, env)  # fills the cache: every later ask is a hit
        times: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(args.repeat):  # interleaved, so that load changes hit all three alike
            times["floor"].append(timed(FLOOR, env))
            times["bare"].append(timed(BARE_FLOOR, env))
            times["single"].append(timed(single, env))
            times["twenty"].append(timed(twenty, env))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"model: {model}; {os.cpu_count()} cores; median of {args.repeat}")
        for name, label in (("floor", "floor (import torch + LlamaForCausalLM)"),
                            ("bare", "floor, no teardown (os._exit)"),
                            ("single", "vlm ask, 1 cached clip"),
                            ("twenty", "vlm ask, 20 cached clips")):
            runs = " ".join(f"{t:.2f}" for t in times[name])
            print(f"  {label:<40} {med[name]:5.2f} s  ({runs})")
        for floor in ("floor", "bare"):
            print(f"  single - {floor}: {med['single'] - med[floor]:+.2f} s (target <= +0.5 s); "
                  f"twenty - {floor}: {med['twenty'] - med[floor]:+.2f} s (target <= +2 s)")

        trace = {}
        for name, cmd in (("floor", FLOOR), ("single", [sys.executable, *single])):
            log = tmp / f"{name}.importtime"
            with log.open("w") as err:
                subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], stdout=subprocess.DEVNULL,
                               stderr=err, env=env, check=True)
            trace[name] = import_costs(log)
        ask, floor = trace["single"], trace["floor"]
        beyond = {m: c for m, c in ask.items() if m not in floor}
        print(f"imports: vlm ask {len(ask)} modules, floor {len(floor)}; beyond the floor "
              f"{len(beyond)} modules, {sum(c[0] for c in beyond.values()) / 1e6:.2f} s self time")
        for title, table in (("beyond the floor", beyond), ("all of vlm ask", ask)):
            per_package = collections.Counter()
            for module, (own, _) in table.items():
                per_package[module.split(".")[0]] += own
            top = ", ".join(f"{p} {us / 1e6:.2f}" for p, us in per_package.most_common(8))
            print(f"  top import self time, {title} (s): {top}")
        heavy = ("torchvision", "peft", "transformers.models.clip", "transformers.models.siglip",
                 "transformers.models.vivit", "transformers.models.audio_spectrogram_transformer",
                 "decord", "av")
        print("  imported by vlm ask: " + ", ".join(f"{m} {'yes' if m in ask else 'no'}"
                                                    for m in heavy))
        print(f"  torchvision imported by the floor itself: "
              f"{'yes' if 'torchvision' in floor else 'no'}")


if __name__ == "__main__":
    main()
