"""Build a realistic multi-series MR DICOM study from one BraTS case (test / benchmark input).

Usage
-----
``python -m samples.make_study <case dir> <out dir> [--drop t1,flair] [--misalign SEED]
[--seed N] [--slices START:END] [--overwrite]``, or a clinical-looking exam:
``... --clinical {philips,siemens,ge} [--mask-series] [--no-contrast-evidence]``
(:mod:`samples.clinical_profiles`), or ``--clinical reformats``: only reformats of 3-D
acquisitions (:mod:`samples.reformat_exam`), or ``--clinical thick-post``: a single post-contrast
T1 of 5 mm slices every 6.5 mm (:mod:`samples.thick_post_exam`)

or, without a subprocess, :func:`make_study` (returns a :class:`StudyManifest`). Its parts, shared
with the other sample builders: :mod:`samples.volumes` (the case, a slab, the ``--misalign``
draws), :mod:`samples.scanner_protocols`, :mod:`samples.dicom_writer`, :mod:`samples.study_manifest`.

Output layout (other code depends on it -- keep it exactly)
-----------------------------------------------------------
``<out>/dicom/``
    The study = the application's input folder. One sub-folder per series, named
    ``<SeriesNumber>_<sanitised SeriesDescription>`` (e.g. ``501_AX_T1_POST_GD``), one
    classic MR Image Storage file per slice (``IM_0001.dcm`` ...), explicit VR little endian.
``<out>/ground_truth.nii.gz``
    The case's ``seg`` label map, copied byte-for-byte (original = reference grid).
``<out>/study.json``
    What was built (case, seed, UIDs, per-series geometry, dropped series, reference).
``<out>/misalignment.json`` (only with ``--misalign``)
    The known rigid transform of every non-reference series (convention below).

Determinism
-----------
Same arguments -> byte-identical files. UIDs are ``generate_uid`` with entropy from
(``--seed``, case id, ``--misalign`` seed, series, slice); ``--drop`` does not enter, so a
dropped-series study holds the very same remaining series. ``--slices START:END`` keeps only
the slab of NIfTI slices ``k`` in ``[START, END)`` (a small study for fast runs; geometry
exact: slice ``START`` keeps its position, ``ground_truth.nii.gz`` is cropped the same way);
the slab enters the UIDs, so a slab study never shares UIDs with the full one. ``--seed N`` also picks dates,
names and the vendor style (``N % 3``: Siemens, GE, Philips naming; seed 0 = Siemens).

GEOMETRY (read this before touching anything below)
===================================================
* NIfTI affines (nibabel) are **RAS**; DICOM patient coordinates are **LPS**. The conversion
  is explicit: ``A_lps = diag(-1, -1, 1, 1) @ A_ras`` (flip the first two *rows*).
* For the NIfTI array ``data[i, j, k]`` (nibabel axis order):

  - DICOM **column** index = ``i``, DICOM **row** index = ``j``, **slice** = ``k``;
  - ``pixel_array[j, i] = data[i, j, k]``  -> each slice is ``data[:, :, k].T``
    (``Rows = J``, ``Columns = I``);
  - ``ImageOrientationPatient`` = unit LPS direction of increasing ``i`` (along a row),
    then unit LPS direction of increasing ``j`` (down a column);
  - ``ImagePositionPatient`` (slice ``k``) = ``A_lps @ (0, 0, k, 1)`` (centre of voxel 0,0);
  - ``PixelSpacing`` = ``[spacing along j (between rows), spacing along i (between columns)]``;
  - ``InstanceNumber = k + 1`` (files follow slice order).

  The slice axis must point along ``cross(row dir, column dir)`` (a right-handed LPS affine);
  otherwise a DICOM reader would sort the slices in reverse, so such input is refused.
* SimpleITK images use the same ``(i, j, k)`` index order (``GetArrayFromImage`` returns
  ``[k, j, i]``), LPS physical space.

MISALIGNMENT CONVENTION (``--misalign SEED``)
=============================================
The reference series (T1ce if present, else the first present of t1, t2, flair -- the
application's rule) keeps the original grid exactly. Every other series gets a rigid ITK
``Euler3DTransform`` ``T`` that maps points of the **reference series' physical space (LPS
mm) to the moving series' physical space**: ``x_moving = T(x_ref) = R (x_ref - c) + c + t``.
The moving series' anatomy is displaced by ``T``: ``moving(y) = original(T^-1(y))``, hence
``moving(T(x)) = original(x)`` -- exactly what a SimpleITK registration with
``fixed = reference`` and ``moving = series`` returns; resampling the moving series onto the
reference grid with ``T`` itself (``sitk.Resample(moving, reference, T)``) undoes it.
Each moving series also gets its own acquisition grid (different matrix, pixel spacing and
slice thickness, same field of view, axis-aligned with the reference) and its own
FrameOfReferenceUID.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# Modality keys (also the file suffixes of a BraTS case) and the reference choice: the
# application's own.
from engines.model.modalities import MODALITIES
from operators.spatial.grid import REFERENCE_ORDER, choose_reference
from samples.dicom_writer import (
    SeriesPlan,
    StudyContext,
    decimal_strings,
    deterministic_uid,
    refuse_existing_study,
    sanitise,
    staged_dicom_folder,
    study_context,
    write_series,
)
from samples.scanner_protocols import ACQUISITION_ORDER
from samples.study_manifest import SeriesManifest, StudyManifest, misalignment_document

# The case input and the --misalign draws need neither SimpleITK nor pydicom (samples.volumes:
# the GPU check builds its registration pair with it).
from samples.volumes import (
    INT16_MAX,
    INT16_MIN,
    Grid,
    RigidTransform,
    StudyBuildError,
    Volume,
    case_file,
    case_id_of,
    crop_slab,
    draw_grid,
    draw_transform,
    load_case,
    nifti_lps_affine,
    validate_slab,
    volume_center,
    write_ground_truth,
)

__all__ = [
    "MODALITIES",
    "REFERENCE_ORDER",
    "OneLineArgumentParser",
    "RigidTransform",
    "SeriesManifest",
    "StudyBuildError",
    "StudyManifest",
    "choose_reference",
    "main",
    "make_study",
    "nifti_lps_affine",
    "plan_series",
    "resample_moving",
]

LOG = logging.getLogger("samples.make_study")


# ============================================================================================
# Misalignment: the moved series (the transform and the grid are drawn in samples.volumes)
# ============================================================================================
def resample_moving(original: Volume, transform: RigidTransform, grid: Grid) -> Volume:
    """Simulate a separately acquired, displaced series: ``moving(y) = original(T^-1(y))``.

    ``sitk.Resample``'s transform maps *output* points to *input* points, so it is given
    ``T^-1`` (moving space -> reference space). Linear interpolation, rounded to int16;
    voxels whose nearest original voxel is 0 (outside the skull-stripped brain) stay 0.

    Returns
    -------
    Volume
        ``grid.size`` int16 data on ``grid``. (:func:`samples.volumes.resample_moving_numpy`: the
        same with SciPy, for where SimpleITK is absent; equal voxel for voxel on the series tested.)
    """
    src = original.to_sitk()
    # sitk.Resample: output(y) = input(tx(y)); we want original(T^-1(y)) -> tx = T^-1.
    inverse = transform.to_sitk().GetInverse()

    def _resample(image: sitk.Image, interp: int, out_type: int) -> np.ndarray:
        """Resample onto ``grid``; returns the ``(I, J, K)`` array (``data[i, j, k]``)."""
        out = sitk.Resample(image, grid.size, inverse, interp, grid.origin, grid.spacing,
                            grid.direction, 0.0, out_type)
        return sitk.GetArrayFromImage(out).transpose(2, 1, 0)

    values = _resample(src, sitk.sitkLinear, sitk.sitkFloat32)
    inside = _resample(src != 0, sitk.sitkNearestNeighbor, sitk.sitkUInt8) > 0
    data = np.where(inside, np.clip(np.rint(values), INT16_MIN, INT16_MAX), 0).astype(np.int16)
    return Volume(data=data, affine_lps=grid.affine_lps)


# ============================================================================================
# The study: its series, written
# ============================================================================================
def plan_series(
    ctx: StudyContext, present: Sequence[str], seed: int, misalign_seed: int | None,
    reference: str,
) -> dict[str, SeriesPlan]:
    """Series numbers, UIDs and acquisition start times in :data:`ACQUISITION_ORDER`.

    Times run over all four sequences (a dropped one was acquired but is not in the study),
    so dropping a series does not change the others.
    """
    plans: dict[str, SeriesPlan] = {}
    t = ctx.study_start + timedelta(minutes=2)  # after the localizer
    aligned_for = deterministic_uid(seed, ctx.uid_case, misalign_seed, "frame-of-reference")
    for order, m in enumerate(ACQUISITION_ORDER):
        proto = ctx.vendor.protocols[m]
        if proto.contrast:
            t += timedelta(seconds=75)  # injection
        start = t
        t += timedelta(seconds=proto.duration_s + 25)
        if m not in present:
            continue
        number = 100 * (order + 2) + 1
        misaligned = misalign_seed is not None and m != reference
        plans[m] = SeriesPlan(
            modality=m,
            protocol=proto,
            series_number=number,
            series_uid=deterministic_uid(seed, ctx.uid_case, misalign_seed, m, "series"),
            frame_of_reference_uid=(
                deterministic_uid(seed, ctx.uid_case, misalign_seed, m, "frame-of-reference")
                if misaligned else aligned_for
            ),
            start=start,
            folder_name=f"{number}_{sanitise(proto.series_description)}",
            misaligned=misaligned,
        )
    return plans


def _parse_slices(text: str) -> tuple[int, int]:
    try:
        start, end = text.split(":")
        return int(start), int(end)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected START:END, got {text!r}") from exc


def _normalise_drop(drop: Iterable[str]) -> tuple[str, ...]:
    names = [d.strip().lower() for d in drop if d.strip()]
    unknown = sorted(set(names) - set(MODALITIES))
    if unknown:
        raise StudyBuildError(
            f"unknown modality name(s) {', '.join(unknown)}; "
            f"expected some of {','.join(MODALITIES)}"
        )
    dropped = tuple(m for m in MODALITIES if m in names)
    if len(dropped) == len(MODALITIES):
        raise StudyBuildError("refusing to drop all four modalities: the study would be empty")
    return dropped


def _write_all_series(
    ctx: StudyContext,
    plans: dict[str, SeriesPlan],
    vols: dict[str, Volume],
    reference: str,
    staging: Path,
    dicom_dir: Path,
    seed: int,
    misalign_seed: int | None,
    timings: dict[str, float],
) -> tuple[dict[str, SeriesManifest], dict[str, RigidTransform]]:
    """Write every planned series (acquisition order) into ``staging``.

    Misaligned series are first resampled (:func:`resample_moving`) with their transform and
    grid drawn from ``misalign_seed``. Per-series durations go into ``timings``.

    Returns
    -------
    series
        modality -> manifest (folders already named as under ``dicom_dir``).
    transforms
        modality -> rigid transform, for the misaligned series only.
    """
    transforms: dict[str, RigidTransform] = {}
    series: dict[str, SeriesManifest] = {}
    center = volume_center(vols[reference])
    for m in ACQUISITION_ORDER:
        if m not in plans:
            continue
        t0 = time.perf_counter()
        vol = vols[m]
        if plans[m].misaligned and misalign_seed is not None:
            transforms[m] = draw_transform(misalign_seed, m, center)
            grid = draw_grid(misalign_seed, m, vols[reference])
            vol = resample_moving(vol, transforms[m], grid)
        folder = write_series(ctx, plans[m], vol, staging, seed, misalign_seed)
        series[m] = SeriesManifest.from_plan(plans[m], vol, dicom_dir / folder.name)
        timings[f"{m}_s"] = time.perf_counter() - t0
        LOG.info("%-5s -> dicom/%s: %d slices %s, %s mm%s in %.2f s", m, folder.name,
                 vol.data.shape[2], "x".join(map(str, vol.data.shape[:2])),
                 "x".join(decimal_strings(vol.spacing)), " (misaligned)" if plans[m].misaligned else "",
                 timings[f"{m}_s"])
    return series, transforms


def make_study(
    case_dir: str | Path,
    out_dir: str | Path,
    drop: Iterable[str] = (),
    misalign_seed: int | None = None,
    seed: int = 0,
    *,
    overwrite: bool = False,
    slices: tuple[int, int] | None = None,
) -> StudyManifest:
    """Turn a BraTS case folder into a realistic multi-series MR DICOM study.

    Parameters
    ----------
    case_dir
        ``.../<case>/`` holding ``<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` (``(I, J, K)`` =
        ``(240, 240, 155)``, 1 mm, int16, one shared affine).
    out_dir
        Output folder (created); see the module docstring for the layout.
    drop
        Modality keys (``flair``, ``t1``, ``t1ce``, ``t2``) to leave out; not all four.
    misalign_seed
        If given, every non-reference series gets a known random rigid transform and its
        own acquisition grid (``misalignment.json``).
    seed
        Seeds UIDs, dates, names and the vendor style (``seed % 3``: Siemens, GE, Philips).
    overwrite
        Replace an existing ``<out>/dicom`` study instead of refusing.
    slices
        ``(start, end)``: keep only NIfTI slices ``start <= k < end`` (default: all). The
        slab keeps its exact position in patient space; the ground truth is cropped alike.

    Returns
    -------
    StudyManifest
        What was written; also saved as ``<out>/study.json``.

    Raises
    ------
    StudyBuildError
        Bad input (missing case files, unknown modality, empty study, existing output).
    """
    t_start = time.perf_counter()
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    dropped = _normalise_drop(drop)
    present = [m for m in MODALITIES if m not in dropped]
    reference = choose_reference(dict.fromkeys(present))  # the app's rule; only the keys count
    case_id = case_id_of(case_dir)
    refuse_existing_study(out_dir, overwrite)  # fail fast, before reading the case

    t0 = time.perf_counter()
    vols = load_case(case_dir, present)
    seg_path = case_file(case_dir, "seg")
    if not seg_path.is_file():
        raise StudyBuildError(f"missing case file: {seg_path}")
    slab = validate_slab(slices, next(iter(vols.values())).data.shape[2])
    if slab is not None:
        vols = {m: crop_slab(v, slab) for m, v in vols.items()}
    timings = {"load_s": time.perf_counter() - t0}
    LOG.info("loaded %s (%s) in %.2f s", case_id, ",".join(present), timings["load_s"])

    ctx = study_context(case_id, seed, misalign_seed, slab)
    plans = plan_series(ctx, present, seed, misalign_seed, reference)
    dicom_dir = out_dir / "dicom"
    with staged_dicom_folder(out_dir, overwrite) as staging:
        series, transforms = _write_all_series(
            ctx, plans, vols, reference, staging, dicom_dir, seed, misalign_seed, timings
        )
    write_ground_truth(seg_path, out_dir / "ground_truth.nii.gz", slab)

    manifest = StudyManifest(
        case_id=case_id, seed=seed, misalign_seed=misalign_seed, out_dir=out_dir,
        dicom_dir=dicom_dir, ground_truth=out_dir / "ground_truth.nii.gz",
        study_json=out_dir / "study.json",
        misalignment_json=(out_dir / "misalignment.json") if misalign_seed is not None else None,
        study_instance_uid=ctx.study_uid, patient_id=ctx.case_id, patient_name=ctx.patient_name,
        accession_number=ctx.accession, manufacturer=ctx.vendor.manufacturer,
        reference_modality=reference, dropped=dropped, series=series, transforms=transforms,
        timings_s=timings, slices=slab,
    )
    manifest.study_json.write_text(json.dumps(manifest.as_dict(), indent=2) + "\n")
    if manifest.misalignment_json is not None:
        manifest.misalignment_json.write_text(
            json.dumps(misalignment_document(manifest), indent=2) + "\n"
        )
    timings["total_s"] = time.perf_counter() - t_start
    LOG.info("study %s: %d series in %s (%.2f s)", case_id, len(series), out_dir,
             timings["total_s"])
    return manifest


# ============================================================================================
# CLI
# ============================================================================================
class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"make_study: error: {message}\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m samples.make_study", description=__doc__.split("\n")[0])
    p.add_argument("case_dir", type=Path, help="BraTS case folder")
    p.add_argument("out_dir", type=Path, help="output folder")
    p.add_argument("--drop", default="",
                   help="comma-separated modalities to omit (flair,t1,t1ce,t2)")
    p.add_argument("--misalign", type=int, default=None, metavar="SEED",
                   help="misalign non-reference series with transforms drawn from SEED")
    p.add_argument("--seed", type=int, default=0, help="seed for UIDs, names, vendor (default 0)")
    p.add_argument("--slices", type=_parse_slices, default=None, metavar="START:END",
                   help="keep only NIfTI slices START <= k < END (a small study; default all)")
    p.add_argument("--clinical", default=None, metavar="PROFILE",
                   help="a clinical-looking exam (philips, siemens, ge; reformats: reformats of 3-D series only; "
                        "thick-post: one thick-slice post-contrast T1): "
                        "extra series, pre/post T1 "
                        "of one protocol without contrast attributes, faulty attributes "
                        "(samples.clinical_profiles)")
    p.add_argument("--mask-series", action="store_true",
                   help="with --clinical: add a lesion mask saved as a FLAIR-like MR series")
    p.add_argument("--no-contrast-evidence", action="store_true",
                   help="with --clinical: post-contrast T1 series without enhancement or time gap")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out>/dicom")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[make_study] %(message)s")
    try:
        if args.clinical in ("reformats", "thick-post"):
            from samples.reformat_exam import make_reformat_study
            from samples.thick_post_exam import make_thick_post_study

            if args.drop or args.misalign is not None:
                raise StudyBuildError("--clinical does not combine with --drop / --misalign")
            make = make_reformat_study if args.clinical == "reformats" else make_thick_post_study
            make(args.case_dir, args.out_dir, seed=args.seed, slices=args.slices, overwrite=args.overwrite)
            return 0
        if args.clinical:
            from samples.clinical_profiles import make_clinical_study

            if args.drop or args.misalign is not None:
                raise StudyBuildError("--clinical does not combine with --drop / --misalign")
            make_clinical_study(args.case_dir, args.out_dir, args.clinical, seed=args.seed, slices=args.slices,
                                mask_series=args.mask_series, contrast_evidence=not args.no_contrast_evidence,
                                overwrite=args.overwrite)
            return 0
        make_study(args.case_dir, args.out_dir, drop=args.drop.split(","),
                   misalign_seed=args.misalign, seed=args.seed, overwrite=args.overwrite,
                   slices=args.slices)
    except StudyBuildError as exc:
        sys.stderr.write(f"make_study: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
