"""MSNet (Wang et al., BrainLes 2017) re-implemented in PyTorch from the op lists.

Source of truth: ``shared/models/brats17-cascade/README.md`` and
``reference/msnet_*.forward_ops.txt``. Module and parameter names follow the TensorFlow
variable names (``block1_1/bn_0/gamma`` -> ``block1_1.bn_0.gamma``), so that
:mod:`engines.model.weights` maps the ``.npz`` files one to one.

Tensor layout
-------------
PyTorch **NCDHW**: ``(N, C=4, D, H, W)`` in, ``(N, 2, D - 8, H, W)`` logits out.
The TensorFlow original was **NDHWC** (channels last); the caller (or the golden test)
must transpose inputs and logits, not only the kernels.

Conventions that bite (TensorFlow -> PyTorch)
---------------------------------------------
* Normalisation: **batch statistics**, always (the authors ran the graph in training
  mode). Mean and population variance per channel over ``(N, D, H, W)``, eps 1e-5, written
  as plain reductions (ONNX ``ReduceMean``/``Mul``/``Sqrt``), never ``nn.BatchNorm3d``.
  Consequence: the output for one slab depends on the other slabs of the same batch.
* Stride-2 convolutions: TF ``SAME`` on an even size pads 0 before and 1 after. We pad
  explicitly with ``F.pad(x, (0, 1, 0, 1))`` and convolve with ``padding=0``.
  ``padding=1`` would shift the result by one voxel (logit errors ~26).
* Transposed convolutions (TF ``SAME``, stride 2): ``conv_transpose`` with no padding
  (output ``2H + 1``) cut to the *first* ``2H`` voxels. ``padding=1, output_padding=1``
  is wrong (errors ~35).
* Dilated convolutions: TF wrote them as SpaceToBatchND -> conv VALID -> BatchToSpaceND,
  which equals an ordinary dilated convolution with symmetric padding ``d``.
* H and W must be divisible by 4 (WT/TC, two downsamplings) or 2 (EN, one) so that the
  up-sampled heads line up with the input; checked in :meth:`MSNet.forward`.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Kind = Literal["wt", "tc", "en"]

BN_EPS = 1e-5
#: Slices lost in depth: four VALID ``[3,1,1]`` fuse convolutions, one slice each side.
DEPTH_MARGIN = 4


class BatchStatNorm(nn.Module):
    """Batch normalisation that always uses the statistics of the current batch.

    Parameters
    ----------
    channels
        Number of channels ``C``.
    eps
        Added to the variance (TF default of the original: 1e-5).

    Notes
    -----
    Input ``(N, C, D, H, W)``. Mean and *population* variance are taken per channel over
    ``(N, D, H, W)``, i.e. across every slab of the batch, as the original TF graph did
    (``tf.nn.moments`` in training mode). Written with plain ops so the ONNX export is
    ``ReduceMean`` / ``Sub`` / ``Mul`` / ``Sqrt`` and carries no running statistics.
    """

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, 2, 3, 4)
        if x.dtype in (torch.float16, torch.bfloat16):
            return self._forward_half(x, dims)
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).square().mean(dim=dims, keepdim=True)
        # Same factorisation as TF's batch_normalization: x * scale + (beta - mean * scale).
        scale = torch.rsqrt(var + self.eps) * self.gamma.view(1, -1, 1, 1, 1)
        return x * scale + (self.beta.view(1, -1, 1, 1, 1) - mean * scale)

    def _forward_half(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Half-precision input: statistics, scale and shift in FP32, result in ``x.dtype``.

        !! Never square a half tensor here: FP16 overflows above 256**2, and a mean over
        millions of voxels needs FP32 accumulation. Compiled, the FP32 copy is fused away.
        """
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=dims, correction=0, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * self.gamma.float().view(1, -1, 1, 1, 1)
        shift = self.beta.float().view(1, -1, 1, 1, 1) - mean * scale
        return (xf * scale + shift).to(x.dtype)


class PReLU(nn.Module):
    """Per-channel PReLU ``relu(x) + alpha * (x - |x|) / 2`` (equal to ``F.prelu``).

    ``F.prelu`` is used for speed; ``x - |x|`` is exactly ``2x`` for ``x < 0`` and 0
    otherwise, so the two forms agree bit for bit. Exports to ONNX ``PRelu``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.alpha)


class Conv(nn.Module):
    """Bias-free 3-D convolution with TF ``SAME`` / ``VALID`` semantics.

    The parameter ``w`` is stored in PyTorch layout ``(Cout, Cin, kD, kH, kW)``; the TF
    kernel ``[kD, kH, kW, Cin, Cout]`` is converted in :mod:`engines.model.weights`.

    Parameters
    ----------
    cin, cout
        Channels in / out.
    kernel
        ``(kD, kH, kW)``.
    stride
        In-plane stride (1 or 2); depth stride is always 1.
    dilation
        In-plane dilation; depth dilation is always 1.
    padding
        ``"same"`` (TF SAME) or ``"valid"``.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int],
        stride: int = 1,
        dilation: int = 1,
        padding: Literal["same", "valid"] = "same",
    ) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(cout, cin, *kernel))
        self.kernel = kernel
        self.stride = stride
        self.dilation = dilation
        self.padding = padding
        if padding == "same" and kernel[0] != 1:
            raise ValueError("SAME padding is only used for in-plane kernels [1,k,k]")
        if stride == 2 and (dilation != 1 or kernel[1:] != (3, 3)):
            raise ValueError("stride 2 is only supported for undilated 3x3 kernels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "valid":
            return F.conv3d(x, self.w)
        if self.stride == 2:
            # !! TF SAME with stride 2, kernel 3, even size: pad 0 before, 1 after (H and W).
            # F.pad order is (W_before, W_after, H_before, H_after, D_before, D_after).
            x = F.pad(x, (0, 1, 0, 1, 0, 0))
            return F.conv3d(x, self.w, stride=(1, 2, 2))
        p = self.dilation * (self.kernel[1] // 2)
        return F.conv3d(
            x, self.w, padding=(0, p, p), dilation=(1, self.dilation, self.dilation)
        )


class DeconvUp(nn.Module):
    """TF ``conv3d_transpose`` kernel ``[1,3,3]``, stride ``[1,2,2]``, SAME: H, W doubled.

    Parameter ``w`` in PyTorch ``conv_transpose3d`` layout ``(Cin, Cout, 1, 3, 3)`` (TF
    stores ``[kD, kH, kW, Cout, Cin]``; no spatial flip). Computed as a transposed conv
    with **no padding** (output ``2H + 1``) cut to the **first** ``2H`` x ``2W`` voxels.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(cin, cout, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose3d(x, self.w, stride=(1, 2, 2))
        # Drop the last row/column (2H+1 -> 2H); a constant negative end keeps ONNX dynamic.
        return y[:, :, :, :-1, :-1]


class ResBlock(nn.Module):
    """``blockN_k``: bn_0 -> prelu_0 -> conv_0 -> bn_1 -> prelu_1 -> conv_1, plus input.

    Kernels ``[1,3,3]``, SAME, in-plane dilation ``dilation``. When ``cin < cout`` the
    identity is zero-padded in channels on both sides (4 -> 14 + 4 + 14 = 32), as
    ``residual_sum/Pad`` does.
    """

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__()
        self.bn_0 = BatchStatNorm(cin)
        self.prelu_acti_0 = PReLU(cin)
        self.conv_0 = Conv(cin, cout, (1, 3, 3), dilation=dilation)
        self.bn_1 = BatchStatNorm(cout)
        self.prelu_acti_1 = PReLU(cout)
        self.conv_1 = Conv(cout, cout, (1, 3, 3), dilation=dilation)
        extra = cout - cin
        if extra < 0 or extra % 2:
            raise ValueError("residual channel padding needs cout - cin even and >= 0")
        self.pad_c = extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_0(self.prelu_acti_0(self.bn_0(x)))
        y = self.conv_1(self.prelu_acti_1(self.bn_1(y)))
        if self.pad_c:
            # NCDHW: the channel axis is the 4th pair from the end in F.pad's order.
            x = F.pad(x, (0, 0, 0, 0, 0, 0, self.pad_c, self.pad_c))
        return y + x


class ConvBnPrelu(nn.Module):
    """``fuseN_bn_prelu`` / ``downsampleN_bn_prelu``: conv -> bn -> prelu."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int],
        stride: int = 1,
        padding: Literal["same", "valid"] = "same",
    ) -> None:
        super().__init__()
        self.conv_ = Conv(cin, cout, kernel, stride=stride, padding=padding)
        self.bn_ = BatchStatNorm(cout)
        self.prelu_acti_ = PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu_acti_(self.bn_(self.conv_(x)))


class DeconvBnPrelu(nn.Module):
    """``pred_up*_bn_prelu``: transposed conv (x2 in-plane) -> bn -> prelu."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.deconv_ = DeconvUp(cin, cout)
        self.bn_ = BatchStatNorm(cout)
        self.prelu_acti_ = PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu_acti_(self.bn_(self.deconv_(x)))


def _fuse(ch: int) -> ConvBnPrelu:
    """``[3,1,1]`` VALID conv: removes one slice at each end of the slab."""
    return ConvBnPrelu(ch, ch, (3, 1, 1), padding="valid")


class MSNet(nn.Module):
    """Anisotropic multi-scale network of the BraTS 2017 cascade (WT/TC or EN kind).

    Parameters
    ----------
    kind
        ``"wt"`` or ``"tc"``: two in-plane downsamplings (``downsample1``,
        ``downsample2``); ``"en"``: one (``downsample2`` only, after ``fuse2``).
    in_channels
        Input modalities (4: FLAIR, T1, T1ce, T2).
    num_classes
        Output logits per voxel (2: background, foreground).
    base
        Feature channels (32).

    Notes
    -----
    ``forward`` maps ``(N, 4, D, H, W)`` float32 to logits ``(N, 2, D - 8, H, W)`` for any
    ``D >= 9``; output slice ``k`` corresponds to input slice ``k + 4``. H and W must be
    multiples of 4 (WT/TC) or 2 (EN). Depth bookkeeping (input depth ``D``)::

        block1 (D) -> fuse1 (D-2) -> block2 -> fuse2 (D-4) -> block3 -> fuse3 (D-6)
        -> block4 -> fuse4 (D-8)
        heads: fuse2[2 : D-6], fuse3[1 : D-7], fuse4 (all D-8 slices)
    """

    def __init__(
        self, kind: Kind, in_channels: int = 4, num_classes: int = 2, base: int = 32
    ) -> None:
        super().__init__()
        if kind not in ("wt", "tc", "en"):
            raise ValueError(f"unknown MSNet kind {kind!r}")
        self.kind: Kind = kind
        self.two_downsamplings = kind in ("wt", "tc")
        self.in_channels = in_channels
        self.num_classes = num_classes
        c = base

        self.block1_1 = ResBlock(in_channels, c)
        self.block1_2 = ResBlock(c, c)
        self.fuse1_bn_prelu = _fuse(c)
        if self.two_downsamplings:
            self.downsample1_bn_prelu = ConvBnPrelu(c, c, (1, 3, 3), stride=2)
        self.block2_1 = ResBlock(c, c)
        self.block2_2 = ResBlock(c, c)
        self.fuse2_bn_prelu = _fuse(c)
        self.downsample2_bn_prelu = ConvBnPrelu(c, c, (1, 3, 3), stride=2)
        self.block3_1 = ResBlock(c, c, dilation=1)
        self.block3_2 = ResBlock(c, c, dilation=2)
        self.block3_3 = ResBlock(c, c, dilation=3)
        self.fuse3_bn_prelu = _fuse(c)
        self.block4_1 = ResBlock(c, c, dilation=3)
        self.block4_2 = ResBlock(c, c, dilation=2)
        self.block4_3 = ResBlock(c, c, dilation=1)
        self.fuse4_bn_prelu = _fuse(c)

        n1, n2, n3 = num_classes, 2 * num_classes, 4 * num_classes  # 2, 4, 8 -> 14
        if self.two_downsamplings:
            # fuse2 is at 1/2 resolution, fuse3/fuse4 at 1/4.
            self.pred_up1_bn_prelu = DeconvBnPrelu(c, n1)
            self.pred_up2_1_bn_prelu = DeconvBnPrelu(c, n2)
            self.pred_up2_2_bn_prelu = DeconvBnPrelu(n2, n2)
            self.pred_up3_1_bn_prelu = DeconvBnPrelu(c, n3)
            self.pred_up3_2_bn_prelu = DeconvBnPrelu(n3, n3)
        else:
            # EN: fuse2 is at full resolution, fuse3/fuse4 at 1/2.
            self.pred1 = Conv(c, n1, (1, 3, 3))  # plain conv: no bn, no prelu
            self.pred_up2_1_bn_prelu = DeconvBnPrelu(c, n2)
            self.pred_up3_1_bn_prelu = DeconvBnPrelu(c, n3)
        self.final_pred = Conv(n1 + n2 + n3, num_classes, (1, 3, 3))

    @property
    def spatial_multiple(self) -> int:
        """H and W must be multiples of this (4 for WT/TC, 2 for EN)."""
        return 4 if self.two_downsamplings else 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of slabs.

        Parameters
        ----------
        x
            ``(N, 4, D, H, W)`` float32, channels FLAIR, T1, T1ce, T2; ``D >= 9``.

        Returns
        -------
        torch.Tensor
            ``(N, 2, D - 8, H, W)`` logits (background, foreground), no softmax.
        """
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            m = self.spatial_multiple
            if x.dim() != 5 or x.shape[1] != self.in_channels:
                raise ValueError(f"expected (N, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
            if x.shape[2] < 2 * DEPTH_MARGIN + 1:
                raise ValueError(f"depth must be >= 9, got {x.shape[2]}")
            if x.shape[3] % m or x.shape[4] % m:
                raise ValueError(f"H, W must be multiples of {m}, got {tuple(x.shape[3:])}")

        f = self.block1_2(self.block1_1(x))
        f = self.fuse1_bn_prelu(f)  # D-2
        if self.two_downsamplings:
            f = self.downsample1_bn_prelu(f)
        f = self.block2_2(self.block2_1(f))
        fuse2 = self.fuse2_bn_prelu(f)  # D-4
        f = self.downsample2_bn_prelu(fuse2)
        f = self.block3_3(self.block3_2(self.block3_1(f)))
        fuse3 = self.fuse3_bn_prelu(f)  # D-6
        f = self.block4_3(self.block4_2(self.block4_1(fuse3)))
        fuse4 = self.fuse4_bn_prelu(f)  # D-8

        # Centre D-8 slices (constant offsets, negative ends keep D dynamic in ONNX).
        c2 = fuse2[:, :, 2:-2]
        c3 = fuse3[:, :, 1:-1]
        if self.two_downsamplings:
            h1 = self.pred_up1_bn_prelu(c2)
            h2 = self.pred_up2_2_bn_prelu(self.pred_up2_1_bn_prelu(c3))
            h3 = self.pred_up3_2_bn_prelu(self.pred_up3_1_bn_prelu(fuse4))
        else:
            h1 = self.pred1(c2)
            h2 = self.pred_up2_1_bn_prelu(c3)
            h3 = self.pred_up3_1_bn_prelu(fuse4)
        return self.final_pred(torch.cat([h1, h2, h3], dim=1))
