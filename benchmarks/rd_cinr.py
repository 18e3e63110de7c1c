"""Rate-distortion benchmark, cinr side: fit the ``cinr`` model to a region once, store it at a precision.

The one place where ``benchmarks.rd`` encodes with cinr: ``fit_cinr`` fits once per preset,
``store_cinr`` writes the fitted model at each storage precision (``write_fitted``), and
``encode_cinr`` is the single-call form (``encode_image``), bit-identical for the same seed on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cinr_codec import encode_image, fit_image, write_fitted
from cinr_codec.encode.train.fit import FitResult

__all__ = ["encode_cinr", "fit_cinr", "store_cinr"]


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
    s = encode_image(region, path, preset=preset, quant=quant, steps=steps, device="auto")
    return {
        "bytes": int(s["bytes"]),
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "payload_bytes": s["payload_bytes"],
    }
