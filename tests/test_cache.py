"""Feature cache: root resolution, atomic writes, integrity checks, concurrency, prune/clear."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
import torch

from vlm_cli.cache import FeatureCache, cache_root, feature_key, parse_size
from vlm_cli.errors import CacheError, MediaError


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("VLM_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "vlm"
    monkeypatch.setenv("VLM_HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home"
    monkeypatch.delenv("VLM_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "vlm"


def test_key_depends_on_every_part():
    base = feature_key("a" * 64, {"model": "m", "layer": -2}, {"frames": 8})
    assert base == feature_key("a" * 64, {"layer": -2, "model": "m"}, {"frames": 8})
    assert base != feature_key("b" * 64, {"model": "m", "layer": -2}, {"frames": 8})
    assert base != feature_key("a" * 64, {"model": "m", "layer": -1}, {"frames": 8})
    assert base != feature_key("a" * 64, {"model": "m", "layer": -2}, {"frames": 16})


def test_put_get_roundtrip_with_provenance(tmp_path):
    cache = FeatureCache(tmp_path)
    tensors = {"features": torch.randn(8, 16, 64), "timestamps": torch.arange(8.0).double()}
    cache.put("ab" * 32, tensors, {"media": "x.mp4", "modality": "vision"})
    got, prov = cache.get("ab" * 32)
    assert torch.equal(got["features"], tensors["features"])
    assert prov["media"] == "x.mp4" and "created" in prov
    assert cache.get("cd" * 32) is None
    assert not list(tmp_path.rglob("*.tmp"))
    cache.put("ef" * 32, {}, {"modality": "audio", "audio": "absent"})  # an explicit absence
    assert cache.get("ef" * 32) == ({}, cache.get("ef" * 32)[1])
    assert cache.verify("ef" * 32)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_entry_is_reported_removed_and_missed(tmp_path, damage):
    reports = []
    cache = FeatureCache(tmp_path, on_corrupt=lambda p, why: reports.append((p, why)))
    key = "12" * 32
    path = cache.put(key, {"features": torch.randn(4, 32)}, {"media": "x"})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-20]
    elif damage == "flip":
        data[-3] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(b"not a safetensors file at all")
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert cache.get(key) is None
    assert len(reports) == 1 and reports[0][0] == path
    assert not path.exists()


@pytest.mark.parametrize("damage", ["truncate", "pad", "garbage", "empty", "flip"])
def test_verify_reads_the_header_only(tmp_path, damage):
    """``verify`` (a warm preprocess's check) catches a damaged header or size from the header
    alone; a flipped payload byte passes it and is caught where the tensors are read."""
    reports = []
    cache = FeatureCache(tmp_path, on_corrupt=lambda p, why: reports.append((p, why)))
    key = "34" * 32
    path = cache.put(key, {"features": torch.randn(64, 32)}, {"media": "x"})
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data = {"truncate": data[:-20], "pad": data + b"\0" * 4, "garbage": bytearray(b"no" * 9),
            "empty": bytearray()}.get(damage, data)
    if damage == "flip":
        data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    read = []
    real_open = open
    class Counting:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()
        def read(self, n=-1):
            out = self.f.read(n)
            read.append(len(out))
            return out
        def fileno(self):
            return self.f.fileno()
    with pytest.MonkeyPatch.context() as m:
        m.setattr("builtins.open", lambda p, *a, **k: Counting(real_open(p, *a, **k)))
        assert cache.verify(key) is (damage == "flip")
    assert sum(read) <= header * (1 if damage == "flip" else 2)  # read again under the lock
    if damage == "flip":
        assert not reports and cache.get(key) is None
    assert len(reports) == 1 and reports[0][0] == path and not path.exists()


def test_file_digest_is_memoised_by_stat(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "c")
    media = tmp_path / "clip.bin"
    media.write_bytes(b"x" * 1000)
    first = cache.file_digest(media)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (reads.append(p), real_open(p, *a, **k))[1])
    assert cache.file_digest(media) == first
    assert str(media) not in map(str, reads)
    monkeypatch.undo()
    media.write_bytes(b"y" * 1000)
    os.utime(media, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache.file_digest(media) != first
    with pytest.raises(MediaError, match="file not found"):
        cache.file_digest(tmp_path / "missing.mp4")


def _writer(root: str, n: int, seed: int) -> None:
    cache = FeatureCache(Path(root))
    for i in range(n):
        key = f"{i:064x}"
        cache.put(key, {"features": torch.full((64, 64), float(i))}, {"writer": seed})


def test_concurrent_writers_leave_valid_entries(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 30, s)) for s in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = FeatureCache(tmp_path)
    for i in range(30):
        tensors, _ = cache.get(f"{i:064x}")
        assert torch.equal(tensors["features"], torch.full((64, 64), float(i)))
    assert not list(tmp_path.rglob("*.tmp"))


def test_prune_and_clear(tmp_path):
    cache = FeatureCache(tmp_path)
    now = time.time()
    for i in range(4):
        path = cache.put(f"{i:064x}", {"f": torch.zeros(1024)}, {"i": i})  # ~4 KiB each
        os.utime(path, (now - (4 - i) * 86400, now - (4 - i) * 86400))  # entry 0 is oldest
    size = next(cache.entries()).size
    removed = cache.prune(older_than_s=2.5 * 86400)
    assert sorted(e.metadata["i"] for e in removed) == [0, 1]
    removed = cache.prune(max_size=size)
    assert [e.metadata["i"] for e in removed] == [2]
    assert [e.metadata["i"] for e in cache.entries()] == [3]
    assert len(cache.clear()) == 1 and not list(cache.entries())


def test_parse_size():
    assert parse_size("1024") == 1024
    assert parse_size("500M") == 500 << 20
    assert parse_size("1.5GiB") == int(1.5 * (1 << 30))
    with pytest.raises(CacheError, match="--max-size"):
        parse_size("lots")


def test_unwritable_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot use cache directory"):
        FeatureCache(blocker / "sub")


def test_cache_writes_skip_fsync_other_atomic_writes_do_not(tmp_path, monkeypatch):
    """Entries and hash memos verify themselves on read (a torn one is recomputed, see
    test_corrupt_entry_is_reported_removed_and_missed), so they cost no disk flush; every other
    atomic write (checkpoints, models, reports) is fsynced before its rename."""
    from vlm_cli.atomic import atomic_write_bytes

    flushed = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(fd), real_fsync(fd)))
    cache = FeatureCache(tmp_path / "home")
    media = tmp_path / "clip.bin"
    media.write_bytes(b"x" * 100)
    cache.file_digest(media)
    cache.put("34" * 32, {"features": torch.randn(2, 8)}, {"media": "x"})
    assert flushed == [] and cache.get("34" * 32) is not None
    atomic_write_bytes(tmp_path / "out" / "model.safetensors", b"weights")
    assert len(flushed) == 1


def test_random_encoder_keys_pin_the_installed_torch():
    """A seeded random encoder's cache key names the torch release (its random init depends on
    it), read without importing importlib.metadata: the same string as the installed metadata."""
    import importlib.metadata

    from vlm_cli.model.fingerprint import _torch_version

    assert _torch_version() == importlib.metadata.version("torch")
