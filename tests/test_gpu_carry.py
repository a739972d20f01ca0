"""What travels to a GPU machine (:mod:`benchmarks.gpu_carry`): the stages without Holoscan
(``python -m app.direct``) run with the GPU image's packages and the carried ones alone, and the
bundle ``stage_gpu_carry.sh`` makes fits the 64 MiB a device call sends.

The GPU image is stood in for by this environment's files of the image's distributions
(:mod:`tests.gpu_image`), under ``python -S``: a module outside them does not import.
"""
from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from benchmarks.gpu_carry import (
    CARRY_LIMIT_BYTES,
    GPU_IMAGE_DISTRIBUTIONS,
    RUNNER_CARRIED,
    archive_packages,
    travelling_size,
    unpack,
)
from tests.gpu_image import REPO, isolated_python, link_distributions

_CLOSURE = """
import json, sys, app.direct
print(json.dumps({n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if "." not in n}))
"""


@pytest.fixture(scope="module")
def gpu_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = tmp_path_factory.mktemp("gpu-image")
    found = link_distributions(GPU_IMAGE_DISTRIBUTIONS, image)
    assert {"torch", "numpy", "scipy", "scikit-image", "matplotlib", "pillow"} <= found
    return image


@pytest.fixture(scope="module")
def carried(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runner's carried distributions, the files this environment installed from the same
    pinned wheels ``stage_gpu_carry.sh`` downloads."""
    folder = tmp_path_factory.mktemp("carried")
    assert link_distributions(RUNNER_CARRIED, folder) == set(RUNNER_CARRIED)
    return folder


def test_the_runner_imports_from_the_gpu_image_and_the_carry_alone(gpu_image: Path, carried: Path) -> None:
    without = isolated_python(["-c", "import app.direct"], [REPO, gpu_image])
    assert without.returncode != 0
    assert any(f"No module named '{m}'" in without.stderr for m in ("SimpleITK", "pydicom", "highdicom")), \
        without.stderr[-1500:]
    proc = isolated_python(["-c", _CLOSURE], [REPO, gpu_image, carried])
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not {"holoscan", "monai"} & set(files)  # neither the scheduler nor the Deploy SDK
    for module in ("SimpleITK", "pydicom", "highdicom"):  # each needed, each from the carry
        assert files[module] and Path(files[module]).is_relative_to(carried), module
    assert files["numpy"] and Path(files["numpy"]).is_relative_to(gpu_image)


def test_the_runner_keeps_its_failure_contract_with_only_the_image_and_the_carry(
        gpu_image: Path, carried: Path, small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    """A study whose T1ce lost a slice: read (pydicom), selected, then refused where the series
    are put on one grid (SimpleITK) -- exit 2, only the failed report, as under the full
    environment (tests/test_app_failures.py)."""
    from tests.slab_studies import copy_study, files_of, series_dir

    study = copy_study(small_study, tmp_path / "s")
    files_of(series_dir(study, "t1ce"))[6].unlink()
    out = tmp_path / "out"
    proc = isolated_python(["-m", "app.direct", "-i", str(study), "-o", str(out), "-m", str(models_dir)],
                           [REPO, gpu_image, carried], timeout=300)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    report = json.loads((out / "report.json").read_text())
    assert (report["status"], report["error_code"]) == ("failed", "inconsistent_geometry")


def _wheel(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def _tar_xz(path: Path, root: Path) -> Path:
    with tarfile.open(path, "w:xz", preset=1) as tar:
        for p in sorted(root.iterdir()):
            tar.add(p, arcname=p.name)
    return path


def test_archives_are_unpacked_once_and_only_where_the_python_lacks_them(tmp_path: Path) -> None:
    carry = tmp_path / "carry"
    (carry / "wheels").mkdir(parents=True)
    _wheel(carry / "wheels" / "carrytestpkg-1.0-py3-none-any.whl",
           {"carrytestpkg/__init__.py": "X = 1\n", "carrytestpkg-1.0.dist-info/RECORD": ""})
    # an archive of a module this Python has (json): never put in front of it
    _wheel(carry / "wheels" / "json-9.9-py3-none-any.whl", {"json/__init__.py": "raise SystemExit('shadowed')\n"})
    src = tmp_path / "native"
    (src / "carrynative").mkdir(parents=True)
    (src / "carrynative" / "__init__.py").write_text("Y = 2\n")
    (src / "carrynative-2.0.dist-info").mkdir()
    _tar_xz(carry / "wheels" / "carrynative-2.0.tar.xz", src)
    (carry / "wheels" / "notes.txt").write_text("not an archive")

    assert archive_packages(carry / "wheels" / "carrynative-2.0.tar.xz") == {"carrynative"}
    listed = carry / "wheels" / "listed-1.0.tar.xz"  # the staged list is read, the stream is not
    listed.write_bytes(b"not xz")
    Path(f"{listed}.top_level").write_text("listedpkg\nlisted-1.0.dist-info\n")
    assert archive_packages(listed) == {"listedpkg"}
    listed.unlink()
    site = tmp_path / "site"
    folders = unpack(carry, site)
    assert [f.name for f in folders] == ["carrynative-2.0.tar.xz", "carrytestpkg-1.0-py3-none-any.whl"]
    both = "import carrynative, carrytestpkg, json; print(carrynative.Y + carrytestpkg.X)"
    check = subprocess.run([sys.executable, "-c", both],
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, folders))},
                           capture_output=True, text=True)
    assert check.stdout.strip() == "3", check.stderr
    marker = folders[0] / "carrynative" / "__init__.py"
    marker.write_text("Y = 5\n")  # a second unpack of the same archive leaves the folder alone
    assert unpack(carry, site) == folders and marker.read_text() == "Y = 5\n"


def test_the_size_counts_the_tree_and_the_carried_folders_but_not_what_git_ignores(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text("/big/\n/.carry/\n")
    (repo / "tracked.txt").write_bytes(b"a" * 1000)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    (repo / "untracked.txt").write_bytes(b"b" * 500)
    (repo / "big").mkdir()
    (repo / "big" / "ignored.bin").write_bytes(b"c" * 10_000)
    (repo / ".carry" / "wheels").mkdir(parents=True)
    (repo / ".carry" / "wheels" / "w.whl").write_bytes(b"d" * 3000)
    gitignore = len((repo / ".gitignore").read_bytes())
    sizes = travelling_size(repo, [Path(".carry")])
    assert sizes == {"working tree": 1500 + gitignore, ".carry": 3000, "total": 4500 + gitignore}


@pytest.fixture(scope="module")
def staged_carry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bash benchmarks/stage_gpu_carry.sh`` for real: downloads the pinned wheels, xz-compresses
    SimpleITK (~2-3 min on 2 cores)."""
    carry = tmp_path_factory.mktemp("staged") / "gpu-carry"
    staged = subprocess.run(["bash", "benchmarks/stage_gpu_carry.sh"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "GPU_CARRY": str(carry)}, timeout=1200)
    assert staged.returncode == 0, staged.stderr[-3000:]
    return carry


@pytest.mark.slow  # the staging (~3 min) and a 12-slice study through the runner (~2 min)
def test_the_staged_bundle_fits_and_the_runner_segments_with_it(
        gpu_image: Path, staged_carry: Path, small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    sizes = travelling_size(REPO, [staged_carry])
    print(f"\n[carry] MiB: { {k: round(v / 2**20, 1) for k, v in sizes.items()} }")
    assert sizes["total"] <= CARRY_LIMIT_BYTES
    site = tmp_path / "site"
    # the image's own packages (as there): only the archives of what it lacks are unpacked
    unpacked = isolated_python(["-m", "benchmarks.gpu_carry", "unpack", "--carry", str(staged_carry),
                                "--site", str(site)], [REPO, gpu_image])
    assert unpacked.returncode == 0, unpacked.stderr[-2000:]
    folders = [Path(p) for p in unpacked.stdout.strip().split(os.pathsep)]
    assert sorted(f.name.split("-")[0] for f in folders) == sorted(
        ["hf_deepali", "highdicom", "monai", "nibabel", "pydicom", "simpleitk"])
    with lzma.open(next((staged_carry / "wheels").glob("simpleitk-*.tar.xz"))) as f:
        assert f.read(1)  # a valid xz stream
    out = tmp_path / "out"
    run = isolated_python(["-m", "app.direct", "-i", str(small_study), "-o", str(out), "-m", str(models_dir)],
                          [REPO, gpu_image, *folders], timeout=1200)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert json.loads((out / "report.json").read_text())["status"] == "ok"
    assert {"segmentation.dcm", "volumes_sr.dcm"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow  # the device call's own command, quick, on the CPU (~6 min with the staging shared)
def test_the_device_call_runs_the_stages_in_the_stand_in_image(
        gpu_image: Path, staged_carry: Path, models_dir: Path, tmp_path: Path) -> None:
    """``bash benchmarks/gpu_check.sh`` as the device call runs it -- the image's Python (a
    virtual environment of the stand-in's packages), the staged carry, no ../shared -- quick
    on the CPU: the carry is unpacked there, ``python -m app`` is skipped for Holoscan alone,
    ``app.direct`` runs cold and warm."""
    from tests.gpu_image import image_venv

    python = image_venv(tmp_path / "venv", gpu_image)
    out = tmp_path / "gpu-check"
    env = {k: v for k, v in os.environ.items() if k not in ("BRATS_SHARED", "PYTHONPATH")}
    env |= {"GPU_CHECK_PYTHON": str(python), "GPU_CARRY": str(staged_carry), "GPU_CARRY_SITE": str(tmp_path / "site"),
            "BRATS_SHARED": str(staged_carry / "shared")}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--out", str(out), "--device", "cpu", "--quick",
                           "--models", str(models_dir), "--engines", "eager-fp32,fp16"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["registration"]["status"] == "ok", doc["registration"]
    app = doc["app"]["app"]
    assert app["status"] == "skipped" and "holoscan" in app["reason"] and "SimpleITK" not in app["reason"], app
    direct = doc["app"]["direct"]
    assert direct["status"] == "ok", direct
    assert direct["cold"]["process_wall_s"]["n"] == 1 and direct["warm"]["study_wall_s"]["n"] == 1
    # the SEG read back and scored with the carried SimpleITK / highdicom / MONAI; a slab: no CPU comparison
    assert set(direct["labels"]["dice_vs_expert"]) == {"WT", "TC", "ET"}
    assert direct["labels"]["vs_cpu_path"]["status"] == "skipped"
    assert (tmp_path / "site" / next(staged_carry.glob("wheels/simpleitk-*.tar.xz")).name / "SimpleITK").is_dir()
