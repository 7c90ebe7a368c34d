"""The Video-LLaVA-hf family: ``LanguageBind/Video-LLaVA-7B-hf`` and anything saved by transformers'
``VideoLlavaForConditionalGeneration``.

transformers loads the checkpoint (its own key mapping handles the hub's older weight layout); we
take its parts by name: ``video_tower`` and ``image_tower`` (CLIPVisionModel, run per frame, hidden
state ``vision_feature_layer``; videos keep the CLS token, images drop it under the ``default``
selection strategy, as in ``VideoLlavaModel.get_video_features`` / ``get_image_features``), the
``multi_modal_projector`` (Linear-GELU-Linear: our MLP connector, keys in :data:`KEY_MAP`) and the
language model with its LM head (a ``LlamaForCausalLM`` sharing those modules: no second copy of
the weights). :func:`recipe` describes the model for feature caching and training
(``vlm tune --from CHECKPOINT``); a merged run is written back in this format by :func:`save`.

The prompt is Video-LLaVA's ``USER: <video>\\n{question} ASSISTANT:`` after the tokenizer's BOS,
tokenised exactly as ``VideoLlavaProcessor`` does (see :func:`vlm_cli.model.chat.encode_prompt`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from vlm_cli.errors import VlmError
from vlm_cli.model.chat import VICUNA_TURNS
from vlm_cli.model.families import EncoderSource, Loaded, read_config

MODEL_TYPE = "video_llava"
#: Video-LLaVA's conversation format: Vicuna v1.1 turns without a system prompt; the BOS token
#: comes from the tokenizer, not the template, as in ``processor(text="USER: <video>\\n...")``.
VIDEO_LLAVA_TEMPLATE = VICUNA_TURNS
#: Our connector's state-dict keys -> the checkpoint's module names (used by load and save).
KEY_MAP = {"video.net.0": "model.multi_modal_projector.linear_1",
           "video.net.2": "model.multi_modal_projector.linear_2"}
#: The frozen towers by feature name (videos; still images).
TOWERS = {"vision": "video_tower", "image": "image_tower"}
#: Their weight keys, in the current and the hub's older layout: a local checkpoint's feature-cache
#: identity hashes only these tensors (never the 7B LLM's).
TOWER_PREFIXES = {feature: (f"model.{tower}.", f"{tower}.") for feature, tower in TOWERS.items()}
#: Files written by ``save_pretrained`` of the model or tokenizer; the rest (processor configs,
#: chat templates) are copied from the base checkpoint when a merged model is written.
_WRITTEN = ("config.json", "generation_config.json", "model.safetensors.index.json")


def detect(directory: str | Path) -> bool:
    """Whether ``directory`` holds a Video-LLaVA-hf checkpoint (config.json ``model_type``)."""
    return read_config(directory).get("model_type") == MODEL_TYPE


def _composite(directory: str | Path, dtype: Any) -> Any:
    """The whole checkpoint, through transformers (``from_pretrained``), in eval mode."""
    from transformers import VideoLlavaForConditionalGeneration

    if not detect(directory):
        raise VlmError(f"{directory}: not a Video-LLaVA-hf checkpoint (config.json model_type)")
    return VideoLlavaForConditionalGeneration.from_pretrained(directory, dtype=dtype).eval()


def _causal_lm(composite: Any, dtype: Any) -> Any:
    """The composite's language model as a causal LM (``AutoModelForCausalLM`` of its
    ``text_config``, e.g. ``LlamaForCausalLM``) whose decoder and LM head *are* the composite's
    modules."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(composite.config.text_config, dtype=dtype)
    llm.model = composite.model.language_model
    llm.lm_head = composite.lm_head
    llm.generation_config = copy.deepcopy(composite.generation_config)
    return llm


def _module(root: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        root = getattr(root, name)
    return root


def projector_state(composite: Any) -> dict[str, Any]:
    """The ``multi_modal_projector`` weights as our ``video`` MLP connector's state dict
    (:data:`KEY_MAP`).

    Raises:
        VlmError: a projector activation other than GELU (``projector_hidden_act``).
    """
    act = composite.config.projector_hidden_act
    if act != "gelu":
        raise VlmError(f"projector_hidden_act {act!r} is not supported (gelu)")
    state = {}
    for ours, theirs in KEY_MAP.items():
        linear = _module(composite, theirs)
        state[f"{ours}.weight"] = linear.weight.detach()
        state[f"{ours}.bias"] = (linear.bias if linear.bias is not None else
                                 linear.weight.new_zeros(linear.weight.shape[0])).detach()
    return state


def encoder_dtype(device: str) -> str:
    """The encoders' dtype name on ``device``: bf16 on a GPU that supports it, else fp16 on a
    GPU, else fp32."""
    from vlm_cli.runtime import resolve_dtype

    return str(resolve_dtype("auto", device)).removeprefix("torch.")


def recipe(directory: str | Path, name: str, revision: str | None, device: str = "cpu") -> Any:
    """The recipe describing a Video-LLaVA-hf checkpoint: its towers (CLIP, ``vision_feature_layer``,
    CLS kept for videos and dropped for images under the ``default`` strategy), the MLP projector,
    the LLM, 8 uniformly sampled frames and Video-LLaVA's prompt format.

    Args:
        directory: the checkpoint directory (config.json is read).
        name: how the recipe refers to it: the hub id (with ``revision``) or the directory.
        device: decides the towers' dtype (see :func:`encoder_dtype`).

    Raises:
        VlmError: a vision feature layer list or selection strategy we do not support.
    """
    from vlm_cli.recipe import (ConnectorSpec, DataSpec, LLMSpec, ModelSpec, Recipe,
                                TrainSpec, VisionEncoderSpec)

    config = json.loads((Path(directory) / "config.json").read_text())
    layer = config.get("vision_feature_layer", -2)
    strategy = config.get("vision_feature_select_strategy", "default")
    if not isinstance(layer, int) or strategy not in ("default", "full"):
        raise VlmError(f"{directory}: vision_feature_layer {layer!r} / select strategy "
                       f"{strategy!r} not supported (one layer; default or full)")
    size = int(config.get("vision_config", {}).get("image_size", 224))
    tower = dict(arch="clip", pretrained=name, revision=revision, feature_layer=layer,
                 image_size=size, dtype=encoder_dtype(device))
    model = ModelSpec(
        vision=VisionEncoderSpec(select="cls_patch", **tower),
        image=VisionEncoderSpec(select="patch" if strategy == "default" else "cls_patch", **tower),
        video_connector=ConnectorSpec(type="mlp"),
        llm=LLMSpec(pretrained=name, revision=revision, chat_template=VIDEO_LLAVA_TEMPLATE,
                    dtype="auto"))
    return Recipe(name="video-llava-hf", model=model, data=DataSpec(frames=8, sampling="uniform"),
                  train=TrainSpec())


def load(directory: Path, *, device: str = "cpu", dtype: Any = None, name: str | None = None,
         revision: str | None = None, download: bool = False) -> Loaded:
    """A Video-LLaVA-hf checkpoint as a :class:`~vlm_cli.model.families.Loaded`: the LLM and the
    projector in ``dtype`` (default: bf16 / fp16 / fp32 by device) on ``device``; the towers in
    the recipe's encoder dtype, built from the same loaded checkpoint when features are missing.
    (The checkpoint is self-contained: ``download`` has nothing more to fetch.)"""
    from vlm_cli.cache import FeatureCache
    from vlm_cli.model.sources import vision_source
    from vlm_cli.model.tokenizer import load_tokenizer
    from vlm_cli.model.vlm import VideoLanguageModel
    from vlm_cli.runtime import resolve_dtype

    described = recipe(directory, name or str(directory), revision, device)
    dtype = dtype or resolve_dtype("auto", device)
    for spec in (described.model.vision, described.model.image):  # as loaded: no second copy
        spec.dtype = str(dtype).removeprefix("torch.")
    composite = _composite(directory, dtype)
    # Its own vocabulary: <image> and <video> are the checkpoint's tokens; nothing is added.
    tokenizer = load_tokenizer(described.model.llm, source=directory, add_media_tokens=False)
    width = composite.config.vision_config.hidden_size
    model = VideoLanguageModel(described.model, _causal_lm(composite, dtype), tokenizer,
                               {"vision": width})
    model.connectors.load_state_dict(projector_state(composite))
    digest = FeatureCache().file_digest

    def tower_module(tower: str) -> Any:  # in the LLM's dtype, as loaded
        return getattr(composite.model, tower).eval().requires_grad_(False)

    encoders = {feature: vision_source(getattr(described.model, feature), digest,
                                       prefixes=TOWER_PREFIXES[feature], tower=tower,
                                       model=lambda tower=tower: tower_module(tower))
                for feature, tower in TOWERS.items()}
    return Loaded(described, model.to(device).eval(), "video-llava-hf", encoders)


def save(model: Any, out: Path, *, base: str | Path, dtype: Any,
         max_shard_size: str = "2GB", recipe: Any = None) -> None:
    """Write ``model`` (a :class:`VideoLanguageModel` whose LLM has no adapter) as a
    Video-LLaVA-hf checkpoint into ``out``: the base checkpoint's towers, our projector
    (:data:`KEY_MAP`) and LLM weights, cast to ``dtype``; the tokenizer; processor files copied
    from the base. Loads back with ``VideoLlavaForConditionalGeneration.from_pretrained``.
    (``recipe`` is not needed: the checkpoint's config says how it samples.)"""
    del recipe
    from vlm_cli.hub import is_weight_file

    composite = _composite(base, model.llm.dtype)
    composite.model.language_model.load_state_dict(model.llm.model.state_dict())
    composite.lm_head.load_state_dict(model.llm.lm_head.state_dict())
    state = model.connectors.state_dict()
    for ours, theirs in KEY_MAP.items():
        linear = _module(composite, theirs)
        linear.weight.data.copy_(state[f"{ours}.weight"])
        if linear.bias is not None:
            linear.bias.data.copy_(state[f"{ours}.bias"])
    composite.to(dtype).save_pretrained(out, safe_serialization=True,
                                        max_shard_size=max_shard_size)
    model.tokenizer.save_pretrained(out)
    for path in Path(base).iterdir():
        target = out / path.name
        if path.is_file() and not target.exists() and not is_weight_file(path.name) \
                and path.name not in _WRITTEN and path.suffix in (".json", ".jinja", ".model"):
            shutil.copyfile(path, target)
