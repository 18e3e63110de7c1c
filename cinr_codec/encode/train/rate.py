"""The latents' estimated bits during training, and their gradients, through a compiled kernel.

``latent_bits`` computes what ``core.synthesis.ContextModel.bits`` computes (the sum over all
grids of the bits of each rounded latent under the context model's Laplace) and is
differentiable the same way. On the CPU it runs ``_rate.c``: tiles of up to 64 latents of a
row, the forward and the backward together, so a training step's rate costs one pass instead of
torch's memory-bound passes over (width, latents) tensors (docs/architecture.md, "Training
speed").
Elsewhere (a GPU, ``CINR_NATIVE=0``, no compiler, a context model beyond the kernel's limits)
it is ``ContextModel.bits``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ...core import native
from ...core.config import context_border
from ...core.synthesis import LOG_SCALE_RANGE, ContextModel

#: The kernel's limits (``_rate.c``: MAX_CTX, MAX_W, MAX_LAYERS).
LIMITS = {"context": 64, "width": 64, "layers": 8}
#: Latents per tile of the kernel (``_rate.c``: T); the grid's buffer has this many more zeros.
TILE = 64


def _lib() -> ctypes.CDLL | None:
    def setup(lib: ctypes.CDLL) -> None:
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.cinr_rate.restype = ctypes.c_int
        lib.cinr_rate.argtypes = [
            ptr, i64, i64, i64, ptr, i64, i64, i64, ptr, ctypes.c_float, ctypes.c_float, ptr, ptr, ptr,
        ]  # fmt: skip
        lib.cinr_rate_vmath.restype = None
        lib.cinr_rate_vmath.argtypes = [ptr, i64, ptr, ptr, ptr]

    return native.compiled(Path(__file__).with_name("_rate.c"), "the training rate", setup)


def _takes(arm: ContextModel, grids: list[torch.Tensor], offsets: list[tuple[int, int]]) -> bool:
    """True when the kernel computes this model on these grids (its limits, the CPU)."""
    hidden = [cast(nn.Linear, layer) for layer in arm.hidden]
    if not 1 <= len(hidden) <= LIMITS["layers"]:
        return False
    width = hidden[0].out_features
    return (
        hidden[0].in_features == len(offsets)
        and 1 <= len(offsets) <= LIMITS["context"]
        and 1 <= width <= LIMITS["width"]
        and all(layer.in_features == layer.out_features == width for layer in hidden[1:])
        and arm.out.in_features == width
        and all(g.device.type == "cpu" and g.dim() == 3 and g.shape[0] == 1 for g in grids)
        and all(p.device.type == "cpu" for p in arm.parameters())
    )


def latent_bits(arm: ContextModel, grids: list[torch.Tensor], offsets: list[tuple[int, int]]) -> torch.Tensor:
    """Total estimated bits of the grids (1, h_k, w_k) under ``arm`` (a 0-d tensor, differentiable
    with respect to the grids and the model's parameters)."""
    lib = _lib() if native.enabled() else None
    if lib is None or not _takes(arm, grids, offsets):
        return arm.bits(grids, offsets)
    layers = [cast(nn.Linear, layer) for layer in (*arm.hidden, arm.out)]
    flat = torch.cat([t.reshape(-1) for layer in layers for t in (layer.weight, layer.bias)])
    return _Rate.apply(lib, offsets, len(layers) - 1, layers[0].out_features, flat, *grids)  # type: ignore[no-any-return]


class _Rate(torch.autograd.Function):
    """The kernel as an autograd function: the forward computes the gradients too (with respect to
    the total bits), and the backward scales them by the incoming gradient."""

    @staticmethod
    def forward(
        ctx: Any, lib: Any, offsets: Any, layers: int, width: int, flat: torch.Tensor, *grids: torch.Tensor
    ) -> torch.Tensor:  # type: ignore[override]
        need = ctx.needs_input_grad
        K = len(offsets)
        p = np.ascontiguousarray(flat.detach().float().numpy())
        off = np.ascontiguousarray(np.array(offsets, dtype=np.int64).reshape(-1))
        pad = context_border(offsets)
        gp = np.zeros_like(p) if need[4] else None
        grads: list[torch.Tensor | None] = []
        total = 0.0
        out = ctypes.c_double()
        for k, g in enumerate(grids):
            h, w = g.shape[-2:]
            size = (h + 2 * pad) * (w + 2 * pad)
            y = np.zeros(size + TILE, dtype=np.float32)  # a tile's reads may pass the last row
            y[:size].reshape(h + 2 * pad, w + 2 * pad)[pad : pad + h, pad : pad + w] = g.detach()[0].numpy()
            gy = np.zeros_like(y) if need[5 + k] else None
            rc = lib.cinr_rate(
                y.ctypes.data, h, w, pad, off.ctypes.data, K, layers, width, p.ctypes.data,
                LOG_SCALE_RANGE[0], LOG_SCALE_RANGE[1], ctypes.byref(out),
                None if gy is None else gy.ctypes.data, None if gp is None else gp.ctypes.data,
            )  # fmt: skip
            native.raise_for(rc, "the training rate")
            total += out.value
            if gy is None:
                grads.append(None)
            else:
                inner = gy[:size].reshape(h + 2 * pad, w + 2 * pad)[pad : pad + h, pad : pad + w]
                grads.append(torch.from_numpy(inner.copy())[None].to(g.dtype))
        ctx.grads = grads
        ctx.gp = None if gp is None else torch.from_numpy(gp).to(flat.dtype)
        return torch.tensor(total, dtype=flat.dtype)

    @staticmethod
    def backward(ctx: Any, go: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        gp = None if ctx.gp is None else ctx.gp * go
        return (None, None, None, None, gp, *[None if g is None else g * go for g in ctx.grads])
