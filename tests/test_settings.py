"""app/settings.py: the `brats` section of app.yaml (read through the SDK), BRATS_* overrides,
the MAP's nested model folder."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    from engines.model import cascade

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
        ({}, {"BRATS_SEND_DIMSE": "ORTHANC@localhost"}, "send.dimse:"),
        ({"send": {"dimse": "PACS@pacs:104", "timeout_s": 0}}, {}, "send.timeout_s must be >= 1"),
        ({"send": {"stow": "x"}}, {}, "unknown 'send' setting 'stow'"),
        ({}, {"BRATS_MISSING_WRITE_UNRELIABLE_REGIONS": "maybe"}, "missing.write_unreliable_regions must be true or false"),
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


# ----------------------------------------------------------------------------- effects


class _BlobEngine:
    """Stub engine for every network: foreground where channel 0 (z-scored FLAIR) is above 3."""

    name = "blob"
    registry_name = "blob"
    choice_reason = "test stub"

    def prepare(self, networks: object) -> None:
        pass

    def run(self, network: str, batch: Any) -> Any:
        import numpy as np

        fg = 10.0 * (batch[:, 0, 4:-4] - 3.0)
        return np.stack([np.zeros_like(fg), fg], axis=1).astype(np.float32)

    def describe(self) -> dict[str, str]:
        return {"runtime": "blob"}


def _blob_input() -> Any:
    """Model-grid volumes with a 10x10x10 (1000-voxel) and a 3x3x3 (27-voxel) bright blob."""
    import types

    import numpy as np

    vols = np.zeros((4, 40, 48, 48), dtype=np.float32)
    vols[:, 4:36, 6:42, 6:42] = np.random.default_rng(0).uniform(50, 500, size=(4, 32, 36, 36))
    vols[0, 10:20, 10:20, 10:20] = 5000.0
    vols[0, 28:31, 30:33, 30:33] = 5000.0
    return types.SimpleNamespace(volumes=vols, available=(True,) * 4)


@pytest.mark.parametrize(("env", "blob_kept", "small_kept"), [
    pytest.param({}, True, False, id="defaults"),
    pytest.param({"BRATS_MIN_ENHANCING_VOXELS": "1001"}, False, False, id="huge-min-enhancing"),
    pytest.param({"BRATS_WT_COMPONENT_VOXELS": "10"}, True, True, id="small-wt-components"),
])
def test_threshold_settings_change_the_labels(env: dict[str, str], blob_kept: bool, small_kept: bool,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BRATS_* thresholds -> AppSettings -> the segmentation operator's work -> the cascade's
    post-processing: the enhancing label of the big blob, the small blob's whole tumour."""
    import logging

    import operators.segmentation.segment as seg_op

    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = AppSettings.from_context(context(tmp_path))
    monkeypatch.setattr(seg_op, "choose_engine", lambda *a, **k: (_BlobEngine(), []))
    outcome = seg_op.segment(_blob_input(), tmp_path, "auto", 0, logging.getLogger("test"),
                             rules=settings.post_processing, cache_dir=settings.engine_cache_dir)
    labels = outcome.labels
    assert (labels[10:20, 10:20, 10:20] == 4).all() == blob_kept
    assert (labels[10:20, 10:20, 10:20] > 0).all()  # the big blob is tumour either way
    assert (labels[28:31, 30:33, 30:33] > 0).all() == small_kept


def test_the_app_hands_thresholds_and_engine_cache_to_the_segmentation(
        models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The composed graph's segmentation operator gets the settings' rules and cache folder."""
    import sys

    from app.app import BrainTumorSegApp
    from engines.model.cascade import PostProcessing

    (tmp_path / "in").mkdir()
    monkeypatch.setenv("BRATS_MIN_ENHANCING_VOXELS", "77")
    monkeypatch.setenv("BRATS_WT_COMPONENT_VOXELS", "555")
    monkeypatch.setattr(sys, "argv", ["app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                      "-m", str(models_dir), "-w", str(tmp_path / "work")])
    monkeypatch.setenv("BRATS_ENGINE", "onnxruntime")
    monkeypatch.setenv("BRATS_SEED", "11")
    monkeypatch.setenv("BRATS_TRITON_TIMEOUT_S", "42")
    monkeypatch.setenv("BRATS_MISSING_WRITE_UNRELIABLE_REGIONS", "true")
    site_rules = tmp_path / "site_rules.json"
    site_rules.write_text((REPO_ROOT / "app" / "modality_rules.json").read_text().replace('"min_slices": 10', '"min_slices": 33'))
    monkeypatch.setenv("BRATS_SELECTION_RULES", str(site_rules))
    app = BrainTumorSegApp()
    app.compose()
    nodes = {n.name: n for n in app.graph.get_nodes()}
    seg = nodes["segmentation"]
    assert seg.rules == PostProcessing(wt_component_voxels=555, min_enhancing_voxels=77)
    assert seg.cache_dir == (tmp_path / "work" / "engine-cache").resolve()
    assert (seg.engine_name, seg.seed, seg.triton_timeout_s) == ("onnxruntime", 11, 42)
    assert nodes["registration"].seed == 11
    assert seg.write_unreliable_regions is True and seg.model_dir == nodes["registration"].model_dir
    assert nodes["registration"].cache_dir == seg.cache_dir  # HD-BET's measured precision: the same cache
    assert nodes["modality_selector"].rules.raw["series_filter"]["min_slices"] == 33


def test_site_selection_rules_change_the_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BRATS_SELECTION_RULES -> the rules the selector loads: a site that wants at least 40
    slices per series drops a 30-slice FLAIR the shipped rules take."""
    from operators.selection.modality_selector import SelectionRules, classify
    from tests.test_modality_selector import FLAIR

    assert classify(FLAIR, SelectionRules.load(AppSettings.from_context(context(tmp_path)).rules_path)).modality == "flair"
    site_rules = tmp_path / "site_rules.json"
    site_rules.write_text((REPO_ROOT / "app" / "modality_rules.json").read_text().replace('"min_slices": 10', '"min_slices": 40'))
    monkeypatch.setenv("BRATS_SELECTION_RULES", str(site_rules))
    candidate = classify(FLAIR, SelectionRules.load(AppSettings.from_context(context(tmp_path)).rules_path))
    assert candidate.modality == "other" and any("slice" in r for r in candidate.reasons), candidate


def test_seed_setting_changes_the_noise_and_only_the_noise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BRATS_SEED -> the segmentation's noise fills: another seed feeds the networks other
    background noise (same brain voxels); the same seed feeds them the very same batches."""
    import logging

    import numpy as np

    import operators.segmentation.segment as seg_op

    def batches_for(seed_text: str) -> list[Any]:
        monkeypatch.setenv("BRATS_SEED", seed_text)
        settings = AppSettings.from_context(context(tmp_path))
        engine = _BlobEngine()
        seen: list[Any] = []
        run = engine.run
        engine.run = lambda network, batch: (seen.append(batch.copy()), run(network, batch))[1]  # type: ignore[method-assign]
        monkeypatch.setattr(seg_op, "choose_engine", lambda *a, **k: (engine, []))
        seg_op.segment(_blob_input(), tmp_path, "auto", settings.seed, logging.getLogger("test"))
        return seen

    a, b, c = batches_for("1"), batches_for("1"), batches_for("2")
    assert len(a) == len(b) == len(c) > 0
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def test_create_engine_gives_the_cache_folder_to_engines_that_cache(tmp_path: Path,
                                                                    cascade_weights_dir: Path) -> None:
    from engines.runtimes.registry import create_engine

    half = create_engine("torch-cuda-fp16", weights_dir=cascade_weights_dir, cache_dir=tmp_path / "cache",
                         device="cpu", compile=False)
    assert half.cache_dir == tmp_path / "cache"
    eager = create_engine("torch", weights_dir=cascade_weights_dir, cache_dir=tmp_path / "cache")  # no such option
    assert eager.describe()["runtime"] == "torch"
