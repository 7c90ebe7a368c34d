"""Parameter counts and bf16 weight memory of the released Video-LLaMA-2 models, from the meta
device (no weights downloaded or allocated): the modules `vlm` builds for
``DAMO-NLP-SG/Video-LLaMA-2-{7,13}B-Finetuned`` with the released shapes.

    .venv/bin/python bench/video_llama_size.py

Shapes: LLaMA-2-chat 7B / 13B (``llama-2-*-chat-hf/config.json``); BLIP-2's EVA ViT-g/14 and image
Q-Former (``Salesforce/blip2-flan-t5-xxl`` ``config.json``); ImageBind-Huge's audio tower; the
Video / Audio Q-Formers (BERT-base, 2 layers) with their projections.
"""

from __future__ import annotations

import torch

LLAMA = {"7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
         "13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                     num_attention_heads=40, num_key_value_heads=40, vocab_size=32000)}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    from transformers import (Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig,
                              Blip2VisionModel, LlamaConfig, LlamaForCausalLM)

    from vlm_cli.model.connectors import QFormerConnector
    from vlm_cli.model.imagebind import ImageBindAudio
    from vlm_cli.recipe import ConnectorSpec

    with torch.device("meta"):
        towers = {
            "EVA ViT-g/14 (BLIP-2)": count(Blip2VisionModel(Blip2VisionConfig(
                hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                num_attention_heads=16, image_size=224, patch_size=14))),
            "image Q-Former + 32 queries (BLIP-2)": count(Blip2QFormerModel(Blip2QFormerConfig(
                hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, cross_attention_frequency=2,
                encoder_hidden_size=1408))) + 32 * 768,
            "ImageBind-Huge audio tower": count(ImageBindAudio(768, 12, 12, 1024)),
        }
        rows = []
        for size, shape in LLAMA.items():
            width = shape["hidden_size"]
            spec = ConnectorSpec(type="qformer", num_query_tokens=32, hidden_size=768,
                                 num_layers=2, num_heads=12, intermediate_size=3072,
                                 max_positions=32)
            video = count(QFormerConnector(768, width, spec))
            audio = count(QFormerConnector(1024, width, ConnectorSpec(
                **{**spec.__dict__, "num_query_tokens": 8, "max_positions": 8})))
            llm = count(LlamaForCausalLM(LlamaConfig(**shape)))
            rows.append((size, llm, video, audio))
    print("frozen towers (shared by both sizes):")
    for name, n in towers.items():
        print(f"  {name:40s} {n / 1e6:9.1f} M params  {2 * n / 2**30:6.2f} GiB bf16")
    tower_total = sum(towers.values())
    for size, llm, video, audio in rows:
        total = llm + video + audio + tower_total
        print(f"Video-LLaMA-2-{size}: LLM {llm / 1e9:.3f} B, Video Q-Former + proj "
              f"{video / 1e6:.1f} M, Audio Q-Former + proj {audio / 1e6:.1f} M, towers "
              f"{tower_total / 1e9:.3f} B; total {total / 1e9:.3f} B params, "
              f"{2 * total / 2**30:.2f} GiB of bf16 weights "
              f"(LLM + connectors alone {2 * (llm + video + audio) / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
