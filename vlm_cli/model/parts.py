"""The model's parts by name, as data: what ``freeze`` lists and LoRA targets refer to.

One dict maps each part to the attribute path of its module in :class:`VideoLanguageModel`
(the pattern of LLaMA-Factory's ``visual.py`` and ms-swift's ``model_arch``). Audio and vision are
separate entries, so freezing one never freezes the other.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from vlm_cli.errors import RecipeError

#: Part name -> attribute path in VideoLanguageModel. Encoders are not inside the model: their
#: features come from the cache, so they are always frozen during stages 1 and 2.
PART_MODULES = {
    "video_connector": "connectors.video",
    "audio_connector": "connectors.audio",
    "llm": "llm",
}
ENCODER_PARTS = ("vision", "audio")


def part_module(model: nn.Module, part: str) -> nn.Module | None:
    """The module of ``part`` in ``model``, or None if the model has no such part."""
    module: nn.Module | None = model
    for name in PART_MODULES[part].split("."):  # ModuleDict entries are attributes too
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def set_trainable(model: nn.Module, freeze: Iterable[str], where: str) -> list[str]:
    """Freeze the parts in ``freeze`` and unfreeze the others; return the trained part names.

    Raises:
        RecipeError: the stage would train an encoder (stages 1 and 2 read cached features; the
            tiny-av encoders are trained by their own alignment stage).
    """
    freeze = set(freeze)
    for encoder in ENCODER_PARTS:
        if encoder not in freeze:
            raise RecipeError(f"recipe key '{where}.freeze': must include {encoder!r} (stages 1 "
                              "and 2 train on cached frozen-encoder features)")
    trained = []
    for part in PART_MODULES:
        module = part_module(model, part)
        if module is None:
            continue
        module.requires_grad_(part not in freeze)
        if part not in freeze:
            trained.append(part)
    return trained
