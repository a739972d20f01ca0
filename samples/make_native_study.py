"""Build a DICOM study from a native-space exam: one NIfTI per sequence, each on its own grid.

Usage
-----
``python -m samples.make_native_study <folder of per-sequence NIfTI> <out dir> [--seed N]
[--overwrite]``

The folder holds ``t1.nii.gz``, ``t1c.nii.gz`` (or ``t1ce.nii.gz``), ``t2.nii.gz``,
``flair.nii.gz`` (any subset, not empty), e.g. ``../shared/data/native-space/TCGA-FG-6692``:
0.9 x 0.9 x 5.5 mm, LAS on disk, different matrices and orientations per sequence, skull on.
Unlike :mod:`samples.make_study` nothing is resampled: every series keeps its own affine and
matrix, and all series share one FrameOfReferenceUID (one scanner session).

Output layout: the same as :mod:`samples.make_study` (``<out>/dicom/<series folder>/IM_0001.dcm``
..., ``<out>/study.json``), without ``ground_truth.nii.gz`` (there are no labels) and without
``misalignment.json``. The DICOM headers, series plan and writer are
:mod:`samples.make_study`'s and :mod:`samples.dicom_writer`'s own functions (vendor style from ``--seed``).

GEOMETRY: NIfTI is RAS, DICOM is LPS (``A_lps = diag(-1, -1, 1, 1) @ A_ras``, see
:func:`samples.volumes.nifti_lps_affine`). A stored left-handed affine (e.g. LAS: rows run
anterior) would make DICOM readers sort slices in reverse, so such a volume gets its ``j``
(row) axis reversed here -- the same voxels at the same LPS positions, rows running the
other way; the slice order and the slice positions are unchanged.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from engines.model.modalities import MODALITIES
from operators.spatial.grid import choose_reference
from samples.dicom_writer import decimal_strings, staged_dicom_folder, study_context, write_series
from samples.make_study import OneLineArgumentParser, plan_series
from samples.scanner_protocols import ACQUISITION_ORDER
from samples.study_manifest import SeriesManifest
from samples.volumes import StudyBuildError, Volume, as_int16, nifti_lps_affine

__all__ = ["NATIVE_FILES", "load_native_volume", "make_native_study", "main"]

LOG = logging.getLogger("samples.make_native_study")
_GENERATOR = "samples.make_native_study 1.0"

#: Modality key -> accepted file names (first found wins).
NATIVE_FILES: dict[str, tuple[str, ...]] = {
    "t1": ("t1.nii.gz", "t1.nii"),
    "t1ce": ("t1c.nii.gz", "t1ce.nii.gz", "t1c.nii", "t1ce.nii"),
    "t2": ("t2.nii.gz", "t2.nii"),
    "flair": ("flair.nii.gz", "flair.nii"),
}


def load_native_volume(path: Path) -> Volume:
    """One sequence as int16 with its LPS affine, made right-handed if needed.

    Parameters
    ----------
    path
        NIfTI file (RAS affine, ``data[i, j, k]``), integer values in the int16 range.

    Returns
    -------
    samples.volumes.Volume
        ``data`` ``(I, J, K)`` int16 and ``affine_lps``; when the stored affine is
        left-handed, ``data[:, ::-1, :]`` with column ``j`` of the affine negated and the
        origin moved to the former last row (same physical voxel positions).

    Raises
    ------
    samples.volumes.StudyBuildError
        Unreadable, not 3-D, non-integer values or a non-orthogonal affine.
    """
    if not path.is_file():
        raise StudyBuildError(f"missing file: {path}")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 -- any read failure is bad input
        raise StudyBuildError(f"cannot read {path}: {exc}".replace("\n", " ")) from exc
    if arr.ndim != 3:
        raise StudyBuildError(f"{path}: expected a 3-D image, got shape {arr.shape}")
    data = as_int16(np.asarray(arr), path)
    a = nifti_lps_affine(img)
    unit = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
    handed = float(np.dot(np.cross(unit[:, 0], unit[:, 1]), unit[:, 2]))
    if abs(abs(handed) - 1.0) > 1e-3:
        raise StudyBuildError(f"{path}: affine is not orthogonal; not supported")
    if handed < 0:  # left-handed (e.g. LAS): reverse the row (j) axis
        n_j = data.shape[1]
        data = np.ascontiguousarray(data[:, ::-1, :])
        flipped = a.copy()
        flipped[:3, 1] = -a[:3, 1]
        flipped[:3, 3] = a[:3, 3] + a[:3, 1] * (n_j - 1)
        a = flipped
    return Volume(data=data, affine_lps=a)


def _find(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for key, names in NATIVE_FILES.items():
        for name in names:
            if (folder / name).is_file():
                found[key] = folder / name
                break
    return found


def make_native_study(
    folder: str | Path, out_dir: str | Path, seed: int = 0, *, overwrite: bool = False
) -> dict[str, Any]:
    """Write the exam in ``folder`` as a classic MR DICOM study under ``<out_dir>/dicom``.

    Parameters
    ----------
    folder
        Per-sequence NIfTI files (see :data:`NATIVE_FILES`); the folder name is the patient /
        case id.
    out_dir
        Output folder; ``<out_dir>/dicom`` and ``<out_dir>/study.json`` are written.
    seed
        UIDs, dates, vendor style (as in :mod:`samples.make_study`).
    overwrite
        Replace an existing study.

    Returns
    -------
    dict
        The content of ``study.json`` (per-series geometry in SimpleITK order, LPS).
    """
    t0 = time.perf_counter()
    folder, out_dir = Path(folder), Path(out_dir)
    if not folder.is_dir():
        raise StudyBuildError(f"folder not found: {folder}")
    files = _find(folder)
    if not files:
        raise StudyBuildError(f"{folder}: no t1/t1c/t2/flair NIfTI found")
    present = [m for m in MODALITIES if m in files]
    reference = choose_reference(dict.fromkeys(present))  # the app's rule; only the keys count
    case_id = folder.resolve().name
    vols = {m: load_native_volume(files[m]) for m in present}

    ctx = study_context(case_id, seed, None)
    plans = plan_series(ctx, present, seed, None, reference)
    dicom_dir = out_dir / "dicom"
    series: dict[str, SeriesManifest] = {}
    with staged_dicom_folder(out_dir, overwrite) as staging:
        for m in ACQUISITION_ORDER:
            if m not in plans:
                continue
            written = write_series(ctx, plans[m], vols[m], staging, seed, None)
            series[m] = SeriesManifest.from_plan(plans[m], vols[m], dicom_dir / written.name)
            LOG.info("%-5s <- %s -> dicom/%s: %s voxels, %s mm", m, files[m].name, written.name,
                     "x".join(map(str, vols[m].data.shape)), "x".join(decimal_strings(vols[m].spacing)))
    doc: dict[str, Any] = {
        "generator": _GENERATOR,
        "case_id": case_id,
        "source": str(folder),
        "source_files": {m: files[m].name for m in present},
        "seed": seed,
        "misalign_seed": None,
        "study_instance_uid": ctx.study_uid,
        "patient_id": ctx.case_id,
        "patient_name": ctx.patient_name,
        "accession_number": ctx.accession,
        "manufacturer": ctx.vendor.manufacturer,
        "coordinate_system": "LPS (mm); size/spacing/origin along i, j, k as SimpleITK; "
                             "direction row-major 3x3, columns = axis directions",
        "reference_modality": reference,
        "present": present,
        "dropped": [],
        "ground_truth": None,
        "dicom_dir": "dicom",
        "series": [series[m].as_dict(out_dir) for m in ACQUISITION_ORDER if m in series],
    }
    (out_dir / "study.json").write_text(json.dumps(doc, indent=2) + "\n")
    LOG.info("native study %s: %d series in %s (%.2f s)", case_id, len(series), out_dir,
             time.perf_counter() - t0)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input)."""
    p = OneLineArgumentParser(prog="python -m samples.make_native_study",
                          description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="folder of per-sequence NIfTI files")
    p.add_argument("out_dir", type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed for UIDs, names, vendor (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out>/dicom")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[make_native_study] %(message)s")
    try:
        make_native_study(args.folder, args.out_dir, seed=args.seed, overwrite=args.overwrite)
    except StudyBuildError as exc:
        sys.stderr.write(f"make_native_study: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
