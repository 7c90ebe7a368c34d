"""The tiny Qwen3-Omni checkpoints (:mod:`qwen3_omni_fixtures`) and the model card's pipeline on them.

The card (``Qwen/Qwen3-Omni-30B-A3B-Instruct``): ``Qwen3OmniMoeProcessor.from_pretrained``,
``processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)``,
``process_mm_info(conversation, use_audio_in_video=True)`` (qwen-omni-utils 0.0.9: decord reader,
audioread on the ffmpeg binary of imageio-ffmpeg), ``processor(text=..., audio=..., images=...,
videos=..., return_tensors="pt", padding=True, use_audio_in_video=True)``, ``generate``. Run here with
``Qwen3OmniMoeThinkerForConditionalGeneration`` (text only) and greedy decoding, on real clips.

transformers 5.24 no longer accepts the card's processor call for a video with its sound: the audio
that ``process_mm_info`` decoded from the video must be tied to it with ``audio_from_video_indices``
(``test_card_call_needs_audio_from_video_indices``); everything else runs as the card has it.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import torch

from media_factory import shared_sample, write_png
from qwen3_omni_fixtures import REPO_IDS, SPECIAL_TOKENS, VARIANTS, make_tiny_qwen3_omni

qwen_omni_utils = pytest.importorskip("qwen_omni_utils")
vision_process = pytest.importorskip("qwen_omni_utils.v2_5.vision_process")

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning:librosa"),  # audioread deprecated
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # numpy 2, in transformers
]

BOAT, SILENT, WAV = "boat.mp4", "output_v_3V9tzjyr51I.mp4", "dog_audio.wav"
PROMPT = "What can you see and hear? Answer in one short sentence."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen3-omni")
    return {v: make_tiny_qwen3_omni(root / v, seed=0, variant=v) for v in VARIANTS}


@pytest.fixture(scope="module")
def card_env(tmp_path_factory: pytest.TempPathFactory):
    """qwen-omni-utils as the card runs it here: decord (no silent fallback to torchvision) and an
    ``ffmpeg`` on PATH for audioread (video soundtracks)."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    bin_dir = tmp_path_factory.mktemp("ffmpeg-bin")
    (bin_dir / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())

    def no_fallback(ele):
        raise AssertionError(f"decord failed on {ele['video']}: the reference fell back")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vision_process, "get_video_reader_backend", lambda: "decord")
        mp.setitem(vision_process.VIDEO_READER_BACKENDS, "torchvision", no_fallback)
        mp.setattr(vision_process, "MODEL_SEQ_LEN", 128000)
        mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


@pytest.fixture(scope="module")
def processor(tiny):
    from transformers import Qwen3OmniMoeProcessor

    return Qwen3OmniMoeProcessor.from_pretrained(tiny["instruct"])


@pytest.fixture(scope="module")
def thinker(tiny):
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    return Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(tiny["instruct"]).eval()


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlm_cli.media import load_video

    frame = load_video(shared_sample(BOAT), num_frames=1).frames[0]
    return write_png(tmp_path_factory.mktemp("png") / "boat.png", frame[:300, :400])


def _conversation(kind: str, path: Path) -> list[dict]:
    return [{"role": "user", "content": [{"type": kind, kind: str(path)}, {"type": "text", "text": PROMPT}]}]


_MM_INFO: dict[str, tuple] = {}


def _mm_info(conversation: list[dict], use_audio_in_video: bool) -> tuple:
    """``process_mm_info(conversation, use_audio_in_video=...)``, decoded once per conversation."""
    key = json.dumps([conversation, use_audio_in_video])
    if key not in _MM_INFO:
        _MM_INFO[key] = qwen_omni_utils.process_mm_info(conversation, use_audio_in_video=use_audio_in_video)
    return _MM_INFO[key]


def _card_inputs(processor, conversation: list[dict], use_audio_in_video: bool):
    """The card's preparation; for a video with its sound, the 5.24 spelling of the card's call."""
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    audios, images, videos = _mm_info(conversation, use_audio_in_video)
    kwargs = {}
    if use_audio_in_video and videos:
        # one slot per audio, in process_mm_info's order: the index of the video it came from, or None
        slots, video_idx = [], 0
        for part in (p for m in conversation if isinstance(m["content"], list) for p in m["content"]):
            if part["type"] == "video":
                slots.append(video_idx)
                video_idx += 1
            elif part["type"] == "audio":
                slots.append(None)
        kwargs = {"load_audio_from_video": True, "audio_from_video_indices": slots}
    inputs = processor(text=text, audio=audios, images=images, videos=videos, return_tensors="pt", padding=True,
                       **kwargs)
    return inputs, audios, images, videos


def _greedy(model, inputs, use_audio_in_video: bool, **extra) -> torch.Tensor:
    n = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, use_audio_in_video=use_audio_in_video, do_sample=False, max_new_tokens=8,
                         **extra)
    return out[:, n:]


@pytest.fixture(scope="module")
def boat_reference(card_env, processor, thinker) -> tuple:
    """The card's inputs and greedy tokens for boat.mp4 with its sound."""
    inputs, audios, images, videos = _card_inputs(processor, _conversation("video", shared_sample(BOAT)), True)
    inputs = inputs.to(thinker.device).to(thinker.dtype)
    return inputs, audios, images, videos, _greedy(thinker, inputs, True)


# ------------------------------------------------------------------------------------------
# The checkpoint layout


@pytest.mark.parametrize("variant", VARIANTS)
def test_hub_layout(tiny, variant: str) -> None:
    root = tiny[variant]
    index = json.loads((root / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert sorted(p.name for p in root.iterdir()) == sorted([
        "README.md", "chat_template.json", "config.json", "generation_config.json", "merges.txt",
        "model.safetensors.index.json", "preprocessor_config.json", "tokenizer_config.json", "vocab.json",
        *shards])
    config = json.loads((root / "config.json").read_text())
    assert config["model_type"] == "qwen3_omni_moe"
    assert config["architectures"] == ["Qwen3OmniMoeForConditionalGeneration"]
    text_config = config["thinker_config"]["text_config"]
    assert "rope_scaling" in text_config and "rope_parameters" not in text_config  # the hub's 4.57 form
    assert config["thinker_config"]["position_id_per_seconds"] == 13

    keys = set(index["weight_map"])
    speech = {k for k in keys if k.startswith(("talker.", "code2wav."))}
    assert all(k.startswith(("thinker.", "talker.", "code2wav.")) for k in keys)
    for prefix in ("thinker.model.layers.0.self_attn.q_proj.weight", "thinker.model.embed_tokens.weight",
                   "thinker.lm_head.weight", "thinker.visual.patch_embed.proj.weight",
                   "thinker.visual.merger_list.0.ln_q.weight", "thinker.audio_tower.conv2d1.weight",
                   "thinker.model.layers.1.mlp.experts.3.gate_proj.weight",
                   "thinker.model.layers.1.mlp.experts.3.up_proj.weight",
                   "thinker.model.layers.1.mlp.experts.3.down_proj.weight", "thinker.model.layers.1.mlp.gate.weight"):
        assert prefix in keys, prefix
    assert not any(".language_model." in k or k.endswith("gate_up_proj") for k in keys)  # transformers-5 names
    # the talker / code2wav shards hold nothing else: a thinker-only client never needs them
    speech_shards = {index["weight_map"][k] for k in speech}
    assert not speech_shards & {index["weight_map"][k] for k in keys - speech}
    if variant == "instruct":
        assert config["enable_audio_output"] is True
        assert {"talker_config", "code2wav_config"} <= set(config)
        assert speech_shards == set(shards[2:])
        assert "code2wav.code_embedding.weight" in keys and "talker.codec_head.weight" in keys
        assert "talker.model.layers.0.mlp.experts.0.gate_proj.weight" in keys
    else:  # the Thinking and Captioner repos are thinker-only
        assert config["enable_audio_output"] is False
        assert not {"talker_config", "code2wav_config"} & set(config)
        assert not speech and len(shards) == 2

    card = (root / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "license: apache-2.0" in front and "pipeline_tag: any-to-any" in front
    assert REPO_IDS[variant] in card

    tok_config = json.loads((root / "tokenizer_config.json").read_text())
    decoder = {int(i): (t["content"], t["special"]) for i, t in tok_config["added_tokens_decoder"].items()}
    first = min(decoder)
    assert [decoder[i] for i in sorted(decoder)] == SPECIAL_TOKENS
    assert sorted(decoder) == list(range(first, first + len(SPECIAL_TOKENS)))
    ids = {content: i for i, (content, _) in decoder.items()}
    thinker = config["thinker_config"]
    assert (thinker["audio_token_id"], thinker["image_token_id"], thinker["video_token_id"]) == (
        ids["<|audio_pad|>"], ids["<|image_pad|>"], ids["<|video_pad|>"])
    assert (thinker["audio_start_token_id"], thinker["vision_start_token_id"]) == (
        ids["<|audio_start|>"], ids["<|vision_start|>"])
    assert (config["tts_pad_token_id"], config["tts_bos_token_id"], config["tts_eos_token_id"]) == (
        ids["<tts_pad>"], ids["<tts_text_bos>"], ids["<tts_text_eod>"])
    generation = json.loads((root / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]


def test_thinker_loads_without_the_speech_shards(tiny, thinker, tmp_path: Path) -> None:
    """A client that fetches only the shards holding ``thinker.*`` keys (and an index of those) gets
    the same thinker; transformers itself opens every shard the index names."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    src = tiny["instruct"]
    index = json.loads((src / "model.safetensors.index.json").read_text())
    wanted = {k: v for k, v in index["weight_map"].items() if k.startswith("thinker.")}
    for path in src.iterdir():
        if not path.name.startswith("model-") or path.name in wanted.values():
            (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": wanted}))
    lean = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(tmp_path)
    ours, theirs = lean.state_dict(), thinker.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert thinker.dtype == torch.bfloat16


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_model_loads(tiny, thinker, variant: str) -> None:
    from transformers import Qwen3OmniMoeForConditionalGeneration

    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(tiny[variant])
    assert model.has_talker is (variant == "instruct")
    assert hasattr(model, "talker") is hasattr(model, "code2wav") is (variant == "instruct")
    ours, theirs = model.thinker.state_dict(), thinker.state_dict()  # one seed, one thinker
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ------------------------------------------------------------------------------------------
# The card's pipeline


@pytest.mark.parametrize("case", ["video+sound", "silent video", "picture", "audio"])
def test_card_pipeline_generates(case: str, card_env, processor, thinker, picture, request) -> None:
    if case == "video+sound":
        inputs, audios, images, videos, tokens = request.getfixturevalue("boat_reference")
        use_audio_in_video = True
    else:
        kind, path, use_audio_in_video = {
            "silent video": ("video", shared_sample(SILENT), False),  # process_mm_info refuses use_audio_in_video
            "picture": ("image", picture, True),
            "audio": ("audio", shared_sample(WAV), True),
        }[case]
        inputs, audios, images, videos = _card_inputs(processor, _conversation(kind, path), use_audio_in_video)
        inputs = inputs.to(thinker.device).to(thinker.dtype)
        tokens = _greedy(thinker, inputs, use_audio_in_video)
    tok = processor.tokenizer
    ids = inputs["input_ids"][0]
    n_audio, n_video, n_image = (int((ids == t).sum()) for t in (
        tok.audio_token_id, tok.video_token_id, tok.image_token_id))
    if audios:
        from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths

        frames = int(inputs["feature_attention_mask"].sum())
        assert frames == len(audios[0]) // 160  # 100 mel frames a second
        assert n_audio == processor._get_num_audio_tokens(len(audios[0])) == int(
            _get_feat_extract_output_lengths(torch.tensor(frames)))
        assert inputs["input_features"].shape[:2] == (1, 128)
    if videos:
        assert n_video == int(inputs["video_grid_thw"].prod()) // 4
        assert inputs["video_second_per_grid"].tolist() == [2.0]  # the card passes no fps: 1.0 assumed
        # qwen-omni-utils sizes frames for Qwen2.5 (multiples of 28); the processor resizes them again to
        # multiples of 32 (patch 16, merge 2)
        size = tuple(int(x) * 16 for x in inputs["video_grid_thw"][0, 1:])
        assert [x % 28 for x in videos[0].shape[2:]] == [0, 0] and [x % 32 for x in size] == [0, 0]
        if case == "video+sound":
            assert (tuple(videos[0].shape), size) == ((12, 3, 336, 588), (320, 576))
    if images:
        assert n_image == int(inputs["image_grid_thw"].prod()) // 4
    assert (n_audio > 0) == (audios is not None) and (n_video > 0) == (videos is not None)

    assert tokens.shape == (1, 8)


def test_card_call_needs_audio_from_video_indices(card_env, processor) -> None:
    """transformers 5.24: ``use_audio_in_video=True`` (deprecated for ``load_audio_from_video``) with the
    audio list from ``process_mm_info`` fails unless each audio slot names its video."""
    conversation = _conversation("video", shared_sample(BOAT))
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    audios, images, videos = _mm_info(conversation, True)
    with pytest.raises(ValueError, match="audio"):
        processor(text=text, audio=audios, images=images, videos=videos, return_tensors="pt", padding=True,
                  use_audio_in_video=True)
    old = processor(text=text, audio=audios, videos=videos, return_tensors="pt", use_audio_in_video=True,
                    audio_from_video_indices=[0])
    new = processor(text=text, audio=audios, videos=videos, return_tensors="pt", load_audio_from_video=True,
                    audio_from_video_indices=[0])
    assert torch.equal(old["input_ids"], new["input_ids"])
    # the frame rate qwen-omni-utils sampled at, passed as one float, sets the seconds per grid
    _, _, _, video_kwargs = qwen_omni_utils.process_mm_info(conversation, use_audio_in_video=True,
                                                           return_video_kwargs=True)
    timed = processor(text=text, audio=audios, videos=videos, return_tensors="pt", load_audio_from_video=True,
                      audio_from_video_indices=[0], fps=video_kwargs["fps"][0])
    assert timed["video_second_per_grid"].item() == pytest.approx(2 / video_kwargs["fps"][0])


def test_video_with_audio_placeholder_from_counts(processor, boat_reference) -> None:
    """The interleaved placeholder of a video with its sound, rebuilt from the grid, the seconds per
    grid and the audio token count alone (no pixels, no samples)."""
    inputs, audios = boat_reference[:2]
    grid = inputs["video_grid_thw"]
    n_audio = processor._get_num_audio_tokens(len(audios[0]))
    placeholder = processor.replace_video_with_audio_token(
        {"video_grid_thw": grid, "video_second_per_grid": inputs["video_second_per_grid"].tolist()}, 0,
        {"num_audio_tokens": [n_audio]}, 0, position_id_per_seconds=processor.position_id_per_seconds)
    tok = processor.tokenizer
    expected = tok(f"{tok.vision_bos_token}{placeholder}{tok.vision_eos_token}")["input_ids"]
    ids = inputs["input_ids"][0].tolist()
    start = ids.index(tok.convert_tokens_to_ids(tok.vision_bos_token))
    assert ids[start:start + len(expected)] == expected
    runs = re.findall(r"V+|A+", "".join("V" if i == tok.video_token_id else "A" for i in expected
                                          if i in (tok.video_token_id, tok.audio_token_id)))
    per_grid = int(grid[0, 1] * grid[0, 2]) // 4
    assert runs[0] == "V" * per_grid and runs[1] == "A" * 26  # 2 s per grid at 13 positions a second
    assert n_audio == 79  # 6.04 s: 6 whole seconds of 13 tokens, and 1 for the 3-frame tail


# ------------------------------------------------------------------------------------------
# The hooks a cache of encoder outputs relies on


def test_precomputed_video_features_and_audio_override(processor, thinker, boat_reference) -> None:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inputs, reference = boat_reference[0], boat_reference[-1]

    inner = thinker.model
    video = inner.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    assert isinstance(video.pooler_output, tuple) and len(video.pooler_output) == 1
    tokens = int(inputs["video_grid_thw"].prod()) // 4
    hidden = thinker.config.text_config.hidden_size
    assert video.pooler_output[0].shape == (tokens, hidden)
    deepstack = thinker.config.vision_config.deepstack_visual_indexes
    assert len(video.deepstack_features) == len(deepstack)
    assert all(isinstance(f, tuple) and f[0].shape == (tokens, hidden) for f in video.deepstack_features)
    without_pixels = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
    assert torch.equal(_greedy(thinker, without_pixels, True, mm_encoder_outputs={"video": video}), reference)

    audio = inner.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
    n_audio = int((inputs["input_ids"] == processor.tokenizer.audio_token_id).sum())
    assert audio.last_hidden_state.shape == (n_audio, hidden)
    calls = []

    def cached(*args, **kwargs):
        calls.append(1)
        return BaseModelOutputWithPooling(last_hidden_state=audio.last_hidden_state)

    inner.get_audio_features = cached  # the instance attribute shadows the method, as for Qwen2.5-Omni
    try:
        assert torch.equal(_greedy(thinker, inputs, True), reference)
    finally:
        del inner.get_audio_features
    assert calls == [1]  # prefill only


def test_continuation_with_cache_uses_rope_deltas(card_env, processor, thinker) -> None:
    """A second turn on a kept KV cache: generate takes its 3D positions from ``model.rope_deltas``
    (float; set by the prefill), which must be the conversation's own."""
    conversation = _conversation("video", shared_sample(BOAT))
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    text += "A boat.<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"
    audios, _, videos = _mm_info(conversation, True)
    inputs = processor(text=text, audio=audios, videos=videos, return_tensors="pt", load_audio_from_video=True,
                       audio_from_video_indices=[0]).to(thinker.dtype)
    thinker.model.rope_deltas = None
    full = _greedy(thinker, inputs, True)

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    cut = ids.shape[1] - 12  # the first turn: media, question, answer
    first = {**inputs, "input_ids": ids[:, :cut], "attention_mask": mask[:, :cut]}
    thinker.model.rope_deltas = None
    with torch.no_grad():
        cache = thinker(**first, use_audio_in_video=True, use_cache=True).cache
    deltas = thinker.model.rope_deltas
    assert deltas.dtype == torch.float32 and deltas.shape == (1, 1) and deltas.item() < 0
    cont = thinker.generate(input_ids=ids, attention_mask=mask, cache=copy.deepcopy(cache), do_sample=False,
                            max_new_tokens=8)[:, ids.shape[1]:]
    assert torch.equal(cont, full)


# ------------------------------------------------------------------------------------------
# Chat template, module names, LoRA


def test_thinking_template_and_markup(tiny) -> None:
    from transformers import Qwen3OmniMoeProcessor

    proc = Qwen3OmniMoeProcessor.from_pretrained(tiny["thinking"])
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "Hi"}]}]
    prompt = proc.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    assert proc.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False,
                                    enable_thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    history = [{"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "<think>\nwhy\n</think>\n\nHello."},
               {"role": "user", "content": "More?"}]
    assert "<|im_start|>assistant\nHello.<|im_end|>" in proc.apply_chat_template(history, tokenize=False)
    tok = proc.tokenizer
    answer = tok("<think>\nwhy\n</think>\n\nHello.<|im_end|>")["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in answer
    assert tok.decode(answer, skip_special_tokens=True) == "<think>\nwhy\n</think>\n\nHello."


def test_device_map_module_names(thinker) -> None:
    """``device_map`` keys are module paths of the transformers-5 model; unknown keys are not an
    error, their parameters silently take the ``""`` entry (or the CPU)."""
    from transformers.integrations.accelerate import expand_device_map

    assert [n for n, _ in thinker.named_children()] == ["model", "lm_head"]
    assert [n for n, _ in thinker.model.named_children()] == ["audio_tower", "visual", "language_model"]
    names = [n for n, _ in thinker.named_parameters()]
    placed = expand_device_map({"model.audio_tower": "a", "model.visual": "v", "model.language_model": "t",
                                "lm_head": "h"}, names)
    assert set(placed.values()) == {"a", "v", "t", "h"}
    assert all(placed[n] == "t" for n in names if n.startswith("model.language_model."))
    hub_style = expand_device_map({"visual": "v", "audio_tower": "a", "model": "t", "lm_head": "h", "": "x"},
                                  names)
    assert {placed for n, placed in hub_style.items() if ".visual." in n} == {"t"}  # "model" swallowed them


def test_lora_on_the_moe_language_model(tiny) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(tiny["instruct"], dtype=torch.float32)
    lm = get_peft_model(model.model.language_model, LoraConfig(r=4, lora_alpha=8, target_modules=attention))
    adapted = {n.split(".lora_")[0] for n, p in lm.named_parameters() if p.requires_grad}
    assert len(adapted) == 4 * model.config.text_config.num_hidden_layers
    out = lm(input_ids=torch.arange(5, 17)[None])
    out.last_hidden_state.pow(2).mean().backward()
    grads = [p.grad for n, p in lm.named_parameters() if "lora_B" in n]
    assert len(grads) == len(adapted) and all(g is not None and g.abs().sum() > 0 for g in grads)

    # on the whole thinker the same names also hit the audio tower's attention (peft turns even a
    # regex into leaf names for this model type); exclude_modules keeps LoRA on the language model
    def adapted_roots(config):
        full = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(tiny["instruct"], dtype=torch.float32)
        peft_model = get_peft_model(full, config)
        return {n.split(".layers.")[0] for n, p in peft_model.named_parameters() if p.requires_grad}

    base = "base_model.model.model."
    assert adapted_roots(LoraConfig(r=4, target_modules=attention)) == {base + "audio_tower", base + "language_model"}
    assert adapted_roots(LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)")) == {
        base + "audio_tower", base + "language_model"}
    assert adapted_roots(LoraConfig(r=4, target_modules=attention, exclude_modules=r".*(audio_tower|visual).*")) == {
        base + "language_model"}

    # the routed experts are fused parameters: LoRA reaches them through target_parameters
    moe = get_peft_model(Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(
        tiny["instruct"], dtype=torch.float32).model.language_model,
        LoraConfig(r=4, target_modules=["q_proj"], target_parameters=["mlp.experts.gate_up_proj",
                                                                      "mlp.experts.down_proj"]))
    moe(input_ids=torch.arange(5, 17)[None]).last_hidden_state.pow(2).mean().backward()
    assert any("experts" in n and p.grad is not None for n, p in moe.named_parameters() if p.requires_grad)
