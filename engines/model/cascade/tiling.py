"""One view of one stage as network batches, and the network's output stitched back.

A stage's crop is ``(4, z, y, x)`` in (Z, Y, X) order; :func:`to_view` permutes it into a view's
``(4, D, H, W)`` (:data:`~engines.model.cascade.config.VIEW_AXES`), :func:`from_view` permutes
a ``(D, H, W)`` result back. Along D the view is cut into slabs of
:data:`~engines.model.cascade.config.OUT_SLICES` output slices with
:data:`~engines.model.cascade.config.CONTEXT` context slices on each side; in-plane every slab
is one patch centred on the volume (:func:`inplane_patch`). Voxels outside the volume are N(0, 1)
noise in the noise channels and 0 in the others; a short last batch is padded with noise slabs
(they take part in the networks' batch statistics).

Shape buckets: an engine that builds something per batch shape (a CUDA graph, compiled kernels,
a TensorRT profile) may ask for in-plane buckets (``InferenceEngine.inplane_bucket``; none does
by default: :data:`engines.runtimes.base.GPU_INPLANE_BUCKET`); a patch larger than the base is
then rounded up to ``base + k * bucket``, so the cases a site meets share fewer shapes per
network. The extra rim is outside the volume (noise, as any rim) and is cropped away from the
output; it takes part in the batch statistics and changes the noise drawn, so labels move
slightly (measured: ``benchmarks/shape_buckets.py``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from engines.model.cascade.config import BATCH_SIZE, CONTEXT, IN_SLICES, INPLANE_MULTIPLE, OUT_SLICES, VIEW_AXES


def to_view(image: np.ndarray, view: str) -> np.ndarray:
    """``(C, Z, Y, X)`` -> contiguous ``(C, D, H, W)`` of ``view`` (channel axis stays first)."""
    perm = VIEW_AXES[view]
    return np.ascontiguousarray(image.transpose(0, *(a + 1 for a in perm)))


def from_view(volume: np.ndarray, view: str) -> np.ndarray:
    """``(D, H, W)`` of ``view`` -> ``(Z, Y, X)`` (a transposed view of ``volume``, no copy)."""
    return volume.transpose(np.argsort(VIEW_AXES[view]))


def slab_starts(depth: int, out_slices: int = OUT_SLICES) -> list[int]:
    """First *output* slice of each slab along D: ``min(11 k, D - 10)`` for ``k < ceil(D / 11)``.

    Slab centres are ``5, 16, 27, ...`` clamped to ``D - 5``; output slices are ``centre - 5 ..
    centre + 5``. The clamped last slab's last output slice falls one past the volume and is
    dropped. A start is negative only when ``D < 10``.
    """
    half = out_slices // 2
    centres = [min(c, depth - half) for c in range(half, depth + half, out_slices)]
    return [c - half for c in centres]


def inplane_patch(size: int, base: int, multiple: int = INPLANE_MULTIPLE, bucket: int | None = None) -> int:
    """In-plane patch size: ``max(size rounded up to a multiple of 4, base)``; with ``bucket``
    (voxels, a multiple of 4), a size above ``base`` is rounded up further to ``base + k * bucket``."""
    if bucket is not None and (bucket <= 0 or bucket % multiple):
        raise ValueError(f"in-plane bucket must be a positive multiple of {multiple}, got {bucket}")
    exact = max(-(-size // multiple) * multiple, base)
    if bucket is None or exact == base:
        return exact
    return base + -(-(exact - base) // bucket) * bucket


def extract_patch(
    volume: np.ndarray,
    start: Sequence[int],
    shape: Sequence[int],
    rng: np.random.Generator,
    noise_channels: Sequence[bool],
) -> np.ndarray:
    """float32 patch ``(C, *shape)`` of ``volume`` ``(C, D, H, W)`` starting at ``start`` (may be
    < 0 or reach past the volume).

    Voxels outside the volume are N(0, 1) noise in ``noise_channels`` and 0 elsewhere (absent
    modalities). Draws ``prod(shape)`` normals from ``rng`` per noise channel, in channel order,
    whether or not the patch overlaps the volume.
    """
    c = volume.shape[0]
    patch = np.zeros((c, *shape), dtype=np.float32)
    for ch in range(c):
        if noise_channels[ch]:
            patch[ch] = rng.standard_normal(tuple(shape), dtype=np.float32)
    src, dst = [], []
    for s, n, size in zip(start, shape, volume.shape[1:]):
        a, b = max(s, 0), min(s + n, size)
        if b <= a:
            return patch
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    patch[(slice(None), *dst)] = volume[(slice(None), *src)]
    return patch


def softmax_foreground(logits: np.ndarray) -> np.ndarray:
    """Foreground probability of 2-class logits ``(N, 2, ...)`` -> float32 ``(N, ...)``, stable."""
    # softmax([l0, l1])[1] == sigmoid(l1 - l0); expit does not overflow.
    return special.expit(logits[:, 1] - logits[:, 0]).astype(np.float32, copy=False)


@dataclass(frozen=True)
class SlabTiling:
    """The slabs covering one view-ordered volume.

    Attributes
    ----------
    shape
        ``(D, H, W)`` of the volume.
    patch_hw
        In-plane patch ``(h, w)`` of every slab: :func:`inplane_patch` of the volume's size and
        the base patch (and the bucket, when one is asked for).
    origin_hw
        In-plane start ``(h0, w0)`` of every patch in the volume (``<= 0``: the patch is centred
        and at least as large as the volume).
    starts
        :func:`slab_starts` of ``D``: each slab's first output slice.
    """

    shape: tuple[int, int, int]
    patch_hw: tuple[int, int]
    origin_hw: tuple[int, int]
    starts: tuple[int, ...]

    @classmethod
    def of(cls, shape: Sequence[int], base_hw: tuple[int, int], bucket: int | None = None) -> SlabTiling:
        """The tiling of a volume of ``shape`` ``(D, H, W)`` with base in-plane patch ``base_hw``
        (``bucket``: :func:`inplane_patch`'s)."""
        depth, h, w = (int(n) for n in shape)
        ph, pw = inplane_patch(h, base_hw[0], bucket=bucket), inplane_patch(w, base_hw[1], bucket=bucket)
        return cls((depth, h, w), (ph, pw), (h // 2 - ph // 2, w // 2 - pw // 2), tuple(slab_starts(depth)))

    @property
    def slab_shape(self) -> tuple[int, int, int]:
        """``(IN_SLICES, h, w)`` of one input slab."""
        return (IN_SLICES, *self.patch_hw)

    def batches(
        self,
        volume: np.ndarray,
        rng: np.random.Generator,
        noise_channels: Sequence[bool],
        batch_size: int = BATCH_SIZE,
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """The network batches of ``volume`` ``(C, D, H, W)``, in slab order.

        Yields ``(starts, batch)``: the output starts of the batch's real slabs and float32
        ``(batch_size, C, IN_SLICES, h, w)``, the last batch padded with noise slabs. Noise is
        drawn from ``rng`` slab by slab, in the order the slabs are yielded.
        """
        h0, w0 = self.origin_hw
        for b0 in range(0, len(self.starts), batch_size):
            chunk = list(self.starts[b0 : b0 + batch_size])
            slabs = [extract_patch(volume, (s - CONTEXT, h0, w0), self.slab_shape, rng, noise_channels) for s in chunk]
            while len(slabs) < batch_size:
                slabs.append(extract_patch(volume, (-10 * IN_SLICES, 0, 0), self.slab_shape, rng, noise_channels))
            yield chunk, np.stack(slabs)

    def output(self, start: int, foreground: np.ndarray) -> tuple[slice, np.ndarray]:
        """Where one slab's output lies in the volume along D, and its values there.

        ``foreground``: ``(OUT_SLICES, h, w)`` of the slab starting at output slice ``start``.
        Returns the D slice of the volume and the ``(d, H, W)`` part of ``foreground`` inside it.
        """
        depth, h, w = self.shape
        h0, w0 = self.origin_hw
        d0, d1 = max(start, 0), min(start + OUT_SLICES, depth)
        return slice(d0, d1), foreground[d0 - start : d1 - start, -h0 : -h0 + h, -w0 : -w0 + w]
