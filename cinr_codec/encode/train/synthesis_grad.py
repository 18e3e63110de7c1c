"""The compressive synthesis' forward and backward in training, through a compiled kernel.

``synthesize(net, f)`` computes ``net(f)`` (``core.synthesis.Synthesis``) and is differentiable
the same way, with respect to the features and the network's weights. On the CPU it runs
``_synthesis_grad.c`` (the per-pixel network over tiles of 64 pixels held in cache, eight per
vector; the 3x3 convolutions along rows; no tensor per layer); elsewhere (a GPU, ``CINR_NATIVE=0``, no compiler, an architecture beyond the
kernel's limits: more than one 3x3 feature layer, widths past 64) it is ``net(f)``
(docs/architecture.md, "Training speed").
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ...core import native
from ...core.config import LEAKY_SLOPE
from ...core.synthesis import Synthesis, within_limits

#: The kernel's limits (``_synthesis_grad.c``: MAX_IN, MAX_MLP, MAX_WIDTH, MAX_CONV_WIDTH, MAX_RES).
LIMITS = {"in": 16, "mlp": 4, "width": 64, "conv": 1, "conv_width": 16, "res": 4, "side": 1 << 15}


def _lib() -> ctypes.CDLL | None:
    def setup(lib: ctypes.CDLL) -> None:
        ptr = ctypes.c_void_p
        lib.cinr_synth_grad_sizes.restype = ctypes.c_int
        lib.cinr_synth_grad_sizes.argtypes = [ptr, ptr]
        lib.cinr_synth_grad.restype = ctypes.c_int
        lib.cinr_synth_grad.argtypes = [ptr, ptr, ptr, ctypes.c_float, ptr, ptr, ptr, ptr, ptr, ptr]

    return native.compiled(Path(__file__).with_name("_synthesis_grad.c"), "the training synthesis", setup)


def _convs(net: Synthesis) -> tuple[list[nn.Conv2d], list[nn.Conv2d], nn.Conv2d, list[nn.Conv2d]]:
    return (
        [cast(nn.Conv2d, m) for m in net.mlp],
        [cast(nn.Conv2d, m) for m in net.conv],
        net.head,
        [cast(nn.Conv2d, m) for m in net.res],
    )


def _takes(net: Synthesis, f: torch.Tensor) -> bool:
    """True when the kernel computes this network on these features (its limits, float32 on the CPU)."""
    return (
        within_limits(net, f, LIMITS)
        and f.device.type == "cpu"
        and f.dtype == torch.float32
        and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in net.parameters())
    )


def _shape(net: Synthesis, f: torch.Tensor) -> np.ndarray:
    mlp, conv, _, res = _convs(net)
    widths = [m.out_channels for m in mlp] + [0] * (4 - len(mlp))
    cw = conv[0].out_channels if conv else 0
    _, n_in, h, w = f.shape
    return np.array([n_in, h, w, len(mlp), *widths, cw, int(net.stabiliser), len(res)], dtype=np.int64)


def _params(net: Synthesis) -> list[torch.Tensor]:
    """The tensors the kernel reads, in its order (``_synthesis_grad.c``, ``make_layout``)."""
    mlp, conv, head, res = _convs(net)
    return [t for m in (*mlp, *conv, head, *res) for t in (m.weight, cast(torch.Tensor, m.bias))]


def _unpack(net: Synthesis, g: np.ndarray) -> list[torch.Tensor]:
    """The kernel's gradients (``_params``' tensors concatenated) -> one tensor per entry."""
    out, at = [], 0
    for t in _params(net):
        out.append(torch.from_numpy(g[at : at + t.numel()].copy()).reshape(t.shape))
        at += t.numel()
    return out


def synthesize(net: Synthesis, f: torch.Tensor) -> torch.Tensor:
    """``net(f)``: RGB (1, 3, H, W) of features (1, L, H, W), differentiable like it."""
    lib = _lib() if native.enabled() else None
    if lib is None or not _takes(net, f):
        return net(f)
    return _Synthesis.apply(lib, net, f, *_params(net))  # type: ignore[no-any-return]


class _Synthesis(torch.autograd.Function):
    """The kernel as an autograd function: the forward keeps what the backward needs."""

    @staticmethod
    def forward(ctx: Any, lib: Any, net: Synthesis, f: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        shape = _shape(net, f)
        sizes = np.zeros(3, dtype=np.int64)
        if lib.cinr_synth_grad_sizes(shape.ctypes.data, sizes.ctypes.data) != 0:
            raise ValueError("the training synthesis kernel refused the network")
        _, n_in, h, w = f.shape
        p = np.ascontiguousarray(torch.cat([t.detach().reshape(-1) for t in params]).numpy())
        if p.size != int(sizes[0]):
            raise ValueError("the training synthesis kernel's layout does not match the network")
        feats = np.ascontiguousarray(f.detach()[0].numpy())
        out = np.empty((3, h, w), dtype=np.float32)
        work = np.empty(int(sizes[1]), dtype=np.float32)
        slope = LEAKY_SLOPE if net.leaky else 0.0
        rc = lib.cinr_synth_grad(feats.ctypes.data, shape.ctypes.data, p.ctypes.data, slope, out.ctypes.data,
                                 work.ctypes.data, None, None, None, None)  # fmt: skip
        native.raise_for(rc, f"training synthesis of a {w}x{h} block")
        ctx.state = (lib, net, shape, sizes, p, feats, work, slope)
        return torch.from_numpy(out)[None]

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        lib, net, shape, sizes, p, feats, work, slope = ctx.state
        n_in, h, w = feats.shape
        go = np.ascontiguousarray(gout.detach()[0].float().numpy())
        gf = np.empty((n_in, h, w), dtype=np.float32)
        gp = np.zeros(int(sizes[0]), dtype=np.float32)
        gwork = np.empty(int(sizes[2]), dtype=np.float32)
        rc = lib.cinr_synth_grad(feats.ctypes.data, shape.ctypes.data, p.ctypes.data, slope, None, work.ctypes.data,
                                 go.ctypes.data, gf.ctypes.data, gp.ctypes.data, gwork.ctypes.data)  # fmt: skip
        native.raise_for(rc, f"training synthesis of a {w}x{h} block")
        ctx.state = None
        return (None, None, torch.from_numpy(gf)[None], *_unpack(net, gp))
