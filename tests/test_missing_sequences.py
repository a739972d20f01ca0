"""Missing sequences: the fills, the synthesis network and its training script, the strategy table."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engines.model.cascade import STAGE_ORDER, CascadePredictor, preprocess, smoke_stages
from engines.model.missing.fills import (
    FILLS,
    QUANTILE_LEVELS,
    brain_quantiles,
    fill_image,
    quantile_map,
    stage_inputs,
    substitute_for,
)
from engines.model.missing.strategies import (
    ALL_FOUR,
    DEFAULT_ASSETS,
    REFUSE_DICE,
    SUBSETS,
    UNRELIABLE_DICE,
    StrategyTableError,
    load_fill_models,
    load_table,
    plan_for,
    subset_available,
    subset_name,
)
from engines.model.missing.synthesis import Synthesiser, SynthesisNet, network_input

T1CE_T2 = (False, False, True, True)


def _crop(seed: int = 0, available=(True,) * 4):
    """A synthetic 4-channel brain-like volume through the cascade's preprocessing."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:40, :48, :44]
    inside = ((z - 20) / 16) ** 2 + ((y - 24) / 20) ** 2 + ((x - 22) / 18) ** 2 < 1
    vols = np.zeros((4, 40, 48, 44), dtype=np.float32)
    base = 100 + 20 * np.sin(y / 5.0) + 15 * np.cos(x / 7.0)
    for c, (gain, skew) in enumerate(((1.0, 0.0), (0.6, 2.0), (0.8, 1.0), (1.4, 0.5))):
        vols[c] = np.where(inside, gain * base + skew * rng.gamma(2.0, 5.0, base.shape) + 1, 0)
    return preprocess(vols, available, seed=0)


def test_zero_fill_is_the_preprocessed_crop() -> None:
    pre = _crop(available=T1CE_T2)
    got = fill_image(pre.image, pre.brain_mask, pre.available, "zero", 0)
    assert got.image is pre.image and got.noise_channels == T1CE_T2 and got.fill == "zero"
    assert not got.image[0].any() and not got.image[1].any()  # absent = 0 everywhere, also outside


def test_copy_fill_substitutes_the_closest_sequence_inside_the_brain_only() -> None:
    pre = _crop(available=T1CE_T2)
    got = fill_image(pre.image, pre.brain_mask, pre.available, "copy", 0)
    brain = pre.brain_mask
    assert substitute_for(0, T1CE_T2) == 3 and substitute_for(1, T1CE_T2) == 2  # FLAIR <- T2, T1 <- T1ce
    np.testing.assert_array_equal(got.image[0][brain], pre.image[3][brain])
    np.testing.assert_array_equal(got.image[1][brain], pre.image[2][brain])
    # Outside the brain: fresh noise, not a second copy of the substitute's noise.
    assert not np.array_equal(got.image[0][~brain], pre.image[3][~brain])
    assert abs(float(got.image[0][~brain].std()) - 1.0) < 0.1
    np.testing.assert_array_equal(got.image[2:], pre.image[2:])  # the real channels are untouched
    assert got.noise_channels == (True,) * 4
    assert not pre.image[0].any()  # the input was not modified


def test_matched_fill_follows_the_reference_distribution() -> None:
    pre = _crop(available=T1CE_T2)
    target = np.quantile(np.random.default_rng(3).gamma(3.0, 1.0, 100_000) - 3.0, QUANTILE_LEVELS)
    refs = [list(target)] * 4
    got = fill_image(pre.image, pre.brain_mask, pre.available, "matched", 0, references=refs)
    q = brain_quantiles(got.image[0], pre.brain_mask)
    assert np.abs(q[10:-10] - target[10:-10]).max() < 0.05  # its distribution is the reference's
    # ... and it is a monotone function of the substitute (T2): ranks are kept.
    sub, mapped = pre.image[3][pre.brain_mask], got.image[0][pre.brain_mask]
    order = np.argsort(sub, kind="stable")
    assert np.all(np.diff(mapped[order]) >= -1e-6)


def test_quantile_map_copes_with_ties() -> None:
    values = np.array([0.0] * 500 + list(np.linspace(1, 2, 500)), dtype=np.float32)
    out = quantile_map(values, list(np.linspace(-1, 1, QUANTILE_LEVELS.size)))
    assert np.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    assert np.all(np.diff(out[np.argsort(values, kind="stable")]) >= -1e-6)


def test_unknown_fill_and_missing_models_are_refused() -> None:
    pre = _crop(available=T1CE_T2)
    with pytest.raises(ValueError, match="unknown fill"):
        fill_image(pre.image, pre.brain_mask, pre.available, "mean", 0)
    with pytest.raises(ValueError, match="intensity references"):
        fill_image(pre.image, pre.brain_mask, pre.available, "matched", 0)
    with pytest.raises(ValueError, match="synthesis network"):
        fill_image(pre.image, pre.brain_mask, pre.available, "synthesis", 0)


def test_stage_inputs_share_one_image_when_both_groups_use_one_fill() -> None:
    pre = _crop(available=T1CE_T2)
    same = stage_inputs(pre.image, pre.brain_mask, pre.available, {"wt": "copy", "core": "copy"}, 0)
    assert same["wt"] is same["core"]
    mixed = stage_inputs(pre.image, pre.brain_mask, pre.available, {"wt": "copy", "core": "zero"}, 0)
    assert mixed["wt"].fill == "copy" and mixed["core"].fill == "zero" and mixed["core"].image is pre.image


class _RecordingEngine:
    """Fake engine (unit test only): records the first channel's mean per network call."""

    registry_name = "recording"
    choice_reason = ""

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {}

    def prepare(self, networks) -> None:
        pass

    def describe(self) -> dict:
        return {"name": "recording"}

    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        self.seen.setdefault(network, []).append(float(np.abs(batch[:, 0]).mean()))
        n, _, d, h, w = batch.shape
        logits = np.zeros((n, 2, d - 8, h, w), dtype=np.float32)
        logits[:, 1] = 1.0  # everything foreground: every stage runs on a box
        return logits


def test_cascade_feeds_each_stage_group_its_own_fill() -> None:
    pre = _crop(available=T1CE_T2)
    inputs = stage_inputs(pre.image, pre.brain_mask, pre.available, {"wt": "copy", "core": "zero"}, 0)
    engine = _RecordingEngine()
    res = CascadePredictor(engine, smoke_stages(16)).predict_preprocessed(pre, inputs)
    assert res.fills == {"wt": "copy", "core": "zero"}
    wt_nets = smoke_stages(16)["wt"].networks.values()
    core_nets = [n for s in STAGE_ORDER[1:] for n in smoke_stages(16)[s].networks.values()]
    assert all(v > 0.1 for n in wt_nets for v in engine.seen[n])  # FLAIR channel filled (T2's values)
    assert all(v == 0.0 for n in core_nets for v in engine.seen[n])  # FLAIR channel zero
    bad = {"wt": inputs["wt"], "core": type(inputs["wt"])(pre.image[:, :-1], (True,) * 4, "copy")}
    with pytest.raises(ValueError, match="stage input 'core'"):
        CascadePredictor(engine, smoke_stages(16)).predict_preprocessed(pre, bad)


def test_synthesiser_slabs_equal_one_pass_and_fill_is_standardised(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    net = SynthesisNet()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    synth = Synthesiser(tmp_path / "w.pt")
    synth.SLAB = 7  # several slabs over a 40-slice crop
    wide_net = SynthesisNet(8, (1, 2, 4))  # a wider receptive field needs a wider halo between slabs
    torch.save(wide_net.state_dict(), tmp_path / "wide.pt")
    wide = Synthesiser(tmp_path / "wide.pt", features=8, dilations=(1, 2, 4))
    wide.SLAB = 7
    pre = _crop(available=T1CE_T2)
    got = synth.predict(pre.image, pre.brain_mask, T1CE_T2)
    with torch.inference_mode():
        whole = net(torch.from_numpy(network_input(pre.image, pre.brain_mask, T1CE_T2)[None]))[0].numpy()
    np.testing.assert_allclose(got, whole, atol=1e-5)
    with torch.inference_mode():
        wide_whole = wide_net(torch.from_numpy(network_input(pre.image, pre.brain_mask, T1CE_T2)[None]))[0].numpy()
    np.testing.assert_allclose(wide.predict(pre.image, pre.brain_mask, T1CE_T2), wide_whole, atol=1e-5)
    filled = fill_image(pre.image, pre.brain_mask, T1CE_T2, "synthesis", 0, synthesiser=synth)
    values = filled.image[0][pre.brain_mask]
    assert abs(float(values.mean())) < 1e-4 and abs(float(values.std()) - 1) < 1e-3


def test_synthesis_training_quick_mode_is_deterministic(brats_dir: Path, tmp_path: Path) -> None:
    from engines.model.missing.train_synthesis import main

    case = brats_dir / "Brats18_TCIA01_201_1"
    digests = []
    for run in ("a", "b"):
        assert main(["--cases", str(case), "--out", str(tmp_path / run), "--quick", "--threads", "1"]) == 0
        digests.append(hashlib.sha256((tmp_path / run / "synthesis.pt").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    manifest = json.loads((tmp_path / "a" / "synthesis_manifest.json").read_text())
    assert manifest["files"]["synthesis.pt"] == digests[0] and manifest["quick"] and manifest["seed"] == 0
    refs, synth = load_fill_models(tmp_path / "a")
    assert len(refs) == 4 and all(len(r) == QUANTILE_LEVELS.size for r in refs)
    assert all(np.all(np.diff(r) >= 0) for r in refs)  # quantiles increase
    assert isinstance(synth, Synthesiser) and synth.dilations == (1, 2)
    # Another architecture is recorded in the manifest and loaded back with it.
    assert main(["--cases", str(case), "--out", str(tmp_path / "wide"), "--quick", "--threads", "1",
                 "--dilations", "1,2,4", "--features", "8"]) == 0
    assert json.loads((tmp_path / "wide" / "synthesis_manifest.json").read_text())["architecture"] == {
        "features": 8, "dilations": [1, 2, 4]}
    _, wide = load_fill_models(tmp_path / "wide")
    assert wide.dilations == (1, 2, 4) and wide.net.body[0].out_channels == 8


def test_shipped_assets_match_their_manifest() -> None:
    manifest = json.loads((DEFAULT_ASSETS / "synthesis_manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((DEFAULT_ASSETS / name).read_bytes()).hexdigest() == digest, name
    assert not manifest["quick"]
    assert (DEFAULT_ASSETS / "synthesis.pt").stat().st_size < 2_000_000


def test_strategy_table_loads_and_covers_the_15_subsets() -> None:
    table = load_table()
    from itertools import combinations

    every = {subset_name(tuple(c in g for c in range(4))) for k in range(1, 5) for g in combinations(range(4), k)}
    assert len(SUBSETS) == 15 and set(SUBSETS) == every and set(table["subsets"]) == every
    assert table["subsets"][ALL_FOUR]["fills"] == {"wt": "zero", "core": "zero"}
    assert set(table["selection_cases"]).isdisjoint(table["held_out_cases"])
    for name, entry in table["subsets"].items():
        assert subset_name(subset_available(name)) == name
        assert set(entry["fills"].values()) <= set(FILLS)


def test_strategy_table_errors_are_clear(tmp_path: Path) -> None:
    table = load_table()
    broken = dict(table, subsets={k: v for k, v in table["subsets"].items() if k != "T2"})
    (tmp_path / "t.json").write_text(json.dumps(broken))
    with pytest.raises(StrategyTableError, match="not the 15 subsets"):
        load_table(tmp_path / "t.json")
    bad_fill = json.loads(json.dumps(table))
    bad_fill["subsets"]["T2"]["fills"]["wt"] = "mean"
    (tmp_path / "f.json").write_text(json.dumps(bad_fill))
    with pytest.raises(StrategyTableError, match="bad fills"):
        load_table(tmp_path / "f.json")


def test_plan_writes_only_the_regions_at_the_bar_and_says_why_not_the_others() -> None:
    table = json.loads(json.dumps(load_table()))
    entry = table["subsets"]["FLAIR+T1+T2"]
    entry.update(measured=True, fills={"wt": "copy", "core": "zero"},
                 expected_held_out={"WT": {"dice": 0.9, "hd95": 3.0}, "TC": {"dice": 0.75, "hd95": 5.0},
                                    "ET": {"dice": 0.2, "hd95": 20.0}})
    plan = plan_for((True, True, False, True), table)
    assert plan.subset == "FLAIR+T1+T2" and plan.missing == ["T1ce"]
    assert plan.fills == {"wt": "copy", "core": "zero"}
    assert plan.regions_written == ("WT", "TC") and plan.refusal is None
    assert plan.regions_omitted == {"ET": "expected Dice 0.20 on held-out cases without T1ce, below 0.70"}
    assert plan.warnings == ["ET not written: expected Dice 0.20 on held-out cases without T1ce, below 0.70"]
    report = plan.as_report()
    assert report["expected_dice_held_out"] == {"WT": 0.9, "TC": 0.75, "ET": 0.2}
    assert report["regions_written"] == ["WT", "TC"] and report["write_unreliable_regions"] is False
    # the research setting writes every region, each unreliable one flagged, as before the policy
    research = plan_for((True, True, False, True), table, write_unreliable_regions=True)
    assert research.regions_written == ("WT", "TC", "ET") and research.regions_omitted == {}
    assert research.warnings[0].startswith("ET unreliable (expected Dice 0.20")
    assert "write_unreliable_regions" in research.warnings[0]
    assert any(w.startswith("ET: without post-contrast T1") for w in research.warnings)
    entry.update(measured=False, expected_held_out=None)
    unmeasured = plan_for((True, True, False, True), table)
    assert unmeasured.regions_written == () and unmeasured.refusal is not None
    assert set(unmeasured.regions_omitted.values()) == {"accuracy without T1ce not measured"}


def _expect(table: dict, subset: str, wt: float, tc: float, et: float) -> None:
    table["subsets"][subset].update(measured=True, expected_held_out={
        r: {"dice": d, "hd95": 10.0} for r, d in zip(("WT", "TC", "ET"), (wt, tc, et))})


def test_plan_refuses_where_no_region_reaches_the_bar() -> None:
    table = json.loads(json.dumps(load_table()))
    t1 = (False, True, False, False)
    _expect(table, "T1", 0.69, 0.02, 0.0)
    refused = plan_for(t1, table)
    assert refused.refusal is not None
    assert refused.refusal.startswith("only T1 found (FLAIR+T1ce+T2 missing)")
    assert "WT 0.69 / TC 0.02 / ET 0.00" in refused.refusal and "below 0.70 in every region" in refused.refusal
    assert "no segmentation written" in refused.refusal
    _expect(table, "T1", UNRELIABLE_DICE, 0.02, 0.0)  # one region at the bar: that region written
    kept = plan_for(t1, table)
    assert kept.refusal is None and kept.regions_written == ("WT",)
    assert set(kept.regions_omitted) == {"TC", "ET"}
    # the research setting refuses only where every region is below REFUSE_DICE
    _expect(table, "T1", REFUSE_DICE, 0.02, 0.0)
    assert plan_for(t1, table, write_unreliable_regions=True).refusal is None
    _expect(table, "T1", 0.45, 0.02, 0.0)
    research = plan_for(t1, table, write_unreliable_regions=True)
    assert research.refusal is not None and f"below {REFUSE_DICE:.2f} in every region" in research.refusal


def test_shipped_table_regions_as_the_issue_states() -> None:
    """With the shipped table: T1ce alone refused; T1ce+T2 writes TC and ET; FLAIR+T1+T2 writes WT and TC."""
    table = load_table()
    assert plan_for((False, False, True, False), table).refusal is not None
    assert plan_for((False, False, True, True), table).regions_written == ("TC", "ET")
    assert plan_for((True, True, False, True), table).regions_written == ("WT", "TC")
    assert plan_for((True, True, True, True), table).regions_written == ("WT", "TC", "ET")


def test_segmentation_refuses_before_building_an_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The operator's work raises the typed input error (exit code 2, one line) from the table's
    refusal, without choosing or building an engine and without loading the fill models."""
    import logging
    from types import SimpleNamespace

    import operators.segmentation.segment as seg_op
    from operators.errors import InsufficientSequencesError

    table = json.loads(json.dumps(load_table()))
    _expect(table, "T1ce", 0.01, 0.0, 0.0)
    monkeypatch.setattr(seg_op, "load_table", lambda: table)
    monkeypatch.setattr(seg_op, "load_fill_models", lambda: pytest.fail("fill models loaded before refusing"))
    monkeypatch.setattr(seg_op, "choose_engine", lambda *a, **k: pytest.fail("engine chosen before refusing"))
    t1ce_only = SimpleNamespace(volumes=np.zeros((4, 8, 8, 8), dtype=np.float32), available=(False, False, True, False))
    with pytest.raises(InsufficientSequencesError, match="only T1ce found") as info:
        seg_op.segment(t1ce_only, tmp_path, "auto", 0, logging.getLogger("test"))
    assert info.value.exit_code == 2 and info.value.one_line().startswith("insufficient_sequences: only T1ce")


def test_fusing_again_under_the_same_rules_gives_the_same_labels_and_keeping_the_core_keeps_it() -> None:
    from benchmarks.missing_sequences import labels_under_rules
    from engines.model.cascade import PostProcessing, fuse_labels

    pre = _crop(available=T1CE_T2)
    res = CascadePredictor(_RecordingEngine(), smoke_stages(16)).predict_preprocessed(pre)
    np.testing.assert_array_equal(labels_under_rules(res, pre.brain_mask, PostProcessing()), res.labels)
    # A core found beside a small whole tumour: dropped by the published rule, kept on request.
    wt = np.zeros((30, 30, 30), bool)
    wt[5:20, 5:20, 5:20] = True
    core = np.zeros_like(wt)
    core[18:28, 18:28, 18:28] = True  # 8 of its 1000 voxels inside the whole tumour
    dropped = fuse_labels(wt, core, np.zeros_like(wt))
    kept = fuse_labels(wt, core, np.zeros_like(wt), PostProcessing(keep_core_outside_whole=True))
    assert not (dropped == 1).any()
    assert (kept == 1).sum() >= 1000 and (kept > 0).sum() >= (dropped > 0).sum()


def _rows(**dice_by_region: list[float]) -> list[dict]:
    n = len(next(iter(dice_by_region.values())))
    return [{"metrics": {r: {"dice": v[i], "hd95": 1.0} for r, v in dice_by_region.items()},
             "metrics_keep_core": {r: {"dice": v[i], "hd95": 1.0} for r, v in dice_by_region.items()}}
            for i in range(n)]


def test_choice_keeps_zero_fill_unless_a_fill_gains_without_losing_a_region() -> None:
    from benchmarks.missing_sequences import choose

    zero = _rows(WT=[0.80, 0.80], TC=[0.70, 0.70], ET=[0.60, 0.60])
    better_wt = _rows(WT=[0.90, 0.90], TC=[0.70, 0.70], ET=[0.60, 0.60])
    tiny_gain = _rows(WT=[0.803, 0.803], TC=[0.702, 0.702], ET=[0.60, 0.60])
    core_gain_et_loss = _rows(WT=[0.80, 0.80], TC=[0.90, 0.90], ET=[0.55, 0.55])
    got = choose({"zero": zero, "copy": better_wt, "matched": tiny_gain, "synthesis": core_gain_et_loss})
    assert got["wt"] == "copy"  # +0.10 WT
    assert got["core"] == "zero"  # matched gains < 0.005; synthesis loses ET by 0.05 > 0.01
    core_gain = _rows(WT=[0.80, 0.80], TC=[0.80, 0.80], ET=[0.595, 0.595])
    assert choose({"zero": zero, "copy": zero, "matched": core_gain, "synthesis": zero})["core"] == "matched"
    # The best of the fills that qualify, not the first that does.
    good, best = _rows(WT=[0.80] * 2, TC=[0.72] * 2, ET=[0.60] * 2), _rows(WT=[0.80] * 2, TC=[0.75] * 2, ET=[0.60] * 2)
    assert choose({"zero": zero, "copy": good, "matched": zero, "synthesis": best})["core"] == "synthesis"
    # Without T1ce a fill is not chosen for the enhancing tumour it makes up: TC alone scores.
    et_only = _rows(WT=[0.80, 0.80], TC=[0.702, 0.702], ET=[0.90, 0.90])
    fills = {"zero": zero, "copy": zero, "matched": zero, "synthesis": et_only}
    assert choose(fills)["core"] == "synthesis"
    assert choose(fills, t1ce_available=False)["core"] == "zero"


def test_core_is_kept_unless_keeping_it_loses() -> None:
    from benchmarks.missing_sequences import choose_core_rule

    rows = _rows(WT=[0.5, 0.6], TC=[0.0, 0.8], ET=[0.0, 0.7])
    assert choose_core_rule(rows)  # same masks under both rules: a tie keeps the core
    rows[1]["metrics_keep_core"] = {"WT": {"dice": 0.6, "hd95": 1.0}, "TC": {"dice": 0.7, "hd95": 1.0},
                                    "ET": {"dice": 0.6, "hd95": 1.0}}
    assert not choose_core_rule(rows)  # keeping it costs TC and ET
    rows = _rows(WT=[0.5, 0.6], TC=[0.0, 0.8], ET=[0.0, 0.7])
    for r in rows[:1]:
        r["metrics_keep_core"] = {"WT": {"dice": 0.55, "hd95": 1.0}, "TC": {"dice": 0.8, "hd95": 1.0},
                                  "ET": {"dice": 0.7, "hd95": 1.0}}
    assert choose_core_rule(rows)
    rows[1]["metrics_keep_core"]["WT"]["dice"] = 0.4  # ... but not at the cost of WT
    assert not choose_core_rule(rows)


def test_fill_quality_counts_false_bright_voxels_outside_the_tumour_only() -> None:
    """The diagnostic's measures on a hand-made crop: a filled channel that is right in the
    tumour but bright in 5 % of the rest of the brain (as an unsuppressed CSF would be)."""
    from benchmarks.fill_quality import BRIGHT_Z, fill_errors

    brain = np.zeros((10, 10, 10), dtype=bool)
    brain[:, :, :5] = True  # 500 voxels
    tumour = np.zeros_like(brain)
    tumour[:5, :, :2] = True  # 100 voxels of it, all in the brain
    real = np.where(tumour, 3.0, 0.0).astype(np.float32)
    filled = real.copy()
    filled[5:, :4, 2:3] = BRIGHT_Z + 1  # 20 brain voxels outside the tumour: bright where the real one is not
    filled[:, :, 7] = 9.0  # outside the brain: ignored
    m = fill_errors(filled, real, brain, tumour)
    assert m["bright_outside_tumour"] == pytest.approx(20 / 400) and m["real_bright_outside_tumour"] == 0.0
    assert m["tumour_z"] == m["real_tumour_z"] == pytest.approx(3.0)
    assert m["mae"] == pytest.approx(20 * (BRIGHT_Z + 1) / 500)
