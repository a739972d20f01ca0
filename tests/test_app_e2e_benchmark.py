"""The end-to-end app benchmark (``python -m benchmarks.app_e2e``): its statistics, and one
real run on a slab study (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.app_e2e import main, summarise


def _report(registration: float, network: float, other: float) -> dict:
    return {"stage_breakdown_s": {"registration": registration, "resampling": 1.0, "network": network,
                                  "seg": other}, "segmentation": {"engine": {"name": "openvino"}}}


def test_summary_percentiles_shares_and_amdahl_bound() -> None:
    reports = [_report(4.0, 10.0, 1.0), _report(6.0, 12.0, 1.0), _report(5.0, 11.0, 1.0)]
    s = summarise([20.0, 22.0, 21.0], reports)
    assert s["stages_s"]["registration"]["p50"] == 5.0
    assert s["stages_s"]["network"]["p50"] == 11.0
    assert s["stages_s"]["registration"]["p95"] == pytest.approx(5.9)  # linear interpolation of 4, 5, 6
    # p50 total = 5 + 1 + 11 + 1 = 18; without the network 7 -> bound 18 / 7
    assert s["amdahl_bound_zero_time_network"] == pytest.approx(18 / 7)
    assert s["registration_and_resampling_share"] == pytest.approx(6 / 18)
    assert sum(s["stage_share_of_p50_total"].values()) == pytest.approx(1.0)
    assert s["wall_s"]["p50"] == 21.0 and s["engine"] == "openvino"


@pytest.mark.slow  # one app run on a 12-slice study: ~40 s on 2 cores
def test_app_e2e_benchmark_runs_the_app(small_study: Path, models_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--study", str(small_study), "--models", str(models_dir), "--out", str(tmp_path),
                 "--runs", "1", "--warmup", "0"]) == 0
    doc = json.loads((tmp_path / "app_e2e.json").read_text())
    assert doc["runs"] == 1 and doc["stages_s"]["network"]["p50"] > 0
    assert doc["wall_s"]["p50"] > doc["stages_total_p50_s"] * 0.5  # the process does the stages' work
    assert (tmp_path / "app_e2e.png").stat().st_size > 10_000
    assert "zero-time network bound" in capsys.readouterr().out
