"""The identity of local weights by the tensors a frozen encoder uses (`weights.tensors_digest`):
tiny safetensors checkpoints written here, sharded with an index and single-file."""

from __future__ import annotations

import builtins
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlm_cli.cache import FeatureCache
from vlm_cli.errors import VlmError
from vlm_cli.hub import resolve_pretrained
from vlm_cli.weights import tensors_digest

TOWERS = ("thinker.visual.", "thinker.audio_tower.")


def tensors(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Three shards: the towers, the thinker's LLM, the talker (bf16 and fp32 tensors)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model-00001-of-00003.safetensors": {
            "thinker.visual.blocks.0.weight": torch.randn(8, 4, generator=g).bfloat16(),
            "thinker.audio_tower.conv.weight": torch.randn(3, 5, generator=g),
            "thinker.visual.patch_embed.bias": torch.randn(4, generator=g)},
        "model-00002-of-00003.safetensors": {
            "thinker.audio_tower.layers.0.weight": torch.randn(6, generator=g).bfloat16(),
            "thinker.model.embed_tokens.weight": torch.randn(16, 4, generator=g)},
        "model-00003-of-00003.safetensors": {
            "talker.model.weight": torch.randn(32, 4, generator=g).bfloat16()},
    }


def write_sharded(directory: Path, shards: dict[str, dict[str, torch.Tensor]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, ts in shards.items():
        save_file(ts, str(directory / name))
    weight_map = {k: name for name, ts in shards.items() for k in ts}
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def write_single(directory: Path, shards: dict[str, dict[str, torch.Tensor]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: t for ts in shards.values() for k, t in ts.items()},
              str(directory / "model.safetensors"))
    return directory


@pytest.fixture(params=["sharded", "single"])
def layout(request):
    return write_sharded if request.param == "sharded" else write_single


def test_digest_ignores_other_tensors_and_their_shard(tmp_path, layout):
    base = tensors_digest(layout(tmp_path / "a", tensors()), TOWERS)
    changed = tensors()
    changed["model-00003-of-00003.safetensors"]["talker.model.weight"] += 1
    changed["model-00002-of-00003.safetensors"]["thinker.model.embed_tokens.weight"] += 1
    assert tensors_digest(layout(tmp_path / "b", changed), TOWERS) == base
    # the same tensors in another sharding (or in one file) have the same identity
    other = write_single if layout is write_sharded else write_sharded
    assert tensors_digest(other(tmp_path / "c", tensors()), TOWERS) == base


def test_digest_unchanged_when_a_shard_without_matching_keys_is_deleted(tmp_path):
    directory = write_sharded(tmp_path / "m", tensors())
    base = tensors_digest(directory, TOWERS)
    (directory / "model-00003-of-00003.safetensors").unlink()
    assert tensors_digest(directory, TOWERS) == base


@pytest.mark.parametrize("change", ["bytes", "dtype", "shape"])
def test_digest_changes_with_a_matching_tensor(tmp_path, layout, change):
    base = tensors_digest(layout(tmp_path / "a", tensors()), TOWERS)
    changed = tensors()
    shard = changed["model-00002-of-00003.safetensors"]
    t = shard["thinker.audio_tower.layers.0.weight"]
    shard["thinker.audio_tower.layers.0.weight"] = {
        "bytes": lambda: t.clone().index_fill_(0, torch.tensor([3]), 7.0),
        "dtype": lambda: t.view(torch.float16),  # same bytes, another dtype
        "shape": lambda: t.reshape(2, 3),  # same bytes, another shape
    }[change]()
    assert tensors_digest(layout(tmp_path / "b", changed), TOWERS) != base


def test_digest_depends_on_the_prefixes(tmp_path):
    directory = write_sharded(tmp_path / "m", tensors())
    assert tensors_digest(directory, ("thinker.visual.",)) != tensors_digest(directory, TOWERS)
    assert tensors_digest(directory, TOWERS) == tensors_digest(directory, TOWERS[::-1])


def test_moved_copy_has_the_same_digest(tmp_path, layout):
    directory = layout(tmp_path / "a", tensors())
    base = tensors_digest(directory, TOWERS, tmp_path / "hashes")
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(directory, moved.parent / "tmp")
    (moved.parent / "tmp").rename(moved)
    assert tensors_digest(moved, TOWERS, tmp_path / "hashes") == base


def count_opens(monkeypatch) -> list[str]:
    """Record the safetensors files that `open` opens (the digest's only reads of them)."""
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith(".safetensors"):
            opened.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opened


def test_memo_avoids_reading_and_is_invalidated_by_a_change(tmp_path, monkeypatch, layout):
    directory, memo_root = layout(tmp_path / "m", tensors()), tmp_path / "hashes"
    opened = count_opens(monkeypatch)
    first = tensors_digest(directory, TOWERS, memo_root)
    assert opened and "model-00003-of-00003.safetensors" not in opened  # the talker's: never
    assert len(list(memo_root.glob("*/*.json"))) == 1
    assert not list(memo_root.glob("*/*.tmp"))
    opened.clear()
    assert tensors_digest(directory, TOWERS, memo_root) == first
    assert opened == []  # memoised: stat only
    # a changed tower tensor (new size / mtime) is noticed and hashed again
    changed = tensors()
    changed["model-00001-of-00003.safetensors"]["thinker.visual.patch_embed.bias"] += 1
    layout(directory, changed)
    for f in directory.iterdir():  # a new mtime even where the clock is coarse
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    second = tensors_digest(directory, TOWERS, memo_root)
    assert opened and second != first
    opened.clear()
    assert tensors_digest(directory, TOWERS, memo_root) == second and opened == []


def test_memo_notices_an_added_file_without_index(tmp_path):
    directory, memo_root = write_single(tmp_path / "m", tensors()), tmp_path / "hashes"
    base = tensors_digest(directory, TOWERS, memo_root)
    save_file({"thinker.visual.extra": torch.ones(2)}, str(directory / "extra.safetensors"))
    assert tensors_digest(directory, TOWERS, memo_root) != base


def test_no_matching_tensor_is_a_one_line_error(tmp_path, layout):
    directory = layout(tmp_path / "m", tensors())
    with pytest.raises(VlmError, match=r"no tensor whose key starts with 'vision_model\.'") as e:
        tensors_digest(directory, ("vision_model.",), tmp_path / "hashes")
    assert "\n" not in str(e.value) and str(directory) in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VlmError, match="no safetensors weights"):
        tensors_digest(tmp_path / "empty", TOWERS)


def test_missing_shard_with_matching_keys_is_named(tmp_path):
    directory = write_sharded(tmp_path / "m", tensors())
    (directory / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(VlmError, match="model-00002-of-00003.safetensors: weight shard missing; "
                                       "it holds thinker.audio_tower.layers.0.weight") as e:
        tensors_digest(directory, TOWERS, tmp_path / "hashes")
    assert "\n" not in str(e.value)
    # a truncated shard is an error too, never a digest of partial data
    directory = write_sharded(tmp_path / "t", tensors())
    shard = directory / "model-00001-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(VlmError, match="truncated"):
        tensors_digest(directory, TOWERS)


def test_resolve_pretrained_without_prefixes_is_unchanged(tmp_path):
    directory = write_sharded(tmp_path / "m", tensors())
    cache = FeatureCache(tmp_path / "vlm")
    path, pinned = resolve_pretrained(str(directory), None, cache.file_digest)
    assert path == directory
    assert pinned == {"weights": {name: cache.file_digest(directory / name)
                                  for name in sorted(tensors())}}


def test_resolve_pretrained_with_prefixes_pins_the_tower_tensors(tmp_path):
    directory = write_sharded(tmp_path / "m", tensors())
    cache = FeatureCache(tmp_path / "vlm")
    _, pinned = resolve_pretrained(str(directory), None, cache.file_digest, prefixes=TOWERS)
    assert pinned == {"tensors": {"prefixes": sorted(TOWERS),
                                  "sha256": tensors_digest(directory, TOWERS)}}
    assert len(list((cache.root / "hashes").glob("*/*.json"))) == 1  # memo beside file_digest's
