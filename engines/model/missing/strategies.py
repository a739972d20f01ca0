"""The measured strategy table: which fill each subset of sequences gets, and what to expect.

The table (``assets/strategy_table.json``, written by ``python -m benchmarks.missing_sequences``)
holds, for each of the 15 non-empty subsets of FLAIR, T1, T1ce, T2 (named in channel order,
joined by ``+``, e.g. ``"T1ce+T2"``):

* ``fills``: ``{"wt": <fill>, "core": <fill>}``, the fill of the absent channels for the WT stage
  and for the TC and EN stages (:data:`engines.model.missing.fills.FILLS`);
* ``keep_core_outside_whole``: the cascade keeps a tumour core that lies mostly outside the
  whole tumour (:class:`engines.model.cascade.PostProcessing`), chosen like the fills;
* ``measured``: whether the choice was measured (else zero fill, the published behaviour);
* ``expected_held_out`` / ``zero_fill_held_out``: per region (WT, TC, ET) the mean Dice and HD95
  (mm) on the held-out cases with the fills used / with zero fill (``null``: not measured).

:func:`plan_for` turns it into what the app does and tells the reader for the subset it found:
the fills, the regions it writes, and a refusal when it can write none.

Regions written: a region whose expected held-out Dice is below :data:`UNRELIABLE_DICE` is not
written (a segment in the PACS looks like a finding; a warning in the report does not make it
one): it is listed with its expected Dice and the reason. A study none of whose regions reaches
the bar is refused. ``write_unreliable_regions`` (``brats.missing.write_unreliable_regions``,
off by default; for research) writes all three regions, flagged, and refuses only when every
region is expected below :data:`REFUSE_DICE`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.model.missing.fills import FILLS
from engines.model.modalities import CHANNEL_NAMES, MODALITIES
from engines.model.vocabulary import Fill, Modality, Region, StageGroup

DEFAULT_ASSETS = Path(__file__).resolve().parent / "assets"
TABLE_NAME = "strategy_table.json"
TABLE_VERSION = "1"
REGIONS: tuple[Region, ...] = tuple(Region)
#: Below this expected held-out Dice a region is not written (listed in the report with why).
UNRELIABLE_DICE = 0.70
#: With ``write_unreliable_regions`` on, the app still refuses a study whose every region is
#: expected below this: a segmentation expected to miss the tumour everywhere is worse than none.
REFUSE_DICE = 0.50


def subset_name(available: Sequence[bool]) -> str:
    """``"FLAIR+T1ce+T2"`` for ``(True, False, True, True)``."""
    names = [n for n, a in zip(CHANNEL_NAMES, available) if a]
    if not names:
        raise ValueError("no sequence available")
    return "+".join(names)


def subset_available(name: str) -> tuple[bool, bool, bool, bool]:
    """Inverse of :func:`subset_name`."""
    parts = name.split("+")
    unknown = [p for p in parts if p not in CHANNEL_NAMES]
    if unknown or not parts:
        raise ValueError(f"not a subset of {CHANNEL_NAMES}: {name!r}")
    return tuple(n in parts for n in CHANNEL_NAMES)  # type: ignore[return-value]


ALL_FOUR = subset_name((True,) * 4)
#: The 15 subsets, all four first, then by how often a clinical exam lacks the rest and by what
#: the measurement needs first (the order the benchmark measures them in).
SUBSETS: tuple[str, ...] = (
    ALL_FOUR, "T1ce+T2", "FLAIR+T1+T2", "T1+T1ce+T2", "FLAIR+T1ce+T2", "FLAIR+T1+T1ce",
    "T1+T1ce", "FLAIR+T1ce", "FLAIR+T2", "T1+T2", "FLAIR+T1", "T2", "T1ce", "FLAIR", "T1",
)


@dataclass(frozen=True)
class SubsetPlan:
    """What the app does for one subset and what it tells the reader.

    Attributes
    ----------
    available
        4 bools in channel order (FLAIR, T1, T1ce, T2): the sequences found.
    fills
        Stage group -> fill (``{"wt": ..., "core": ...}``).
    measured
        The choice comes from the measurement (else: zero fill, not measured).
    expected
        Region -> ``{"dice": ..., "hd95": ...}`` on the held-out cases with these fills, or
        ``None``.
    zero_fill
        The same for zero fill, or ``None``.
    warnings
        Plain sentences for the reader: regions that are unreliable with these sequences.
    table_version
        The table's version.
    keep_core_outside_whole
        The post-processing keeps a core lying mostly outside the whole tumour.
    refusal
        One sentence saying why the app refuses these sequences (no region it may write), else
        ``None``.
    regions_written
        The regions the SEG holds, outermost first (a subset of :data:`REGIONS`).
    regions_omitted
        Region -> one sentence: why it is not written.
    write_unreliable_regions
        The research setting that writes every region (flagged) was on.
    """

    available: tuple[bool, bool, bool, bool]
    fills: dict[StageGroup, Fill]
    measured: bool
    expected: dict[Region, dict[str, float | None]] | None
    zero_fill: dict[Region, dict[str, float | None]] | None
    warnings: list[str] = field(default_factory=list)
    table_version: str = TABLE_VERSION
    keep_core_outside_whole: bool = False
    refusal: str | None = None
    regions_written: tuple[Region, ...] = REGIONS
    regions_omitted: dict[Region, str] = field(default_factory=dict)
    write_unreliable_regions: bool = False

    @property
    def subset(self) -> str:
        """The table's name of the sequences found, e.g. ``"T1ce+T2"``."""
        return subset_name(self.available)

    @property
    def missing(self) -> list[str]:
        """The absent sequences' display names, in channel order."""
        return [n for n, a in zip(CHANNEL_NAMES, self.available) if not a]

    def expected_dice(self, region: Region) -> float | None:
        """The mean Dice of ``region`` on the held-out cases with these fills (None: not measured)."""
        return self.expected[region]["dice"] if self.expected else None

    def as_report(self) -> dict[str, Any]:
        """The ``segmentation.missing_sequences`` section of ``report.json``."""
        expected = self.expected
        return {
            "subset": self.subset, "missing": self.missing, "fills": dict(self.fills),
            "chosen_by_measurement": self.measured, "keep_core_outside_whole": self.keep_core_outside_whole,
            "expected_dice_held_out": {r: m["dice"] for r, m in expected.items()} if expected else None,
            "expected_hd95_mm_held_out": {r: m["hd95"] for r, m in expected.items()} if expected else None,
            "regions_written": list(self.regions_written), "regions_omitted": dict(self.regions_omitted),
            "write_unreliable_regions": self.write_unreliable_regions,
            "warnings": list(self.warnings), "table_version": self.table_version,
        }


class StrategyTableError(ValueError):
    """The strategy table is missing, malformed or does not cover the 15 subsets."""


def load_table(path: Path | None = None) -> dict[str, Any]:
    """The table as a dict, checked: version, 15 subsets, known fills, regions."""
    path = Path(path) if path else DEFAULT_ASSETS / TABLE_NAME
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StrategyTableError(f"strategy table {path}: {exc}") from exc
    subsets = doc.get("subsets", {})
    if set(subsets) != set(SUBSETS):
        raise StrategyTableError(f"strategy table {path}: covers {sorted(subsets)}, not the 15 subsets")
    for name, entry in subsets.items():
        fills = entry.get("fills", {})
        if set(fills) != set(StageGroup) or any(f not in FILLS for f in fills.values()):
            raise StrategyTableError(f"strategy table {path}: {name}: bad fills {fills}")
        for key in ("expected_held_out", "zero_fill_held_out"):
            if entry.get(key) is not None and set(entry[key]) != set(REGIONS):
                raise StrategyTableError(f"strategy table {path}: {name}: {key} must give {REGIONS}")
    if subsets[ALL_FOUR]["fills"] != dict.fromkeys(StageGroup, Fill.ZERO) or subsets[ALL_FOUR].get("keep_core_outside_whole"):
        raise StrategyTableError(f"strategy table {path}: all four sequences must run the published method")
    return doc


def plan_for(available: Sequence[bool], table: dict[str, Any], write_unreliable_regions: bool = False) -> SubsetPlan:
    """The plan for the sequences found (``available``: 4 bools, FLAIR, T1, T1ce, T2).

    ``write_unreliable_regions``: write every region, flagged, as before the region policy
    (research only; see the module docstring).
    """
    found: tuple[bool, bool, bool, bool] = tuple(bool(a) for a in available)  # type: ignore[assignment]
    name = subset_name(found)
    entry = table["subsets"][name]
    expected = _by_region(entry.get("expected_held_out"))
    warnings: list[str] = []
    missing = [n for n, a in zip(CHANNEL_NAMES, found) if not a]
    without = "+".join(missing)
    omitted: dict[Region, str] = {}
    if missing and expected is None:
        for region in REGIONS:
            omitted[region] = f"accuracy without {without} not measured"
    if expected:
        for region in REGIONS:
            dice = expected[region]["dice"]
            if dice is None:
                omitted[region] = f"accuracy without {without} not measured"
            elif dice < UNRELIABLE_DICE:
                omitted[region] = f"expected Dice {dice:.2f} on held-out cases without {without}, below {UNRELIABLE_DICE:.2f}"
    if write_unreliable_regions:
        written = REGIONS
        for region, why in omitted.items():
            warnings.append(f"{region} unreliable ({why}); written because write_unreliable_regions is on; "
                            "review it against the images before any use")
        omitted = {}
    else:
        written = tuple(r for r in REGIONS if r not in omitted)
        for region, why in omitted.items():
            warnings.append(f"{region} not written: {why}")
    if not found[MODALITIES.index(Modality.T1CE)] and Region.ET in written:
        warnings.append("ET: without post-contrast T1 the enhancing tumour is inferred, not seen; review it")
    refusal = None
    dice_line = (" / ".join(f"{r} {expected[r]['dice']:.2f}" for r in REGIONS if expected[r]["dice"] is not None)
                 if expected else "not measured")
    if write_unreliable_regions:
        if expected and all(expected[r]["dice"] is not None and expected[r]["dice"] < REFUSE_DICE for r in REGIONS):
            refusal = (f"only {name} found ({without} missing): with these sequences the model's expected Dice "
                       f"on held-out cases is {dice_line}, below {REFUSE_DICE:.2f} in every region; "
                       "no segmentation written")
    elif not written:
        refusal = (f"only {name} found ({without} missing): with these sequences the model's expected Dice on "
                   f"held-out cases is {dice_line}, below {UNRELIABLE_DICE:.2f} in every region; "
                   "no segmentation written")
    return SubsetPlan(
        available=found,
        fills={StageGroup(group): Fill(fill) for group, fill in entry["fills"].items()},
        measured=bool(entry.get("measured")),
        expected=expected,
        zero_fill=_by_region(entry.get("zero_fill_held_out")),
        warnings=warnings,
        table_version=str(table.get("version", "?")),
        keep_core_outside_whole=bool(entry.get("keep_core_outside_whole", False)),
        refusal=refusal,
        regions_written=written,
        regions_omitted=omitted,
        write_unreliable_regions=bool(write_unreliable_regions),
    )


def _by_region(per_region: dict[str, Any] | None) -> dict[Region, Any] | None:
    """A table entry's region -> measurement mapping with :class:`Region` keys (its order kept)."""
    return None if per_region is None else {Region(r): m for r, m in per_region.items()}


def load_fill_models(assets: Path = DEFAULT_ASSETS) -> tuple[list[list[float]] | None, Any]:
    """The intensity references (4 x 201) and the synthesis network from ``assets``; each is
    ``None`` when its file is absent (then the fill that needs it raises when asked for). The
    network's architecture is the training manifest's ``architecture`` (the default one when the
    manifest does not say)."""
    from engines.model.missing.synthesis import Synthesiser
    from engines.runtimes.cpu_host import flush_denormals

    flush_denormals()  # the synthesis network runs in torch on the CPU
    refs_path, weights = Path(assets) / "intensity_references.json", Path(assets) / "synthesis.pt"
    manifest_path = Path(assets) / "synthesis_manifest.json"
    refs = None
    if refs_path.exists():
        doc = json.loads(refs_path.read_text())
        refs = [doc["quantiles"][n] for n in CHANNEL_NAMES]
    if not weights.exists():
        return refs, None
    architecture = json.loads(manifest_path.read_text()).get("architecture", {}) if manifest_path.exists() else {}
    return refs, Synthesiser(weights, **architecture)
