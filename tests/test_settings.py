"""app/settings.py: the `brats` section of app.yaml (read through the SDK), BRATS_* overrides,
the MAP's nested model folder."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from app import settings
from app.settings import AppSettings, SettingsError, behaviour_settings, read_config_section
from tests.conftest import REPO_ROOT

ENV_VARS = ("HOLOSCAN_CONFIG_PATH", "HOLOSCAN_WORKDIR", *settings.ENV_OVERRIDES)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def write_config(tmp_path: Path, brats: dict) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump({"application": {"title": "t", "version": "0.1.0"}, "resources": {}, "brats": brats}))
    return path


def context(tmp_path: Path, model: Path | None = None) -> SimpleNamespace:
    return SimpleNamespace(input_path=str(tmp_path), output_path=str(tmp_path / "out"),
                           model_path=str(model or tmp_path), workdir="", triton_server_netloc="")


def test_repository_app_yaml_gives_the_defaults() -> None:
    section = yaml.safe_load((REPO_ROOT / "app.yaml").read_text())["brats"]
    assert section == settings.DEFAULTS  # app.yaml documents every setting with its default
    got = behaviour_settings()
    assert got["config_path"] == REPO_ROOT / "app.yaml"
    assert got["rules_path"] == REPO_ROOT / "app" / "modality_rules.json"
    assert (got["engine"], got["seed"], got["wt_component_voxels"], got["min_enhancing_voxels"]) == ("auto", 0, 2000, 30)


def test_thresholds_match_the_cascade_constants() -> None:
    from engines import cascade

    assert settings.DEFAULTS["thresholds"] == {
        "wt_component_voxels": cascade.WT_COMPONENT_THRESHOLD,
        "min_enhancing_voxels": cascade.MIN_ET_VOXELS,
    }


def test_sdk_config_mechanism_reads_the_same_section(tmp_path: Path) -> None:
    """Application.config(path) + kwargs('brats') (Holoscan) == the YAML fallback."""
    from monai.deploy.core import Application

    class Probe(Application):
        def compose(self) -> None:  # pragma: no cover - never run
            pass

    path = write_config(tmp_path, {"engine": "onnxruntime", "seed": 3, "thresholds": {"min_enhancing_voxels": 7}})
    via_sdk = read_config_section(path, Probe())
    assert via_sdk == read_config_section(path) == {"engine": "onnxruntime", "seed": 3,
                                                     "thresholds": {"min_enhancing_voxels": 7}}


def test_holoscan_config_path_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, {"engine": "onnxruntime", "seed": 3, "selection_rules": "custom.json",
                                   "thresholds": {"wt_component_voxels": 500}})
    monkeypatch.setenv("HOLOSCAN_CONFIG_PATH", str(path))
    got = behaviour_settings()
    assert got["config_path"] == path
    assert (got["engine"], got["seed"], got["wt_component_voxels"], got["min_enhancing_voxels"]) == ("onnxruntime", 3, 500, 30)
    assert got["rules_path"] == settings.APP_DIR / "custom.json"  # relative to the app folder
    monkeypatch.setenv("BRATS_ENGINE", "torch")
    monkeypatch.setenv("BRATS_SEED", "9")
    monkeypatch.setenv("BRATS_MIN_ENHANCING_VOXELS", "0")
    monkeypatch.setenv("BRATS_SELECTION_RULES", str(tmp_path / "site.json"))
    got = behaviour_settings()
    assert (got["engine"], got["seed"], got["wt_component_voxels"], got["min_enhancing_voxels"]) == ("torch", 9, 500, 0)
    assert got["rules_path"] == tmp_path / "site.json"


@pytest.mark.parametrize(
    ("brats", "env", "message"),
    [
        ({"engnie": "torch"}, {}, "unknown setting 'brats.engnie'"),
        ({"thresholds": {"min_et": 3}}, {}, "unknown threshold 'min_et'"),
        ({"seed": "abc"}, {}, "seed must be an integer"),
        ({}, {"BRATS_WT_COMPONENT_VOXELS": "-1"}, "thresholds.wt_component_voxels must be >= 0"),
    ],
)
def test_invalid_settings_fail_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             brats: dict, env: dict, message: str) -> None:
    monkeypatch.setenv("HOLOSCAN_CONFIG_PATH", str(write_config(tmp_path, brats)))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as err:
        behaviour_settings()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_holoscan_config_path_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOLOSCAN_CONFIG_PATH", str(tmp_path / "nope.yaml"))
    with pytest.raises(SettingsError, match="HOLOSCAN_CONFIG_PATH=.*nope.yaml is not a file"):
        behaviour_settings()


def test_model_folder_flat_or_nested_as_the_packager_lays_it_out(tmp_path: Path) -> None:
    flat = tmp_path / "brats17-cascade"
    flat.mkdir()
    (flat / "manifest.json").write_text("{}")
    assert AppSettings.from_context(context(tmp_path, flat)).model_dir == flat
    # /opt/holoscan/models/<model name>/ (monai-deploy package -m <folder>)
    assert AppSettings.from_context(context(tmp_path, tmp_path)).model_dir == flat
    # Two candidate models: no guessing, the folder is passed on (and refused downstream).
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text("{}")
    assert AppSettings.from_context(context(tmp_path, tmp_path)).model_dir == tmp_path


def test_engine_cache_lives_in_the_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOLOSCAN_WORKDIR", str(tmp_path / "work"))
    s = AppSettings.from_context(context(tmp_path))
    assert s.work_dir == tmp_path / "work"
    assert s.engine_cache_dir == tmp_path / "work" / "engine-cache"
