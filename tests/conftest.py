"""Shared fixtures: small crops of the real slides in ../shared/data (or the bundled sample)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from data_paths import SAMPLE, SHARED


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests not marked ``gpu`` run on the CPU on a machine with a GPU too: their ``device="auto"``
    encodes are then the CPU's, whose bytes are reproducible (CUDA training is not)."""
    if request.node.get_closest_marker("gpu") is None:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


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


@pytest.fixture(scope="session")
def he_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain JPEG of real H&E: the shared 2500x2500 prostate image, or the bundled sample's
    level 0 (2220x2967) saved by PIL as a baseline JPEG, quality 90, when shared data are absent."""
    path = SHARED / "he-prostate-2500.jpeg"
    if path.exists():
        return path
    from PIL import Image

    from cinr_codec.encode.source import SlideSource

    out = tmp_path_factory.mktemp("he-jpeg") / "sample.jpeg"
    with SlideSource(SAMPLE) as s:
        Image.fromarray(s.read(0, 0, s.width, s.height)).save(out, quality=90)
    return out


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for the test (tiny models gain nothing from threads, and on a busy
    2-core machine OpenMP threads wait for each other), restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
