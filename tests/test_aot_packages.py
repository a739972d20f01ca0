"""Ahead-of-time packages of the networks (engines.runtimes.aot_packages, ``torch-cuda-fp16-aot``).

Default suite: the key, the files and their checks, with torch's export / AOTInductor calls
replaced by stand-ins (a real build takes minutes on a small CPU). ``-m slow``: one real
network built on the CPU by ``engines.prepare --gpu --device cpu``, then loaded -- not built --
by a fresh process, equal to PyTorch eager.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.runtimes import aot_packages as A

REPO = Path(__file__).resolve().parents[1]


def _key(**changes: str) -> A.AotKey:
    fields = dict(network="tc32", weights_sha256="ab" * 32, graph="plain", precision="fp16",
                  memory_format="channels_last_3d", device="cuda: NVIDIA H200", device_features="9.0",
                  driver="580.159.03", cuda="13.0", torch="2.11.0")
    return A.AotKey(**{**fields, **changes})


def test_key_digest_depends_on_every_field() -> None:
    base = _key()
    assert base.digest() == _key().digest() and len(base.digest()) == 16
    for field in dataclasses.fields(A.AotKey):
        other = dataclasses.replace(base, **{field.name: getattr(base, field.name) + "x"})
        assert other.digest() != base.digest(), field.name


def test_cpu_identity_names_the_cpu_and_no_gpu_stack() -> None:
    ident = A.device_identity(torch.device("cpu"))
    assert ident["device"].startswith("cpu: ") and len(ident["device"]) > 5
    assert ident["driver"] == "" and ident["cuda"] == ""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2 " in flags:
        assert "avx2" in ident["device_features"].split()


def test_state_hash_changes_with_one_weight() -> None:
    net = torch.nn.Conv3d(2, 2, 3)
    before = A.state_sha256(net)
    assert A.state_sha256(net) == before
    with torch.no_grad():
        net.weight[0, 0, 0, 0, 0] += 1e-6
    assert A.state_sha256(net) != before


class _FakeInductor:
    """Stand-ins for torch.export.export / aoti_compile_and_package / aoti_load_package."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.loaded: list[str] = []
        self.compiled = 0
        monkeypatch.setattr(torch.export, "export", lambda module, args, dynamic_shapes: ("exported", dynamic_shapes))
        monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", self.compile)
        monkeypatch.setattr(torch._inductor, "aoti_load_package", self.load)
        self.fail = fail

    def compile(self, exported: object, package_path: str) -> str:
        self.compiled += 1
        Path(package_path).write_bytes(b"half written")
        if self.fail:
            raise RuntimeError("C++ compiler failed")
        Path(package_path).write_bytes(b"package bytes %d" % self.compiled)
        return package_path

    def load(self, path: str) -> object:
        self.loaded.append(path)
        return lambda x: x


def test_build_stores_package_and_sidecar_and_load_checks_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeInductor(monkeypatch)
    key = _key()
    A.build_package(torch.nn.Identity(), torch.zeros(5, 4, 19, 96, 96), tmp_path, key)
    package, sidecar = A.package_paths(tmp_path, key)
    meta = json.loads(sidecar.read_text())
    assert meta["key"] == dataclasses.asdict(key) and meta["package_sha256"] == A.file_sha256(package)
    assert [p.name for p in (tmp_path / "aot").iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert A.load_package(tmp_path, key) is not None and fake.loaded[-1] == str(package)

    n_loads = len(fake.loaded)
    other = dataclasses.replace(key, driver="590.1")
    assert A.load_package(tmp_path, other) is None  # another driver: its own file, absent
    meta_other = {**meta, "key": dataclasses.asdict(other)}
    sidecar.write_text(json.dumps(meta_other))
    assert A.load_package(tmp_path, key) is None  # sidecar of another key under this name
    sidecar.write_text(json.dumps(meta))
    package.write_bytes(b"package bytes 2")  # replaced: the SHA-256 no longer matches
    assert A.load_package(tmp_path, key) is None
    sidecar.unlink()
    assert A.load_package(tmp_path, key) is None
    assert len(fake.loaded) == n_loads  # nothing that failed a check was handed to torch

    compiled, how, _ = A.load_or_build(torch.nn.Identity, torch.zeros(1), tmp_path, key)
    assert how == "built" and fake.compiled == 2
    assert A.load_or_build(torch.nn.Identity, torch.zeros(1), tmp_path, key)[1] == "loaded"


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _FakeInductor(monkeypatch, fail=True)
    with pytest.raises(RuntimeError, match="compiler failed"):
        A.build_package(torch.nn.Identity(), torch.zeros(1), tmp_path, _key())
    assert list((tmp_path / "aot").iterdir()) == []


def test_shapes_symbolic_in_multiples_of_four_over_every_patch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    _FakeInductor(monkeypatch)
    monkeypatch.setattr(torch.export, "export", lambda module, args, dynamic_shapes: seen.append(dynamic_shapes))
    A.build_package(torch.nn.Identity(), torch.zeros(1), tmp_path, _key())
    (dims,) = seen[0]  # type: ignore[misc]
    assert sorted(dims) == [3, 4]  # N and D static (the protocol's 5 x 19), H and W symbolic
    # Every in-plane patch the cascade can feed (each stage and view, boxes up to the 240 grid,
    # exact or in a bucket of 16) lies in the packages' range, a multiple of 4.
    from engines.model import cascade as C

    for stage in C.STAGES.values():
        for base in {n for hw in stage.patch_hw.values() for n in hw}:
            for size in range(1, 241):
                for bucket in (None, 16):
                    patch = C.inplane_patch(size, base, bucket=bucket)
                    assert A.MIN_HW <= patch <= A.MAX_HW and patch % 4 == 0, (base, size, bucket, patch)


def test_aot_engine_is_registered_and_needs_cuda(models_dir: Path) -> None:
    from engines.runtimes.base import EngineUnavailable
    from engines.runtimes.registry import ENGINE_PREFERENCE, available_engines, create_engine

    assert "torch-cuda-fp16-aot" in available_engines()
    assert "torch-cuda-fp16-aot" not in ENGINE_PREFERENCE  # not chosen by auto until measured on a GPU
    if not torch.cuda.is_available():
        with pytest.raises(EngineUnavailable, match="no CUDA"):
            create_engine("torch-cuda-fp16-aot", model_dir=models_dir)
    cpu = create_engine("torch-cuda-fp16-aot", model_dir=models_dir, device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="aot=True"):
        create_engine("torch-cuda-fp16", model_dir=models_dir, device="cpu").load_packages(["tc32"])
    assert cpu.describe()["compile"].startswith("AOTInductor")


@pytest.mark.slow  # builds one network's package on the CPU: about 2 minutes on 2 cores
def test_package_built_once_then_loaded_by_a_fresh_process(tmp_path: Path, models_dir: Path) -> None:
    cache = tmp_path / "cache"
    build = subprocess.run([sys.executable, "-m", "engines.prepare", "--out", str(models_dir), "--gpu",
                            "--device", "cpu", "--networks", "tc32", "--cache-dir", str(cache)],
                           cwd=REPO, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-2000:]
    assert "built" in build.stderr and len(list((cache / "aot").glob("tc32-*.pt2"))) == 1
    script = f"""
import json, numpy as np
from pathlib import Path
from engines.runtimes.registry import create_engine
e = create_engine("torch-cuda-fp16-aot", model_dir=Path({str(models_dir)!r}), cache_dir=Path({str(cache)!r}),
                  device="cpu", precision="fp32")
x = np.random.default_rng(0).standard_normal((5, 4, 19, 108, 96)).astype(np.float32)
ref = create_engine("torch", model_dir=Path({str(models_dir)!r})).run("tc32", x)
y = e.run("tc32", x)
print(json.dumps({{"source": e.aot_sources["tc32"], "max_abs": float(np.abs(y - ref).max()),
                  "ref_scale": float(np.abs(ref).max())}}))
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["source"]["package"] == "loaded"  # a later process loads, never compiles
    assert out["max_abs"] < 1e-3 * max(1.0, out["ref_scale"])  # FP32 package against eager FP32
    assert np.isfinite(out["max_abs"])
