"""The tiny Gemma 4 checkpoints (:mod:`gemma4_fixtures`) and the model card's usage on them.

The cards (``google/gemma-4-12B-it``, ``google/gemma-4-E2B-it``; transformers' model docs
``gemma4_unified.md`` / ``gemma4.md``): ``AutoProcessor.from_pretrained``,
``AutoModelForMultimodalLM.from_pretrained``, typed chat messages (``{"type": "video", "video": path}``,
``{"type": "audio", "audio": path}``, ``{"type": "image", ...}``), ``processor.apply_chat_template(messages,
tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True)``, ``.to(model.device)``,
``model.generate(**inputs, ...)``. A clip's own sound goes in through transformers'
``apply_chat_template(..., load_audio_from_video=True)`` with an empty ``{"type": "audio"}`` entry right
after the video (5.24 inserts it itself, with a warning, when it is missing). Run here with greedy decoding
(``do_sample=False, max_new_tokens=8``) on real clips.

The decoders: the processors load a path with torchcodec (video frames and every audio file, resampled by
FFmpeg to 16 kHz mono). Where torchcodec is not installed (as here) :func:`card_env` stands in PyAV for it:
transformers' own PyAV frame reader, and FFmpeg's resampler through PyAV for the sound. Everything else runs
as the card has it.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gemma4_fixtures import KINDS, MEDIA_TOKENS, MODEL_CLASSES, PROCESSOR_CLASSES, REPO_IDS, SPECIAL_TOKENS, \
    card_decoders, make_tiny_gemma4
from media_factory import shared_sample, write_png

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # numpy 2, in transformers
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),  # peft
]

BOAT, SILENT, WAV = "boat.mp4", "output_v_3V9tzjyr51I.mp4", "dog_audio.wav"
PROMPT = "What can you see and hear? Answer in one short sentence."
CASES = ("video+sound", "silent video", "picture", "audio")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gemma4")
    return {kind: make_tiny_gemma4(root / kind, seed=0, kind=kind) for kind in KINDS}


@pytest.fixture(scope="module")
def card_env():
    """The card's decoders (torchcodec, else PyAV in its place: :func:`card_decoders`)."""
    with pytest.MonkeyPatch.context() as mp:
        yield card_decoders(mp)


@pytest.fixture(scope="module")
def processors(tiny) -> dict:
    from transformers import AutoProcessor

    return {kind: AutoProcessor.from_pretrained(tiny[kind]) for kind in KINDS}


@pytest.fixture(scope="module")
def models(tiny) -> dict:
    from transformers import AutoModelForMultimodalLM

    return {kind: AutoModelForMultimodalLM.from_pretrained(tiny[kind]).eval() for kind in KINDS}


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlm_cli.media import load_video

    frame = load_video(shared_sample(BOAT), num_frames=1).frames[0]
    return write_png(tmp_path_factory.mktemp("png") / "boat.png", frame[:300, :400])


def _messages(case: str, picture: Path | None = None) -> tuple[list[dict], dict]:
    """The card's messages for ``case`` and the extra ``apply_chat_template`` arguments."""
    if case == "video+sound":
        content = [{"type": "video", "video": str(shared_sample(BOAT))}, {"type": "audio"}]
        extra = {"load_audio_from_video": True}
    elif case == "silent video":
        content, extra = [{"type": "video", "video": str(shared_sample(SILENT))}], {}
    elif case == "picture":
        content, extra = [{"type": "image", "url": str(picture)}], {}
    else:  # the card puts audio after the text
        return [{"role": "user", "content": [{"type": "text", "text": PROMPT},
                                             {"type": "audio", "audio": str(shared_sample(WAV))}]}], {}
    return [{"role": "user", "content": [*content, {"type": "text", "text": PROMPT}]}], extra


def _card_inputs(processor, messages: list[dict], **extra):
    return processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                         add_generation_prompt=True, **extra)


def _greedy(model, inputs, **extra) -> torch.Tensor:
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        return model.generate(**inputs, do_sample=False, max_new_tokens=8, **extra)[:, n:]


_REFERENCE: dict[str, tuple] = {}


@pytest.fixture()
def boat_reference(card_env, processors, models):
    """Per kind: the card's inputs for boat.mp4 with its sound, and the greedy tokens."""
    def get(kind: str):
        if kind not in _REFERENCE:
            messages, extra = _messages("video+sound")
            inputs = _card_inputs(processors[kind], messages, **extra).to(models[kind].device)
            _REFERENCE[kind] = (inputs, _greedy(models[kind], inputs))
        return _REFERENCE[kind]
    return get


def _counts(processor, ids: torch.Tensor) -> dict[str, int]:
    tok = processor.tokenizer
    return {kind: int((ids == tok.convert_tokens_to_ids(token)).sum())
            for kind, token in (("image", "<|image|>"), ("video", "<|video|>"), ("audio", "<|audio|>"))}


# ------------------------------------------------------------------------------------------
# The checkpoint layout


@pytest.mark.parametrize("kind", KINDS)
def test_hub_layout(tiny, kind: str) -> None:
    root = tiny[kind]
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
              "model.safetensors.index.json"] if kind == "unified" else ["model.safetensors"]
    assert sorted(p.name for p in root.iterdir()) == sorted([
        "README.md", "chat_template.jinja", "config.json", "generation_config.json", "processor_config.json",
        "tokenizer.json", "tokenizer_config.json", *shards])
    config = json.loads((root / "config.json").read_text())
    assert config["model_type"] == {"unified": "gemma4_unified", "e2b": "gemma4"}[kind]
    assert config["architectures"] == [MODEL_CLASSES[kind]]
    text = config["text_config"]
    assert "global_head_dim" in text and "per_layer_config" not in text  # the hub's (5.5 / 5.10 dev) form
    assert text["layer_types"][-1] == "full_attention"
    assert text["use_bidirectional_attention"] == ("vision" if kind == "unified" else None)
    assert (text["hidden_size_per_layer_input"] > 0) is (kind == "e2b")  # per-layer embeddings (PLE)

    from safetensors import safe_open

    keys = set()
    for name in (p for p in shards if p.endswith(".safetensors")):
        with safe_open(root / name, "pt") as f:
            keys |= set(f.keys())
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    towers = {"unified": ("model.vision_embedder.", "model.embed_vision.", "model.embed_audio."),
              "e2b": ("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio.")}[kind]
    assert {k for k in keys if not k.startswith("model.language_model.")} == {k for k in keys if k.startswith(towers)}
    assert all(any(k.startswith(p) for k in keys) for p in towers)
    assert not any(k.startswith("lm_head") for k in keys)  # tied to the embedding
    if kind == "unified":
        assert {"model.vision_embedder.patch_dense.weight", "model.vision_embedder.pos_embedding",
                "model.embed_vision.embedding_projection.weight", "model.embed_audio.embedding_projection.weight",
                "model.language_model.layers.1.self_attn.k_proj.weight"} <= keys
        assert "model.language_model.layers.1.self_attn.v_proj.weight" not in keys  # k_eq_v on full attention
        index = json.loads((root / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == keys
        # the embedders' shard holds nothing of the decoder: a text-only client never needs it
        assert {v for k, v in index["weight_map"].items() if k.startswith(towers)} == {shards[1]}
    else:
        assert {"model.language_model.embed_tokens_per_layer.weight",
                "model.audio_tower.subsample_conv_projection.layer0.conv.weight",
                "model.vision_tower.patch_embedder.position_embedding_table"} <= keys

    card = (root / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "license: apache-2.0" in front and "license_link: https://ai.google.dev/gemma/docs/gemma_4_license" in front
    assert "pipeline_tag: any-to-any" in front and REPO_IDS[kind] in card

    tok = json.loads((root / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    order = [t for t, _ in SPECIAL_TOKENS + MEDIA_TOKENS]
    assert sorted(added, key=added.get) == order and all(t["special"] for t in tok["added_tokens"])
    assert [added[t] for t, _ in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))  # compact, real order
    assert config["image_token_id"] == added["<|image|>"] and config["video_token_id"] == added["<|video|>"]
    assert config["audio_token_id"] == added["<|audio|>"] and config["eoa_token_index"] == added["<audio|>"]
    assert config["text_config"]["vocab_size"] == len(tok["model"]["vocab"])
    tok_config = json.loads((root / "tokenizer_config.json").read_text())
    assert tok_config["processor_class"] == PROCESSOR_CLASSES[kind]
    assert tok_config["extra_special_tokens"] == ["<|video|>"]
    generation = json.loads((root / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [added["<eos>"], added["<turn|>"], added["<|tool_response>"]]


@pytest.mark.parametrize("kind", KINDS)
def test_loads_with_the_auto_classes(tiny, processors, models, kind: str) -> None:
    import transformers

    model, processor = models[kind], processors[kind]
    assert type(model).__name__ == MODEL_CLASSES[kind] and type(processor).__name__ == PROCESSOR_CLASSES[kind]
    assert model.dtype == torch.bfloat16
    same = getattr(transformers, MODEL_CLASSES[kind]).from_pretrained(tiny[kind])
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values()))
    assert type(processor.tokenizer).__name__ == "GemmaTokenizer"
    assert processor.feature_extractor.sampling_rate == 16000
    video = processor.video_processor
    assert (video.num_frames, video.max_soft_tokens, video.patch_size, video.pooling_kernel_size) == (32, 70, 16, 3)
    assert (video.do_sample_frames, int(video.resample)) == (True, 3)  # bicubic
    assert processor.image_processor.max_soft_tokens == 280


# ------------------------------------------------------------------------------------------
# Chat template


def test_chat_template(processors) -> None:
    user = [{"role": "user", "content": [{"type": "video", "video": "a.mp4"}, {"type": "audio"},
                                         {"type": "text", "text": " Hi "}]}]
    unified, e2b = processors["unified"], processors["e2b"]
    # no default system turn; 12B closes an empty thought channel unless enable_thinking, E2B does not
    assert unified.apply_chat_template(user, add_generation_prompt=True, tokenize=False) == (
        "<bos><|turn>user\n<|video|><|audio|>Hi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    assert e2b.apply_chat_template(user, add_generation_prompt=True, tokenize=False) == (
        "<bos><|turn>user\n<|video|><|audio|>Hi<turn|>\n<|turn>model\n")
    assert unified.apply_chat_template(user, add_generation_prompt=True, tokenize=False, enable_thinking=True) == (
        "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\n<|video|><|audio|>Hi<turn|>\n<|turn>model\n")
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "<|channel>thought\nwhy<channel|>Hello."},
               {"role": "user", "content": "More?"}]
    assert e2b.apply_chat_template(history, add_generation_prompt=True, tokenize=False) == (
        "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello.<turn|>\n"
        "<|turn>user\nMore?<turn|>\n<|turn>model\n")
    tok = e2b.tokenizer
    assert tok("Hi")["input_ids"][0] == tok.bos_token_id  # tokenizer.json adds <bos>
    # the card's tokenize=True path does not add a second one
    ids = e2b.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
    assert list(ids[0] if hasattr(ids[0], "__len__") else ids).count(tok.bos_token_id) == 1


# ------------------------------------------------------------------------------------------
# The card's pipeline


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES)
def test_card_pipeline_generates(card_env, processors, models, picture, boat_reference, kind: str,
                                 case: str) -> None:
    processor, model = processors[kind], models[kind]
    if case == "video+sound":
        inputs, tokens = boat_reference(kind)
    else:
        messages, extra = _messages(case, picture)
        inputs = _card_inputs(processor, messages, **extra).to(model.device)
        tokens = _greedy(model, inputs)
    counts = _counts(processor, inputs["input_ids"][0])
    assert tokens.shape == (1, 8)
    assert {k for k, n in counts.items() if n} == {"video+sound": {"video", "audio"}, "silent video": {"video"},
                                                   "picture": {"image"}, "audio": {"audio"}}[case]
    mm_types = inputs["mm_token_type_ids"][0]
    assert [int((mm_types == t).sum()) for t in (1, 2, 3)] == [counts["image"], counts["video"], counts["audio"]]
    if counts["video"]:
        frames = int(inputs["num_frames_per_video"][0])
        assert frames == 32  # num_frames 32, uniform: arange(32) * total // 32
        per_frame = {"video+sound": 66, "silent video": 63}[case]  # 592x336 -> 288x528; 480x360 -> 336x432
        assert counts["video"] == frames * per_frame
        text = processor.tokenizer.decode(inputs["input_ids"][0])
        stamps = re.findall(r"(\d\d:\d\d) <\|image>(?:<\|video\|>)+<image\|>", text)
        # timestamps index / fps, mm:ss: the last frame is 31 * 181 // 32 = 175 (5.84 s), 31 * 150 // 32 = 145
        last = {"video+sound": "00:05", "silent video": "00:04"}[case]
        assert len(stamps) == frames and stamps[0] == "00:00" and stamps[-1] == last
    if counts["audio"]:
        mask = inputs["input_features_mask"]
        seconds = {"video+sound": 6.04, "audio": 2.61}[case]
        assert abs(counts["audio"] - 25 * seconds) <= 2  # 40 ms a token
        if kind == "unified":  # raw 640-sample frames, one token each
            assert inputs["input_features"].shape == (1, counts["audio"], 640) and int(mask.sum()) == counts["audio"]
        else:  # 128-bin log-mel at 10 ms (100 frames a second), two stride-2 convolutions
            assert inputs["input_features"].shape[2] == 128
            assert abs(int(mask.sum()) - 100 * seconds) <= 3 and int(mask.sum()) // 4 in range(counts["audio"] - 1,
                                                                                                counts["audio"] + 1)
    if counts["image"]:
        assert counts["image"] == 266  # 300x400 -> 672x912 (at most 2520 16-px patches, sides multiples of 48)


def test_clip_sound_without_explicit_audio_entry(card_env, processors, boat_reference) -> None:
    """transformers 5.24 inserts the ``{"type": "audio"}`` entry after the video itself (with a warning);
    from 5.25 the messages must carry it, as :func:`_messages` does."""
    inputs = boat_reference("unified")[0]
    messages = [{"role": "user", "content": [{"type": "video", "video": str(shared_sample(BOAT))},
                                             {"type": "text", "text": PROMPT}]}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = _card_inputs(processors["unified"], messages, load_audio_from_video=True)
    assert torch.equal(auto["input_ids"], inputs["input_ids"].cpu())


# ------------------------------------------------------------------------------------------
# The hooks a cache of encoder outputs relies on


@pytest.mark.parametrize("kind", KINDS)
def test_placeholders_from_counts(card_env, processors, boat_reference, kind: str) -> None:
    """The expanded prompt rebuilt without pixels or samples: the processor's own replacement methods
    from the per-frame soft-token count, the frames' timestamps and the audio mask length."""
    from transformers.video_utils import VideoMetadata

    processor = processors[kind]
    inputs = boat_reference(kind)[0]
    tok = processor.tokenizer
    per_frame = int(_counts(processor, inputs["input_ids"][0])["video"]) // 32
    total, fps = 181, 30000 / 1001
    metadata = VideoMetadata(total_num_frames=total, fps=fps, frames_indices=np.arange(32) * total // 32)
    video = processor.replace_video_token({"num_soft_tokens_per_video": [per_frame], "video_metadata": [metadata]}, 0)
    frames_mask = inputs["input_features_mask"][0].cpu()
    audio = processor.replace_audio_token({"input_features_mask": [frames_mask]}, 0)
    template = processor.apply_chat_template(_messages("video+sound")[0], add_generation_prompt=True, tokenize=False)
    text = template.replace(processor.video_token, video, 1).replace(processor.audio_token, audio, 1)
    assert tok(text, add_special_tokens=False)["input_ids"] == inputs["input_ids"][0].tolist()
    # the same counts from sizes alone (what a budget check has before decoding; the decoded track is a
    # little longer than the header's 6.04 s)
    from transformers import processing_utils

    samples = len(processing_utils.load_audio(str(shared_sample(BOAT)), sampling_rate=16000))
    assert 96600 < samples < 97300
    sizes = processor._get_num_multimodal_tokens(video_sizes=[(32, 336, 592)], image_sizes=[(300, 400)],
                                                 audio_lengths=[samples])
    assert sizes["num_video_tokens"] == [32 * per_frame] and sizes["num_image_tokens"] == [266]
    assert sizes["num_audio_tokens"] == [int((inputs["input_ids"] == processor.audio_token_id).sum())]


@pytest.mark.parametrize("kind", KINDS)
def test_precomputed_video_features_and_audio_override(processors, models, boat_reference, kind: str) -> None:
    """Video (and image) tower outputs go back in through ``mm_encoder_outputs``; audio has no such key:
    ``forward`` calls ``self.get_audio_features(input_features, input_features_mask)`` whenever both are
    given, so an instance attribute on ``model.model`` serves cached outputs (``pooler_output [A, T, H]``
    and ``attention_mask [A, T]``, True where valid)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = models[kind]
    inputs, reference = boat_reference(kind)
    inner = model.model
    with torch.no_grad():
        video = inner.get_video_features(inputs["pixel_values_videos"], inputs["video_position_ids"],
                                         num_frames_per_video=inputs["num_frames_per_video"])
        audio = inner.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    n_video = int((inputs["input_ids"] == model.config.video_token_id).sum())
    n_audio = int((inputs["input_ids"] == model.config.audio_token_id).sum())
    hidden = model.config.text_config.hidden_size
    assert isinstance(video.pooler_output, tuple) and video.pooler_output[0].shape == (n_video, hidden)
    assert audio.pooler_output.shape[-1] == hidden and int(audio.attention_mask.sum()) == n_audio

    cached_video = BaseModelOutputWithPooling(pooler_output=tuple(video.pooler_output))
    served = {"pooler_output": audio.pooler_output, "attention_mask": audio.attention_mask}
    calls = []

    def cached(*args, **kwargs):
        calls.append(1)
        return type(audio)(**served)

    without_pixels = {k: v for k, v in inputs.items()
                      if k not in ("pixel_values_videos", "video_position_ids", "num_frames_per_video")}
    # the features stand for the log-mel / waveform: only their presence matters to forward
    without_pixels["input_features"] = torch.zeros(1, 1, 1)
    inner.get_audio_features = cached  # the instance attribute shadows the method
    try:
        tokens = _greedy(model, without_pixels, mm_encoder_outputs={"video": cached_video})
    finally:
        del inner.get_audio_features
    assert torch.equal(tokens, reference)
    assert calls == [1]  # prefill only
    # mm_token_type_ids (1 image, 2 video, 3 audio soft tokens) drive the 12B's bidirectional attention
    # within each picture / frame: without them its logits change; E2B attends causally either way
    plain = {k: v for k, v in without_pixels.items() if k != "mm_token_type_ids"}
    inner.get_audio_features = cached
    try:
        with torch.no_grad():
            typed = model(**without_pixels, mm_encoder_outputs={"video": cached_video}).logits[0, -1]
            untyped = model(**plain, mm_encoder_outputs={"video": cached_video}).logits[0, -1]
    finally:
        del inner.get_audio_features
    assert torch.equal(typed, untyped) is (kind == "e2b")
    with pytest.raises(ValueError, match="both pixel_values"):
        model(**inputs, mm_encoder_outputs={"video": cached_video})


@pytest.mark.parametrize("kind", KINDS)
def test_plain_positions_and_continuation(processors, models, boat_reference, kind: str) -> None:
    """Positions are ``arange`` from the cache length (no rope deltas, nothing stateful): a second turn
    on a kept cache needs only the new ids."""
    model = models[kind]
    inputs, reference = boat_reference(kind)
    assert not hasattr(model.model, "rope_deltas")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    cut = ids.shape[1] - 6
    first = {**inputs, "input_ids": ids[:, :cut], "attention_mask": mask[:, :cut],
             "mm_token_type_ids": inputs["mm_token_type_ids"][:, :cut]}
    with torch.no_grad():
        cache = model(**first, use_cache=True).cache
    assert cache.get_seq_length() == cut
    tokens = _greedy(model, {"input_ids": ids, "attention_mask": mask}, cache=cache)
    assert torch.equal(tokens, reference)


# ------------------------------------------------------------------------------------------
# Module names, LoRA


@pytest.mark.parametrize("kind", KINDS)
def test_device_map_module_names(models, kind: str) -> None:
    from transformers.integrations.accelerate import expand_device_map

    model = models[kind]
    towers = {"unified": ["embed_vision", "embed_audio"],
              "e2b": ["vision_tower", "audio_tower", "embed_vision", "embed_audio"]}[kind]
    assert [n for n, _ in model.named_children()] == ["model", "lm_head"]
    assert sorted(n for n, _ in model.model.named_children()) == sorted(["language_model", *towers])
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied
    names = [n for n, _ in model.named_parameters()]
    placed = expand_device_map({"model.language_model": "t", "lm_head": "t",
                                **{f"model.{n}": "disk" for n in towers}}, names)
    assert set(placed) == set(names)
    assert {n for n, d in placed.items() if d == "disk"} == {n for n in names if n.startswith(
        tuple(f"model.{t}." for t in towers))}


@pytest.mark.parametrize("kind", KINDS)
def test_lora_on_the_language_model(tiny, kind: str) -> None:
    import transformers
    from peft import LoraConfig, get_peft_model

    attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model_class = getattr(transformers, MODEL_CLASSES[kind])
    model = model_class.from_pretrained(tiny[kind], dtype=torch.float32)
    lm = get_peft_model(model.model.language_model, LoraConfig(r=4, lora_alpha=8, target_modules=attention))
    adapted = {n.split(".lora_")[0] for n, p in lm.named_parameters() if p.requires_grad}
    # 12B: the full-attention layer has no v_proj (attention_k_eq_v)
    assert len(adapted) == (7 if kind == "unified" else 8)
    out = lm(input_ids=torch.arange(5, 17)[None])
    out.last_hidden_state.pow(2).mean().backward()
    grads = [p.grad for n, p in lm.named_parameters() if "lora_B" in n]
    assert len(grads) == len(adapted) and all(g is not None and g.abs().sum() > 0 for g in grads)

    # on the whole model the same names also match E2B's vision / audio towers, whose q/k/v/o_proj are
    # Gemma4ClippableLinear wrappers peft refuses; a regex on the decoder or exclude_modules avoids them
    def adapted_roots(config):
        full = get_peft_model(model_class.from_pretrained(tiny[kind], dtype=torch.float32), config)
        return {n.split(".layers.")[0] for n, p in full.named_parameters() if p.requires_grad}

    base = "base_model.model.model."
    if kind == "e2b":
        with pytest.raises(ValueError, match="Gemma4ClippableLinear"):
            adapted_roots(LoraConfig(r=4, target_modules=attention))
    else:  # the 12B embedders have no such names
        assert adapted_roots(LoraConfig(r=4, target_modules=attention)) == {base + "language_model"}
    assert adapted_roots(LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)")) == {
        base + "language_model"}
    kept = adapted_roots(LoraConfig(r=4, target_modules=attention, exclude_modules=r".*(vision|audio).*"))
    assert kept == {base + "language_model"}
