"""A small 3-D network that predicts absent MR sequences from the available ones.

Input: **(N, 8, D, H, W)** float32 = the four z-scored channels (FLAIR, T1, T1ce, T2; absent
ones and everything outside the brain set to 0) followed by four constant availability flags
(1 = the channel is real). Output: **(N, 4, D, H, W)**, the four channels' z-scores; only the
absent ones are used. Axis order is the project's (Z, Y, X) for (D, H, W); the network is
fully convolutional and treats the three axes alike, so the view does not matter.

Architecture: two 3 x 3 x 3 convolutions (dilations 1 and 2) that look at the neighbourhood,
two 1 x 1 x 1 convolutions that mix the features per voxel, 16 features, LeakyReLU, and a
1 x 1 x 1 output layer: a receptive field of 7 voxels (7 mm on the BraTS grid), about 11 k
parameters, small enough to train on a 2-core CPU in minutes. It is trained by
:mod:`engines.model.missing.train_synthesis` with random subsets of the sequences withheld.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

FEATURES = 16
DILATIONS = (1, 2)  # the 3 x 3 x 3 convolutions
MIXING_LAYERS = 2  # the 1 x 1 x 1 convolutions after them
IN_CHANNELS = 8  # 4 z-scored sequences + 4 availability flags
OUT_CHANNELS = 4


class SynthesisNet(nn.Module):
    """Fully convolutional 3-D network; see the module docstring for shapes."""

    def __init__(self, features: int = FEATURES, dilations: Sequence[int] = DILATIONS,
                 mixing_layers: int = MIXING_LAYERS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = IN_CHANNELS
        for d in dilations:
            layers += [nn.Conv3d(channels, features, 3, padding=d, dilation=d), nn.LeakyReLU(0.1)]
            channels = features
        for _ in range(mixing_layers):
            layers += [nn.Conv3d(features, features, 1), nn.LeakyReLU(0.1)]
        layers.append(nn.Conv3d(channels, OUT_CHANNELS, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def network_input(image: np.ndarray, brain: np.ndarray, available: Sequence[bool]) -> np.ndarray:
    """The network's 8-channel input for one crop.

    Parameters
    ----------
    image
        float32 ``(4, z, y, x)`` z-scored crop (absent channels ignored).
    brain
        bool ``(z, y, x)`` brain mask.
    available
        4 bools.

    Returns
    -------
    numpy.ndarray
        float32 ``(8, z, y, x)``: available channels inside the brain (0 elsewhere and for
        absent channels), then the four availability flags as constant planes.
    """
    x = np.zeros((IN_CHANNELS, *image.shape[1:]), dtype=np.float32)
    for c, a in enumerate(available):
        if a:
            x[c] = np.where(brain, image[c], 0.0)
            x[4 + c] = 1.0
    return x


class Synthesiser:
    """Loads the trained weights once and predicts absent channels of a crop (CPU, float32).

    Parameters
    ----------
    weights
        ``state_dict`` file written by the training script (``synthesis.pt``).
    threads
        torch intra-op threads while predicting (the caller's setting is restored after).
    features, dilations
        The architecture the weights were trained with (the training manifest's
        ``architecture``; the defaults are the shipped network's).
    """

    #: Slabs along Z per forward pass (bounded memory on the 240 x 240 x 155 grid).
    SLAB = 48

    def __init__(self, weights: Path, threads: int | None = None, features: int = FEATURES,
                 dilations: Sequence[int] = DILATIONS) -> None:
        self.weights = Path(weights)
        self.dilations = tuple(int(d) for d in dilations)
        self.net = SynthesisNet(features, self.dilations)
        self.net.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        self.net.eval()
        self.threads = threads

    def predict(self, image: np.ndarray, brain: np.ndarray, available: Sequence[bool]) -> np.ndarray:
        """float32 ``(4, z, y, x)`` predicted z-scores for the crop ``image`` ``(4, z, y, x)``.

        Runs in overlapping slabs along Z (halo = the receptive field's radius, the sum of the
        dilations), so the result equals one pass over the whole crop up to float rounding.
        """
        x = network_input(image, brain, available)
        depth = x.shape[1]
        halo = sum(self.dilations)  # radius of the receptive field
        out = np.empty((OUT_CHANNELS, *x.shape[1:]), dtype=np.float32)
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for z0 in range(0, depth, self.SLAB):
                    z1 = min(z0 + self.SLAB, depth)
                    a, b = max(z0 - halo, 0), min(z1 + halo, depth)
                    y = self.net(torch.from_numpy(x[None, :, a:b]))[0].numpy()
                    out[:, z0:z1] = y[:, z0 - a : z1 - a]
        finally:
            torch.set_num_threads(previous)
        return out
