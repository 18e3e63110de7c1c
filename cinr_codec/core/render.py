"""Inference: decode pixels from a hash-grid model, tile by tile, with halos of real features.

Pixel (i, j) of an H x W image has coordinates ((j + 0.5) / S, (i + 0.5) / S) with
S = max(H, W) (or the block's side), so the grid is isotropic; models output RGB in [-1, 1].
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from .models import ImageModel
from .workspace import workspace


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def axis_coords(start: float, n: int, side: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Coordinates of n pixel centres from pixel ``start`` on an image whose longest side is ``side``."""
    return (torch.arange(n, dtype=torch.float32, device=device) + (start + 0.5)) / side


@torch.no_grad()
def render(
    model: ImageModel,
    height: int,
    width: int,
    side: float | None = None,
    tile: int = 256,
    x0: float = 0,
    y0: float = 0,
) -> np.ndarray:
    """Decode an image region (uint8 H x W x 3), tile by tile with a halo of real features.

    Each tile's convolutions see the hash features of its neighbours (``model.halo`` pixels
    around it), so the result does not depend on ``tile``. ``x0``/``y0`` may be fractional
    (samples between pixel centres: ``HashGridBlock.render_coarse``).
    """
    side = float(side if side is not None else max(height, width))
    dev = next(model.parameters()).device
    out = np.empty((height, width, 3), dtype=np.uint8)
    was_training = model.training
    model.eval()
    # On the CPU the tiles' large tensors go into reused (float32) buffers (``core.workspace``).
    reuse = dev.type == "cpu" and not torch.is_grad_enabled()
    reuse = reuse and all(p.dtype == torch.float32 for p in model.parameters())
    h = model.halo
    with workspace() if reuse else nullcontext(None) as ws:
        for ty in range(0, height, tile):
            th = min(tile, height - ty)
            ys = axis_coords(y0 + ty - h, th + 2 * h, side, dev).unsqueeze(0)
            for tx in range(0, width, tile):
                tw = min(tile, width - tx)
                xs = axis_coords(x0 + tx - h, tw + 2 * h, side, dev).unsqueeze(0)
                rgb = model.forward_grid(xs, ys, ws)[0]
                out[ty : ty + th, tx : tx + tw] = to_uint8(rgb)
    model.train(was_training)
    return out


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> uint8 (H, W, 3), rounding to nearest."""
    v = ((rgb.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return v.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
