"""Test helper: instantiate a recipe's architecture without weights (torch's ``meta`` device).

Used by ``test_recipes_7b.py`` to check a recipe's shape and size (parameter counts per part)
without downloading anything:
configs come from the recipe's ``config`` dicts or from the ``config.json`` of a local directory /
cached hub snapshot; no weight file is read.
"""

from __future__ import annotations

from typing import Any

from vlm_cli.recipe import Recipe


def _config(cls: Any, spec: Any) -> Any:
    if spec.config is not None:
        return cls(**spec.config)
    from vlm_cli.hub import local_path

    return cls.from_pretrained(local_path(spec.pretrained, spec.revision))


def parameter_counts(recipe: Recipe) -> dict[str, int]:
    """Parameters of each part of ``recipe``'s model (``vision``, ``audio``, ``video_connector``,
    ``audio_connector``, ``llm``), built on the meta device.

    Raises:
        VlmError: a pretrained part whose config is not available locally.
    """
    import torch
    from transformers import ASTConfig, ASTModel, AutoConfig, AutoModelForCausalLM

    from vlm_cli.model.connectors import build_connector

    spec = recipe.model
    counts: dict[str, int] = {}
    dims: dict[str, int] = {}
    with torch.device("meta"):
        if spec.vision is not None:
            from vlm_cli.model.encoders import vision_classes

            config_cls, model_cls = vision_classes(spec.vision.arch)
            config = _config(config_cls, spec.vision)
            counts["vision"] = sum(p.numel() for p in model_cls(config).parameters())
            dims["vision"] = config.hidden_size
        if spec.audio is not None:
            if spec.audio.arch == "whisper":
                from transformers import WhisperConfig
                from transformers.models.whisper.modeling_whisper import WhisperEncoder

                config = _config(WhisperConfig, spec.audio)
                counts["audio"] = sum(p.numel() for p in WhisperEncoder(config).parameters())
                dims["audio"] = config.d_model
            else:
                config = _config(ASTConfig, spec.audio)
                counts["audio"] = sum(p.numel() for p in ASTModel(config).parameters())
                dims["audio"] = config.hidden_size
        width = None
        if spec.llm is not None:
            if spec.llm.config is not None:
                cfg = dict(spec.llm.config)
                config = AutoConfig.for_model(cfg.pop("model_type", "llama"), **cfg)
            else:
                config = _config(AutoConfig, spec.llm)
            llm = AutoModelForCausalLM.from_config(config)
            counts["llm"] = sum(p.numel() for p in llm.parameters())
            width = config.hidden_size
        for name, modality in (("video_connector", "vision"), ("audio_connector", "audio")):
            connector = getattr(spec, name)
            if connector is not None and width is not None:
                module = build_connector(connector, dims[modality], width)
                counts[name] = sum(p.numel() for p in module.parameters())
    return counts
