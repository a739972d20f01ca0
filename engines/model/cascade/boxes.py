"""Axis-aligned boxes in (Z, Y, X): where the brain, and each stage's crop, lies in its parent
volume.

A :data:`Box` is ``((z0, z1), (y0, y1), (x0, x1))``, half-open, in voxels of the frame it is
expressed in (the full volume unless a docstring says otherwise).
"""
from __future__ import annotations

import numpy as np

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def bounding_box(mask: np.ndarray, margin: int = 0) -> Box:
    """Half-open bounding box of the bool ``mask`` (Z, Y, X), grown by ``margin`` and clipped to
    the array. Raises ``ValueError`` on an empty mask."""
    if not mask.any():
        raise ValueError("bounding box of an empty mask")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append((max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)  # type: ignore[return-value]


def whole_box(shape: tuple[int, ...]) -> Box:
    """The box covering an array of ``shape`` (Z, Y, X)."""
    return tuple((0, int(n)) for n in shape)  # type: ignore[return-value]


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    """``box`` as slices indexing (Z, Y, X)."""
    return tuple(slice(a, b) for a, b in box)  # type: ignore[return-value]


def box_shape(box: Box) -> tuple[int, int, int]:
    """``(z, y, x)`` size of ``box``."""
    return tuple(b - a for a, b in box)  # type: ignore[return-value]


def offset_box(inner: Box, outer: Box) -> Box:
    """``inner``, given relative to ``outer``'s origin, in ``outer``'s parent frame."""
    return tuple((a + o0, b + o0) for (a, b), (o0, _) in zip(inner, outer))  # type: ignore[return-value]


def relative_box(inner: Box, outer: Box) -> Box:
    """``inner``, given in ``outer``'s parent frame, relative to ``outer``'s origin (the inverse
    of :func:`offset_box`)."""
    return tuple((a - o0, b - o0) for (a, b), (o0, _) in zip(inner, outer))  # type: ignore[return-value]
