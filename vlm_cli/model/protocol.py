"""What the pipeline, the trainer and the probe need from a loaded model, declared once.

Two kinds of model implement it: :class:`vlm_cli.model.vlm.VideoLanguageModel` (our own
connectors + an LLM: the vlm run directory, Video-LLaVA-hf, the released Video-LLaMA) and
:class:`vlm_cli.model.families.native.NativeModel` (a checkpoint that transformers runs through its
processor, e.g. Qwen2.5-Omni's thinker). Code above the model layer asks these members, never
``hasattr``.

Shapes: ``B`` prompts, ``L`` tokens, ``V`` vocabulary; media are
:class:`vlm_cli.model.vlm.MediaInput` values (cached encoder outputs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vlm_cli.model.vlm import MediaInput


@runtime_checkable
class LanguageModel(Protocol):
    """A model that answers about media, and that stage 2 can tune.

    Attributes:
        tokenizer: its transformers tokenizer (``decode``, ``eos_token_id``).
        media_token_ids: placeholder token id -> media kind, the tokens that stand for media.
        llm: the language model module LoRA adapts (peft injects into it in place).
        connectors: our trainable connectors (empty for a native model: its towers' merger
            already outputs LLM-width tokens).
        prompt_uses_media: whether :meth:`encode_prompt` needs the media (Video-LLaMA's prompt
            wording depends on the branches a file has).
        default_system: the system turn the model card sends by default, or None (none sent).
        fits_video_budget: whether the pipeline fits video features to a token budget
            (:func:`vlm_cli.model.budget.fit_video`: our connectors); a native model checks its
            context from the file's header instead.
        lora_task_type: peft's ``task_type`` for LoRA on :attr:`llm` (``CAUSAL_LM`` for a
            causal LM with its own head; None for a bare decoder).
    """

    tokenizer: Any
    media_token_ids: dict[int, str]
    llm: nn.Module
    connectors: nn.ModuleDict
    prompt_uses_media: bool
    default_system: str | None
    fits_video_budget: bool
    lora_task_type: str | None

    def release_towers(self) -> None:
        """Leave any frozen tower that is part of the model out of it from here on (training
        reads the towers' outputs from the feature cache; under FSDP2 nothing of them is
        sharded or gathered)."""

    def encode_prompt(self, turns: Sequence[dict[str, Any]],
                      media: Sequence[MediaInput] | None = None) -> list[int]:
        """Token ids of LLaVA turns ending in a user turn, plus the assistant prefix."""

    def encode_conversation(self, turns: Sequence[dict[str, Any]], max_length: int,
                            media: Sequence[MediaInput] | None = None,
                            ) -> tuple[list[int], list[int]]:
        """Token ids and labels (``-100`` off the assistant turns) of a training conversation."""

    def forward(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                media: Sequence[Sequence[MediaInput]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over the labelled tokens, and their count."""

    def stream(self, input_ids: Sequence[Sequence[int]], media: Sequence[Sequence[MediaInput]],
               *, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
               prefix: Any = None, ignore_eos: bool = False) -> Iterator[list[int | None]]:
        """Per decoding step, one new token id per prompt (None once a prompt has ended)."""

    def generate_batch(self, input_ids: Sequence[Sequence[int]],
                       media: Sequence[Sequence[MediaInput]], *,
                       max_new_tokens: int = 32) -> list[list[int]]:
        """Greedy answers of several prompts, each without its end-of-sequence token."""

    def logits(self, input_ids: Sequence[int], media: Sequence[MediaInput]) -> torch.Tensor:
        """``[L, V]`` float logits of one prompt."""
