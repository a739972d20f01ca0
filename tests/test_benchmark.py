"""The engine benchmark (benchmarks.run): output files and the promised keys. No timing asserts.

* default suite: ``--quick`` on one real case cropped around the tumour, OpenVINO (the
  fastest CPU engine here) + torch, latency on a small batch (``--latency-shape``), the
  cascade end to end with OpenVINO only, on 48 x 48 smoke patches (``--quick`` implies
  ``--smoke-patches``; under a minute on 2 cores);
* ``slow``: the same with the real 5 x 4 x 19 x 144 x 144 reference batch and torch end to
  end as well, so that the quality delta vs FP32 is filled (the torch cascade alone takes
  several minutes on 2 cores, hence slow).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BRATS_CASES

MANIFEST_PARTS = ("hardware", "runtime_versions", "precision", "input_protocol", "latency_protocol", "quality_delta")


@pytest.fixture(scope="module")
def one_case(brats_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a link to exactly one real case (the benchmark takes a folder of cases)."""
    d = tmp_path_factory.mktemp("cases")
    (d / BRATS_CASES[3]).symlink_to(brats_dir / BRATS_CASES[3], target_is_directory=True)
    return d


@pytest.fixture(scope="module")
def bench_models(models_dir: Path) -> Path:
    """The session's model folder (built once for the whole suite)."""
    return models_dir


def _check_outputs(out: Path, engines: list[str], with_reference_quality: bool) -> dict:
    for f in ("results.json", "deployment_manifest.json", "tables.md", "latency.png", "memory.png", "end_to_end.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    for name in engines:
        r = res["engines"][name]
        assert r["status"] == "ok", r
        (lat,) = r["latency"].values()
        assert {"p50", "p95", "max", "samples_s", "warmup_s"} <= set(lat)
        assert r["peak_rss_mb"] > 0
    assert "openvino" in res["speedup_vs_torch"]
    assert res["engines"]["tensorrt"]["status"] in ("ok", "skipped")
    if res["engines"]["tensorrt"]["status"] == "skipped":
        assert res["engines"]["tensorrt"]["reason"]
    row = res["engines"]["openvino"]["e2e"][0]
    assert {"load", "preprocess", "infer", "postprocess", "total_wall", "total_cpu", "amdahl_bound"} <= set(row)
    q = res["quality"]["per_case"]["openvino"][0]
    assert set(q["vs_ground_truth"]) == {"WT", "TC", "ET"}
    assert {"dice", "hd95", "sensitivity"} <= set(q["vs_ground_truth"]["WT"])
    if with_reference_quality:
        assert set(q["vs_fp32_reference"]) == {"WT", "TC", "ET"}
        assert set(res["quality"]["delta_dice_vs_fp32"]["openvino"]["all"]) == {"WT", "TC", "ET"}
    manifest = json.loads((out / "deployment_manifest.json").read_text())
    assert set(MANIFEST_PARTS) <= set(manifest)
    assert manifest["hardware"].get("cpu_model")
    assert manifest["latency_protocol"]["warmup"] == res["protocol"]["warmup"]
    tables = (out / "tables.md").read_text()
    for heading in ("## Latency", "## Memory", "## End to end", "## Quality against ground truth", "ΔDice"):
        assert heading in tables
    assert res["model_sizes"]["onnx"]["total_mb"] > 0
    return res


@pytest.mark.slow  # the CPU benchmark end to end (~30 s; default suite at its 15-min budget); the GPU check's
# dry run (tests/test_gpu_check.py) runs the shared measurement code, tests/test_engines.py every engine it times
def test_benchmark_quick_smoke(one_case: Path, bench_models: Path, tmp_path: Path) -> None:
    from benchmarks.run import main

    out = tmp_path / "bench"
    rc = main(["--cases", str(one_case), "--engines", "openvino,tensorrt", "--out", str(out), "--models",
               str(bench_models), "--quick", "--latency-shape", "5,4,19,32,32", "--e2e-engines", "openvino"])
    assert rc == 0
    _check_outputs(out, ["torch", "openvino"], with_reference_quality=False)


@pytest.mark.slow
def test_benchmark_quick_with_reference(one_case: Path, bench_models: Path, tmp_path: Path) -> None:
    """Slow (torch eager runs the whole cascade too: several minutes on 2 cores)."""
    from benchmarks.run import main

    out = tmp_path / "bench"
    rc = main(["--cases", str(one_case), "--engines", "openvino,tensorrt", "--out", str(out), "--models",
               str(bench_models), "--quick"])
    assert rc == 0
    res = _check_outputs(out, ["torch", "openvino"], with_reference_quality=True)
    assert res["protocol"]["reference_batch"] == [5, 4, 19, 144, 144]


def test_load_case_reads_nifti_in_simpleitk_order(brats_dir: Path) -> None:
    """The benchmarks read NIfTI with nibabel (GPU machines have no SimpleITK): same arrays,
    axis order (Z, Y, X) and spacing as SimpleITK gives."""
    import numpy as np
    import SimpleITK as sitk

    from benchmarks.run import load_case

    case = brats_dir / BRATS_CASES[1]
    vols, seg, spacing = load_case(case)
    img = sitk.ReadImage(str(case / f"{case.name}_t1ce.nii.gz"))
    assert vols.shape == (4, *sitk.GetArrayFromImage(img).shape)
    assert np.array_equal(vols[2], sitk.GetArrayFromImage(img))
    assert np.array_equal(seg, sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{case.name}_seg.nii.gz"))))
    assert spacing == tuple(img.GetSpacing()[::-1])


def test_progress_lines_count_steps_and_estimate_the_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    """Each finished step prints a line; the time left is the remaining latency batches at their
    mean, plus the remaining cases at 5 latency batches each until a case has run, then at theirs."""
    from benchmarks.run import Progress

    p = Progress("torch", latency_jobs=2, cases=2)
    p.done("latency", 10.0, "wt32")
    p.done("latency", 20.0, "en32")
    p.done("case", 100.0, "case-1 all")
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[1].split()[:2] for ln in lines] == [["latency", "1/4"], ["latency", "2/4"], ["case", "3/4"]]
    assert lines[0].endswith("~1.8 min left for this engine")  # 1 x 10 s + 2 cases x 5 x 10 s = 110 s
    assert lines[1].endswith("~2.5 min left for this engine")  # 2 cases x 5 x 15 s = 150 s
    assert lines[2].endswith("~1.7 min left for this engine")  # 1 case x 100 s = 100 s
