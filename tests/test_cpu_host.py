"""The CPU settings every engine runs under (engines.runtimes.cpu_host): denormals flushed in
torch, OpenVINO and ONNX Runtime (values, not times), the CPU's identity and FP32 peak."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from engines.runtimes import cpu_host

#: A float32 denormal: below the smallest normal float32 (1.18e-38), above 0.
DENORMAL = np.float32(1e-39)


@contextmanager
def _calling_thread_unflushed() -> Iterator[None]:
    """The calling thread's FTZ / DAZ off for a control (torch's flag is that thread's MXCSR,
    which a runtime running on the calling thread would inherit), restored after."""
    import torch

    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        assert cpu_host.flush_denormals() is True


def _denormal_input() -> np.ndarray:
    return np.full((1, 2, 6, 8, 8), DENORMAL, dtype=np.float32)



def test_torch_conv_flushes_denormals_under_the_apps_settings() -> None:
    import torch

    conv = torch.nn.Conv3d(2, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(0.05)  # a denormal x 0.05 x 54 taps is still denormal: kept unless flushed
        x = torch.from_numpy(_denormal_input())
        with _calling_thread_unflushed():
            unflushed = float(conv(x).abs().max())
        assert cpu_host.flush_denormals() is True  # the app's own call (app.main, every engine factory)
        flushed = float(conv(x).abs().max())
    assert 0.0 < unflushed < 1.18e-38, "control: without flushing the result is a denormal"
    assert flushed == 0.0


def _openvino_conv(config: dict) -> float:
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 2, 6, 8, 8], np.float32, name="x")
    w = ops.constant(np.full((2, 2, 3, 3, 3), 0.05, dtype=np.float32))
    y = ops.convolution(x, w, [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1])
    model = ov.Model([y], [x])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", **config})
    return float(np.abs(compiled({0: _denormal_input()})[0]).max())


def test_openvino_conv_flushes_denormals_under_the_apps_settings() -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed here")
    assert _openvino_conv(cpu_host.OPENVINO_CPU_CONFIG) == 0.0
    with _calling_thread_unflushed():
        assert _openvino_conv({"CPU_DENORMALS_OPTIMIZATION": False}) > 0.0, "control: the setting is what flushes"


def _ort_conv(session_options) -> float:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((2, 2, 3, 3, 3), 0.05, dtype=np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 6)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options,
                                providers=["CPUExecutionProvider"])
    return float(np.abs(sess.run(None, {"x": _denormal_input()})[0]).max())


def test_onnxruntime_conv_flushes_denormals_under_the_apps_settings() -> None:
    """ORT's session entry covers its pool threads; the calling thread is flushed by
    :func:`cpu_host.flush_denormals` (as the app calls it first thing: threads started later
    inherit the flag)."""
    import onnxruntime as ort

    with _calling_thread_unflushed():
        plain = ort.SessionOptions()
        plain.intra_op_num_threads = 2
        assert _ort_conv(plain) > 0.0, "control: nothing flushes"
    assert cpu_host.flush_denormals() is True
    assert _ort_conv(cpu_host.ort_session_options(2)) == 0.0


def test_denormals_record_names_every_runtime() -> None:
    cpu_host.flush_denormals()
    record = cpu_host.denormals_record()
    assert record["torch"] is True
    assert "CPU_DENORMALS_OPTIMIZATION" in record["openvino"]
    assert "set_denormal_as_zero" in record["onnxruntime"]


@pytest.mark.parametrize(("vendor", "flags", "per_cycle"), [
    ("GenuineIntel", ["avx2", "fma", "avx512f", "avx512_bf16"], 64),
    ("AuthenticAMD", ["avx2", "fma", "avx512f", "avx512_bf16"], 32),
    ("GenuineIntel", ["avx2", "fma"], 32),
    ("AuthenticAMD", [], 8),
])
def test_fp32_peak_by_vendor_and_flags(vendor: str, flags: list[str], per_cycle: int) -> None:
    ident = {"model": "x", "vendor": vendor, "logical_cores": 2, "mhz": 2300.0, "flags": flags, "signature": "s"}
    peak = cpu_host.fp32_peak_gflops(ident)
    assert peak["flop_per_cycle"] == per_cycle
    assert peak["gflops"] == pytest.approx(2 * 2.3 * per_cycle)
    assert "2 cores x 2.30 GHz" in peak["how"]


def test_cpu_identity_of_this_machine() -> None:
    ident = cpu_host.cpu_identity()
    assert ident["logical_cores"] >= 1 and len(ident["signature"]) == 16
    assert set(ident["flags"]) <= set(cpu_host.VECTOR_FLAGS)
