"""The learned upsampling of latent grids in training, through compiled kernels.

``features(net, grids, height, width)`` computes ``net.features(grids, height, width)``
(``core.synthesis.Synthesis``) and is differentiable the same way, with respect to the grids and
the upsampling's taps. On the CPU, with learned upsampling and grid 0 at the output's size, both
directions run ``_upsample_grad.c`` (the forward keeps the coarser stacks for the backward);
elsewhere (a GPU, ``CINR_NATIVE=0``, no compiler, bilinear upsampling) it is ``net.features`` in
torch (docs/architecture.md, "Training speed").
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core import native
from ...core.synthesis import KERNEL_LIMITS, Synthesis


def _lib() -> ctypes.CDLL | None:
    def setup(lib: ctypes.CDLL) -> None:
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.cinr_upsample_train_size.restype = i64
        lib.cinr_upsample_train_size.argtypes = [ptr, ptr, i64]
        lib.cinr_upsample_train_fwd.restype = ctypes.c_int
        lib.cinr_upsample_train_fwd.argtypes = [ptr, ptr, ptr, i64, ptr, ctypes.c_float, ptr, ptr]
        lib.cinr_upsample_train_bwd.restype = ctypes.c_int
        lib.cinr_upsample_train_bwd.argtypes = [ptr, ptr, i64, ptr, ctypes.c_float, ptr, ptr, ptr, ptr]

    return native.compiled(Path(__file__).with_name("_upsample_grad.c"), "the training upsampling", setup)


def _takes(net: Synthesis, grids: list[torch.Tensor], height: int, width: int) -> bool:
    """True when the kernels compute these features (learned upsampling, one-channel float32
    CPU grids, grid 0 the output's size, at most 16 grids: the kernel's MAX_GRIDS)."""
    return (
        net.up is not None
        and net.up.device.type == "cpu"
        and net.up.dtype == torch.float32
        and 1 <= len(grids) <= KERNEL_LIMITS["in"]
        and all(
            g.device.type == "cpu" and g.dtype == torch.float32 and g.dim() == 3 and g.shape[0] == 1
            for g in grids
        )
        and tuple(grids[0].shape[-2:]) == (height, width)
    )


def features(net: Synthesis, grids: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """``net.features(grids, height, width)``: (1, levels, height, width), differentiable like it."""
    lib = _lib() if native.enabled() else None
    if lib is None or not _takes(net, grids, height, width):
        return net.features(grids, height, width)
    assert net.up is not None
    return _Upsample.apply(lib, net, net.up, *grids)  # type: ignore[no-any-return]


class _Upsample(torch.autograd.Function):
    """The kernels as an autograd function: the forward keeps the coarser stacks for the backward."""

    @staticmethod
    def forward(ctx: Any, lib: Any, net: Synthesis, up: torch.Tensor, *grids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        planes = [np.ascontiguousarray(g.detach()[0].numpy()) for g in grids]
        n = len(planes)
        hs = np.array([p.shape[0] for p in planes], dtype=np.int64)
        ws = np.array([p.shape[1] for p in planes], dtype=np.int64)
        size = int(lib.cinr_upsample_train_size(hs.ctypes.data, ws.ctypes.data, n))
        if size < 0:
            shapes = [(int(h), int(w)) for h, w in zip(hs, ws, strict=True)]
            raise ValueError(f"the training upsampling kernel refused grids of shapes {shapes}")
        filters = np.ascontiguousarray(up.detach().numpy())
        work = np.empty(max(1, size), dtype=np.float32)
        out = np.empty((n, int(hs[0]), int(ws[0])), dtype=np.float32)
        ptrs = (ctypes.c_void_p * n)(*[p.ctypes.data for p in planes])
        scale = float(net.latent_scale)
        rc = lib.cinr_upsample_train_fwd(ptrs, hs.ctypes.data, ws.ctypes.data, n, filters.ctypes.data, scale,
                                         out.ctypes.data, work.ctypes.data)  # fmt: skip
        native.raise_for(rc, f"training upsampling of a {ws[0]}x{hs[0]} block")
        ctx.state = (lib, hs, ws, filters, scale, work)
        return torch.from_numpy(out)[None]

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        lib, hs, ws, filters, scale, work = ctx.state
        n = len(hs)
        go = np.ascontiguousarray(gout.detach()[0].float().numpy())
        grads = [np.empty((int(h), int(w)), dtype=np.float32) for h, w in zip(hs, ws, strict=True)]
        gfilters = np.empty_like(filters)
        gptrs = (ctypes.c_void_p * n)(*[g.ctypes.data for g in grads])
        rc = lib.cinr_upsample_train_bwd(hs.ctypes.data, ws.ctypes.data, n, filters.ctypes.data, scale,
                                         work.ctypes.data, go.ctypes.data, gptrs, gfilters.ctypes.data)  # fmt: skip
        native.raise_for(rc, f"training upsampling of a {ws[0]}x{hs[0]} block")
        ctx.state = None
        return (None, None, torch.from_numpy(gfilters), *(torch.from_numpy(g)[None] for g in grads))
