"""Fitting: quality improves, stopping rules, determinism, and tiling-invariant decoding."""

from __future__ import annotations

import numpy as np
import pytest

from cinr_codec import fit_image, render
from cinr_codec.core.metrics import psnr


@pytest.fixture(scope="module")
def fitted(tissue_crop: np.ndarray):
    return fit_image(tissue_crop, model="cinr", preset="fast", steps=200, device="cpu", seed=3)


def test_result_fields(fitted, tissue_crop: np.ndarray) -> None:
    img = fitted.decode()
    assert img.shape == tissue_crop.shape and img.dtype == np.uint8
    assert fitted.steps == 200
    assert fitted.seconds > 0
    assert fitted.n_params == sum(p.numel() for p in fitted.model.parameters())
    assert fitted.psnr == pytest.approx(psnr(img, tissue_crop))
    assert 0 < fitted.ssim <= 1
    assert fitted.device == "cpu"


def test_fitting_learns_the_image(fitted, tissue_crop: np.ndarray) -> None:
    flat = np.broadcast_to(tissue_crop.reshape(-1, 3).mean(0).round().astype(np.uint8), tissue_crop.shape)
    assert fitted.psnr > psnr(flat, tissue_crop) + 3  # far better than the mean colour


@pytest.mark.parametrize("tile", [7, 16, 33])
def test_decode_does_not_depend_on_tiling(fitted, tile: int) -> None:
    """Full-image decode equals a mosaic of patch decodes (convolutions see real neighbours)."""
    assert fitted.model.out.weight.abs().sum() > 0  # the CNN flows contribute
    full = fitted.decode(tile=1024).astype(int)
    mosaic = fitted.decode(tile=tile).astype(int)
    assert np.abs(full - mosaic).max() <= 1
    # Any region decoded on its own equals the matching crop.
    region = render(fitted.model, 21, 30, side=max(fitted.height, fitted.width), x0=41, y0=13)
    assert np.abs(region.astype(int) - full[13:34, 41:71]).max() <= 1


def test_deterministic_on_cpu(tissue_crop: np.ndarray) -> None:
    a = fit_image(tissue_crop, model="cinr", preset="fast", steps=15, device="cpu", seed=7)
    b = fit_image(tissue_crop, model="cinr", preset="fast", steps=15, device="cpu", seed=7)
    c = fit_image(tissue_crop, model="cinr", preset="fast", steps=15, device="cpu", seed=8)
    assert np.array_equal(a.decode(), b.decode())
    assert not np.array_equal(a.decode(), c.decode())


@pytest.mark.parametrize("model", ["ngp", "engp"])
def test_per_pixel_models_fit(model: str, tissue_crop: np.ndarray) -> None:
    r = fit_image(tissue_crop, model=model, preset="fast", steps=150, device="cpu")
    assert r.steps == 150 and r.psnr > 20


def test_time_budget_and_target_stop(tissue_crop: np.ndarray) -> None:
    r = fit_image(tissue_crop, model="ngp", preset="fast", time_budget=1.0, device="cpu")
    assert 0.9 <= r.seconds < 10 and r.steps > 0
    t = fit_image(tissue_crop, model="ngp", preset="fast", steps=5000, target_psnr=20.0, device="cpu")
    assert t.psnr >= 20.0 and t.steps < 5000


def test_history_records_psnr(tissue_crop: np.ndarray) -> None:
    r = fit_image(tissue_crop, model="ngp", preset="fast", time_budget=1.0, eval_every=0.3, device="cpu")
    assert len(r.history) >= 2
    assert r.history[-1][2] == pytest.approx(r.psnr)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((1, 10, 3), np.uint8),
    ],
)
def test_rejects_bad_images(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        fit_image(bad, preset="fast", steps=1, device="cpu")


def test_rejects_bad_options(tissue_crop: np.ndarray) -> None:
    with pytest.raises(ValueError, match="preset"):
        fit_image(tissue_crop, preset="nope", steps=1, device="cpu")
    with pytest.raises(ValueError, match="time_budget"):
        fit_image(tissue_crop, preset="fast", time_budget=0, device="cpu")
    with pytest.raises(ValueError, match="device"):
        fit_image(tissue_crop, preset="fast", steps=1, device="tpu")
