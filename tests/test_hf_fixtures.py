"""The tiny Hugging Face checkpoints of ``hf_fixtures`` load back with the real transformers classes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_fixtures as hf  # noqa: E402

PROMPT = "USER: <video>\nwhat sound is playing? ASSISTANT:"
TOKENS_PER_FRAME = (224 // 32) ** 2 + 1  # 49 patches + CLS


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def video_llava_dir(tmp_path_factory):
    return hf.make_tiny_video_llava(tmp_path_factory.mktemp("video_llava"), seed=0)


def test_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    built = hf.make_tiny_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tok).__name__ == "LlamaTokenizer"
    assert len(tok) == len(built)
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    image_id, video_id = tok.convert_tokens_to_ids(["<image>", "<video>"])
    assert (video_id, tok.pad_token_id) == (image_id + 1, image_id + 2) and image_id == len(tok) - 3
    assert tok.padding_side == "left"

    ids = tok(PROMPT).input_ids
    assert ids == built(PROMPT).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(video_id) == 1 and tok.eos_token_id not in ids
    pieces = tok.convert_ids_to_tokens(ids)
    for word in ("▁USER", "▁sound", "▁is", "▁playing", "▁ASSISTANT", "<0x0A>"):
        assert word in pieces
    assert tok.unk_token_id not in tok("Colour? shape! the a 123 é").input_ids  # byte fallback
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT.replace("<video>", "")
    assert tok(PROMPT, add_special_tokens=False).input_ids == ids[1:]

    plain = hf.make_tiny_tokenizer(None, extra_special=(), pad_token=None)
    assert plain.pad_token is None and len(plain) == len(tok) - 3


def test_video_llava_files_and_keys(video_llava_dir):
    from safetensors import safe_open

    names = {p.name for p in video_llava_dir.iterdir()}
    assert names == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
    }
    with safe_open(str(video_llava_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "language_model.lm_head.weight" in keys
    assert "language_model.model.embed_tokens.weight" in keys
    assert {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.bias"} <= keys
    assert "video_tower.vision_model.embeddings.class_embedding" in keys
    assert "image_tower.vision_model.encoder.layers.1.mlp.fc2.weight" in keys
    proc_cfg = json.loads((video_llava_dir / "processor_config.json").read_text())
    assert proc_cfg["processor_class"] == "VideoLlavaProcessor" and proc_cfg["patch_size"] == 32
    assert proc_cfg["video_processor"]["video_processor_type"] == "VideoLlavaVideoProcessor"


def test_video_llava_loads_and_generates(video_llava_dir):
    from transformers import AutoConfig, AutoTokenizer, VideoLlavaForConditionalGeneration

    config = AutoConfig.from_pretrained(video_llava_dir)
    tok = AutoTokenizer.from_pretrained(video_llava_dir)
    assert config.model_type == "video_llava"
    assert config.image_token_index == tok.convert_tokens_to_ids("<image>")
    assert config.video_token_index == tok.convert_tokens_to_ids("<video>")
    assert config.text_config.vocab_size == len(tok)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")

    model = VideoLlavaForConditionalGeneration.from_pretrained(video_llava_dir).eval()
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()  # not tied
    num_frames = 2
    text = PROMPT.replace("<video>", "<video>" * (num_frames * TOKENS_PER_FRAME))
    inputs = tok(text, return_tensors="pt")
    pixels = torch.randn(1, num_frames, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.model.get_video_features(pixel_values_videos=pixels).pooler_output
        out = model.generate(**inputs, pixel_values_videos=pixels, max_new_tokens=3, do_sample=False)
    assert feats.shape == (num_frames, TOKENS_PER_FRAME, 64)  # CLS kept for video
    assert out.shape == (1, inputs.input_ids.shape[1] + 3)
    assert torch.equal(out[0, : inputs.input_ids.shape[1]], inputs.input_ids[0])


def test_video_llava_deterministic(video_llava_dir, tmp_path):
    again = hf.make_tiny_video_llava(tmp_path / "same", seed=0)
    other = hf.make_tiny_video_llava(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
        assert _sha(again / name) == _sha(video_llava_dir / name), name
    assert _sha(other / "model.safetensors") != _sha(video_llava_dir / "model.safetensors")


def test_video_llava_save_pretrained_layout_loads(tmp_path):
    from safetensors import safe_open
    from transformers import VideoLlavaForConditionalGeneration

    hub = VideoLlavaForConditionalGeneration.from_pretrained(hf.make_tiny_video_llava(tmp_path / "hub"))
    raw_dir = hf.make_tiny_video_llava(tmp_path / "raw", hub_layout=False)
    with safe_open(str(raw_dir / "model.safetensors"), "pt") as f:
        assert "video_tower.embeddings.class_embedding" in set(f.keys())
    raw = VideoLlavaForConditionalGeneration.from_pretrained(raw_dir)
    a, b = hub.state_dict(), raw.state_dict()
    assert a.keys() == b.keys() and "model.video_tower.embeddings.class_embedding" in a
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_video_llava_processor(video_llava_dir):
    from transformers import AutoProcessor, VideoLlavaForConditionalGeneration, VideoLlavaProcessor

    proc = AutoProcessor.from_pretrained(video_llava_dir)
    assert isinstance(proc, VideoLlavaProcessor)
    assert type(proc.video_processor).__name__ == "VideoLlavaVideoProcessor"
    frames = np.random.RandomState(0).randint(0, 256, (8, 240, 320, 3), dtype=np.uint8)
    inputs = proc(text=PROMPT, videos=frames, return_tensors="pt")
    assert inputs["pixel_values_videos"].shape == (1, 8, 3, 224, 224)
    assert int((inputs["input_ids"] == proc.video_token_id).sum()) == 8 * TOKENS_PER_FRAME
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what sound is playing?"}]}]
    assert proc.apply_chat_template(chat, add_generation_prompt=True) == (
        "USER: <video>\nwhat sound is playing? ASSISTANT:"
    )
    model = VideoLlavaForConditionalGeneration.from_pretrained(video_llava_dir).eval()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.parametrize("full_clip", [False, True])
def test_clip_vision(tmp_path, full_clip):
    from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModel

    d = hf.make_tiny_clip_vision(tmp_path, seed=0, full_clip=full_clip)
    assert AutoConfig.from_pretrained(d).model_type == ("clip" if full_clip else "clip_vision_model")
    model = CLIPVisionModel.from_pretrained(d).eval()
    image_processor = AutoImageProcessor.from_pretrained(d)
    pixels = image_processor(np.zeros((240, 320, 3), dtype=np.uint8), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, TOKENS_PER_FRAME, 32)
    assert len(out.hidden_states) == 3
    if full_clip:
        from transformers import CLIPModel

        whole = CLIPModel.from_pretrained(d)
        ref = whole.vision_model.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("num_labels", [None, 5])
def test_ast(tmp_path, num_labels):
    from transformers import ASTForAudioClassification, ASTModel, AutoFeatureExtractor

    d = hf.make_tiny_ast(tmp_path, seed=0, num_labels=num_labels)
    fe = AutoFeatureExtractor.from_pretrained(d)
    assert type(fe).__name__ == "ASTFeatureExtractor"
    wav = np.random.RandomState(0).uniform(-0.5, 0.5, 32000).astype(np.float32)  # 2 s at 16 kHz
    feats = fe(wav, sampling_rate=16000, return_tensors="pt")["input_values"]
    assert feats.shape == (1, 204, 128)
    with torch.no_grad():
        hidden = ASTModel.from_pretrained(d).eval()(feats).last_hidden_state
        assert hidden.shape == (1, 12 * 19 + 2, 32)
        if num_labels:
            logits = ASTForAudioClassification.from_pretrained(d).eval()(feats).logits
            assert logits.shape == (1, num_labels)


def test_llama(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    d = hf.make_tiny_llama(tmp_path, seed=0)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    gen_cfg = GenerationConfig.from_pretrained(d)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tok) and "<video>" not in tok.get_vocab()
    assert (gen_cfg.bos_token_id, gen_cfg.eos_token_id, gen_cfg.pad_token_id) == (1, 2, tok.pad_token_id)
    inputs = tok(["what colour is the shape?", "what sound"], return_tensors="pt", padding=True)
    assert inputs.input_ids[1, 0] == tok.pad_token_id  # left padding
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs.input_ids.shape[1] + 3)
