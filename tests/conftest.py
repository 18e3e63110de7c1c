"""Shared fixtures: small crops of the real slides in ../shared/data (or the bundled sample)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def he_image() -> np.ndarray:
    """A 2500x2500 real H&E image (shared data), or the bundled sample when absent."""
    from PIL import Image

    path = SHARED / "he-prostate-2500.jpeg"
    if path.exists():
        return np.asarray(Image.open(path).convert("RGB"))
    from cinr_codec.encode.source import read_crop

    return read_crop(SAMPLE, 2048)


@pytest.fixture(scope="session")
def tissue_crop(he_image: np.ndarray) -> np.ndarray:
    """A 96x80 crop of real tissue (non-square on purpose)."""
    return np.ascontiguousarray(he_image[1000:1080, 1000:1096])
