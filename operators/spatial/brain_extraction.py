"""Brain extraction by MNI152 (2009) template registration + intensity refinement.

The fallback of :mod:`operators.spatial.brain_masking` when HD-BET (:mod:`operators.spatial.hd_bet`)
fails at run time, and the method of the ``brats.brain_extraction: template`` setting.

The subject's T1-weighted image (T1 or T1ce, skull on or off) is registered to the MNI152
2009c template that nilearn ships inside its wheel (rigid, then affine; SimpleITK, Mattes MI),
the template's brain mask is carried back onto the subject's own grid, and the mask is then
refined with the subject's intensities (Otsu inside a dilated mask, opening, largest
component, closing, hole filling). Measured accuracy: README, "Brain extraction".

Conventions: :mod:`operators.spatial` (LPS, ``(Z, Y, X)`` arrays). Here in addition:

* nilearn / nibabel images are RAS; the template is converted here (:func:`_nifti_to_sitk`).
* The template registration's transform maps **template points to subject points** (fixed =
  template, moving = subject); carrying the template's mask onto the subject grid therefore
  resamples with its inverse.

The template is skull-stripped (zero outside the brain; nilearn ships no MNI152 with skull).
Registering a skull-on subject to it works with Mattes MI restricted to a thin rim
(``rim_mm``) around the template brain: the template's zero rim is matched to the subject's
dark CSF / skull, and a wider rim lets the bright scalp fat pull the template sideways. The
intensity refinement then adapts the mask to the subject.

Known limitation: affine only. At the skull base (orbits, temporal bones, petrous ridge) the
carried mask can be several mm off, and the refinement then keeps some orbital / temporal soft
tissue; over the convexity it follows the inner table well. A deformable stage (or a template
with skull) would fix this.

Determinism: fixed sampling seed, SimpleITK's global thread count set to ``number_of_threads``
(default 1) during the registrations (:mod:`operators.spatial.itk_threads`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import SimpleITK as sitk

from operators.spatial.itk_threads import global_thread_count

__all__ = [
    "BrainExtractionResult",
    "extract_brain",
    "is_skull_stripped",
    "load_template",
    "mask_volume_ml",
]

LOG = logging.getLogger(__name__)

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------------------------
def _nifti_to_sitk(img: Any, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """nibabel image (RAS affine, array ``[i, j, k]``) -> SimpleITK image (LPS).

    ``A_lps = diag(-1, -1, 1, 1) @ A_ras``; the SimpleITK array is ``data.transpose(2, 1, 0)``
    (``(Z, Y, X)`` = ``(k, j, i)``).
    """
    data = np.asarray(img.dataobj, dtype=np.float32)
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    a = _RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    out.SetSpacing(tuple(float(s) for s in spacing))
    out.SetDirection(tuple(float(v) for v in (a[:3, :3] / spacing).ravel()))
    out.SetOrigin(tuple(float(v) for v in a[:3, 3]))
    return sitk.Cast(out, pixel_type)


@lru_cache(maxsize=4)
def load_template(resolution_mm: int = 2) -> tuple[sitk.Image, sitk.Image]:
    """The MNI152 2009 T1 template and its brain mask, from nilearn's wheel (no download).

    Parameters
    ----------
    resolution_mm
        1 or 2 (nilearn resamples the 1 mm files to 2 mm itself).

    Returns
    -------
    template, mask
        ``sitkFloat32`` T1 template (brain only, background 0) and ``sitkUInt8`` brain mask,
        both in LPS mm on the same grid. Cached: do not modify them in place.
    """
    from nilearn import datasets

    t = datasets.load_mni152_template(resolution=resolution_mm)
    m = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    template = _nifti_to_sitk(t)
    mask = sitk.Cast(sitk.Greater(_nifti_to_sitk(m), 0.5), sitk.sitkUInt8)
    mask.CopyInformation(template)
    return template, mask


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def mask_volume_ml(mask: sitk.Image) -> float:
    """Volume of the nonzero voxels of ``mask`` in millilitres (cm^3)."""
    n = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return n * float(np.prod(mask.GetSpacing())) / 1000.0


def is_skull_stripped(image: sitk.Image) -> tuple[bool, dict[str, Any]]:
    """Is ``image`` already skull-stripped? One series' evidence
    (:func:`operators.spatial.skull_stripped.series_evidence`: one connected nonzero region
    of brain size clear of the field of view's sides, no skull layer inside its surface; not
    the fraction of zero voxels alone, which a fat-suppressed skull-on image can exceed).

    Returns
    -------
    stripped, evidence
        The decision and the values it rests on (``zero_fraction``, ...).
    """
    from operators.spatial.skull_stripped import series_evidence

    ev = series_evidence(image)
    return bool(ev["stripped"]), ev


def _radius_vox(image: sitk.Image, mm: float) -> list[int]:
    """Per-axis structuring-element radius (voxels, >= 1 where mm > 0) for ``mm``."""
    return [max(1, int(round(mm / s))) if mm > 0 else 0 for s in image.GetSpacing()]


def _largest_component(mask: sitk.Image) -> sitk.Image:
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(sitk.Equal(cc, 1), sitk.sitkUInt8)


def _head_mask(image: sitk.Image) -> sitk.Image:
    """Head (vs air) mask: Otsu foreground, largest connected component, holes filled."""
    fg = sitk.OtsuThreshold(image, 0, 1)
    return _fill_holes(_largest_component(fg))


def _fill_holes(mask: sitk.Image) -> sitk.Image:
    """3-D hole filling, then slice-wise (axis 2 of the index) for holes open in z."""
    filled = sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1)
    arr = sitk.GetArrayFromImage(filled)
    for k in range(arr.shape[0]):  # (Z, Y, X): slice k
        sl = sitk.GetImageFromArray(arr[k])
        arr[k] = sitk.GetArrayFromImage(
            sitk.BinaryFillhole(sl, fullyConnected=False, foregroundValue=1))
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(mask)
    return out


# --------------------------------------------------------------------------------------------
# Main entry
# --------------------------------------------------------------------------------------------
@dataclass
class BrainExtractionResult:
    """Outcome of :func:`extract_brain`.

    Attributes
    ----------
    mask
        ``sitkUInt8`` binary mask (1 = brain) on the input image's grid (LPS).
    template_mask
        The template's brain mask carried onto the input grid (before refinement).
    transform
        Affine transform mapping template (MNI, LPS mm) points to subject points.
    record
        JSON-able provenance: volumes (ml), metric values, settings, refinement decision,
        durations (s).
    """

    mask: sitk.Image
    template_mask: sitk.Image
    transform: sitk.Transform
    record: dict[str, Any] = field(default_factory=dict)


def _register(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image,
              initial: sitk.Transform, *, seed: int, shrink: list[int], sigmas: list[float],
              samples: int, iterations: int) -> tuple[sitk.Transform, float]:
    """One Mattes-MI stage; returns the optimised transform (same type as ``initial``)."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricFixedMask(fixed_mask)
    n_in = float(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask)))
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel(
        [float(min(1.0, samples / max(1.0, n_in / f**3))) for f in shrink], int(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(sigmas)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    out = reg.Execute(fixed, moving)
    if isinstance(out, sitk.CompositeTransform):
        out = out.GetNthTransform(out.GetNumberOfTransforms() - 1)
    return out.Downcast(), float(reg.GetMetricValue())


def extract_brain(
    image: sitk.Image,
    *,
    seed: int = 1,
    template_resolution_mm: int = 2,
    refine: bool = True,
    rim_mm: float = 4.0,
    number_of_threads: int | None = 1,
) -> BrainExtractionResult:
    """Brain mask of a T1-weighted head image (skull on or off) on that image's own grid.

    Parameters
    ----------
    image
        T1 or T1ce (physical **LPS** mm), any grid: thick slices, oblique, LAS storage.
    seed
        Metric sampling seed (non-zero; 0 is SimpleITK's wall clock).
    template_resolution_mm
        Resolution of the MNI template used for registration (2: fast, enough for a mask).
    refine
        Adapt the carried template mask to the subject's intensities (see module docstring).
        Falls back to the template mask (recorded) when the refined mask differs from it by
        more than 20 % in volume.
    rim_mm
        The registration metric is evaluated in the template's brain mask dilated by this
        (mm): a thin rim of CSF / skull, little scalp (bright fat misleads MI).
    number_of_threads
        SimpleITK global thread count during the registrations (1 = reproducible).

    Returns
    -------
    BrainExtractionResult
        ``mask`` on ``image``'s grid (``sitkUInt8``, array ``(Z, Y, X)``).
    """
    if seed == 0:
        raise ValueError("seed=0 is sitk.sitkWallClock; use a non-zero seed")
    t0 = time.perf_counter()
    template, tmask = load_template(template_resolution_mm)
    subject = sitk.Cast(image, sitk.sitkFloat32)
    # robust intensity range: clip the brightest 0.5 % (fat, vessels) so MI bins spread on tissue
    arr = sitk.GetArrayViewFromImage(subject)
    hi = float(np.percentile(arr[arr > 0], 99.5)) if np.any(arr > 0) else 1.0
    subject_c = sitk.Clamp(subject, sitk.sitkFloat32, 0.0, hi)

    region = sitk.BinaryDilate(tmask, _radius_vox(tmask, rim_mm))  # template brain + rim
    with global_thread_count(number_of_threads):
        # start: centre of the template brain mask <- centre of the subject's head mask
        # (Otsu foreground, largest component): intensity moments would be pulled by the
        # bright scalp fat and the face
        head = _head_mask(subject_c)
        init = sitk.CenteredTransformInitializer(
            sitk.Cast(tmask, sitk.sitkFloat32), sitk.Cast(head, sitk.sitkFloat32),
            sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
        t1 = time.perf_counter()
        rigid, m_rigid = _register(template, subject_c, region, sitk.Euler3DTransform(init),
                                   seed=seed, shrink=[4, 2, 1], sigmas=[4.0, 2.0, 1.0],
                                   samples=20_000, iterations=150)
        t_rigid = time.perf_counter() - t1
        affine0 = sitk.AffineTransform(3)
        affine0.SetCenter(rigid.GetCenter())
        affine0.SetMatrix(rigid.GetMatrix())
        affine0.SetTranslation(rigid.GetTranslation())
        t2 = time.perf_counter()
        affine, m_affine = _register(template, subject_c, region, affine0, seed=seed,
                                     shrink=[2, 1], sigmas=[2.0, 1.0], samples=30_000,
                                     iterations=150)
        t_affine = time.perf_counter() - t2
    # template mask -> subject grid: resample with subject -> template (inverse) points
    carried_f = sitk.Resample(sitk.Cast(tmask, sitk.sitkFloat32), subject, affine.GetInverse(),
                              sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    carried = sitk.Cast(sitk.GreaterEqual(carried_f, 0.5), sitk.sitkUInt8)
    record: dict[str, Any] = {
        "method": "MNI152 2009 template (nilearn) rigid+affine Mattes MI, mask carried back",
        "template_resolution_mm": int(template_resolution_mm),
        "seed": int(seed),
        "metric_rigid": m_rigid,
        "metric_affine": m_affine,
        "affine_matrix": list(affine.GetMatrix()),
        "affine_translation_mm": list(affine.GetTranslation()),
        "affine_determinant": float(np.linalg.det(np.asarray(affine.GetMatrix()).reshape(3, 3))),
        "template_mask_ml": mask_volume_ml(carried),
        "duration_rigid_s": t_rigid,
        "duration_affine_s": t_affine,
    }
    mask = carried
    if refine:
        refined, info = _refine(subject, carried)
        record.update(info)
        ratio = mask_volume_ml(refined) / max(record["template_mask_ml"], 1e-6)
        record["refined_to_template_ratio"] = ratio
        if 0.8 <= ratio <= 1.2:
            mask = refined
            record["refinement"] = "used"
        else:
            record["refinement"] = "rejected (volume differs > 20 % from the template mask)"
    record["mask_ml"] = mask_volume_ml(mask)
    record["duration_s"] = time.perf_counter() - t0
    LOG.info("brain extraction: %.0f ml (template %.0f ml, refinement %s) in %.1f s",
             record["mask_ml"], record["template_mask_ml"], record.get("refinement", "off"),
             record["duration_s"])
    return BrainExtractionResult(mask=mask, template_mask=carried, transform=affine, record=record)


def _refine(subject: sitk.Image, carried: sitk.Image) -> tuple[sitk.Image, dict[str, Any]]:
    """Intensity refinement of a carried template mask on the subject grid.

    Otsu threshold of the subject inside ``carried`` dilated by 3 mm (tissue vs dark CSF /
    skull / air), keep voxels above half that threshold inside that region, open 3 mm (cut
    bridges to scalp, orbits, muscle), largest component, close 4 mm, fill holes
    (ventricles, tumour cavities), and finally keep it inside ``carried`` dilated by 3 mm.
    """
    wide = sitk.BinaryDilate(carried, _radius_vox(carried, 3.0))
    arr = sitk.GetArrayViewFromImage(subject)
    vals = arr[sitk.GetArrayViewFromImage(wide) > 0]
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    vimg = sitk.GetImageFromArray(vals.astype(np.float32).reshape(1, 1, -1))
    otsu.Execute(vimg)
    thr = 0.5 * float(otsu.GetThreshold())  # half Otsu: keep grey matter and partial volume
    bright = sitk.And(sitk.Cast(sitk.Greater(subject, thr), sitk.sitkUInt8), wide)
    opened = sitk.BinaryMorphologicalOpening(bright, _radius_vox(bright, 3.0))
    core = _largest_component(opened)
    closed = sitk.BinaryMorphologicalClosing(core, _radius_vox(core, 4.0))
    filled = _fill_holes(closed)
    out = sitk.Cast(sitk.And(filled, wide), sitk.sitkUInt8)
    out.CopyInformation(subject)
    return out, {"refine_threshold": thr, "refine_otsu": float(otsu.GetThreshold()),
                 "refined_ml": mask_volume_ml(out)}
