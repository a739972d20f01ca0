"""Read a BraTS case folder (NIfTI) into the project's arrays: the cascade's training-style input.

A case folder ``<case>/`` holds ``<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` on one 1 mm grid
(BraTS 2017-2020 layout, as in ``../shared/data/brats18``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_case(case_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """``(4, Z, Y, X)`` FLAIR, T1, T1ce, T2; seg ``(Z, Y, X)``; spacing (Z, Y, X) in mm.

    Read with nibabel (pure Python: it also runs where SimpleITK is absent, e.g. the GPU
    machines). !! nibabel indexes the stored voxels ``[i, j, k]``; SimpleITK's
    ``GetArrayFromImage`` gives ``[k, j, i]`` = (Z, Y, X), the project's order: transpose.
    """
    import nibabel as nib

    case = case_dir.name

    def zyx(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)  # scaled when the header has a slope, else stored dtype
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        return np.ascontiguousarray(arr.transpose(2, 1, 0)), zooms[::-1]  # type: ignore[return-value]

    loaded = [zyx(case_dir / f"{case}_{m}.nii.gz") for m in ("flair", "t1", "t1ce", "t2")]
    vols = np.stack([a for a, _ in loaded])
    seg, _ = zyx(case_dir / f"{case}_seg.nii.gz")
    return vols, seg, loaded[0][1]
