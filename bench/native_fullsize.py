"""Full-size hygiene: `vlm ask` on random-weight checkpoints in the exact released layouts,
side by side with transformers' own reference run on the same clip, on this machine's CPUs.

    /work/venv-bench/bin/python bench/native_fullsize.py --scale small            # seconds
    /work/venv-bench/bin/python bench/native_fullsize.py --scale full --models qwen --keep
    ... --json                                                                   # JSON instead

Models (``--models qwen,videollava``):

- ``qwen``: ``Qwen/Qwen2.5-Omni-3B``'s layout: ``config.json`` with thinker / talker / token2wav
  configs (hub, transformers 4.5x form), the processor files of tests/omni_fixtures.py
  (``preprocessor_config.json``, ``chat_template.json``, tokenizer) with the tokenizer's 22 added
  tokens moved to their real ids 151643-151664 (filler vocabulary entries below them), bf16
  shards ``model-0000N-of-0000M.safetensors`` of at most 5 GB with the hub's key names
  (``thinker.model.*``, ``thinker.visual.*``, ``thinker.audio_tower.*``, ``thinker.lm_head``,
  ``talker.*``, ``token2wav.*``) + ``model.safetensors.index.json`` + ``spk_dict.pt``.
- ``videollava``: ``LanguageBind/Video-LLaVA-7B-hf``'s layout: Vicuna-7B text config (vocab 32064),
  CLIP ViT-L/14 224 px video and image towers, tests/hf_fixtures.py's tokenizer (its ``<image>``,
  ``<video>``, ``<pad>`` moved to the real ids 32000-32002) and processor files, bf16 shards
  with the hub's keys (``video_tower.vision_model.*``, ``image_tower.vision_model.*``,
  ``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.weight``).

Sizes (no hub file could be read verbatim offline): Qwen2.5-Omni-3B's thinker text model as
published (hidden 2048, 36 layers, 16 / 2 heads, MLP 11008, vocab 151936, untied head), its
vision tower Qwen2.5-VL's (32 blocks, 1280 wide, out 2048), its audio tower Whisper-large's
encoder (32 layers, 1280 wide, out 2048), token2wav transformers' defaults (DiT 22 × 1024,
BigVGAN 1536); the talker's sizes (896 wide, 24 layers, 14 / 2 heads, MLP 4864) are not verified
and the thinker never reads them. Video-LLaVA's config is ``VideoLlavaConfig`` with the published
sizes (Vicuna-7B: 4096, 32 layers, MLP 11008, vocab 32064; CLIP ViT-L/14: 1024, 24 layers).
Totals: 11.07 GB in 3 shards and 14.73 GB in 3 shards (``--estimate``).

Weights are random (normal × 0.02; norm weights 1, norm biases 0), written tensor by tensor
straight into the safetensors files from the shapes of a model built on the meta device: nothing
of full size is ever held in memory. ``--scale small`` writes the same layouts with the tiny
sizes of the test fixtures (and checks that the key set equals the fixture's); at either scale the
key names with layer numbers blanked out must equal the fixture's.

The clip: 14 s, 640 x 360, 25 fps H.264 + mono AAC 16 kHz (a moving bar over a gradient, a tone
with noise), written with tests/media_factory.py.

Runs, each in its own process, in this order, per model:

1. reference: transformers' own route: ``Qwen2_5OmniProcessor`` +
   ``Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(dir, dtype="auto")`` on the clip's 2
   frames and its own audio track as the model card prepares them (qwen-omni-utils'
   ``process_mm_info`` at 2 fps capped at 2 frames, the card's system turn: tests/test_qwen_omni.py
   ``card_answer``), or
   ``VideoLlavaProcessor`` + ``VideoLlavaForConditionalGeneration.from_pretrained(dir,
   dtype="auto")`` on 2 uniformly sampled frames; then ``generate(max_new_tokens=16,
   do_sample=False)``. Load time = ``import torch, transformers`` + processor + model
   ``from_pretrained`` (`vlm ask`'s ``timings.load`` covers its imports too).
2. vlm, first: ``vlm ask CLIP "what is happening?" --model DIR --frames 2 --max-new-tokens 16
   --json`` with a fresh ``VLM_HOME`` (cold feature cache); load time = the answer's
   ``timings.load``. Otherwise default settings (no dtype or device option).
3. vlm, second: the same command again (the clip's features are now cached).

Before each run the checkpoint's shards are read once, so every load starts from the page cache
as far as memory allows. Peak RSS is the process's own high-water mark (``wait4``'s
``ru_maxrss``: the largest of the process and its reaped children); "tree" is the largest sum of
the RSS of the process and its descendants, sampled every 0.1 s. CPU = user + system time of the
process and its reaped children.

Ratios and targets: vlm first / reference peak RSS ≤ 1.15, load ≤ 1.3, CPU ≤ 1.1; vlm second /
vlm first peak RSS ≤ 0.8.

Files: checkpoints, clip, ``VLM_HOME``s and ``results-<scale>.json`` under
``/work/bench-data/native_fullsize/`` (``--data``); ``--keep`` reuses checkpoints already written
there (a checkpoint counts as written once its ``.complete`` marker exists).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
VLM = str(Path(sys.executable).with_name("vlm"))
DEFAULT_DATA = Path("/work/bench-data/native_fullsize")

QUESTION = "what is happening?"
FRAMES, MAX_NEW_TOKENS = 2, 16
CLIP_SECONDS, CLIP_WIDTH, CLIP_HEIGHT, CLIP_FPS = 14, 640, 360, 25
#: transformers 4.x ``save_pretrained``'s default shard limit (``"5GB"``), as the hub's shards.
FULL_SHARD_BYTES = 5 * 10**9
SMALL_SHARD_BYTES = 4 * 2**20
TARGETS = {"rss": 1.15, "load": 1.3, "cpu": 1.1, "second_rss": 0.8}
MODELS = ("qwen", "videollava")

# --------------------------------------------------------------------------- real ids

#: Qwen2.5's byte-level BPE has 151643 entries; the 22 added tokens follow (151643-151664);
#: the embedding has 151936 rows.
QWEN_BASE_VOCAB, QWEN_VOCAB = 151643, 151936
#: Llama-2's SentencePiece vocabulary has 32000 pieces; Video-LLaVA adds <image> <video> <pad>;
#: the embedding has 32064 rows.
LLAMA_BASE_VOCAB, VIDEO_LLAVA_VOCAB = 32000, 32064


def _tests_on_path() -> None:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


# --------------------------------------------------------------------------- safetensors

_ST_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64",
              "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
              "bool": "BOOL"}


def _itemsize(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _is_norm(key: str) -> bool:
    leaf = key.rsplit(".", 2)
    return any(s in ".".join(leaf[-2:]).lower() for s in ("norm", "ln_"))


def _fill(key: str, shape: tuple[int, ...], dtype, generator):
    """A random tensor for ``key``: norm weights 1, norm biases 0, other floats N(0, 0.02),
    integers / booleans 0."""
    import torch

    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if len(shape) == 1 and _is_norm(key):
        return (torch.ones if key.endswith("weight") else torch.zeros)(shape, dtype=dtype)
    return torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=generator)


def _write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...], object]],
                       seed: int) -> None:
    """Write ``entries`` (key, shape, dtype) as one safetensors file, generating and writing one
    tensor at a time (the header first, from the shapes)."""
    import torch

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape, dtype in entries:
        size = math.prod(shape) * _itemsize(dtype)
        header[key] = {"dtype": _ST_DTYPES[str(dtype).removeprefix("torch.")],
                       "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    generator = torch.Generator().manual_seed(seed)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key, shape, dtype in entries:
            tensor = _fill(key, shape, dtype, generator).contiguous()
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            del tensor
    os.replace(tmp, path)


#: Set by ``--estimate``: write_shards plans the shards and writes none.
DRY_RUN = {"on": False, "plan": None}


def write_shards(out: Path, entries: list[tuple[str, tuple[int, ...], object]],
                 max_bytes: int, seed: int = 0) -> dict:
    """Pack ``entries`` in order into shards of at most ``max_bytes`` (a larger tensor gets a
    shard of its own), write them and ``model.safetensors.index.json``; return the index."""
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = math.prod(entry[1]) * _itemsize(entry[2])
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    if DRY_RUN["on"]:
        DRY_RUN["plan"] = [sum(math.prod(e[1]) * _itemsize(e[2]) for e in shard)
                           for shard in shards]
        return {}
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(out / name, shard, seed + i)
        for key, shape, dtype in shard:
            weight_map[key] = name
            total += math.prod(shape) * _itemsize(dtype)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def _meta_entries(model, rename, float_dtype) -> list[tuple[str, tuple[int, ...], object]]:
    """(hub key, shape, dtype) of every state-dict entry of a meta-device model, in order."""
    entries = []
    for key, value in model.state_dict().items():
        dtype = float_dtype if value.is_floating_point() else value.dtype
        entries.append((rename(key), tuple(value.shape), dtype))
    return entries


def _pattern(keys) -> set[str]:
    return {re.sub(r"\.\d+(?=\.)", ".N", k) for k in keys}


def _check_layout(entries, reference_keys: set[str], exact: bool, what: str) -> None:
    ours = {k for k, _, _ in entries}
    a, b = (ours, reference_keys) if exact else (_pattern(ours), _pattern(reference_keys))
    if a != b:
        raise SystemExit(f"{what}: key layout differs from the test fixture's: only ours "
                         f"{sorted(a - b)[:5]}, only the fixture's {sorted(b - a)[:5]}")


# --------------------------------------------------------------------------- Qwen2.5-Omni-3B

def _retarget_qwen_tokenizer(out: Path, base: int) -> dict[str, int]:
    """Move the fixture tokenizer's added tokens from their compact ids to the real ones
    (151643 + i), filling the byte-level vocabulary with unreachable entries up to 151643."""
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    assert len(vocab) == base, (len(vocab), base)
    shift = QWEN_BASE_VOCAB - base
    for i in range(base, QWEN_BASE_VOCAB):
        vocab[f"<|x{i}|>"] = i
    for added in tj["added_tokens"]:
        added["id"] += shift
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    added = json.loads((out / "added_tokens.json").read_text())
    added_ids = {t: i + shift for t, i in added.items()}
    (out / "added_tokens.json").write_text(json.dumps(added_ids, indent=2))
    cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["added_tokens_decoder"] = {str(int(i) + shift): v
                                   for i, v in cfg["added_tokens_decoder"].items()}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False),
                                               encoding="utf-8")
    return added_ids


def _qwen_full_sizes(config: dict) -> None:
    """Scale the fixture's config to Qwen2.5-Omni-3B's published sizes, in place."""
    th = config["thinker_config"]
    th["audio_config"].update(d_model=1280, encoder_attention_heads=20, encoder_ffn_dim=5120,
                              encoder_layers=32, num_hidden_layers=32, output_dim=2048)
    th["vision_config"].update(depth=32, embed_dim=1280, hidden_size=1280,
                               intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                               fullatt_block_indexes=[7, 15, 23, 31])
    mrope = {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}
    th["text_config"].update(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                             num_attention_heads=16, num_key_value_heads=2, max_window_layers=70,
                             rope_scaling=mrope)
    # The talker's sizes (a Qwen2.5-0.5B-shaped decoder fed with the thinker's 2048 wide states)
    # are not verified against the hub's file; the thinker never reads them.
    config["talker_config"].update(embedding_size=2048, hidden_size=896, head_dim=64,
                                   intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2,
                                   max_window_layers=24,
                                   rope_scaling={**mrope, "mrope_section": [8, 12, 12]})
    config["token2wav_config"]["dit_config"].update(
        hidden_size=1024, num_hidden_layers=22, num_attention_heads=16, head_dim=64, ff_mult=2,
        emb_dim=512, look_ahead_layers=[10], look_backward_layers=[0, 20], enc_dim=128,
        enc_channels=[256, 256, 256, 256, 768], enc_attention_channels=64, enc_se_channels=64)
    config["token2wav_config"]["bigvgan_config"].update(upsample_initial_channel=1536)


def write_qwen(out: Path, scale: str) -> Path:
    _tests_on_path()
    import torch
    import transformers
    from omni_fixtures import SPECIAL_TOKENS, _build_config, _dump, _hub_key, make_tiny_qwen_omni
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    shutil.rmtree(out, ignore_errors=True)
    # The fixture writes every non-weight file (tokenizer, processor, chat template, card) and a
    # tiny model whose key set is the layout to match; its weights are then replaced.
    make_tiny_qwen_omni(out, seed=0)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    fixture_keys = set(index["weight_map"])
    for name in set(index["weight_map"].values()):
        (out / name).unlink()
    (out / "model.safetensors.index.json").unlink()
    base = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    base = len(base["model"]["vocab"])
    _retarget_qwen_tokenizer(out, base)
    ids = {t: QWEN_BASE_VOCAB + i for i, (t, _) in enumerate(SPECIAL_TOKENS)}
    from tokenizers import Tokenizer

    user = Tokenizer.from_file(str(out / "tokenizer.json")).encode("user",
                                                                    add_special_tokens=False).ids
    config, speaker_bos = _build_config(ids, QWEN_BASE_VOCAB + len(SPECIAL_TOKENS),
                                        user[0] if len(user) == 1 else ids["<|im_start|>"])
    config["thinker_config"]["text_config"]["vocab_size"] = QWEN_VOCAB
    config["talker_config"].update(tts_text_pad_token_id=151859, tts_text_start_token_id=151860,
                                   tts_text_end_token_id=151861)
    if scale == "full":
        _qwen_full_sizes(config)
    _dump(str(out), "config.json", config)
    _dump(str(out), "generation_config.json", {
        "_from_model_config": True, "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "transformers_version": "4.50.0.dev0"})
    dit = config["token2wav_config"]["dit_config"]
    g = torch.Generator().manual_seed(0)
    torch.save({name: {"bos_token": bos, "cond": torch.randn(1, dit["enc_emb_dim"], generator=g),
                       "ref_mel": torch.randn(1, 60, dit["mel_dim"], generator=g)}
                for name, bos in speaker_bos.items()}, out / "spk_dict.pt")

    transformers.logging.set_verbosity_error()
    with torch.device("meta"):
        model = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig.from_pretrained(out))
    entries = _meta_entries(model, _hub_key, torch.bfloat16)
    del model
    _check_layout(entries, fixture_keys, exact=scale == "small", what="Qwen2.5-Omni")
    write_shards(out, entries, FULL_SHARD_BYTES if scale == "full" else SMALL_SHARD_BYTES)
    return out


# --------------------------------------------------------------------------- Video-LLaVA-7B-hf

def _video_llava_key(key: str) -> str:
    """transformers-5 module path -> LanguageBind/Video-LLaVA-7B-hf key."""
    for src, dst in (("model.video_tower.", "video_tower.vision_model."),
                     ("model.image_tower.", "image_tower.vision_model."),
                     ("model.multi_modal_projector.", "multi_modal_projector."),
                     ("model.language_model.", "language_model.model."),
                     ("lm_head.", "language_model.lm_head.")):
        if key.startswith(src):
            return dst + key[len(src):]
    return key


def write_videollava(out: Path, scale: str) -> Path:
    _tests_on_path()
    import tempfile

    import hf_fixtures
    import torch
    import transformers
    from safetensors import safe_open
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:  # the fixture's key set: the layout to match
        tiny = hf_fixtures.make_tiny_video_llava(Path(tmp) / "tiny", hub_layout=True)
        with safe_open(str(tiny / "model.safetensors"), "pt") as f:
            fixture_keys = set(f.keys())

    original = hf_fixtures._bpe_vocab_and_merges

    def padded(words):  # the fixture's pieces, then unreachable pieces up to Llama's 32000
        vocab, merges = original(words)
        for i in range(len(vocab), LLAMA_BASE_VOCAB):
            vocab[f"<x{i}>"] = i
        return vocab, merges

    hf_fixtures._bpe_vocab_and_merges = padded
    try:
        tok = hf_fixtures.make_tiny_tokenizer(out, processor_class="VideoLlavaProcessor")
    finally:
        hf_fixtures._bpe_vocab_and_merges = original
    image_id, video_id = tok.convert_tokens_to_ids(["<image>", "<video>"])
    assert (image_id, video_id, tok.pad_token_id) == (32000, 32001, 32002), \
        (image_id, video_id, tok.pad_token_id)
    if scale == "full":
        vision = hf_fixtures._clip_vision_config(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, patch_size=14, projection_dim=768)
        text = hf_fixtures._llama_config(
            tok, vocab_size=VIDEO_LLAVA_VOCAB, hidden_size=4096, intermediate_size=11008,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            max_position_embeddings=4096)
    else:
        vision = hf_fixtures._clip_vision_config()
        text = hf_fixtures._llama_config(tok, vocab_size=VIDEO_LLAVA_VOCAB)
    tokens_per_frame = (vision.image_size // vision.patch_size) ** 2 + 1
    config = VideoLlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_id,
        video_token_index=video_id, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_seq_length=tokens_per_frame - 1, video_seq_length=tokens_per_frame * 8,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    config.dtype = torch.bfloat16
    config.save_pretrained(out)
    hf_fixtures._generation_config(tok).save_pretrained(out)
    hf_fixtures._write_json(out / "processor_config.json",
                            hf_fixtures.video_llava_processor_config(patch_size=vision.patch_size))
    (out / "chat_template.jinja").write_text(hf_fixtures.VIDEO_LLAVA_CHAT_TEMPLATE,
                                             encoding="utf-8")
    with torch.device("meta"):
        model = VideoLlavaForConditionalGeneration(config)
    entries = _meta_entries(model, _video_llava_key, torch.bfloat16)
    del model
    _check_layout(entries, fixture_keys, exact=scale == "small", what="Video-LLaVA")
    write_shards(out, entries, FULL_SHARD_BYTES if scale == "full" else SMALL_SHARD_BYTES)
    return out


WRITERS = {"qwen": write_qwen, "videollava": write_videollava}
NAMES = {"qwen": "Qwen2.5-Omni-3B", "videollava": "Video-LLaVA-7B-hf"}


def checkpoint(data: Path, model: str, scale: str, keep: bool) -> Path:
    out = data / scale / model / "checkpoint"
    marker = out / ".complete"
    if keep and marker.is_file():
        return out
    marker.unlink(missing_ok=True)
    t0 = time.perf_counter()
    WRITERS[model](out, scale)
    marker.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    return out


def weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


# --------------------------------------------------------------------------- the clip

def make_clip(data: Path) -> Path:
    path = data / f"clip_{CLIP_SECONDS}s_{CLIP_WIDTH}x{CLIP_HEIGHT}.mp4"
    if path.is_file():
        return path
    _tests_on_path()
    import numpy as np
    from media_factory import moving_frames, write_video

    frames = moving_frames(CLIP_SECONDS * CLIP_FPS, CLIP_HEIGHT, CLIP_WIDTH)  # 242 MB
    t = np.arange(CLIP_SECONDS * 16_000, dtype=np.float32) / 16_000
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * 440.0 * t * (1 + t / CLIP_SECONDS))
             + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    data.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.mp4")
    write_video(tmp, frames, fps=CLIP_FPS, audio=audio, sample_rate=16_000)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- reference runs

def _reference(model: str, ckpt: str, clip: str) -> dict:
    """transformers' own run (in the measured child process): load, decode, generate. Load
    time counts from before ``import torch``, as `vlm ask`'s ``timings.load`` does (its command
    imports torch and transformers while loading)."""
    t0 = time.perf_counter()
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_grad_enabled(False)
    from vlm_cli.media import load_video

    if model == "qwen":
        from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

        processor = Qwen2_5OmniProcessor.from_pretrained(ckpt)
        net = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(ckpt, dtype="auto")
    else:
        from transformers import VideoLlavaForConditionalGeneration, VideoLlavaProcessor

        processor = VideoLlavaProcessor.from_pretrained(ckpt)
        net = VideoLlavaForConditionalGeneration.from_pretrained(ckpt, dtype="auto")
    net.eval()
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    if model == "qwen":
        # The model card's route, as `vlm ask --frames 2` takes the clip: qwen-omni-utils'
        # process_mm_info at 2 fps capped at 2 frames, the clip's own track interleaved, the
        # card's system turn (tests/omni_fixtures.py card_pipeline: its decord reader and an
        # ffmpeg for audioread).
        import tempfile

        _tests_on_path()
        from omni_fixtures import card_pipeline
        from vlm_cli.model.families.native_table import QWEN_SYSTEM

        conversation = [
            {"role": "system", "content": [{"type": "text", "text": QWEN_SYSTEM}]},
            {"role": "user", "content": [{"type": "video", "video": clip, "fps": 2.0,
                                          "max_frames": FRAMES},
                                         {"type": "text", "text": QUESTION}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True,
                                               tokenize=False)
        with card_pipeline(tempfile.mkdtemp()) as omni_utils:
            audios, _, videos, kwargs = omni_utils.process_mm_info(
                conversation, use_audio_in_video=True, return_video_kwargs=True)
        inputs = processor(text=prompt, videos=videos, audio=audios, fps=kwargs["fps"][0],
                           audio_from_video_indices=[0], load_audio_from_video=True,
                           return_tensors="pt")
        extra = {"use_audio_in_video": True}
    else:
        video = load_video(clip, num_frames=FRAMES)
        inputs = processor(text=f"USER: <video>\n{QUESTION} ASSISTANT:",
                           videos=[list(video.frames)], return_tensors="pt")
        extra = {}
    prep = time.perf_counter() - t1
    t2 = time.perf_counter()
    out = net.generate(**inputs, **extra, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    generate = time.perf_counter() - t2
    new = out[0, inputs["input_ids"].shape[1]:]
    return {"load": load, "preprocess": prep, "generate": generate,
            "dtype": str(net.dtype).removeprefix("torch."),
            "prompt_tokens": int(inputs["input_ids"].shape[1]), "new_tokens": int(new.numel()),
            "answer": processor.tokenizer.decode(new, skip_special_tokens=True)}


# --------------------------------------------------------------------------- measurement

def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], env: dict, timeout: float) -> dict:
    """Run ``cmd`` in its own process (group); its peak RSS, CPU and wall time, and output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True, start_new_session=True)
    streams: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=n, s=s: streams.__setitem__(n, s.read()))
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    tree_peak, timed_out = 0, False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        tree_peak = max(tree_peak, _tree_rss(proc.pid))
        if time.perf_counter() - t0 > timeout and not timed_out:
            timed_out = True
            os.killpg(proc.pid, 9)
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    return {"rc": proc.returncode, "timed_out": timed_out, "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": usage.ru_maxrss * 1024, "tree_peak_rss_bytes": tree_peak,
            "stdout": streams.get("stdout", ""), "stderr": streams.get("stderr", "")}


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _warm(ckpt: Path) -> None:
    """Read the shards once (page cache), so no run pays for the disk that another did not."""
    for p in sorted(ckpt.glob("*.safetensors")):
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def _failure(run: dict) -> str | None:
    if run["timed_out"]:
        return "timed out"
    if run["rc"] == -9 or run["rc"] == 137:
        return "killed (SIGKILL: out of memory?)"
    if run["rc"] != 0:
        tail = (run["stderr"].strip().splitlines() or ["?"])[-1]
        return f"exit {run['rc']}: {tail[:200]}"
    return None


def run_model(model: str, ckpt: Path, clip: Path, data: Path, scale: str,
              timeout: float, log) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs = {}
    log(f"[{model}] reference run ...")
    _warm(ckpt)
    ref = measure([sys.executable, str(Path(__file__).resolve()), "--_reference", model,
                   str(ckpt), str(clip)], env, timeout)
    ref["failure"] = _failure(ref)
    ref["result"] = _last_json(ref["stdout"])
    if ref["result"]:
        ref["load_s"] = ref["result"]["load"]
    runs["reference"] = ref
    home = data / scale / model / "vlm_home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    cmd = [VLM, "ask", str(clip), QUESTION, "--model", str(ckpt), "--frames", str(FRAMES),
           "--max-new-tokens", str(MAX_NEW_TOKENS), "--json"]
    for name in ("vlm_first", "vlm_second"):
        log(f"[{model}] {name} ...")
        _warm(ckpt)
        run = measure(cmd, {**env, "VLM_HOME": str(home)}, timeout)
        run["failure"] = _failure(run)
        run["result"] = _last_json(run["stdout"])
        if run["result"]:
            run["load_s"] = (run["result"].get("timings") or {}).get("load")
        runs[name] = run
    for run in runs.values():
        if run["failure"] is None:
            run["stdout"] = run["stdout"][-2000:]
            run["stderr"] = run["stderr"][-2000:]
        else:
            run["stdout"] = run["stdout"][-4000:]
            run["stderr"] = run["stderr"][-4000:]
    answers = [(run.get("result") or {}).get("answer") for run in runs.values()]
    return {"model": NAMES[model], "checkpoint": str(ckpt), "weight_bytes": weight_bytes(ckpt),
            "runs": runs, "ratios": ratios(runs),
            "same_answer": None if None in answers else len(set(answers)) == 1}


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def ratios(runs: dict) -> dict:
    ref, first, second = runs["reference"], runs["vlm_first"], runs["vlm_second"]
    ok = lambda r: r["failure"] is None  # noqa: E731
    out = {
        "rss": _ratio(first["peak_rss_bytes"], ref["peak_rss_bytes"]) if ok(ref) else None,
        "load": _ratio(first.get("load_s"), ref.get("load_s")) if ok(ref) and ok(first) else None,
        "cpu": _ratio(first["cpu_s"], ref["cpu_s"]) if ok(ref) and ok(first) else None,
        "second_rss": _ratio(second["peak_rss_bytes"], first["peak_rss_bytes"])
        if ok(first) and ok(second) else None,
    }
    return {k: {"value": v, "target": TARGETS[k],
                "met": None if v is None else v <= TARGETS[k]} for k, v in out.items()}


# --------------------------------------------------------------------------- report

def _gib(n) -> str:
    return "-" if not n else f"{n / 2**30:.2f}"


def _s(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(results: list[dict]) -> str:
    lines = []
    for res in results:
        lines.append(f"\n{res['model']}: {res['checkpoint']} ({res['weight_bytes'] / 1e9:.2f} GB "
                     "of weights)")
        lines.append("| run | peak RSS GiB | tree peak GiB | load s | CPU s | wall s | notes |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for name, run in res["runs"].items():
            r = run.get("result") or {}
            if run["failure"]:
                note = run["failure"]
            elif name == "reference":
                note = f"{r.get('dtype')}, {r.get('prompt_tokens')} prompt tokens, " \
                       f"{r.get('new_tokens')} new"
            else:
                note = f"cache {r.get('cache')}, audio {r.get('audio')}"
            lines.append(f"| {name} | {_gib(run['peak_rss_bytes'])} | "
                         f"{_gib(run['tree_peak_rss_bytes'])} | {_s(run.get('load_s'))} | "
                         f"{_s(run['cpu_s'])} | {_s(run['wall_s'])} | {note} |")
        parts = []
        for key, label in (("rss", "vlm/ref peak RSS"), ("load", "vlm/ref load"),
                           ("cpu", "vlm/ref CPU"), ("second_rss", "second/first peak RSS")):
            r = res["ratios"][key]
            v = "n/a" if r["value"] is None else f"{r['value']:.2f}"
            mark = "" if r["met"] is None else (" ok" if r["met"] else " MISSED")
            parts.append(f"{label} {v} (≤ {r['target']}){mark}")
        lines.append("ratios: " + "; ".join(parts))
        same = {True: "yes", False: "NO", None: "n/a"}[res["same_answer"]]
        lines.append(f"same 16-token answer from all three runs: {same}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_reference"]:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(_reference(argv[1], argv[2], argv[3])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen,videollava",
                    help="comma-separated: qwen, videollava")
    ap.add_argument("--scale", choices=("full", "small"), default="full")
    ap.add_argument("--keep", action="store_true",
                    help="reuse checkpoints already written under --data")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per run (default 7200 full, 600 small)")
    ap.add_argument("--write-only", action="store_true", help="write checkpoints and clip only")
    ap.add_argument("--estimate", action="store_true",
                    help="print the shard sizes the checkpoints would have; write no weights")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from {MODELS}")
    timeout = args.timeout or (7200.0 if args.scale == "full" else 600.0)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.estimate:
        import tempfile

        DRY_RUN["on"] = True
        for model in models:
            with tempfile.TemporaryDirectory() as tmp:
                WRITERS[model](Path(tmp) / "ckpt", args.scale)
            plan = DRY_RUN["plan"]
            print(f"{NAMES[model]} ({args.scale}): {sum(plan) / 1e9:.2f} GB in {len(plan)} "
                  f"shards ({', '.join(f'{b / 1e9:.2f}' for b in plan)} GB)")
        return
    clip = make_clip(args.data)
    results = []
    for model in models:
        t0 = time.perf_counter()
        ckpt = checkpoint(args.data, model, args.scale, args.keep)
        log(f"[{model}] checkpoint {ckpt} ({weight_bytes(ckpt) / 1e9:.2f} GB, "
            f"{time.perf_counter() - t0:.0f} s)")
        if args.write_only:
            continue
        results.append(run_model(model, ckpt, clip, args.data, args.scale, timeout, log))
    if args.write_only:
        return
    report = {"scale": args.scale, "clip": str(clip), "question": QUESTION, "frames": FRAMES,
              "max_new_tokens": MAX_NEW_TOKENS, "cpus": os.cpu_count(), "results": results}
    (args.data / f"results-{args.scale}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
