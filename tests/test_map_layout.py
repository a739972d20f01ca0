"""Run the app exactly as the MAP does, without Docker.

A folder laid out like the image (``<root>/opt/holoscan/app`` = the self-contained app folder
of the build context from ``package.sh --context-only``, ``<root>/opt/holoscan/models`` = the
packager's models folder, ``<root>/var/holoscan/{app.yaml,input,output}``), the command of
``app.json`` (``python3 <app folder>``, the venv's python, cwd = the image's WORKDIR), only the
``HOLOSCAN_*`` variables of the Dockerfile (re-rooted under ``<root>``), no ``-i/-o/-m``, and
``/opt/holoscan`` read-only (``chmod -R a-w``).

Read-only permissions do not stop root. When the tests run as root, the app runs as root
*without* the capabilities that bypass file permissions (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH and CAP_FOWNER are dropped from its bounding set before exec), so the
modes apply to it as to any user. (Switching to ``nobody`` is not possible here: the venv's
interpreter lives under ``/root``, mode 0700.) :func:`test_read_only_app_folder_is_enforced`
checks that a write into the app folder really fails under these conditions.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_packaging import build_context

PR_CAPBSET_DROP = 24
CAPS_BYPASSING_PERMISSIONS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _as_unprivileged() -> None:
    """preexec_fn: 32 MB stack (Holoscan's recommendation); as root, drop the capabilities
    that ignore file modes."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 1024 * 1024
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in CAPS_BYPASSING_PERMISSIONS:
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")


class MapLayout:
    """``<root>`` laid out like the MAP image."""

    def __init__(self, root: Path, context: Path) -> None:
        self.root = root
        self.app = root / "opt/holoscan/app"
        self.models = root / "opt/holoscan/models"
        self.workdir = root / "var/holoscan"
        self.input = self.workdir / "input"
        self.output = self.workdir / "output"
        shutil.copytree(context / "app", self.app)
        shutil.copytree(context / "models", self.models)
        (root / "etc/holoscan").mkdir(parents=True)
        for name in ("app.json", "pkg.json"):
            shutil.copyfile(context / "map" / name, root / "etc/holoscan" / name)
        self.input.mkdir(parents=True)
        self.output.mkdir()
        shutil.copyfile(context / "app.config", self.workdir / "app.yaml")
        self._set_writable(False)

    def _set_writable(self, writable: bool) -> None:
        for path in [self.root / "opt/holoscan", *sorted((self.root / "opt/holoscan").rglob("*"))]:
            mode = path.stat().st_mode
            bits = stat.S_IWUSR if writable else 0
            path.chmod((mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) | bits)

    def cleanup(self) -> None:
        self._set_writable(True)

    def env(self) -> dict[str, str]:
        """The Dockerfile's HOLOSCAN_* variables, re-rooted (and nothing else)."""
        return {
            "HOLOSCAN_INPUT_PATH": str(self.input),
            "HOLOSCAN_OUTPUT_PATH": str(self.output),
            "HOLOSCAN_WORKDIR": str(self.workdir),
            "HOLOSCAN_APPLICATION": str(self.app),
            "HOLOSCAN_TIMEOUT": "0",
            "HOLOSCAN_MODEL_PATH": str(self.models),
            "HOLOSCAN_DOCS_PATH": str(self.root / "opt/holoscan/docs"),
            "HOLOSCAN_CONFIG_PATH": str(self.workdir / "app.yaml"),
            "HOLOSCAN_APP_MANIFEST_PATH": str(self.root / "etc/holoscan/app.json"),
            "HOLOSCAN_PKG_MANIFEST_PATH": str(self.root / "etc/holoscan/pkg.json"),
            "HOLOSCAN_LOGS_PATH": str(self.workdir / "logs"),
        }

    def command(self) -> list[str]:
        """app.json's command with python3 = the venv's interpreter and the re-rooted app."""
        command = json.loads(json.loads((self.root / "etc/holoscan/app.json").read_text())["command"])
        assert command == ["python3", "/opt/holoscan/app"]
        return [sys.executable, str(self.app)]

    def run(self, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(), cwd=self.workdir, env=self.env(), capture_output=True, text=True,
            timeout=timeout, preexec_fn=_as_unprivileged,
        )

    def app_snapshot(self) -> dict[str, tuple[int, int, int]]:
        return {str(p.relative_to(self.root)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns)
                for p in [self.app, *sorted((self.root / "opt/holoscan").rglob("*"))]}


@pytest.fixture(scope="module")
def map_context(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("map-layout-context")
    proc = build_context(models_dir, work)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work / "context"


@pytest.fixture
def layout(map_context: Path, tmp_path: Path):
    lay = MapLayout(tmp_path / "root", map_context)
    yield lay
    lay.cleanup()


def test_read_only_app_folder_is_enforced(layout: MapLayout) -> None:
    """The protection the other tests rely on: the app's process cannot write there."""
    probe = "import sys; open(sys.argv[1], 'w')"
    proc = subprocess.run([sys.executable, "-c", probe, str(layout.app / "probe.txt")],
                          env=layout.env(), capture_output=True, text=True, preexec_fn=_as_unprivileged)
    assert proc.returncode != 0 and "PermissionError" in proc.stderr, proc.stderr[-1000:]
    assert not (layout.app / "probe.txt").exists()
    # ... while the output folder is writable for it.
    proc = subprocess.run([sys.executable, "-c", probe, str(layout.output / "probe.txt")],
                          env=layout.env(), capture_output=True, text=True, preexec_fn=_as_unprivileged)
    assert proc.returncode == 0, proc.stderr[-1000:]
    (layout.output / "probe.txt").unlink()


def test_unusable_study_exits_2_with_only_the_report(layout: MapLayout, shared_dir: Path) -> None:
    """A study with no MR series (a SEG object and a text file): exit 2, report.json only,
    written to /var/holoscan/output; nothing written inside /opt/holoscan."""
    (layout.input / "notes.txt").write_text("not DICOM")
    src = shared_dir / "data/dicom-seg-reference/dcmqi/liver.dcm"
    shutil.copyfile(src, layout.input / "seg.dcm")
    before = layout.app_snapshot()
    proc = layout.run(timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-4000:]
    assert sorted(p.name for p in layout.output.iterdir()) == ["report.json"]
    report = json.loads((layout.output / "report.json").read_text())
    assert report["status"] == "failed" and report["error_code"] == "no_study"
    assert "\n" not in report["error"]
    assert layout.app_snapshot() == before, "the app wrote inside /opt/holoscan"
    assert not list(layout.app.rglob("__pycache__"))
    # The settings came from the MAP's config file and the nested model folder was found.
    assert str(layout.workdir / "app.yaml") in log
    assert str(layout.models / "brats17-cascade") in log


@pytest.mark.slow  # the whole pipeline on CPU: 10+ minutes on the 2-core build machine
def test_full_study_succeeds_in_the_map_layout(layout: MapLayout, brats_dir: Path, tmp_path: Path) -> None:
    from samples.make_study import make_study

    make_study(brats_dir / "Brats18_TCIA01_201_1", tmp_path / "study", seed=0)
    shutil.rmtree(layout.input)
    shutil.copytree(tmp_path / "study" / "dicom", layout.input)
    before = layout.app_snapshot()
    proc = layout.run(timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert sorted(p.name for p in layout.output.iterdir()) == ["overlay.png", "report.json", "segmentation.dcm", "volumes_sr.dcm"]
    assert json.loads((layout.output / "report.json").read_text())["status"] == "ok"
    assert layout.app_snapshot() == before, "the app wrote inside /opt/holoscan"
