"""Shared pytest fixtures: where the real data and model live, and small helpers.

Real data and weights are read from ``../shared`` relative to the repository root, or from
``$BRATS_SHARED``. A test that needs them and cannot find them is skipped *with the reason*.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.slab_studies import SMALL_SLAB, make_slab_study

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """The shared data / model folder (``$BRATS_SHARED`` or ``<repo>/../shared``)."""
    env = os.environ.get("BRATS_SHARED")
    return Path(env) if env else (REPO_ROOT.parent / "shared")


BRATS_CASES = [
    "Brats18_CBICA_ABM_1",
    "Brats18_TCIA01_201_1",
    "Brats18_TCIA01_378_1",
    "Brats18_TCIA02_135_1",
    "Brats18_TCIA02_370_1",
    "Brats18_TCIA03_265_1",
    "Brats18_TCIA10_628_1",
    "Brats18_TCIA13_623_1",
]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not (root / "data").is_dir() or not (root / "models").is_dir():
        pytest.skip(f"shared data/model folder not found at {root} (set BRATS_SHARED)")
    return root


@pytest.fixture(scope="session")
def brats_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "brats18"


@pytest.fixture(scope="session")
def cascade_weights_dir(shared_dir: Path) -> Path:
    return shared_dir / "models" / "brats17-cascade"


def _model_folder_is_current(folder: Path, weights_dir: Path) -> bool:
    """True when ``folder`` holds a complete model folder built from ``weights_dir``."""
    import hashlib
    import json

    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        for entry in manifest["networks"].values():
            source = weights_dir / entry["source_npz"]["file"]
            if hashlib.sha256(source.read_bytes()).hexdigest() != entry["source_npz"]["sha256"]:
                return False
            for name, digest in entry["sha256"].items():
                if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
                    return False
        brain = manifest["brain_extraction"]  # HD-BET's graph (engines.brain)
        if hashlib.sha256((folder / brain["file"]).read_bytes()).hexdigest() != brain["sha256"]:
            return False
        return len(manifest["networks"]) == 9
    except (OSError, KeyError, ValueError):
        return False


@pytest.fixture(scope="session")
def models_dir(cascade_weights_dir: Path) -> Path:
    """The app's model folder (``python -m engines.prepare``), built once into the git-ignored
    ``<repo>/models/brats17-cascade`` (the folder ``run.sh`` uses) and re-used while it matches
    the shared weights."""
    from engines.prepare import prepare

    folder = REPO_ROOT / "models" / "brats17-cascade"
    if not _model_folder_is_current(folder, cascade_weights_dir):
        prepare(folder, cascade_weights_dir)
    return folder


@pytest.fixture(scope="session")
def small_study(brats_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-series, 12-slice study (never modified: tests copy it)."""
    return make_slab_study(brats_dir, tmp_path_factory.mktemp("small_study"), SMALL_SLAB)
