"""Engine cache (engines.runtimes.engine_cache): keys, invalidation, corrupt files, atomic writes.

Pure Python with a fake builder / deserialiser: no TensorRT, no GPU.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from engines.atomic_write import write_bytes_atomically
from engines.runtimes import engine_cache as EC


def _key(**over: str) -> EC.CacheKey:
    base = dict(network="wt32", model_sha256="a" * 64, gpu_name="NVIDIA H100 80GB HBM3",
                compute_capability="9.0", trt_version="10.3.0", precision="fp16",
                shape_profile="slabs:min=1x4x9x16x16,opt=5x4x19x180x160,max=5x4x19x240x240")
    base.update(over)
    return EC.CacheKey(**base)


class FakeBuilder:
    """Counts builds; the 'engine' is the payload decoded back to text."""

    def __init__(self, payload: bytes = b"PLAN-v1") -> None:
        self.payload = payload
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.payload


def fake_deserialize(payload: bytes) -> str | None:
    """Accepts only payloads that look like our fake plans (as TensorRT returns None otherwise)."""
    return payload.decode() if payload.startswith(b"PLAN") else None


def test_key_digest_is_stable_and_every_field_matters() -> None:
    k = _key()
    assert k.digest() == _key().digest()
    assert k.filename().startswith("wt32-fp16-") and k.filename().endswith(".engine")
    for f in dataclasses.fields(EC.CacheKey):
        other = dataclasses.replace(k, **{f.name: getattr(k, f.name) + "x"})
        assert other.digest() != k.digest(), f.name
        assert other.filename() != k.filename(), f.name


def test_miss_builds_then_hit_loads(tmp_path: Path) -> None:
    cache = EC.EngineCache(tmp_path)
    b = FakeBuilder()
    first = cache.load_or_build(_key(), b, fake_deserialize)
    assert first.built and first.reason == "missing" and first.engine == "PLAN-v1" and b.calls == 1
    second = cache.load_or_build(_key(), b, fake_deserialize)
    assert not second.built and second.reason == "hit" and second.engine == "PLAN-v1" and b.calls == 1
    assert first.path == second.path and first.path.parent == tmp_path


@pytest.mark.parametrize(
    "field",
    ["model_sha256", "gpu_name", "compute_capability", "trt_version", "precision", "shape_profile"],
)
def test_each_key_part_invalidates(tmp_path: Path, field: str) -> None:
    """A changed model / GPU / CC / TensorRT / precision / profile never reuses the old plan,
    also when a stale file sits under the new key's name (e.g. copied between machines)."""
    cache = EC.EngineCache(tmp_path)
    old = _key()
    cache.load_or_build(old, FakeBuilder(b"PLAN-old"), fake_deserialize)
    new = dataclasses.replace(old, **{field: getattr(old, field) + "-changed"})
    # Plant the old file under the new name: the header check must catch it.
    cache.path_for(new).write_bytes(cache.path_for(old).read_bytes())
    b = FakeBuilder(b"PLAN-new")
    out = cache.load_or_build(new, b, fake_deserialize)
    assert out.built and b.calls == 1 and out.engine == "PLAN-new"
    assert "key mismatch" in out.reason and field in out.reason
    assert cache.load_or_build(new, b, fake_deserialize).reason == "hit"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "foreign_header", "bad_plan"])
def test_corrupt_or_foreign_file_is_rebuilt(tmp_path: Path, damage: str) -> None:
    cache = EC.EngineCache(tmp_path)
    key = _key()
    cache.load_or_build(key, FakeBuilder(), fake_deserialize)
    path = cache.path_for(key)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-3])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01 not an engine at all" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign_header":
        path.write_bytes(EC.MAGIC + EC._LEN.pack(5) + b'{"a":' + b"PLAN-v1")
    elif damage == "bad_plan":
        # Valid envelope, but the runtime refuses the payload (deserialisation returns None).
        path.write_bytes(EC.encode(key, b"NOT-A-PLAN"))
    b = FakeBuilder(b"PLAN-rebuilt")
    out = cache.load_or_build(key, b, fake_deserialize)
    assert out.built and b.calls == 1 and out.engine == "PLAN-rebuilt", out.reason
    assert EC.decode(path.read_bytes(), key) == b"PLAN-rebuilt"


def test_deserializer_exception_means_rebuild(tmp_path: Path) -> None:
    cache = EC.EngineCache(tmp_path)
    key = _key()
    cache.store(key, b"PLAN-v1")
    calls = {"n": 0}

    def flaky(payload: bytes) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("serialization version mismatch")
        return payload.decode()

    out = cache.load_or_build(key, FakeBuilder(b"PLAN-v2"), flaky)
    assert out.built and "deserialisation failed" in out.reason and out.engine == "PLAN-v2"


def test_fresh_build_that_cannot_be_loaded_raises_and_stores_nothing(tmp_path: Path) -> None:
    cache = EC.EngineCache(tmp_path)
    with pytest.raises(RuntimeError, match="could not be deserialised"):
        cache.load_or_build(_key(), FakeBuilder(b"JUNK"), fake_deserialize)
    assert not cache.path_for(_key()).exists()


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.engine"
    write_bytes_atomically(target, b"one")
    write_bytes_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.engine"]


def test_atomic_write_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.engine"
    write_bytes_atomically(target, b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(EC.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.engine"], "temporary file left behind"


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert EC.default_cache_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv("HOLOSCAN_WORKDIR", str(tmp_path / "work"))
    assert EC.default_cache_dir() == tmp_path / "work" / "engine-cache"
    monkeypatch.delenv("HOLOSCAN_WORKDIR")
    assert EC.default_cache_dir().name == "engines"


def test_file_sha256(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "m.onnx"
    f.write_bytes(os.urandom(3 << 20))
    assert EC.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
