"""FSDP2 (``torch.distributed.fsdp.fully_shard``) through accelerate's plugin, on GPUs and on CPU.

``accelerate launch --config_file recipes/accelerate/fsdp2.yaml ...`` sets ``ACCELERATE_USE_FSDP``
and the ``FSDP_*`` variables; :func:`fsdp_plugin` reads them into accelerate's
``FullyShardedDataParallelPlugin``, :func:`shard_plan` fills in the layer classes to wrap from the
model itself, and ``Accelerator.prepare`` shards (``fsdp2_prepare_model``: one group per layer,
the rest in the root group). Our code adds three things accelerate does not do here:

- **CPU**: accelerate 1.15 keeps a ``cpu=True`` run as MULTI_CPU (DDP) and drops the plugin; the
  accelerator is switched to FSDP after construction (:func:`use_on_cpu`), which is all
  ``prepare`` needs: ``fully_shard`` runs on CPU over gloo.
- **Layer classes**: the model we train is our own module around the LLM, so the classes come
  from the ``_no_split_modules`` of the transformers models inside it (the LLM's decoder layer;
  an encoder's layer in the alignment stage). None is one clear error, never a hang.
- **Gathering**: the run directory is written from an unsharded copy. :func:`shard_plan` keeps a
  skeleton of the model on the ``meta`` device (no memory) before sharding; :func:`gather` fills it
  with the full weights (``get_model_state_dict(full_state_dict=True)``) on the main process.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from vlm_cli.errors import UsageError


def fsdp_plugin(dtype: torch.dtype) -> Any | None:
    """accelerate's FSDP plugin from the launch config, or None when the run is not launched with
    FSDP. Mixed precision follows ``dtype`` (the one :func:`vlm_cli.runtime.resolve_dtype`
    chose): bf16 / fp16 parameters in forward and backward, fp32 gradient reductions; none in fp32.

    Raises:
        UsageError: the config asks for FSDP1 (``fsdp_version: 1``).
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if int(os.environ.get("FSDP_VERSION", "1")) != 2:
        raise UsageError("accelerate config: fsdp_version 1 is not supported; use FSDP2 "
                         "(recipes/accelerate/fsdp2.yaml, fsdp_version: 2)")
    policy = None
    if dtype != torch.float32:
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    return FullyShardedDataParallelPlugin(fsdp_version=2, mixed_precision_policy=policy)


def use_on_cpu(accelerator: Any, plugin: Any) -> None:
    """Switch a multi-process CPU accelerator (MULTI_CPU, gloo) to FSDP with ``plugin``."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if accelerator.num_processes > 1:  # as AcceleratorState does for GPUs: both shared states
        accelerator.state.fsdp_plugin = plugin
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState().distributed_type = DistributedType.FSDP


def is_fsdp(accelerator: Any) -> bool:
    """Whether ``accelerator.prepare`` shards the model with FSDP2."""
    return bool(getattr(accelerator, "is_fsdp2", False))


def checkpoints_activations(accelerator: Any) -> bool:
    """Whether FSDP2 wraps the layers in activation checkpoints (``fsdp_activation_checkpointing``);
    transformers' own gradient checkpointing is then left off."""
    return is_fsdp(accelerator) and bool(accelerator.state.fsdp_plugin.activation_checkpointing)


def layer_classes(model: nn.Module) -> list[str]:
    """Class names to wrap as FSDP units: the ``_no_split_modules`` (transformers' "keep this
    block on one device" list: the decoder layer of an LLM, the layer of an encoder) of every
    transformers model inside ``model``, kept when the model holds an instance."""
    from transformers import PreTrainedModel

    present = {type(m).__name__ for m in model.modules()}
    names: list[str] = []
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            names += [n for n in module._no_split_modules or [] if n in present and n not in names]
    return names


def shard_plan(accelerator: Any, model: nn.Module, layers: nn.Module) -> nn.Module | None:
    """Before ``accelerator.prepare`` under FSDP2: set the layer classes to wrap (from the launch
    config's ``fsdp_transformer_layer_cls_to_wrap`` if it names any, else
    :func:`layer_classes` of ``layers``: the LLM of a VLM, never a connector that a batch without
    its modality leaves idle on one process, since a sharded unit all-gathers on every process)
    and return a ``meta`` skeleton of ``model`` on the main process for :func:`gather` (None
    elsewhere, and None without FSDP).

    Raises:
        UsageError: no layer class to wrap, or a configured class the model does not have.
    """
    if not is_fsdp(accelerator):
        return None
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = accelerator.state.fsdp_plugin
    if plugin.auto_wrap_policy is transformer_auto_wrap_policy:
        present = {type(m).__name__ for m in model.modules()}
        names = plugin.transformer_cls_names_to_wrap or layer_classes(layers)
        missing = [n for n in names if n not in present]
        if missing:
            raise UsageError(f"FSDP2: fsdp_transformer_layer_cls_to_wrap names {missing[0]}, "
                             f"which {type(model).__name__} does not have")
        if not names:
            raise UsageError(f"FSDP2: {type(layers).__name__} has no decoder layer class to wrap "
                             "(no transformers model with _no_split_modules inside); name one in "
                             "fsdp_transformer_layer_cls_to_wrap or train with DDP "
                             "(recipes/accelerate/ddp.yaml)")
        plugin.transformer_cls_names_to_wrap = names
    return meta_copy(model) if accelerator.is_main_process else None


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are on the ``meta`` device (no storage; ties
    kept); buffers, tokenizers and configs are copied as they are."""
    memo: dict[int, Any] = {id(p): nn.Parameter(torch.empty_like(p, device="meta"),
                                                requires_grad=p.requires_grad)
                            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def gather(model: nn.Module, skeleton: nn.Module | None) -> nn.Module | None:
    """The full weights of a sharded ``model`` (a collective: every process calls it), loaded into
    ``skeleton`` on the main process (returned there, None elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
    if skeleton is None:
        return None
    skeleton.load_state_dict(full, strict=True, assign=True)
    return skeleton.eval()
