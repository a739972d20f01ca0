"""MSNet in the *folded* layout: the batch of slabs is laid end to end in depth.

Why
---
The networks normalise with the statistics of the whole batch, per channel over
``(N, D, H, W)``. Written with plain ops (:class:`engines.model.msnet.BatchStatNorm`) that is a
chain of ``ReduceMean`` / ``Sub`` / ``Mul`` / ``Sqrt`` / ``Add`` over a non-trailing set of
axes, which CPU runtimes execute as separate memory-bound passes in the plain layout (and,
in OpenVINO, with a layout reorder around every one of them: ~25 % of the time of the
WT network in BF16).

Every convolution of MSNet is either in-plane (``[1,3,3]``, it never mixes slices) or one of
the four ``[3,1,1]`` VALID *fuse* convolutions. So the ``N`` slabs of a batch can be laid
end to end in depth, ``(N, C, D, H, W) -> (1, C, N*D, H, W)``, and then "statistics over
``(N, D, H, W)``" are simply the per-channel statistics of a one-sample tensor, i.e.
**instance normalisation** (ONNX ``InstanceNormalization``, OpenVINO ``MVN``), which
runtimes implement as one fused, layout-aware kernel (OpenVINO also fuses the following
``PReLU`` into it).

Only the fuse convolutions (and the head crops) must respect the slab boundaries: they are
computed on the view ``(1, C, N, D, H*W)`` with the kernel ``(1, 3, 1)``, so that no output
slice straddles two slabs; in a contiguous layout these views are free reshapes.

:class:`FoldedMSNet` shares its parameters with the :class:`~engines.model.msnet.MSNet` it wraps
and has the same input / output contract, ``(N, 4, D, H, W) -> (N, 2, D - 8, H, W)``; its
logits equal MSNet's up to float32 reduction order (checked in ``tests/test_engines.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engines.model.cascade import BATCH_SIZE
from engines.model.msnet import (
    BatchStatNorm,
    ConvBnPrelu,
    DeconvBnPrelu,
    MSNet,
    ResBlock,
)
from engines.runtimes.base import INPUT_NAME, OUTPUT_NAME


def _norm(bn: BatchStatNorm, x: torch.Tensor) -> torch.Tensor:
    """Batch-statistics normalisation of a folded ``(1, C, S, H, W)`` tensor."""
    return F.instance_norm(x, weight=bn.gamma, bias=bn.beta, eps=bn.eps)


def _prelu(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.prelu(x, mod.alpha)


def stride2_kernel(w: torch.Tensor) -> torch.Tensor:
    """``(Co, Ci, 1, 3, 3)`` -> ``(Co, Ci, 1, 4, 4)`` with a zero first row and column.

    TF SAME with stride 2 on an even size pads 0 before and 1 after. The same sums are a
    ``[1,4,4]`` kernel (zero first row / column) with symmetric padding 1, which needs no
    separate ``Pad`` op (OpenVINO runs ``Pad`` in the plain layout, with reorders around it).
    """
    return F.pad(w, (1, 0, 1, 0))


def channel_embedding(cin: int, cout: int) -> torch.Tensor:
    """``(cout, cin, 1, 1, 1)`` 0/1 weights that zero-pad ``cin`` channels on both sides.

    The residual's zero-padding in channels (4 -> 14 + 4 + 14) as a 1x1x1 convolution: exact
    (the products are by 0 and 1), and it runs in the convolution layout.
    """
    pad = (cout - cin) // 2
    eye = torch.zeros(cout, cin, 1, 1, 1)
    eye[pad : pad + cin, :, 0, 0, 0] = torch.eye(cin)
    return eye


class FoldedMSNet(nn.Module):
    """:class:`~engines.model.msnet.MSNet` evaluated in the folded ``(1, C, N*D, H, W)`` layout.

    Parameters
    ----------
    net
        The network whose parameters are used (shared, not copied).
    static_slabs
        ``False`` (default): the per-slab fuse convolutions and head crops use the views
        ``(1, C, N, D, H*W)``; the graph is dynamic in ``N, D, H, W`` (ONNX export).
        ``True``: ``N`` is fixed when tracing, each fuse convolution runs on the whole
        folded tensor and the ``2 (N - 1)`` output slices that straddle two slabs are cut
        out with ``N`` slices and one concat. No reshape of the folded tensor, so OpenVINO
        keeps its convolution layout throughout (no layout reorders around them); the graph
        is specific to ``N``.
    """

    def __init__(self, net: MSNet, static_slabs: bool = False) -> None:
        super().__init__()
        self.net = net
        self.static_slabs = static_slabs
        with torch.no_grad():
            if net.two_downsamplings:
                self.register_buffer("down1_w", stride2_kernel(net.downsample1_bn_prelu.conv_.w.detach()))
            self.register_buffer("down2_w", stride2_kernel(net.downsample2_bn_prelu.conv_.w.detach()))
            cout, cin = net.block1_1.conv_0.w.shape[:2]
            self.register_buffer("embed1_w", channel_embedding(cin, cout).to(net.block1_1.conv_0.w))

    # ------------------------------------------------------------------ pieces
    def _res(self, block: ResBlock, x: torch.Tensor, embed: torch.Tensor | None = None) -> torch.Tensor:
        y = block.conv_0(_prelu(block.prelu_acti_0, _norm(block.bn_0, x)))
        y = block.conv_1(_prelu(block.prelu_acti_1, _norm(block.bn_1, y)))
        if block.pad_c:
            if embed is None:
                raise ValueError("a channel-padding residual block needs its embedding")
            x = F.conv3d(x, embed)
        return y + x

    @staticmethod
    def _down(mod: ConvBnPrelu, w4: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = F.conv3d(x, w4, stride=(1, 2, 2), padding=(0, 1, 1))
        return _prelu(mod.prelu_acti_, _norm(mod.bn_, y))

    @staticmethod
    def _dbp(mod: DeconvBnPrelu, x: torch.Tensor) -> torch.Tensor:
        return _prelu(mod.prelu_acti_, _norm(mod.bn_, mod.deconv_(x)))

    def _fuse(self, mod: ConvBnPrelu, x: torch.Tensor, n: int) -> torch.Tensor:
        """``[3,1,1]`` VALID conv per slab on a folded tensor, then bn, prelu."""
        k = mod.conv_.w  # (Cout, Cin, 3, 1, 1)
        if self.static_slabs:
            n = int(n)
            d = x.shape[2] // n
            y = F.conv3d(x, k)  # N*D - 2 slices; 2 (N - 1) of them straddle two slabs
            y = torch.cat([y[:, :, i * d : i * d + d - 2] for i in range(n)], dim=2) if n > 1 else y
        else:
            c, h, w = x.shape[1], x.shape[3], x.shape[4]
            y = F.conv3d(x.reshape(1, c, n, -1, h * w), k.view(k.shape[0], k.shape[1], 1, 3, 1))
            y = y.reshape(1, k.shape[0], -1, h, w)
        return _prelu(mod.prelu_acti_, _norm(mod.bn_, y))

    def _crop(self, x: torch.Tensor, n: int, k: int) -> torch.Tensor:
        """Drop ``k`` slices at both ends of every slab of a folded tensor."""
        if self.static_slabs:
            n = int(n)
            d = x.shape[2] // n
            return torch.cat([x[:, :, i * d + k : i * d + d - k] for i in range(n)], dim=2)
        c, h, w = x.shape[1], x.shape[3], x.shape[4]
        return x.reshape(1, c, n, -1, h * w)[:, :, :, k:-k].reshape(1, c, -1, h, w)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 4, D, H, W)`` float32 -> logits ``(N, 2, D - 8, H, W)`` (as MSNet)."""
        net = self.net
        n, cin, d, h, w = x.shape
        f = x.transpose(0, 1).reshape(1, cin, -1, h, w)
        f = self._res(net.block1_2, self._res(net.block1_1, f, self.embed1_w))
        f = self._fuse(net.fuse1_bn_prelu, f, n)
        if net.two_downsamplings:
            f = self._down(net.downsample1_bn_prelu, self.down1_w, f)
        f = self._res(net.block2_2, self._res(net.block2_1, f))
        fuse2 = self._fuse(net.fuse2_bn_prelu, f, n)
        f = self._down(net.downsample2_bn_prelu, self.down2_w, fuse2)
        f = self._res(net.block3_3, self._res(net.block3_2, self._res(net.block3_1, f)))
        fuse3 = self._fuse(net.fuse3_bn_prelu, f, n)
        f = self._res(net.block4_3, self._res(net.block4_2, self._res(net.block4_1, fuse3)))
        fuse4 = self._fuse(net.fuse4_bn_prelu, f, n)

        c2 = self._crop(fuse2, n, 2)
        c3 = self._crop(fuse3, n, 1)
        if net.two_downsamplings:
            h1 = self._dbp(net.pred_up1_bn_prelu, c2)
            h2 = self._dbp(net.pred_up2_2_bn_prelu, self._dbp(net.pred_up2_1_bn_prelu, c3))
            h3 = self._dbp(net.pred_up3_2_bn_prelu, self._dbp(net.pred_up3_1_bn_prelu, fuse4))
        else:
            h1 = net.pred1(c2)
            h2 = self._dbp(net.pred_up2_1_bn_prelu, c3)
            h3 = self._dbp(net.pred_up3_1_bn_prelu, fuse4)
        y = net.final_pred(torch.cat([h1, h2, h3], dim=1))  # (1, 2, N*(D-8), H, W)
        return y.reshape(y.shape[1], n, -1, h, w).transpose(0, 1)


#: Batch size the folded ONNX files of :mod:`engines.prepare` are traced for: the protocol's
#: (the cascade pads every batch to it with noise slabs).
FOLDED_BATCH = BATCH_SIZE
FOLDED_SUFFIX = ".folded.onnx"


def export_folded_onnx(net: MSNet, path: Path | None = None, n: int = FOLDED_BATCH, opset: int = 17) -> bytes | None:
    """Export ``FoldedMSNet(net, static_slabs=True)`` for batches of ``n`` slabs to ONNX.

    ``N`` is fixed (``n``); ``D``, ``H`` and ``W`` stay dynamic. Input ``slabs``
    ``(n, 4, D, H, W)``, output ``logits`` ``(n, 2, D - 8, H, W)``, as the plain export.
    Writes ``path`` and returns ``None``, or returns the serialised model when ``path`` is
    ``None``. Tracing uses a tiny example input (about a second per network).
    """
    import io
    import warnings

    model = FoldedMSNet(net, static_slabs=True).eval()
    example = torch.zeros((n, net.in_channels, 11, 8, 8), dtype=torch.float32)
    dyn = {INPUT_NAME: {2: "D", 3: "H", 4: "W"}, OUTPUT_NAME: {2: "D_out", 3: "H", 4: "W"}}
    target: Any = io.BytesIO() if path is None else str(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the fixed N (intended)
        torch.onnx.export(
            model, (example,), target, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes=dyn, opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    return target.getvalue() if path is None else None
