"""On-disk cache of built inference engines (TensorRT plans), pure Python.

A built TensorRT engine is only valid for the exact model, GPU, compute capability,
TensorRT version, precision and shape profile it was built for. This module keys, stores
and validates such blobs without importing TensorRT, so all of its logic is unit-tested on
machines without a GPU (``tests/test_engine_cache.py``).

File format (one file per key)::

    b"BRATSENG"                 8-byte magic
    uint32 little-endian        length L of the JSON header
    L bytes                     JSON header: {"format", "key": CacheKey fields,
                                "payload_sha256", "payload_bytes"}
    payload                     the serialised engine

A file is used only when the magic, the format version, every key field and the payload
SHA-256 match; otherwise (truncated, corrupt, foreign, stale) it is rebuilt. Files are
written atomically (temporary file in the same folder, ``fsync``, ``os.replace``), so a
crash never leaves a half-written file under the final name and concurrent readers see
either the old or the new file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from engines.atomic_write import write_bytes_atomically

log = logging.getLogger(__name__)

MAGIC = b"BRATSENG"
FORMAT = "brats-engine-cache/1"
_LEN = struct.Struct("<I")

T = TypeVar("T")


class CacheError(Exception):
    """A cache file that cannot be used (corrupt, foreign, stale); the caller rebuilds."""


@dataclass(frozen=True)
class CacheKey:
    """Everything a built engine depends on.

    Attributes
    ----------
    network
        Network name (``wt32`` ...).
    model_sha256
        SHA-256 of the source model file (the ONNX file).
    gpu_name
        e.g. ``"NVIDIA H100 80GB HBM3"``.
    compute_capability
        e.g. ``"9.0"``.
    trt_version
        TensorRT version string, e.g. ``"10.3.0"``.
    precision
        ``"fp16"`` or ``"fp32"``.
    shape_profile
        Canonical text of the optimisation profile, e.g.
        ``"slabs:min=1x4x19x96x96,opt=5x4x19x96x96,max=5x4x19x240x240"``.
    """

    network: str
    model_sha256: str
    gpu_name: str
    compute_capability: str
    trt_version: str
    precision: str
    shape_profile: str

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of all fields."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def filename(self) -> str:
        """``<network>-<precision>-<digest[:20]>.engine``: readable and unique per key."""
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in self.network)
        return f"{safe}-{self.precision}-{self.digest()[:20]}.engine"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir(explicit: Path | str | None = None) -> Path:
    """``explicit``, else ``$HOLOSCAN_WORKDIR/engine-cache``, else ``~/.cache/brats-seg/engines``."""
    if explicit:
        return Path(explicit)
    work = os.environ.get("HOLOSCAN_WORKDIR")
    if work:
        return Path(work) / "engine-cache"
    return Path.home() / ".cache" / "brats-seg" / "engines"


def encode(key: CacheKey, payload: bytes) -> bytes:
    """The on-disk bytes for ``payload`` under ``key`` (see the module docstring)."""
    header = json.dumps({
        "format": FORMAT,
        "key": asdict(key),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_bytes": len(payload),
    }, sort_keys=True).encode()
    return MAGIC + _LEN.pack(len(header)) + header + payload


def decode(data: bytes, key: CacheKey) -> bytes:
    """The payload of a cache file's bytes; raises :class:`CacheError` unless it fits ``key``."""
    if len(data) < len(MAGIC) + _LEN.size or not data.startswith(MAGIC):
        raise CacheError("not an engine-cache file (bad magic)")
    (n,) = _LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if start + n > len(data):
        raise CacheError("truncated header")
    try:
        header = json.loads(data[start : start + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise CacheError(f"unreadable header ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CacheError(f"foreign format {header.get('format') if isinstance(header, dict) else header!r}")
    stored = header.get("key")
    if stored != asdict(key):
        diff = sorted(k for k, v in asdict(key).items() if not isinstance(stored, dict) or stored.get(k) != v)
        raise CacheError(f"key mismatch in {diff}")
    payload = data[start + n :]
    if len(payload) != header.get("payload_bytes"):
        raise CacheError(f"payload size {len(payload)} != {header.get('payload_bytes')} (truncated)")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise CacheError("payload checksum mismatch (corrupt)")
    return payload



@dataclass
class CacheOutcome(Generic[T]):
    """What :meth:`EngineCache.load_or_build` did.

    Attributes
    ----------
    engine
        The deserialised engine.
    path
        Its cache file.
    built
        True when it was (re)built, False when loaded from the cache.
    reason
        Why it was built (``"missing"``, or the :class:`CacheError` / deserialisation
        failure text), ``"hit"`` when loaded.
    seconds
        Time spent building or loading.
    """

    engine: T
    path: Path
    built: bool
    reason: str
    seconds: float


class EngineCache:
    """A folder of engine files keyed by :class:`CacheKey`.

    Parameters
    ----------
    root
        Cache folder (created on first write); see :func:`default_cache_dir`.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path_for(self, key: CacheKey) -> Path:
        """The cache file of ``key``."""
        return self.root / key.filename()

    def load(self, key: CacheKey) -> bytes:
        """The stored payload of ``key``; :class:`CacheError` (missing, corrupt, stale, foreign)."""
        path = self.path_for(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise CacheError("missing") from exc
        return decode(data, key)

    def store(self, key: CacheKey, payload: bytes) -> Path:
        """Atomically write ``payload`` under ``key``; returns the path."""
        path = self.path_for(key)
        write_bytes_atomically(path, encode(key, payload))
        return path

    def load_or_build(
        self,
        key: CacheKey,
        build: Callable[[], bytes],
        deserialize: Callable[[bytes], Any],
    ) -> CacheOutcome[Any]:
        """Load the engine of ``key``, or build, store and load it.

        Parameters
        ----------
        build
            Returns the serialised engine (called only on a miss / invalid file).
        deserialize
            Turns payload bytes into the engine; it must raise or return ``None`` on bytes
            it cannot use (TensorRT's ``deserialize_cuda_engine`` returns ``None``): the
            file is then rebuilt.
        """
        t0 = time.perf_counter()
        path = self.path_for(key)
        reason = "missing"
        try:
            payload = self.load(key)
            engine = deserialize(payload)
            if engine is None:
                raise CacheError("deserialisation returned None")
            log.info("engine cache hit %s (%.2f s)", path.name, time.perf_counter() - t0)
            return CacheOutcome(engine, path, False, "hit", time.perf_counter() - t0)
        except CacheError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - any deserialisation failure means rebuild
            reason = f"deserialisation failed: {type(exc).__name__}: {exc}"
        if reason != "missing":
            log.warning("engine cache %s unusable (%s): rebuilding", path.name, reason)
        payload = build()
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            payload = bytes(payload)  # e.g. TensorRT IHostMemory supports the buffer protocol
        payload = bytes(payload)
        engine = deserialize(payload)
        if engine is None:
            raise RuntimeError(f"freshly built engine for {key.network} could not be deserialised")
        self.store(key, payload)
        dt = time.perf_counter() - t0
        log.info("engine cache: built %s (%s) in %.1f s", path.name, reason, dt)
        return CacheOutcome(engine, path, True, reason, dt)
