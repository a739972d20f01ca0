"""The outcome of a rigid registration, whichever backend computed it.

:func:`operators.spatial.registration.register_rigid` (SimpleITK) and
:func:`operators.spatial.registration_torch.register_rigid_torch` (PyTorch) both return a
:class:`RegistrationResult`; the registration operator records :meth:`RegistrationResult.as_dict`
in ``report.json``. Axes, LPS and the transform convention: :mod:`operators.spatial`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

__all__ = ["RegistrationResult"]


@dataclass
class RegistrationResult:
    """Outcome of a rigid registration of a moving series to the fixed (reference) series.

    Attributes
    ----------
    transform
        Rigid transform mapping fixed (reference) points to moving points, LPS mm
        (``fixed(x) ~ moving(T(x))``).
    metric_before, metric_after
        SimpleITK: Mattes mutual information (ITK sign: negative, lower = better) at the initial
        and at the final transform, evaluated on every k-th voxel of the metric domain (at most
        ~500 000 points) inside its mask -- comparable with each other, not with the optimiser's
        sampled values. PyTorch: ``metric_before`` is NaN, ``metric_after`` the last level's loss.
    iterations
        Total optimiser iterations over all resolution levels.
    iterations_per_level
        Optimiser iterations at each level, coarse to fine.
    stop_condition
        The optimiser's stop description at the last level.
    duration_s
        Wall time of the whole call (initialisation, optimisation, metric evaluation), s.
    settings
        The settings used (JSON-able), for provenance (incl. the metric domain actually used:
        ``settings["domain"]`` is ``"fixed"`` or ``"moving"``).
    metric_identity
        The same metric at the identity transform (NaN from the PyTorch backend).
    kept_identity
        True when the optimised transform did not beat the identity on that metric and the
        identity was returned instead (``metric_after == metric_identity`` then).

    Notes
    -----
    All three metric values are computed in the metric domain used for the optimisation
    (the coarser of the two images with ``direction="auto"``), inside its mask.
    """

    transform: sitk.Euler3DTransform
    metric_before: float
    metric_after: float
    iterations: int
    iterations_per_level: tuple[int, ...]
    stop_condition: str
    duration_s: float
    settings: dict[str, Any] = field(default_factory=dict)
    metric_identity: float = float("nan")
    kept_identity: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary: angles in degrees, translation and centre in LPS mm.

        The angles are ITK ``Euler3DTransform`` angles about x, y, z with ``ComputeZYX`` off,
        i.e. ``R = Rz @ Rx @ Ry``; ``T(p) = R (p - c) + c + t``.
        """
        ax, ay, az, tx, ty, tz = self.transform.GetParameters()
        return {
            "convention": "ITK: maps fixed (reference) LPS mm points to moving LPS mm points",
            "angles_deg": [math.degrees(ax), math.degrees(ay), math.degrees(az)],
            "translation_mm": [tx, ty, tz],
            "center_mm": list(self.transform.GetCenter()),
            "matrix": list(self.transform.GetMatrix()),
            "metric": "MattesMutualInformation (lower is better)",
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "metric_identity": self.metric_identity,
            "kept_identity": self.kept_identity,
            "iterations": self.iterations,
            "iterations_per_level": list(self.iterations_per_level),
            "stop_condition": self.stop_condition,
            "duration_s": self.duration_s,
            "settings": dict(self.settings),
        }
