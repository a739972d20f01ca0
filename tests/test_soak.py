"""Soak (issue 7, load): many studies in one process and in successive processes; memory
must not grow. The two soaks are slow (``-m slow``; one structural check of the cause found
runs by default): 20 studies each way by default (``SOAK_STUDIES=N`` to change), small slab
studies (12 slices, FLAIR + T1ce: registration and the full cascade still run).

* In one process: the application's entry point (``app.main.main``, the Holoscan graph
  composed and run afresh) once per study, all in one interpreter that holds nothing else
  (:mod:`tests.soak_driver`); its RSS after each study (after ``gc.collect()``).
* In successive processes: ``python -m app`` once per study; each child's own peak RSS
  (``VmHWM``, polled until it exits; see :func:`_peak_rss_until_exit`).

Both: RSS after any later study at most 5 % above the RSS after the second one (the first
study pays the one-off costs: imports, engine sessions, allocator pools).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app_runner import REPO_ROOT, raise_stack_limit

CASES = ["Brats18_TCIA01_201_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA02_370_1", "Brats18_TCIA13_623_1"]
SLAB = (70, 82)
GROWTH_LIMIT = 1.05
N_STUDIES = int(os.environ.get("SOAK_STUDIES", "20"))


@pytest.fixture(scope="module")
def soak_studies(brats_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """N small studies (different cases and seeds, so different UIDs and content)."""
    from samples.make_study import make_study

    root = tmp_path_factory.mktemp("soak")
    studies = []
    for i in range(N_STUDIES):
        out = root / f"study_{i:02d}"
        make_study(brats_dir / CASES[i % len(CASES)], out, drop=("t1", "t2"), seed=i, slices=SLAB)
        studies.append(out / "dicom")
    return studies


def _peak_rss_until_exit(proc: subprocess.Popen, poll_s: float = 0.25) -> int:
    """The child's own peak RSS (``VmHWM``, bytes), read until it exits.

    Not ``wait4``'s ``ru_maxrss``: Linux starts a forked child's maxrss at the parent's RSS
    and keeps it across ``execve``, so it reports the (large) test process, not the app.
    ``VmHWM`` belongs to the address space made by ``execve``; it only grows, so the last
    reading before exit is the peak (to within ``poll_s`` of the end of the run).
    """
    import time

    status = Path(f"/proc/{proc.pid}/status")
    peak = 0
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):  # exited between poll() and read
            pass
        time.sleep(poll_s)
    assert peak > 0, "no VmHWM reading of the app process"
    return peak


def _check_growth(rss: list[int], what: str) -> None:
    mib = [round(r / 2**20, 1) for r in rss]
    print(f"\n{what} RSS (MiB) per study: {mib}")
    assert len(rss) >= 3, "need at least 3 studies"
    baseline = rss[1]
    worst = max(rss[2:])
    assert worst <= GROWTH_LIMIT * baseline, (
        f"{what}: RSS grew from {baseline / 2**20:.1f} MiB after study 2 to {worst / 2**20:.1f} MiB ({mib})"
    )


def test_no_operator_refers_to_the_app(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No operator of the composed graph refers back to the application (not quick to see in
    the soak, so checked here on the graph alone; nothing runs).

    Holoscan's C++ graph keeps the operators alive and the app keeps the graph: an operator
    that refers to the app (a bound method of it, say) closes a cycle that Python's garbage
    collector cannot see through C++, and every app run in the process stays in memory
    (+23 MiB per study in the one-process soak, when the report writer held
    ``app._build_report``).
    """
    import gc

    from app.app import BrainTumorSegApp

    (tmp_path / "in").mkdir()
    monkeypatch.setattr(sys, "argv", ["app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                      "-m", str(models_dir)])
    app = BrainTumorSegApp()
    app.compose()

    def reaches_app(obj: object, depth: int, seen: set[int]) -> bool:
        if obj is app:
            return True
        if depth == 0 or id(obj) in seen:
            return False
        seen.add(id(obj))
        return any(reaches_app(r, depth - 1, seen) for r in gc.get_referents(obj))

    nodes = app.graph.get_nodes()
    assert len(nodes) == 6
    assert [n.name for n in nodes if reaches_app(vars(n), 4, set())] == []


@pytest.mark.slow  # reason: 20 full app runs (registration + cascade) in one process
def test_soak_in_one_process_rss_does_not_grow(soak_studies: list[Path], models_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tests.soak_driver", "--models", str(models_dir), "--out", str(tmp_path),
           *map(str, soak_studies)]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=raise_stack_limit)
    records = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("SOAK ")]
    assert proc.returncode == 0 and len(records) == len(soak_studies), (
        f"driver exit {proc.returncode} after {len(records)} studies: {(tmp_path / 'log.txt').read_text()[-3000:]}"
    )
    for r in records:
        out = tmp_path / f"out_{r['study']:02d}"
        assert r["exit_code"] == 0
        assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "report.json", "segmentation.dcm", "volumes_sr.dcm"]
    print(f"\nseconds per study: {[r['seconds'] for r in records]}")
    _check_growth([r["rss_bytes"] for r in records], "one process")


@pytest.mark.slow  # reason: 20 app processes (registration + cascade each)
def test_soak_in_successive_processes_peak_rss_does_not_grow(
    soak_studies: list[Path], models_dir: Path, tmp_path: Path
) -> None:
    peaks: list[int] = []
    for i, study_dir in enumerate(soak_studies):
        out = tmp_path / f"out_{i:02d}"
        cmd = [sys.executable, "-m", "app", "-i", str(study_dir), "-o", str(out), "-m", str(models_dir)]
        with open(tmp_path / f"log_{i:02d}.txt", "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=raise_stack_limit)
            peak = _peak_rss_until_exit(proc)
        assert proc.returncode == 0, (tmp_path / f"log_{i:02d}.txt").read_text()[-3000:]
        assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "report.json", "segmentation.dcm", "volumes_sr.dcm"]
        peaks.append(peak)
    _check_growth(peaks, "successive processes (peak)")


@pytest.mark.parametrize("env_value", [None, "3"])
def test_malloc_arena_cap(env_value: str | None) -> None:
    """The app caps glibc's arenas at max(2, usable CPUs), unless MALLOC_ARENA_MAX is set."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if env_value is not None:
        env["MALLOC_ARENA_MAX"] = env_value
    code = "from app.memory import limit_malloc_arenas; print(limit_malloc_arenas())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ("None" if env_value else str(max(2, len(os.sched_getaffinity(0)))))
