"""``bash benchmarks/gpu_check.sh --device cpu --quick``: the GPU measurement's own code, on the CPU.

The same script that measures the FP16 engine on a GPU machine (``benchmarks/results/``) runs
here on a small reference batch, one network and a real case cropped around its tumour, plus
the app end to end on a 12-slice DICOM slab of that case (~3 min on 2 cores). Asserted: every
output file, the promised keys, engines that cannot run here reported as skipped with their
reason, the FP16 engine's labels equal to eager FP32's (on the CPU it computes in FP32), and
the app's stage times with its engine choice and reason. No timing is asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, shared_root

OUTPUTS = ("results.json", "results.md", "latency.png", "memory.png", "quality.png", "stages.png", "gpu_check.log")


#: The default suite's dry run leaves torch.compile (its Inductor compile is minutes of the suite's
#: budget on 2 cores) and the app end to end (tested by test_end_to_end) out; the slow one runs
#: everything, as the device call does.
WITHOUT_COMPILE = ("eager-fp32", "fp16", "tensorrt-fp16")


@pytest.mark.parametrize("engines", [
    pytest.param(WITHOUT_COMPILE, id="without-compile"),
    pytest.param(None, id="every-engine", marks=pytest.mark.slow),
])
def test_gpu_check_quick_on_cpu(engines: tuple[str, ...] | None, models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    # every engine: also the start-up phase (the AOT package of wt32 built on the CPU, ~2-3 min)
    chosen = ["--engines", ",".join(engines), "--no-app"] if engines else ["--aot"]
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--out", str(out), "--device", "cpu", "--quick", "--models", str(models_dir),
         *chosen],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "BRATS_SHARED": str(shared_root())},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert len(list(out.iterdir())) <= 8  # what the GPU tool brings back: 8 files at most

    doc = json.loads((out / "results.json").read_text())
    eng = doc["engines"]
    assert doc["protocol"]["device"] == "cpu" and doc["protocol"]["quick"]
    for name in ("eager-fp32", "fp16") if engines else ("eager-fp32", "fp16", "compile-fp32"):
        assert eng[name]["status"] == "ok", eng[name]
        lat = eng[name]["latency"]["wt32"]
        assert {"mean", "p50", "p95", "first_call_s", "samples_s"} <= set(lat) and lat["n"] == doc["protocol"]["runs"]
    assert eng["tensorrt-fp16"]["status"] == "skipped" and "tensorrt" in eng["tensorrt-fp16"]["reason"].lower()
    if engines:
        assert "compile-fp32" not in eng
    else:
        assert "case_note" in eng["compile-fp32"] and not eng["compile-fp32"]["case"]
    assert eng["fp16"]["describe"]["runtime"] == "torch-cpu-half"
    assert doc["flops_gflop"]["wt32"]["5x4x19x32x32"] > 0

    q = doc["quality"]
    for name in ("eager-fp32", "fp16"):
        g = q[name]["all"]["vs_ground_truth"]
        assert set(g) == {"WT", "TC", "ET"} and {"dice", "hd95", "sensitivity"} <= set(g["WT"])
    # On the CPU the FP16 engine computes in FP32: its labels are eager FP32's.
    assert q["fp16"]["all"]["label_agreement_brain"] >= 0.999
    assert all(abs(d) <= 0.001 for d in q["fp16"]["all"]["delta_dice_vs_eager_fp32"].values())

    reg = doc["registration"]
    assert reg["status"] == "ok" and reg["runs"][0]["wall_s"] > 0, reg
    assert reg["runs"][0]["corner_error_mm"] < 3.0  # one coarse level: close, not the 1 mm protocol

    aot = doc["aot_start"]
    if engines:  # the CPU's default: not asked for, and it says so
        assert aot["status"] == "skipped" and "--aot" in aot["reason"]
    else:  # built once, then loaded -- not built -- by a fresh process
        assert aot["status"] == "ok", aot
        assert list(aot["build"]["packages"]) == ["wt32"] and aot["build"]["packages"]["wt32"]["package_bytes"] > 0
        (start,) = aot["starts"]["aot"]
        assert start["aot_packages"]["wt32"]["package"] == "loaded"
        assert set(aot["summary"]) == {"jit-cold", "aot"}
        assert "## The FP16 engine's start in a fresh process" in (out / "results.md").read_text()

    goals = doc["summary"]["goals"]
    assert set(goals) == {"speedup_vs_eager", "speedup_vs_compile", "peak_allocated_ratio", "abs_delta_dice",
                          "label_agreement", "end_to_end_s", "end_to_end_cold_s", "end_to_end_warm_p95_s",
                          "networks_per_case_s", "labels_vs_cpu_abs_delta_dice"}
    assert goals["peak_allocated_ratio"]["measured"] is None  # no GPU memory on a CPU run
    md = (out / "results.md").read_text()
    for heading in ("## Model only (MPA table 2)", "## Quality on the case (MPA table 1)", "## Goals (FP16 engine)"):
        assert heading in md
    if engines:  # --no-app
        assert doc["app"].get("status") != "ok" and goals["end_to_end_s"]["measured"] is None
        return
    assert "## The app end to end" in md
    app = doc["app"]["app"]
    assert app["status"] == "ok", app
    (run,) = app["runs"]
    assert run["exit_code"] == 0 and run["status"] == "ok"
    assert {"load", "select", "register_and_resample", "segment", "write_seg"} <= set(run["stages_s"])
    # No CUDA here: the requested FP16 engine is passed over, and the report says why.
    assert "torch-cuda-fp16" in run["choice_reason"] and run["engine"] != "torch-cuda-fp16"
    direct = doc["app"]["direct"]  # the stages without Holoscan: one cold process, one warm study
    assert direct["status"] == "ok", direct
    assert direct["cold"]["process_wall_s"]["n"] == 1 and direct["warm"]["study_wall_s"]["n"] == 1
    assert direct["warm"]["stages_s"]["network"]["p50"] > 0
    assert goals["end_to_end_cold_s"]["measured"] == direct["cold"]["process_wall_s"]["p50"]
    assert goals["networks_per_case_s"]["measured"] == direct["warm"]["stages_s"]["network"]["p50"]
    # the slab's labels against the expert's; the CPU reference is of the whole case: not compared
    assert set(direct["labels"]["dice_vs_expert"]) == {"WT", "TC", "ET"}
    assert direct["labels"]["vs_cpu_path"]["status"] == "skipped" and goals["labels_vs_cpu_abs_delta_dice"]["measured"] is None
    assert "### The stages without Holoscan" in md


def test_the_registration_phase_runs_without_simpleitk(brats_dir: Path) -> None:
    """The GPU image has no SimpleITK (it travels, repacked, in .gpu-carry; a device call sent
    without it still measures the registration): the phase, in a process where importing
    SimpleITK (or pydicom) fails, still registers and measures."""
    import sys

    script = f"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("SimpleITK", "pydicom"):
            raise ModuleNotFoundError(f"{{name}} is blocked in this test", name=name)
sys.meta_path.insert(0, Block())
import argparse
from pathlib import Path
from benchmarks.gpu_check import Budget, registration_timing
args = argparse.Namespace(case=Path({str(brats_dir / "Brats18_TCIA01_201_1")!r}), quick=True, device="cpu")
res = registration_timing(args, Budget(None))
res["loaded"] = sorted(m for m in ("SimpleITK", "pydicom") if m in sys.modules)
print(json.dumps(res))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["status"] == "ok" and not res["loaded"], res
    (run,) = res["runs"]
    assert run["wall_s"] > 0 and run["corner_error_mm"] < 3.0 < res["untouched_corner_error_mm"], res


def test_direct_phase_cold_from_fresh_processes_and_warm_without_each_process_first_study(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app.direct phase's aggregation, its processes replaced by stand-ins: cold from the
    fresh processes' wall (the build process not counted), warm from the later studies of the
    warm process only (its first study is that process' cold one), a table row per stage."""
    import argparse

    import benchmarks.gpu_check_e2e as e2e
    from benchmarks.gpu_check_measure import Budget
    from benchmarks.gpu_check_report import direct_lines

    calls: list[int] = []

    def fake_direct(studies, out, args, work, env):  # one process: its wall and a run per study
        calls.append(len(studies))
        walls = [30.0] + [1.0 + 0.1 * k for k in range(1, len(studies))] if len(studies) > 1 else [4.0 + len(calls)]
        runs = [{"wall_s": w, "exit_code": 0, "breakdown_s": {"load": 0.1, "network": w - 0.1},
                 "output": str(out / str(k))} for k, w in enumerate(walls)]
        return {"exit_code": 0, "process_wall_s": 100.0 if len(calls) == 1 else sum(walls) + 2.0, "runs": runs}

    monkeypatch.setattr(e2e, "missing_modules", lambda names: [])
    monkeypatch.setattr(e2e, "_direct", fake_direct)
    compared: list[tuple[Path, Path, bool]] = []
    monkeypatch.setattr(e2e, "labels_against_references",
                        lambda output, root, whole_case: compared.append((output, root, whole_case)) or {"dice": 1})
    args = argparse.Namespace(e2e_build=True, e2e_cold=2, e2e_warm=4, quick=False)
    res = e2e.direct_end_to_end(args, tmp_path / "study" / "dicom", Budget(None), "auto", tmp_path)
    assert calls == [1, 1, 1, 4]  # build, two cold processes, one warm process of four studies
    # the labels of the first cold process' study (not the build's), against the whole case's reference
    assert compared == [(tmp_path / "direct-cold0" / "0", tmp_path / "study", True)] and res["labels"] == {"dice": 1}
    assert res["cold"]["process_wall_s"]["n"] == 2 and res["cold"]["process_wall_s"]["max"] < 100.0  # build left out
    assert res["warm"]["study_wall_s"]["n"] == 3 and res["warm"]["study_wall_s"]["max"] < 2.0  # 30 s first study left out
    md = "\n".join(direct_lines(res))
    assert "| network |" in md and "| load |" in md and "**process, start to exit**" in md
    assert "skipped: no SimpleITK" in "\n".join(direct_lines({"status": "skipped", "reason": "no SimpleITK"}))

    def unreadable(output, root, whole_case):
        raise OSError("segmentation.dcm: truncated")

    monkeypatch.setattr(e2e, "labels_against_references", unreadable)  # the timings stand; the reason is said
    res = e2e.direct_end_to_end(args, tmp_path / "study" / "dicom", Budget(None), "auto", tmp_path)
    assert res["status"] == "ok" and res["labels"]["status"] == "failed" and "truncated" in res["labels"]["reason"]
    assert "Labels not compared: OSError" in "\n".join(direct_lines(res))
