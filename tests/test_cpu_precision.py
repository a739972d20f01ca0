"""FP32 or BF16 chosen by measurement on this CPU (engines.runtimes.cpu_precision) and what the
engine choice does with it (engines.runtimes.registry)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.runtimes import cpu_precision, registry
from engines.runtimes.cpu_precision import CACHE_FILE, PrecisionChoice, choose_cpu_precision, store

pytest.importorskip("openvino", reason="OpenVINO is not installed here: the precision choice needs it")


@pytest.fixture()
def native_bf16(monkeypatch):
    """Pretend OpenVINO reports native BF16 (the choice then needs a measurement)."""
    from engines.runtimes import openvino_engine

    monkeypatch.setattr(openvino_engine, "cpu_supports_bf16", lambda: True)


def _fake_measure(calls: list, precision: str):
    def measure(role, model_dir, threads):
        calls.append(role)
        return PrecisionChoice(role, precision, f"fake: {precision}", {"fp32": 1.0, "bf16": 0.5}, "measured",
                               cpu_precision._key(threads))  # noqa: SLF001 - the real key
    return measure


def test_measured_once_then_read_from_the_cache(tmp_path: Path, monkeypatch, native_bf16) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cpu_precision, "measure", _fake_measure(calls, "bf16"))
    first = choose_cpu_precision("cascade", tmp_path / "models", tmp_path / "cache", 2)
    second = choose_cpu_precision("cascade", tmp_path / "models", tmp_path / "cache", 2)
    assert calls == ["cascade"] and first.source == "measured" and second.source == "cache"
    assert second.precision == "bf16" and second.seconds == {"fp32": 1.0, "bf16": 0.5}
    # another thread count is another key: measured again
    choose_cpu_precision("cascade", tmp_path / "models", tmp_path / "cache", 1)
    assert calls == ["cascade", "cascade"]
    doc = json.loads((tmp_path / "cache" / CACHE_FILE).read_text())
    assert len(doc["choices"]) == 2


def test_model_folder_entry_wins_and_a_corrupt_cache_is_measured_again(tmp_path: Path, monkeypatch, native_bf16) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cpu_precision, "measure", _fake_measure(calls, "bf16"))
    models, cache = tmp_path / "models", tmp_path / "cache"
    store(models / CACHE_FILE, PrecisionChoice("hd_bet", "fp32", "prepared here", {}, "measured", cpu_precision._key(2)))  # noqa: SLF001
    got = choose_cpu_precision("hd_bet", models, cache, 2)
    assert (got.precision, got.source, calls) == ("fp32", "model folder", [])
    cache.mkdir()
    (cache / CACHE_FILE).write_text("{not json")
    got = choose_cpu_precision("cascade", models, cache, 2)
    assert got.source == "measured" and calls == ["cascade"]
    assert json.loads((cache / CACHE_FILE).read_text())["choices"][0]["role"] == "cascade"


def test_no_native_bf16_is_fp32_without_measuring(tmp_path: Path, monkeypatch) -> None:
    from engines.runtimes import openvino_engine

    monkeypatch.setattr(openvino_engine, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(cpu_precision, "measure", lambda *a: pytest.fail("must not measure"))
    got = choose_cpu_precision("cascade", tmp_path, None, 2)
    assert got.precision == "fp32" and got.source == "cpu flags" and "no native bfloat16" in got.reason


def test_real_measurement_follows_its_own_times(models_dir: Path) -> None:
    """The real probe on this CPU: BF16 exactly when it measured > MIN_GAIN faster."""
    from engines.runtimes.openvino_engine import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native BF16: nothing to measure")
    got = cpu_precision.measure("cascade", models_dir, 2)
    s = got.seconds
    assert s["fp32"] > 0 and s["bf16"] > 0
    assert (got.precision == "bf16") == (s["bf16"] < (1 - cpu_precision.MIN_GAIN) * s["fp32"])
    assert got.key["threads"] == 2 and "wt32.folded.onnx" in got.reason


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_auto_engine_follows_the_measured_precision(models_dir: Path, monkeypatch, precision: str) -> None:
    from engines.runtimes import openvino_engine

    monkeypatch.setattr(openvino_engine, "cpu_supports_bf16", lambda: True)
    record = {"role": "cascade", "precision": precision, "reason": f"measured: {precision} faster", "seconds": {}}
    monkeypatch.setattr(registry, "_cascade_precision", lambda model_dir, cache_dir: record)
    monkeypatch.setattr(registry, "ENGINE_PREFERENCE", ("openvino-folded-bf16", "openvino-folded", "torch"))
    engine, _ = registry.choose_engine("auto", models_dir)
    assert engine.precision_choice == record
    if precision == "bf16":
        assert engine.registry_name == "openvino-folded-bf16" and "BF16 because measured: bf16" in engine.choice_reason
    else:
        assert engine.registry_name == "openvino-folded"
        assert "passed over openvino-folded-bf16 (measured: fp32 faster)" in engine.choice_reason
