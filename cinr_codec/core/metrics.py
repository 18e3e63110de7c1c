"""Image quality on 8-bit RGB (data range 255): PSNR and SSIM."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error between two uint8 images."""
    _check(a, b)
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (data range 255); ``inf`` when identical."""
    m = mse(a, b)
    return math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m)


def psnr_from_mse(m: float) -> float:
    """PSNR in dB for an MSE measured on the 0..255 scale."""
    return math.inf if m <= 0 else 10.0 * math.log10(255.0**2 / m)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) of two uint8 RGB images, averaged over channels.

    Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255, statistics
    over the valid (unpadded) window positions, as in the reference implementation. Channels
    are processed one at a time (float64), which keeps the peak memory near 12 copies of one
    channel (about 100 MB for a 1024^2 block instead of 3x that).
    """
    _check(a, b)
    if a.ndim == 2:
        a = a[..., None]
        b = b[..., None]
    size = min(11, a.shape[1], a.shape[0])
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    gx = g.view(1, 1, 1, -1)
    gy = g.view(1, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, gx), gy)

    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    total = 0.0
    count = 0
    for ch in range(a.shape[2]):
        x = torch.from_numpy(np.ascontiguousarray(a[..., ch])).double()[None, None]
        y = torch.from_numpy(np.ascontiguousarray(b[..., ch])).double()[None, None]
        mx, my = blur(x), blur(y)
        sxx = blur(x * x) - mx * mx
        syy = blur(y * y) - my * my
        sxy = blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        total += float(s.sum())
        count += s.numel()
    return total / count
