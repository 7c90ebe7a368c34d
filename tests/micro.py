"""The micro recipe shared by the training, ask and eval tests: every part 1 layer, width 32."""

from __future__ import annotations

VISION_CLIP = """{arch: clip, config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
           num_attention_heads: 2, image_size: 32, patch_size: 16}, feature_layer: -1}"""
VISION_VIVIT = """{arch: vivit, config: {image_size: 32, num_frames: 4, tubelet_size: [2, 16, 16],
           hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
           num_attention_heads: 2}, feature_layer: -1, select: cls,
           image_mean: [0.5, 0.5, 0.5], image_std: [0.25, 0.25, 0.25]}"""
TEMPLATE = """
name: micro
model:
  vision: {vision}
  audio: {{arch: ast, config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
          num_attention_heads: 2, num_mel_bins: 128, max_length: 204, patch_size: 16,
          frequency_stride: 32, time_stride: 32}}}}
  video_connector: {video_connector}
  audio_connector: {{type: mlp}}
  llm: {{config: {{model_type: llama, hidden_size: 32, intermediate_size: 64,
        num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2,
        max_position_embeddings: 256}}, tokenizer: toy-av}}
data: {{frames: 4, audio_clips: {audio_clips}}}
train:
{train}
"""


def micro_recipe(*, vision: str = VISION_CLIP, video_connector: str = "{type: mlp}",
                 audio_clips: int = 2, train: str) -> str:
    """The micro recipe's YAML with the given vision encoder, video connector and train section
    (an indented YAML block)."""
    return TEMPLATE.format(vision=vision, video_connector=video_connector,
                           audio_clips=audio_clips, train=train)


KILL_AT_STEP = """
import os, signal, sys
import vlm_cli.train.loop as loop
save = loop.save_checkpoint
def save_then_die(run_dir, step, *args, **kwargs):
    out = save(run_dir, step, *args, **kwargs)
    if step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` right after that checkpoint
    return out
loop.save_checkpoint = save_then_die
from vlm_cli.cli import run
sys.exit(run(sys.argv[1:]))
"""


def run_killed_at(step: int, args: list[str], env: dict[str, str]) -> int:
    """Run ``vlm ARGS`` in a subprocess that kills itself with SIGKILL right after writing
    checkpoint ``step``: a crash at a known point, independent of timing. Returns the exit code
    (-9 when it was killed)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", KILL_AT_STEP.format(step=step), *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env).returncode


def micro_world(tmp_path_factory, name: str, recipe_yaml: str, *, clips: int, seed: int):
    """A small toy-av set under a fresh temporary root, the recipe written as ``micro.yaml``,
    and an environment whose VLM_HOME (feature cache, models) is private to it."""
    import os

    from vlm_cli.toyav import generate_toy_av

    root = tmp_path_factory.mktemp(name)
    generate_toy_av(root / "toy", clips=clips, seed=seed, workers=1)
    (root / "micro.yaml").write_text(recipe_yaml)
    return root, {**os.environ, "VLM_HOME": str(root / "home")}


import contextlib


@contextlib.contextmanager
def vlm_home(home: str):
    """``VLM_HOME=home`` for the duration (restored after), for module-scoped fixtures and
    in-process loads, which cannot use monkeypatch."""
    import os

    saved = os.environ.get("VLM_HOME")
    os.environ["VLM_HOME"] = str(home)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("VLM_HOME", None)
        else:
            os.environ["VLM_HOME"] = saved


def run_in_home(home: str, args: list[str]) -> tuple[int, str]:
    """``vlm ARGS`` in this process (no interpreter start-up) with ``VLM_HOME=home``. Returns
    ``(exit code, stdout)``."""
    import io

    from vlm_cli.cli import run

    out = io.StringIO()
    with vlm_home(home), contextlib.redirect_stdout(out):
        code = run(args)
    return code, out.getvalue()


def trained_run(tmp_path_factory, name: str, recipe_yaml: str, *, clips: int, seed: int):
    """:func:`micro_world` plus a stage-1 run of the recipe on it (``root / "run"``): the model
    the ask, eval and probe tests question. Returns the root."""
    root, env = micro_world(tmp_path_factory, name, recipe_yaml, clips=clips, seed=seed)
    code, _ = run_in_home(env["VLM_HOME"], ["pretrain", str(root / "micro.yaml"), "--data",
                                            str(root / "toy" / "stage1.json"), "--out",
                                            str(root / "run")])
    assert code == 0, "the micro stage-1 run failed"
    return root


#: The micro recipe the training tests run (a Q-Former video connector; stage 1, stage 2 LoRA).
TRAIN_RECIPE = micro_recipe(
    video_connector="{type: qformer, num_query_tokens: 4, hidden_size: 32, num_layers: 1, "
                    "num_heads: 2, dropout: 0.0}",
    train="""  stage1: {freeze: [vision, audio], lr: 1.0e-3, batch_size: 4, max_steps: 6,
           max_length: 128, log_every: 1, warmup_ratio: 0.2}
  stage2: {freeze: [vision, audio, llm], lora: {rank: 4, alpha: 8.0, dropout: 0.0}, lr: 1.0e-3,
           batch_size: 4, max_steps: 4, max_length: 128, log_every: 1}""")


def tune_and_merge(env: dict, recipe: str, repo: str, clips: list, out: "Path", *,
                   steps: int = 2, max_length: int = 4096) -> dict:
    """``vlm tune RECIPE --from REPO`` (LoRA rank 4, ``steps`` steps of 2 samples: each clip asked
    "What sound is playing?", answered "a boat engine"), then ``vlm merge-lora --verify`` into
    ``out / "merged"``, both under ``env``. Returns ``(tune JSON, merge JSON)``."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    vlm = str(Path(sys.executable).with_name("vlm"))
    data = Path(out) / "train.json"
    data.write_text(json.dumps([
        {"id": str(i), "video": str(clip), "conversations": [
            {"from": "human", "value": "<video>\nWhat sound is playing?"},
            {"from": "gpt", "value": "a boat engine"}]}
        for i, clip in enumerate(clips)]))
    tune = subprocess.run(
        [vlm, "tune", recipe, "--from", repo, "--data", str(data), "--out", str(Path(out) / "run"),
         "--json", "train.stage2.lora={rank: 4, alpha: 8, dropout: 0.0}", "train.stage2.batch_size=2",
         f"train.stage2.max_steps={steps}", "train.stage2.lr=1e-2",
         f"train.stage2.max_length={max_length}"], capture_output=True, text=True, env=env, timeout=600)
    assert tune.returncode == 0, tune.stderr[-3000:]
    merge = subprocess.run([vlm, "merge-lora", str(Path(out) / "run"), "--out", str(Path(out) / "merged"),
                            "--verify", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert merge.returncode == 0, merge.stderr[-3000:]
    return json.loads(tune.stdout), json.loads(merge.stdout)


def check_chat_reuses_its_cache(model, media, questions: list[str], placeholder: str = "<video>") -> None:
    """Ask ``questions`` in one :class:`vlm_cli.pipeline.ChatSession` about ``media``: every
    follow-up prefills fewer tokens than the first question (the KV cache is reused) and answers
    as a fresh session given the conversation so far (a fresh prefill)."""
    from vlm_cli.pipeline import ChatSession

    session = ChatSession(model, media, placeholder, model.default_system)
    first = session.ask(questions[0], max_new_tokens=6)
    for question in questions[1:]:
        turns = list(session.turns)
        got = session.ask(question, max_new_tokens=6)
        assert got.prefill_tokens < first.prefill_tokens
        fresh = ChatSession(model, media, placeholder, model.default_system)
        fresh.turns = turns
        assert fresh.ask(question, max_new_tokens=6).text == got.text
