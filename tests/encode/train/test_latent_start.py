"""Where a slide's later blocks start their latents (``encode.train.latent_start``): a linear map
from pixels to latents, fitted on the prior block."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cinr_codec.coding.base import FitSettings
from cinr_codec.coding.latent import LatentCodec
from cinr_codec.encode.train import latent as L
from cinr_codec.encode.train.latent_start import (
    FEATURES,
    MIN_LATENTS_PER_FEATURE,
    latent_map,
    predicted_latents,
)


def _r2(pred: np.ndarray, truth: np.ndarray) -> float:
    t = truth.astype(np.float64)
    return 1.0 - float(((pred - t) ** 2).sum() / ((t - t.mean()) ** 2).sum())


@pytest.fixture(scope="module")
def fitted(he_image: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], Any]:
    """A 128^2 H&E crop fitted at q4 for 80 steps: its pixels, its rounded grids, the config."""
    crop = np.ascontiguousarray(he_image[1000:1128, 1000:1128])
    config = LatentCodec().config_for("ccinr", "q4", 128, 128)
    fit = L.fit_latents(crop, config, L.lambda_of("q4"), steps=80, seed=0)
    return crop, [np.rint(p.detach().numpy()[0]).astype(np.int64) for p in fit.model.latents], config


def test_the_map_predicts_the_latents_it_was_fitted_on(
    fitted: tuple[np.ndarray, list[np.ndarray], Any],
) -> None:
    crop, grids, _ = fitted
    maps = latent_map(crop, grids)
    enough = [g.size >= MIN_LATENTS_PER_FEATURE * FEATURES for g in grids]
    assert enough[:2] == [True, True] and not any(enough[2:])  # 128^2 and 64^2 of 7 grids
    assert [m is not None for m in maps] == enough
    pred = predicted_latents(crop, maps, [g.shape for g in grids])
    assert [p.shape for p in pred] == [g.shape for g in grids]
    assert _r2(pred[0], grids[0]) > 0.5  # the full-resolution grid: most of its variance
    assert all(not p.any() for p, m in zip(pred, maps, strict=True) if m is None)
    # The same pixels shifted by one position: the prediction is of each latent's own neighbourhood.
    shifted = predicted_latents(np.roll(crop, 1, axis=1), maps, [g.shape for g in grids])
    assert _r2(shifted[0], grids[0]) < _r2(pred[0], grids[0]) - 0.1


def test_predictions_take_any_block_shape(fitted: tuple[np.ndarray, list[np.ndarray], Any]) -> None:
    """An edge block's grids (odd sizes, partial boxes at the coarser levels) are predicted whole."""
    crop, grids, _ = fitted
    maps = latent_map(crop, grids)
    config = LatentCodec().config_for("ccinr", "q4", 75, 41)
    shapes = config.grid_shapes(75, 41)
    pred = predicted_latents(crop[:75, :41], maps, shapes)
    assert [p.shape for p in pred] == shapes and all(np.isfinite(p).all() for p in pred)
    full = predicted_latents(crop, maps, [g.shape for g in grids])
    # Away from the cut edge (the map's 5 x 5 reach) the latents are those of the whole crop.
    assert np.allclose(pred[0][:70, :36], full[0][:70, :36], atol=1e-5)


def test_fits_start_from_the_latents_given(fitted: tuple[np.ndarray, list[np.ndarray], Any]) -> None:
    crop, grids, config = fitted
    start = [g.astype(np.float32) + 0.25 for g in grids]
    fit = L.fit_latents(crop, config, L.lambda_of("q4"), steps=0, init_latents=start)
    for p, s in zip(fit.model.latents, start, strict=True):
        assert torch.equal(p.detach()[0], torch.from_numpy(s))
    with pytest.raises(ValueError, match="init_latents"):
        L.fit_latents(crop, config, L.lambda_of("q4"), steps=0, init_latents=start[1:])


def test_warm_fits_start_from_the_prior_blocks_map(
    fitted: tuple[np.ndarray, list[np.ndarray], Any], he_image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LatentCodec.fit`` with a prior payload: the latents start where the map fitted on the
    prior's decoded pixels and stored latents puts them; without ``warm_latents``, at zero."""
    _, _, config = fitted
    codec = LatentCodec()
    prior = codec.serialize(
        codec.fit(he_image[1000:1128, 1000:1128], config, "ccinr", "q4", FitSettings(steps=20, seed=0)),
        "entropy",
    )
    block = np.ascontiguousarray(he_image[1128:1256, 1000:1128])
    starts: list[Any] = []
    real = L.fit_latents

    def spy(*args: Any, **kwargs: Any) -> Any:
        starts.append(kwargs.get("init_latents"))
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "fit_latents", spy)
    codec.fit(block, config, "ccinr", "q4", FitSettings(steps=5, seed=0, init=prior))
    decoded = codec.load(prior, config, "prior").render(128, 128, 128.0)
    stored = codec.load(prior, config, "prior").latent_grids()  # type: ignore[attr-defined]
    want = predicted_latents(block, latent_map(decoded, stored), config.grid_shapes(128, 128))
    assert starts[0] is not None and np.abs(starts[0][0]).max() > 0
    assert all(np.array_equal(a, b) for a, b in zip(starts[0], want, strict=True))
    monkeypatch.setitem(L.RECIPE, "warm_latents", False)
    codec.fit(block, config, "ccinr", "q4", FitSettings(steps=5, seed=0, init=prior))
    assert starts[1] is None
