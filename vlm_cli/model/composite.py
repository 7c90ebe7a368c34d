"""Video-LLaVA-hf checkpoints (``LanguageBind/Video-LLaVA-7B-hf`` and anything saved by
transformers' ``VideoLlavaForConditionalGeneration``) as parts of the toolkit's model.

transformers loads the checkpoint (its own key mapping handles the hub's older weight layout); we
take its parts by name: ``video_tower`` and ``image_tower`` (CLIPVisionModel, run per frame, hidden
state ``vision_feature_layer``; videos keep the CLS token, images drop it under the ``default``
selection strategy, as in ``VideoLlavaModel.get_video_features`` / ``get_image_features``), the
``multi_modal_projector`` (Linear-GELU-Linear: our MLP connector's weights) and the language model
with its LM head (a ``LlamaForCausalLM`` sharing those modules). The recipe that describes this
model (:func:`video_llava_recipe`) points every part at the checkpoint with a ``component``, so
cached features, training (``vlm tune --from CHECKPOINT``) and merging work as for any recipe.

The prompt is Video-LLaVA's ``USER: <video>\\n{question} ASSISTANT:`` after the tokenizer's BOS,
tokenised exactly as ``VideoLlavaProcessor`` does (see :func:`vlm_cli.model.chat.encode_prompt`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vlm_cli.errors import VlmError
from vlm_cli.model.chat import VICUNA_TURNS

#: model_type in config.json -> transformers class of a composite checkpoint we take apart.
COMPOSITES = {"video_llava": "VideoLlavaForConditionalGeneration"}
#: Video-LLaVA's conversation format: Vicuna v1.1 turns without a system prompt; the BOS token
#: comes from the tokenizer, not the template, as in ``processor(text="USER: <video>\\n...")``.
VIDEO_LLAVA_TEMPLATE = VICUNA_TURNS
#: Files written by ``save_pretrained`` of the model or tokenizer; the rest (processor configs,
#: chat templates) are copied from the base checkpoint when a merged model is written.
_WRITTEN = ("config.json", "generation_config.json", "model.safetensors.index.json")
_LOADED: dict[tuple[str, str], Any] = {}
_LLM_TAKEN: set[tuple[str, str]] = set()


def composite_type(directory: str | Path) -> str | None:
    """The ``model_type`` of a checkpoint directory when it is a composite we take apart
    (``video_llava``), else None."""
    try:
        model_type = json.loads((Path(directory) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
    return model_type if model_type in COMPOSITES else None


def _key(directory: str | Path, dtype: Any) -> tuple[str, str]:
    return str(Path(directory).resolve()), str(dtype)


def load_composite(directory: str | Path, dtype: Any, *, fresh: bool = False) -> Any:
    """The composite model of a checkpoint directory (transformers ``from_pretrained``), loaded
    once per process and dtype unless ``fresh``: the encoders and the LLM built from it share its
    modules (no second copy of the weights in memory). The frozen towers are shared freely; the
    language model is handed out once (:func:`causal_lm`), since training or merging changes it.

    Raises:
        VlmError: not a supported composite checkpoint.
    """
    import transformers

    kind = composite_type(directory)
    if kind is None:
        raise VlmError(f"{directory}: not a Video-LLaVA-hf checkpoint (config.json model_type)")
    key = _key(directory, dtype)
    if fresh or key not in _LOADED:
        model = getattr(transformers, COMPOSITES[kind]).from_pretrained(directory, dtype=dtype)
        if fresh:
            return model.eval()
        _LOADED[key] = model.eval()
        _LLM_TAKEN.discard(key)
    return _LOADED[key]


def component(directory: str | Path, name: str, dtype: Any) -> Any:
    """Module ``name`` (``video_tower``, ``image_tower``) of a composite checkpoint.

    Raises:
        VlmError: the checkpoint has no such part.
    """
    inner = load_composite(directory, dtype).model
    part = getattr(inner, name, None)
    if part is None:
        raise VlmError(f"{directory}: the checkpoint has no part named {name!r}")
    return part


def causal_lm(directory: str | Path, dtype: Any) -> Any:
    """The composite's language model as a causal LM (``AutoModelForCausalLM`` of its
    ``text_config``, e.g. ``LlamaForCausalLM``) whose decoder and LM head *are* the composite's
    modules. A second call loads the checkpoint again: the first caller may have changed them
    (LoRA, merging)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    key = _key(directory, dtype)
    if key in _LLM_TAKEN:
        _LOADED.pop(key, None)
    composite = load_composite(directory, dtype)
    _LLM_TAKEN.add(key)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(composite.config.text_config, dtype=dtype)
    llm.model = composite.model.language_model
    llm.lm_head = composite.lm_head
    llm.generation_config = copy.deepcopy(composite.generation_config)
    return llm


def projector_state(directory: str | Path, dtype: Any) -> dict[str, Any]:
    """The ``multi_modal_projector`` weights as our ``video`` MLP connector's state dict.

    Raises:
        VlmError: a projector activation other than GELU (``projector_hidden_act``).
    """
    composite = load_composite(directory, dtype)
    act = composite.config.projector_hidden_act
    if act != "gelu":
        raise VlmError(f"{directory}: projector_hidden_act {act!r} is not supported (gelu)")
    proj = composite.model.multi_modal_projector
    state = {}
    for ours, theirs in (("net.0", proj.linear_1), ("net.2", proj.linear_2)):
        state[f"video.{ours}.weight"] = theirs.weight.detach()
        bias = theirs.bias if theirs.bias is not None else theirs.weight.new_zeros(
            theirs.weight.shape[0])
        state[f"video.{ours}.bias"] = bias.detach()
    return state


def encoder_dtype(device: str) -> str:
    """The encoders' dtype name on ``device``: bf16 on a GPU that supports it, else fp16 on a
    GPU, else fp32."""
    from vlm_cli.model.llm import resolve_dtype

    return str(resolve_dtype("auto", device)).removeprefix("torch.")


def video_llava_recipe(directory: str | Path, name: str, revision: str | None,
                       device: str = "cpu") -> Any:
    """A recipe describing a Video-LLaVA-hf checkpoint: both towers, the projector and the LLM
    taken from it (``component``), 8 uniformly sampled frames, Video-LLaVA's prompt format.

    Args:
        directory: the checkpoint directory (config.json is read).
        name: how the recipe refers to it: the hub id (with ``revision``) or the directory.
        device: decides the encoders' dtype (see :func:`encoder_dtype`).

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
    dtype = encoder_dtype(device)
    tower = dict(arch="clip", pretrained=name, revision=revision, feature_layer=layer,
                 image_size=size, dtype=dtype)
    model = ModelSpec(
        vision=VisionEncoderSpec(component="video_tower", select="cls_patch", **tower),
        image=VisionEncoderSpec(component="image_tower",
                                select="patch" if strategy == "default" else "cls_patch", **tower),
        video_connector=ConnectorSpec(type="mlp"),
        llm=LLMSpec(pretrained=name, revision=revision, component="language_model",
                    chat_template=VIDEO_LLAVA_TEMPLATE, dtype="auto"))
    return Recipe(name="video-llava-hf", model=model, data=DataSpec(frames=8, sampling="uniform"),
                  train=TrainSpec())


def load_video_llava(directory: Path, name: str | None = None, revision: str | None = None, *,
                     device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """``(recipe, VideoLanguageModel)`` of a Video-LLaVA-hf checkpoint, in eval mode on
    ``device``; the LLM and projector in ``dtype`` (default: bf16 / fp16 / fp32 by device)."""
    from vlm_cli.model.fingerprint import encoder_hidden_size
    from vlm_cli.model.llm import build_llm, resolve_dtype
    from vlm_cli.model.tokenizer import load_tokenizer
    from vlm_cli.model.vlm import VideoLanguageModel

    recipe = video_llava_recipe(directory, name or str(directory), revision, device)
    dtype = dtype or resolve_dtype("auto", device)
    tokenizer = load_tokenizer(recipe.model.llm)
    llm = build_llm(recipe.model.llm, tokenizer, dtype=dtype)
    width = encoder_hidden_size(recipe.model.vision)  # the towers' vision_config
    model = VideoLanguageModel(recipe.model, llm, tokenizer, {"vision": width})
    model.connectors.load_state_dict(projector_state(directory, dtype))
    return recipe, model.to(device).eval()


def save_video_llava(out: Path, base: str | Path, model: Any, dtype: Any,
                     max_shard_size: str = "2GB") -> None:
    """Write ``model`` (a :class:`VideoLanguageModel` whose LLM has no adapter) as a
    Video-LLaVA-hf checkpoint into ``out``: the base checkpoint's towers, our projector and LLM
    weights, cast to ``dtype``; tokenizer; processor files copied from the base. Loads back with
    ``VideoLlavaForConditionalGeneration.from_pretrained``."""
    composite = load_composite(base, model.llm.dtype, fresh=True)
    composite.model.language_model.load_state_dict(model.llm.model.state_dict())
    composite.lm_head.load_state_dict(model.llm.lm_head.state_dict())
    video = model.connectors["video"].net
    proj = composite.model.multi_modal_projector
    for theirs, ours in ((proj.linear_1, video[0]), (proj.linear_2, video[2])):
        theirs.weight.data.copy_(ours.weight.data)
        if theirs.bias is not None:
            theirs.bias.data.copy_(ours.bias.data)
    composite.to(dtype).save_pretrained(out, safe_serialization=True,
                                        max_shard_size=max_shard_size)
    model.tokenizer.save_pretrained(out)
    from vlm_cli.download import is_weight_file

    for path in Path(base).iterdir():
        target = out / path.name
        if path.is_file() and not target.exists() and not is_weight_file(path.name) \
                and path.name not in _WRITTEN and path.suffix in (".json", ".jinja", ".model"):
            shutil.copyfile(path, target)
