"""Rate-distortion training of compressive CINR blocks: the target-PSNR search."""

from __future__ import annotations

import numpy as np

from cinr_codec.coding.base import FitSettings
from cinr_codec.coding.latent import CODEC
from cinr_codec.core.config import LatentConfig
from cinr_codec.encode.train.latent import (
    LAMBDA_RANGE,
    PRESET_ARCH,
    QUALITY_LAMBDAS,
    fit_latents_to_psnr,
)


def _config(side: int) -> LatentConfig:
    return LatentConfig(side=side, **PRESET_ARCH)


def test_target_psnr_search_returns_the_cheapest_fit_that_reached_it(tissue_crop: np.ndarray) -> None:
    img = np.ascontiguousarray(tissue_crop[:24, :24])
    # A target below what q5 reaches: lambda must grow (fewer bits) and the result still reach it.
    first = fit_latents_to_psnr(img, _config(24), 10.0, QUALITY_LAMBDAS["q5"], steps=30, rounds=1)
    start = first.history[0]["psnr"]
    target = start - 3.0
    fit = fit_latents_to_psnr(img, _config(24), target, QUALITY_LAMBDAS["q5"], steps=30, rounds=3)
    rounds = fit.history
    assert rounds[0]["psnr"] == start  # the same seeded first fit
    assert 2 <= len(rounds) <= 3
    assert rounds[1]["lambda"] > rounds[0]["lambda"]
    assert all(LAMBDA_RANGE[0] <= r["lambda"] <= LAMBDA_RANGE[1] for r in rounds)
    assert fit.steps == sum(r["steps"] for r in rounds)
    reached = [r for r in rounds if r["psnr"] >= target]
    chosen = min(reached, key=lambda r: r["bits"])
    assert fit.lam == chosen["lambda"]
    assert chosen["bits"] < rounds[0]["bits"]  # a lower PSNR target bought a smaller block


def test_unreachable_target_keeps_the_best_psnr(tissue_crop: np.ndarray) -> None:
    img = np.ascontiguousarray(tissue_crop[:24, :24])
    fit = fit_latents_to_psnr(img, _config(24), 80.0, QUALITY_LAMBDAS["q5"], steps=20, rounds=2)
    assert len(fit.history) == 2
    assert fit.history[1]["lambda"] < fit.history[0]["lambda"]
    assert fit.lam == max(fit.history, key=lambda r: r["psnr"])["lambda"]


def test_codec_fit_uses_the_target(tissue_crop: np.ndarray) -> None:
    img = np.ascontiguousarray(tissue_crop[:24, :24])
    cfg = CODEC.config_for("ccinr", "q5", 24, 24)
    fit = CODEC.fit(img, cfg, "ccinr", "q5", FitSettings(steps=20, target_psnr=10.0))
    # Far below what q5 gives: lambda grows to the end of the range, then the search stops.
    assert [r["lambda"] for r in fit.history] == [QUALITY_LAMBDAS["q5"], LAMBDA_RANGE[1]]
    assert fit.lam == LAMBDA_RANGE[1]
    assert fit.history[1]["bits"] < fit.history[0]["bits"]
    assert fit.psnr >= 10.0  # measured after the networks' quantization
