"""Fixtures of the encode tests: a small real-tissue image and its serial one-thread encode (the
reference the blocks of encodes run elsewhere must equal), and a record of the ccinr fits run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cinr_container_helpers import SMALL_ENCODE
from data_paths import shared
from PIL import Image

from cinr_codec.coding.base import FitSettings
from cinr_codec.coding.latent import LatentCodec
from cinr_codec.encode.slide import encode_slide


@pytest.fixture
def needs_prostate() -> None:
    """Skip (saying why) without the shared prostate image: ``tissue_png`` is then cut from the
    bundled sample, on which the aim's figures these tests rely on (a prior predicted under the
    floor, a weight above the level's at an aim of 30 dB) do not hold."""
    shared("he-prostate-2500.jpeg", "the aim's figures are measured on a crop of it")


@pytest.fixture(scope="session")
def tissue_png(tmp_path_factory: pytest.TempPathFactory, he_image: np.ndarray) -> Path:
    """256x192 of real H&E as ``tissue.png`` (12 blocks of 64 px, most with tissue)."""
    path = tmp_path_factory.mktemp("small") / "tissue.png"
    Image.fromarray(np.ascontiguousarray(he_image[900:1092, 900:1156])).save(path)
    return path


@pytest.fixture(scope="session")
def serial_cinr(tissue_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tissue_png`` encoded in this process with one torch thread and ``SMALL_ENCODE``."""
    out = tmp_path_factory.mktemp("serial") / "serial.cinr"
    encode_slide(tissue_png, out, threads=1, **SMALL_ENCODE)
    return out


@pytest.fixture
def fits_seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, FitSettings, Any]]:
    """Each ccinr fit's preset, ``FitSettings`` and configuration, in the order the fits of this
    process run."""
    seen: list[tuple[str, FitSettings, Any]] = []
    fit = LatentCodec.fit

    def spy(self: LatentCodec, pixels: np.ndarray, config: Any, kind: str, preset: str, settings: Any) -> Any:
        seen.append((preset, settings, config))
        return fit(self, pixels, config, kind, preset, settings)

    monkeypatch.setattr(LatentCodec, "fit", spy)
    return seen
