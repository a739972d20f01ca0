"""The app on every ``make_study --clinical`` profile: which series filled which slot, how the
contrast phase was decided, which regions were written, and how they compare with the expert labels.

``python -m benchmarks.clinical_profiles --case <BraTS case dir> --models <model folder> --out DIR
[--profiles philips,siemens,...] [--slices START:END]``

Each profile is built from the one case (``samples.make_study``), run through a fresh
``python -m app`` process, and read back: exit code and one-line error; per slot the series
picked (number and description) against the one the profile planted (``study.json``
``clinical.expected``, which the app never reads); every contrast-phase comparison (pair,
enhancement index, like for like, decision); regions written and omitted (with expected Dice);
and, per region written, Dice against the expert labels on the reference series' own grid (the
SEG read back with highdicom, the labels resampled nearest-neighbour). Writes
``DIR/clinical_profiles.json`` and ``DIR/clinical_profiles.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reporting import write_result

__all__ = ["PROFILES", "main", "region_dice", "run_profile"]

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Profile name -> ``make_study`` arguments after ``--clinical``.
PROFILES: dict[str, list[str]] = {
    "philips": ["philips"],
    "philips-no-contrast-evidence": ["philips", "--no-contrast-evidence"],
    "philips-mask-series": ["philips", "--mask-series"],
    "siemens": ["siemens"],
    "ge": ["ge"],
    "reformats": ["reformats"],
    "thick-post": ["thick-post"],
}


def region_dice(out: Path, report: dict[str, Any], study: Path) -> dict[str, float]:
    """Dice of each written region against the expert labels, on the reference series' grid."""
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk

    from benchmarks.evaluation import dice
    from operators.dicom.seg import REGION_LABELS, segments_for_regions
    from operators.dicom.series_volume import series_to_image

    missing = report["segmentation"].get("missing_sequences") or {}
    written = missing.get("regions_written") or ["WT", "TC", "ET"]  # all four sequences: every region
    ref_uid = report["registration"]["reference_series_instance_uid"]
    doc = json.loads((study / "study.json").read_text())
    headers = ((p, pydicom.dcmread(p, stop_before_pixels=True)) for p in sorted((study / "dicom").rglob("*.dcm")))
    sources = [pydicom.dcmread(p) for p, ds in headers
               if getattr(ds, "SeriesInstanceUID", None) == ref_uid and getattr(ds, "Modality", "") == "MR"]
    series = series_to_image(sources)
    seg = hd.seg.segread(out / "segmentation.dcm")
    uids = [str(ds.SOPInstanceUID) for ds in series.slice_datasets]
    masks = {str(item.SegmentLabel): seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[int(item.SegmentNumber)],
        ignore_spatial_locations=True)[..., 0] > 0 for item in seg.SegmentSequence}
    truth_img = sitk.ReadImage(str(study / doc["ground_truth"]))
    truth = sitk.GetArrayFromImage(sitk.Resample(truth_img, series.image, sitk.Transform(),
                                                 sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    specs = segments_for_regions(tuple(written))
    overlap: dict[str, float] = {}
    for region in written:
        pred = np.zeros(truth.shape, bool)
        for spec in specs:
            if set(spec.brats_labels) <= REGION_LABELS[region]:
                pred |= masks[spec.label]
        ref = np.isin(truth, sorted(REGION_LABELS[region]))
        overlap[region] = round(dice(pred, ref), 4)
    return overlap


def _picks(report: dict[str, Any], expected: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per slot: the series the app picked and the one the profile planted."""
    by_uid = {s["series_instance_uid"]: s for s in report["input"]["series"]}
    selected = report["input"].get("selected") or {}
    picks: dict[str, dict[str, Any]] = {}
    for slot in ("flair", "t1", "t1ce", "t2"):
        got, want = selected.get(slot), expected.get(slot)
        picks[slot] = {
            "series": f"{got['series_number']} {got['series_description']}" if got else None,
            "expected": (f"{by_uid[want]['series_number']} {by_uid[want]['series_description']}"
                         if want in by_uid else None),
            "right": (got["series_instance_uid"] if got else None) == want,
        }
    return picks


def _comparisons(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for c in report["input"].get("contrast_phase", {}).get("comparisons", []):
        out.append({"series": c["series"], "against": c.get("against_series"),
                    "index": c.get("index"), "like_for_like": c.get("like_for_like"), "decision": c.get("decision")})
    return out


def holoscan_stack() -> None:
    """The 32 MB stack Holoscan asks for (as run.sh's ``ulimit -s 32768``), where the hard limit allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 1024 * 1024
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def run_profile(name: str, case_dir: Path, models: Path, work: Path,
                slices: str | None = None) -> dict[str, Any]:
    """Build one profile's study, run the app on it, and read back what it did."""
    study, out = work / name / "study", work / name / "out"
    make = [sys.executable, "-m", "samples.make_study", str(case_dir), str(study), "--overwrite", "--quiet",
            "--clinical", *PROFILES[name], *(["--slices", slices] if slices else [])]
    subprocess.run(make, cwd=REPO_ROOT, check=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "app", "-i", str(study / "dicom"), "-o", str(out), "-m", str(models)],
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          preexec_fn=holoscan_stack)
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    expected = json.loads((study / "study.json").read_text())["clinical"]["expected"]
    row: dict[str, Any] = {"profile": name, "make_study": " ".join(["--clinical", *PROFILES[name]]),
                           "exit_code": proc.returncode, "wall_s": round(wall, 1),
                           "error": report.get("error"), "picks": _picks(report, expected),
                           "contrast_phase": report["input"].get("contrast_phase", {}).get("status"),
                           "comparisons": _comparisons(report)}
    missing = (report.get("segmentation") or {}).get("missing_sequences") or {}
    row["regions_written"] = missing.get("regions_written") or (["WT", "TC", "ET"] if proc.returncode == 0 else [])
    row["regions_omitted"] = missing.get("regions_omitted") or {}
    row["expected_dice_held_out"] = missing.get("expected_dice_held_out")
    if proc.returncode == 0:
        row["files"] = sorted(p.name for p in out.iterdir())
        row["dice"] = region_dice(out, report, study)
    return row


def _markdown(rows: Sequence[dict[str, Any]], command: str) -> str:
    lines = ["# The app on the clinical profiles", "", f"`{command}`", "",
             "| profile | exit | FLAIR | T1 | T1ce | T2 | phase: pair (index, decision) | regions written "
             "| omitted | Dice vs expert |", "|" + "---|" * 10]
    for r in rows:
        slots = []
        for slot in ("flair", "t1", "t1ce", "t2"):
            p = r["picks"][slot]
            mark = "" if p["right"] else f" (planted: {p['expected'] or '-'})"
            slots.append(f"{p['series'] or '-'}{mark}")
        pairs = "; ".join(f"{c['series']} vs {c['against']} ({c['index']:+.2f}, {c['decision']})"
                          for c in r["comparisons"] if c["index"] is not None) or r["contrast_phase"] or "-"
        expected = r.get("expected_dice_held_out") or {}
        omitted = ", ".join(f"{k} (expected {expected[k]:.2f})" if expected.get(k) is not None else k
                            for k in r["regions_omitted"]) or "-"
        dice = ", ".join(f"{k} {v:.3f}" for k, v in (r.get("dice") or {}).items()) or "-"
        written = ", ".join(r["regions_written"] or []) or ("-" if r["exit_code"] == 0 else f"refused: {r['error']}")
        lines.append(f"| {r['profile']} | {r['exit_code']} | " + " | ".join(slots)
                     + f" | {pairs} | {written} | {omitted} | {dice} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Path, required=True, help="a BraTS case folder")
    p.add_argument("--models", type=Path, required=True, help="the model folder")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: all)")
    p.add_argument("--slices", default=None, help="START:END slab of the case (default: all slices)")
    p.add_argument("--work", type=Path, default=None, help="where studies and outputs go (default: OUT/work)")
    args = p.parse_args(argv)
    names = [n for n in args.profiles.split(",") if n]
    unknown = set(names) - set(PROFILES)
    if unknown:
        p.error(f"unknown profiles {sorted(unknown)}; known: {', '.join(PROFILES)}")
    work = args.work or args.out / "work"
    rows = []
    for name in names:
        print(f"[clinical_profiles] {name} ...", flush=True)
        rows.append(run_profile(name, args.case, args.models, work, args.slices))
        print(f"[clinical_profiles] {name}: exit {rows[-1]['exit_code']} in {rows[-1]['wall_s']} s", flush=True)
    from engines.runtimes.cpu_host import cpu_identity

    command = "python -m benchmarks.clinical_profiles " + " ".join(argv if argv is not None else sys.argv[1:])
    write_result(args.out, "clinical_profiles", {"command": command, "case": args.case.name, "cpu": cpu_identity(),
                                                 "rows": rows}, _markdown(rows, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
