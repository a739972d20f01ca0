"""The QA image (``overlay.png``): a few axial slices of the reference series with the SEG's
segments overlaid in their display colours, for a person to glance at the result.

Slices are spread over the tumour's extent and always include its largest slice, so that the
image shows what was found rather than the middle of the head; with nothing labelled it shows
the middle of the volume and its title says so. Each panel names its slice index into the
reference series' first axis (``source_datasets[z]`` of the SEG). The brain mask applied
before the network, when there is one, is outlined, so that a mask that cut off tumour is
seen.

The segments drawn are passed in (anything with the attributes of :class:`OverlaySegment`,
e.g. :class:`operators.dicom.seg.SegmentSpec`): the image shows what the SEG holds.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["BRAIN_OUTLINE_RGB", "OverlaySegment", "render_overlay_png"]

#: Colour of the brain-mask outline in the QA overlay (matplotlib RGB, cyan).
BRAIN_OUTLINE_RGB = (0.0, 0.9, 1.0)


class OverlaySegment(Protocol):
    """What the overlay needs of a segment."""

    @property
    def brats_labels(self) -> tuple[int, ...]:
        """Label values of the label map the segment holds."""

    @property
    def label(self) -> str:
        """Its name (legend)."""

    @property
    def short(self) -> str:
        """Its abbreviation (legend)."""

    @property
    def rgb(self) -> tuple[int, int, int]:
        """Its display colour (sRGB, 0..255)."""


def _pick_slices(labels: np.ndarray, n_slices: int) -> list[int]:
    """Axial slices to show: spread over the tumour's z-extent, incl. its largest slice.

    Parameters
    ----------
    labels : numpy.ndarray
        Label map, shape (Z, Y, X); nonzero is tumour.
    n_slices : int
        Slices wanted (at most Z are returned).

    Returns
    -------
    list of int
        Ascending slice indices into the first axis; with no tumour, evenly spread over the
        middle 30 % .. 70 % of Z.
    """
    n_z = labels.shape[0]
    n = max(1, min(n_slices, n_z))
    area = (labels > 0).reshape(n_z, -1).sum(axis=1)
    tumour = np.flatnonzero(area)
    if tumour.size == 0:
        return sorted({int(round(v)) for v in np.linspace(n_z * 0.3, n_z * 0.7, n)})
    largest = int(np.argmax(area))
    lo, hi = int(tumour[0]), int(tumour[-1])
    picks = {largest}
    for v in np.linspace(lo, hi, n + 2)[1:-1]:
        if len(picks) >= n:
            break
        picks.add(int(round(v)))
    for z in range(lo, hi + 1):  # tumour shorter than n slices: fill from its extent
        if len(picks) >= n:
            break
        picks.add(z)
    return sorted(picks)


def render_overlay_png(
    reference_volume: np.ndarray,
    labels: np.ndarray,
    out_path: str | Path,
    n_slices: int = 4,
    *,
    segments: Sequence[OverlaySegment],
    title: str | None = None,
    dpi: int = 100,
    brain_mask: np.ndarray | None = None,
) -> Path:
    """Write a QA PNG: a few axial slices of the reference image with the labels overlaid.

    Slices are spread over the z-extent of the tumour and always include the slice with the
    largest tumour area (if no voxel is labelled: evenly over the middle of the volume, and
    the title says so). Labels use the segments' display colours; a legend names them; each
    panel shows its slice index ``z`` (index into the first axis, i.e. ``source_datasets[z]``).

    Parameters
    ----------
    reference_volume : numpy.ndarray
        Float image, shape (Z, Y, X) = (slice, row, column).
    labels : numpy.ndarray
        BraTS label map, same shape, values in {0, 1, 2, 4}.
    out_path : str or Path
        PNG path (written atomically).
    n_slices : int
        Number of panels (at most Z).
    segments : sequence of OverlaySegment
        The segments drawn (those the SEG holds, e.g.
        :data:`operators.dicom.seg.BRATS_SEGMENTS`: the three BraTS classes).
    title : str, optional
        Figure title.
    dpi : int
        Resolution. The image is exactly ``(4 * n_panels * dpi) x (4.6 * dpi)`` pixels
        (width x height), e.g. 1600 x 460 for 4 panels at 100 dpi.
    brain_mask : numpy.ndarray, optional
        The brain mask applied before the network (same shape; when brain extraction ran):
        its outline is drawn in cyan and named in the legend.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ValueError
        ``reference_volume`` and ``labels`` not of one 3-D shape, or ``brain_mask`` of another.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ref = np.asarray(reference_volume, dtype=np.float32)
    lab = np.asarray(labels)
    if ref.ndim != 3 or ref.shape != lab.shape:
        raise ValueError(f"reference {ref.shape} and labels {lab.shape} must be equal 3-D shapes")
    if brain_mask is not None and np.shape(brain_mask) != lab.shape:
        raise ValueError(f"brain mask {np.shape(brain_mask)} and labels {lab.shape} must have one shape")
    zs = _pick_slices(lab, n_slices)
    finite = ref[np.isfinite(ref)]
    lo, hi = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1.0

    fig = Figure(figsize=(4.0 * len(zs), 4.6), dpi=dpi)
    FigureCanvasAgg(fig)
    for i, z in enumerate(zs):
        ax = fig.add_axes((i / len(zs), 0.10, 1.0 / len(zs), 0.78))
        ax.imshow(ref[z], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        rgba = np.zeros(lab.shape[1:] + (4,), dtype=np.float32)
        for s in segments:
            m = np.isin(lab[z], s.brats_labels)
            rgba[m, :3] = np.asarray(s.rgb, dtype=np.float32) / 255.0
            rgba[m, 3] = 0.5
        ax.imshow(rgba, interpolation="nearest")
        if brain_mask is not None and np.any(brain_mask[z]):
            ax.contour(np.asarray(brain_mask[z], dtype=np.float32), levels=[0.5], colors=[BRAIN_OUTLINE_RGB],
                       linewidths=1.0)
        n_vox = int(np.isin(lab[z], [v for s in segments for v in s.brats_labels]).sum())
        ax.set_title(f"slice z={z} / {lab.shape[0]}  ({n_vox} tumour px)", fontsize=9)
        ax.set_axis_off()
    handles = [Patch(color=np.asarray(s.rgb) / 255.0, label=f"{'+'.join(map(str, s.brats_labels))}: {s.short} "
                     f"({s.label})") for s in segments]
    if brain_mask is not None:
        handles.append(Patch(edgecolor=BRAIN_OUTLINE_RGB, facecolor="none", label="brain mask (applied)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    empty = not np.any(np.isin(lab, [v for s in segments for v in s.brats_labels]))
    fig.suptitle((title or "Tumour segmentation QA") + ("  -- NO TUMOUR LABELLED" if empty else ""),
                 fontsize=10, y=0.985)

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, out)
    return out
