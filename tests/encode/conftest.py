"""Fixtures of the tests of encodes run elsewhere (``test_cluster.py``, ``test_processes.py``): a
small real-tissue image and its serial one-thread encode, the reference their blocks must equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cinr_container_helpers import SMALL_ENCODE
from PIL import Image

from cinr_codec.encode.slide import encode_slide


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
