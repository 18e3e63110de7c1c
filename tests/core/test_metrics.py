"""PSNR and SSIM on 8-bit RGB."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cinr_codec.core.metrics import psnr, ssim


def test_psnr_known_value() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[..., 0] = 3  # MSE = 3 (one channel of three differs by 3 -> 9 / 3)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 3))
    assert psnr(a, a) == math.inf


def test_ssim_properties(tissue_crop: np.ndarray) -> None:
    assert ssim(tissue_crop, tissue_crop) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(tissue_crop + rng.normal(0, 10, tissue_crop.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(tissue_crop + rng.normal(0, 30, tissue_crop.shape), 0, 255).astype(np.uint8)
    assert 1 > ssim(tissue_crop, noisy) > ssim(tissue_crop, noisier) > 0
    assert ssim(tissue_crop, noisy) == pytest.approx(ssim(noisy, tissue_crop))


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        psnr(np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2, 3), np.uint8))
