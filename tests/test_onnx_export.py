"""``python -m engines.prepare``: ONNX export, ORT-vs-torch agreement, manifest hashes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines.prepare import main, sha256

NETS = ["tc32", "en32sg"]  # one of each kind (two / one downsampling)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, cascade_weights_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("models")
    assert main(["--out", str(out), "--weights", str(cascade_weights_dir), "--networks", *NETS]) == 0
    return out


def test_files_and_manifest_hashes(model_dir: Path, cascade_weights_dir: Path) -> None:
    import onnx

    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert set(manifest["networks"]) == set(NETS)
    assert manifest["opset"] >= 17
    for entry in manifest["networks"].values():
        for fname, digest in entry["sha256"].items():
            assert sha256(model_dir / fname) == digest, fname
        src = cascade_weights_dir / entry["source_npz"]["file"]
        assert sha256(src) == entry["source_npz"]["sha256"]
        assert entry["input"]["axes"] == ["N", "C", "D", "H", "W"]
        assert entry["ort_vs_torch_max_abs"] < 1e-3
        model = onnx.load(str(model_dir / entry["files"]["onnx"]))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        ops = {n.op_type for n in model.graph.node}
        assert "BatchNormalization" not in ops and "ReduceMean" in ops
        dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims[0] == "N" and dims[2:] == ["D", "H", "W"]


def test_folded_files(model_dir: Path) -> None:
    """``<net>.folded.onnx``: batch 5 fixed, D/H/W dynamic, instance norm instead of ReduceMean."""
    import onnx

    manifest = json.loads((model_dir / "manifest.json").read_text())
    for name, entry in manifest["networks"].items():
        path = model_dir / entry["files"]["onnx_folded"]
        assert path.name == f"{name}.folded.onnx" and entry["sha256"][path.name] == sha256(path)
        assert entry["onnx_folded"]["batch"] == 5 and entry["onnx_folded"]["ort_vs_torch_max_abs"] < 1e-3
        model = onnx.load(str(path))
        ops = {n.op_type for n in model.graph.node}
        assert "InstanceNormalization" in ops and "ReduceMean" not in ops and "BatchNormalization" not in ops
        dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == [5, 4, "D", "H", "W"]


def test_ort_matches_torch_on_new_shape(model_dir: Path) -> None:
    """Dynamic axes: a batch size, depth and in-plane size never seen at export time."""
    from engines.runtimes.registry import create_engine

    x = np.random.default_rng(5).standard_normal((3, 4, 15, 24, 28)).astype(np.float32)
    torch_eng = create_engine("torch", model_dir=model_dir, threads=2)
    ort_eng = create_engine("onnxruntime", model_dir=model_dir, threads=2)
    for name in NETS:
        a = torch_eng.run(name, x)
        b = ort_eng.run(name, x)
        assert a.shape == b.shape == (3, 2, 7, 24, 28)
        err = float(np.abs(a - b).max())
        print(f"\n[onnx] {name}: ORT vs torch max|delta| {err:.2e}")
        assert err < 1e-3
    assert ort_eng.describe()["runtime"] == "onnxruntime"
    assert torch_eng.describe()["precision"] == "fp32"


def test_manifest_detects_tampering(model_dir: Path, tmp_path: Path) -> None:
    """The hash check in the first test can fail: a changed byte changes the digest."""
    onnx_file = model_dir / "tc32.onnx"
    copy = tmp_path / "tc32.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert sha256(copy) != manifest["networks"]["tc32"]["sha256"]["tc32.onnx"]
