"""Tiny Video-LLaMA releases for tests, in exactly the layout of
``DAMO-NLP-SG/Video-LLaMA-2-7B-Finetuned`` and of the BLIP-2 parts it needs
(``Salesforce/blip2-flan-t5-xxl``), made from the golden fixture's weights
(``tests/fixtures/video_llama``: tiny random weights the public original was run on, see its
``make_golden.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

GOLDEN = Path(__file__).parent / "fixtures" / "video_llama"
RELEASE_REPO = "DAMO-NLP-SG/Video-LLaMA-2-7B-Finetuned"
BLIP2_REPO = "Salesforce/blip2-flan-t5-xxl"
#: Attention heads of the golden tiny Q-Formers and ImageBind audio tower (32 wide, 2 heads; the
#: released models' are 768 wide with 12, which our loader derives as width / 64).
GOLDEN_HEADS = 2


def golden() -> tuple[dict, dict]:
    """``(tensors, golden.json)`` of the golden fixture."""
    from safetensors.torch import load_file

    return (load_file(str(GOLDEN / "weights.safetensors")),
            json.loads((GOLDEN / "golden.json").read_text()))


def _part(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def make_tiny_release(out: Path) -> Path:
    """``VL_LLaMA_2_7B_Finetuned.pth`` / ``AL_LLaMA_2_7B_Finetuned.pth`` (training checkpoints
    ``{model, optimizer, config, scaler, epoch}``), ``imagebind_huge.pth`` (a state dict of all
    six modalities) and ``llama-2-7b-chat-hf/`` (``.bin`` shards + index, ``tokenizer.model``)."""
    import torch

    tensors, gold = golden()
    out.mkdir(parents=True, exist_ok=True)
    for name, prefix in (("VL_LLaMA_2_7B_Finetuned.pth", "vl."),
                         ("AL_LLaMA_2_7B_Finetuned.pth", "al.")):
        state = _part(tensors, prefix)
        optimizer = {"state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(v),
                                   "exp_avg_sq": torch.zeros_like(v)}
                               for i, v in enumerate(state.values()) if v.is_floating_point()},
                     "param_groups": [{"lr": 3e-5, "weight_decay": 0.05, "params": list(range(
                         len(state)))}]}
        torch.save({"model": state, "optimizer": optimizer,
                    "config": {"model": {"arch": "video_llama", "max_frame_pos": 32}},
                    "scaler": None, "epoch": 2}, out / name)
    torch.save(_part(tensors, "imagebind."), out / "imagebind_huge.pth")
    llm = out / "llama-2-7b-chat-hf"
    llm.mkdir(exist_ok=True)
    (llm / "config.json").write_text(json.dumps(
        {**gold["configs"]["llama2_style_config_json"], "transformers_version": "4.31.0"},
        indent=2))
    (llm / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "temperature": 0.6,
         "top_p": 0.9, "max_length": 4096, "transformers_version": "4.31.0"}))
    state = _part(tensors, "llama.")
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for shard, names in shards.items():
        torch.save({k: state[k].contiguous() for k in names}, llm / shard)
    (llm / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(v.numel() * 4 for v in state.values())},
         "weight_map": {k: s for s, names in shards.items() for k in names}}, indent=2))
    for f in (GOLDEN / "tokenizer").iterdir():
        shutil.copyfile(f, llm / f.name)
    (out / "README.md").write_text(
        "---\nlicense: bsd-3-clause\n---\n# Video-LLaMA-2-7B-Finetuned (tiny test copy)\n")
    return out


def make_tiny_blip2(out: Path) -> Path:
    """A BLIP-2 checkpoint in the hub layout of ``Salesforce/blip2-flan-t5-xxl``: config.json
    (``Blip2Config``, a tiny T5 as its language model), two safetensors shards (vision tower,
    Q-Former and query tokens; the language model) and their index."""
    import torch
    from safetensors.torch import save_file
    from transformers import Blip2Config

    tensors, gold = golden()
    out.mkdir(parents=True, exist_ok=True)
    config = Blip2Config(vision_config=gold["configs"]["hf_blip2_vision_config"],
                         qformer_config=gold["configs"]["hf_blip2_qformer_config"],
                         text_config={"model_type": "t5", "d_model": 16, "d_kv": 8, "d_ff": 32,
                                      "num_layers": 1, "num_heads": 2, "vocab_size": 64},
                         num_query_tokens=32)
    config.save_pretrained(out)
    towers = {k: v.contiguous() for k, v in _part(tensors, "blip2.").items()}
    generator = torch.Generator().manual_seed(0)
    language = {"language_model.shared.weight": torch.randn(64, 16, generator=generator),
                "language_projection.weight": torch.randn(16, 32, generator=generator),
                "language_projection.bias": torch.zeros(16)}
    shards = {"model-00001-of-00002.safetensors": towers,
              "model-00002-of-00002.safetensors": language}
    for name, state in shards.items():
        save_file(state, str(out / name), metadata={"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: s for s, state in shards.items() for k in state}},
        indent=2))
    (out / "README.md").write_text("---\nlicense: mit\n---\n# BLIP-2 (tiny test copy)\n")
    return out
