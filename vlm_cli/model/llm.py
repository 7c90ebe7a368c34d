"""The language model: any ``AutoModelForCausalLM``, from a hub id / directory or a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm_cli.recipe import LLMSpec

def build_llm(spec: LLMSpec, tokenizer: Any, *, weights: str | Path | None = None,
              dtype: Any = None) -> Any:
    """Instantiate the LLM.

    Args:
        spec: the recipe's ``model.llm``.
        tokenizer: its tokenizer (the vocabulary may have grown by the media tokens: the
            embeddings are resized to ``len(tokenizer)``).
        weights: a directory of saved LLM weights (a run's ``llm/``) to load instead of the
            spec's source.
        dtype: torch dtype (default float32).

    Raises:
        VlmError: pretrained weights not in the local cache.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    dtype = dtype or torch.float32
    kwargs = {"dtype": dtype, "attn_implementation": spec.attn_implementation}
    if weights is not None:
        model = AutoModelForCausalLM.from_pretrained(weights, **kwargs)
    elif spec.config is not None:
        cfg = dict(spec.config)
        config = AutoConfig.for_model(cfg.pop("model_type", "llama"), **cfg)
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config._attn_implementation = spec.attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.init_seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        from vlm_cli.hub import local_path

        directory = local_path(spec.pretrained, spec.revision)
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model
