"""Rate-distortion benchmark, cinr side: fit the ``cinr`` model to a region once, store it at a precision.

The one place where ``benchmarks.rd`` encodes with cinr: ``fit_cinr`` fits once per preset,
``store_cinr`` writes the fitted model at each storage precision (``write_fitted``), and
``encode_cinr`` is the single-call form (``encode_image``), bit-identical for the same seed on a CPU.
``encode_ccinr`` encodes with the compressive CINR model (``ccinr``) at one quality level: the
same steps as ``encode_image(model="ccinr")`` (the representation's ``fit``, then ``write_fitted``),
split so that training progress can be reported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cinr_codec import encode_image, fit_image, write_fitted
from cinr_codec.coding.base import FitSettings
from cinr_codec.coding.registry import get_codec
from cinr_codec.core.render import resolve_device
from cinr_codec.encode.train.fit import FitResult

__all__ = ["encode_ccinr", "encode_cinr", "fit_cinr", "store_cinr"]


def fit_cinr(
    region: np.ndarray,
    preset: str,
    steps: int | None,
    *,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Fit the ``cinr`` model with ``preset`` to ``region`` (``steps=None``: the preset's steps)."""
    return fit_image(
        region, model="cinr", preset=preset, steps=steps, device=device, seed=seed, progress=progress
    )


def store_cinr(result: FitResult, region: np.ndarray, path: Path, quant: str) -> dict[str, Any]:
    """Write a fitted model as ``path`` at storage precision ``quant``.

    Returns ``{"bytes": file size, "psnr", "ssim"}`` (of the decoded file, after quantization)
    plus ``payload_bytes``.
    """
    s = write_fitted(result, region, path, quant=quant)
    return {
        "bytes": int(s["bytes"]),
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "payload_bytes": s["payload_bytes"],
    }


def encode_cinr(region: np.ndarray, path: Path, preset: str, quant: str, steps: int | None) -> dict[str, Any]:
    """Fit and store in one call (``cinr_codec.encode_image``); same result dict as ``store_cinr``.

    The benchmark itself fits once per preset (``fit_cinr``) and stores every precision
    (``store_cinr``); this is the single-call form, bit-identical for the same seed on a CPU.
    """
    s = encode_image(region, path, model="cinr", preset=preset, quant=quant, steps=steps, device="auto")
    return {
        "bytes": int(s["bytes"]),
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "payload_bytes": s["payload_bytes"],
    }


def encode_ccinr(
    region: np.ndarray,
    path: Path,
    quality: str,
    steps: int | None,
    *,
    device: str = "cpu",
    seed: int = 0,
    progress: Callable[[int, float, float], None] | None = None,
) -> dict[str, Any]:
    """Encode ``region`` with ``ccinr`` at quality ``quality`` (``q1`` ... ``q8``) as the file ``path``.

    Returns ``write_fitted``'s summary (``bytes`` = whole file, ``payload_bytes``, ``psnr``/``ssim`` of
    the decoded file, ``steps``, ``seconds`` of training, ...). ``steps=None``: the recipe's steps;
    ``device``: ``auto``, ``cpu`` or ``cuda``.
    """
    codec = get_codec("ccinr")
    h, w = region.shape[:2]
    config = codec.config_for("ccinr", quality, h, w)
    # The latent trainer takes a torch device name, not "auto".
    settings = FitSettings(steps=steps, device=str(resolve_device(device)), seed=seed, progress=progress)
    fitted = codec.fit(region, config, "ccinr", quality, settings)
    return write_fitted(fitted, region, path, preset=quality)
