"""Load the trained TensorFlow ``.npz`` weights of the BraTS 2017 cascade into :class:`MSNet`.

The ``.npz`` files are keyed by the original variable names, e.g.
``MSNet_WT32sg/block1_1/conv_0/w``. The PyTorch parameter name is the part after the
``MSNet_*`` scope with ``/`` replaced by ``.`` (``block1_1.conv_0.w``).

Kernel layouts (the trap):

* TF forward conv kernel ``[kD, kH, kW, Cin, Cout]`` -> PyTorch ``(Cout, Cin, kD, kH, kW)``.
* TF transposed-conv kernel ``[kD, kH, kW, Cout, Cin]`` -> PyTorch ``conv_transpose3d``
  weight ``(Cin, Cout, kD, kH, kW)``.

Both are the same axis permutation ``(4, 3, 0, 1, 2)``; no spatial flip in either case.
``moving_mean`` / ``moving_variance`` (never updated, 0 and 1) are ignored on purpose:
the network normalises with batch statistics.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from engines.model.msnet import Kind, MSNet

#: The nine networks, in cascade order: stage (WT, TC, EN) x view (axial, sagittal, coronal).
NETWORKS: list[str] = [
    "wt32", "wt32sg", "wt32cr",
    "tc32", "tc32sg", "tc32cr",
    "en32", "en32sg", "en32cr",
]

#: A network fine-tuned from one of :data:`NETWORKS` (same architecture, other weights) is named
#: after it with this suffix, e.g. ``wt32md``: the WT networks fine-tuned by modality dropout
#: (:mod:`engines.model.missing.train_dropout`). Engines load it from ``<model dir>/<name>.pt``.
DROPOUT_SUFFIX = "md"

_IGNORED_SUFFIXES = ("moving_mean", "moving_variance", "biased", "local_step")


def npz_path(name: str, weights_dir: Path | str) -> Path:
    """Path of the ``.npz`` file of network ``name`` (e.g. ``wt32sg``)."""
    return Path(weights_dir) / f"msnet_{name}_20000.npz"


def base_network(name: str) -> str:
    """The network of :data:`NETWORKS` that ``name`` is or was fine-tuned from (``wt32md`` ->
    ``wt32``). Raises ``KeyError`` for any other name."""
    base = name[: -len(DROPOUT_SUFFIX)] if name.endswith(DROPOUT_SUFFIX) else name
    if base not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; expected one of {NETWORKS} (or one with the suffix {DROPOUT_SUFFIX!r})")
    return base


def network_kind(name: str) -> Kind:
    """``"wt"``, ``"tc"`` or ``"en"`` from a network name such as ``tc32cr`` or ``wt32md``."""
    return base_network(name)[:2]  # type: ignore[return-value]


def default_weights_dir() -> Path:
    """``$BRATS_SHARED/models/brats17-cascade`` or ``<repo>/../shared/models/brats17-cascade``."""
    env = os.environ.get("BRATS_SHARED")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"
    return root / "models" / "brats17-cascade"


def tf_to_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Convert TF-named arrays to an :class:`MSNet` ``state_dict``.

    Parameters
    ----------
    arrays
        Variable name -> array, as stored in the ``.npz`` (TF layout).

    Returns
    -------
    dict
        Parameter name -> float32 tensor in PyTorch layout.
    """
    state: dict[str, torch.Tensor] = {}
    for key, value in arrays.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        scope, _, rest = key.partition("/")
        if not scope.startswith("MSNet_") or not rest:
            raise KeyError(f"unexpected variable name {key!r}")
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim == 5:
            # TF [kD,kH,kW,Cin,Cout] (conv) or [kD,kH,kW,Cout,Cin] (deconv) -> (4,3,0,1,2):
            # PyTorch (Cout,Cin,kD,kH,kW) for conv, (Cin,Cout,kD,kH,kW) for conv_transpose.
            arr = arr.transpose(4, 3, 0, 1, 2)
        state[rest.replace("/", ".")] = torch.from_numpy(np.ascontiguousarray(arr))
    return state


def load_network(name: str, weights_dir: Path | str | None = None) -> MSNet:
    """Build network ``name`` and load its trained weights.

    Parameters
    ----------
    name
        One of :data:`NETWORKS`.
    weights_dir
        Folder holding ``msnet_<name>_20000.npz``; default :func:`default_weights_dir`.

    Returns
    -------
    MSNet
        In eval mode (irrelevant for the batch-statistics normalisation), float32, with
        ``requires_grad`` off. Raises ``KeyError`` on a missing or unexpected variable.
    """
    kind = network_kind(name)
    path = npz_path(name, weights_dir if weights_dir is not None else default_weights_dir())
    with np.load(path) as npz:
        state = tf_to_state_dict({k: npz[k] for k in npz.files})
    net = MSNet(kind)
    net.load_state_dict(state, strict=True)
    net.float().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
