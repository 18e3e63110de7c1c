"""Reading slides and images region by region, through OpenSlide (slides) or PIL (images)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import CinrInputError

SAMPLE_NAME = "CMU-1-Small-Region.svs"


def sample_slide_path() -> Path:
    """Path of the bundled sample slide (CMU-1-Small-Region.svs, CC0)."""
    return Path(str(resources.files("cinr_codec") / "data" / SAMPLE_NAME))


class SlideReader:
    """A slide or plain image opened for region reads at one level (RGB uint8 out)."""

    def __init__(self, path: str | os.PathLike[str], level: int = 0) -> None:
        import openslide

        p = Path(path)
        if not p.exists():
            raise CinrInputError(f"{p}: no such file")
        if p.is_dir():
            raise CinrInputError(f"{p}: is a directory, not a slide")
        try:
            self._slide = openslide.open_slide(str(p))
        except Exception as exc:  # noqa: BLE001 - OpenSlide and PIL raise many types
            raise CinrInputError(f"{p}: not a readable slide or image ({exc.__class__.__name__})") from None
        if not 0 <= level < self._slide.level_count:
            n = self._slide.level_count
            self._slide.close()
            raise CinrInputError(f"{p}: level {level} does not exist (the slide has {n})")
        self.path = p
        self.level = level
        self.width, self.height = self._slide.level_dimensions[level]
        self.downsample = float(self._slide.level_downsamples[level])

    @property
    def properties(self) -> dict[str, str]:
        """OpenSlide and vendor properties."""
        return dict(self._slide.properties)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the region at (x, y) in this level's pixels (composited on white)."""
        if w <= 0 or h <= 0:
            raise ValueError("region size must be positive")
        x0 = int(round(x * self.downsample))
        y0 = int(round(y * self.downsample))
        try:
            rgba = self._slide.read_region((x0, y0), self.level, (w, h))
        except Exception as exc:  # noqa: BLE001
            raise CinrInputError(f"{self.path}: read error at ({x}, {y}): {exc}") from None
        arr = np.asarray(rgba, dtype=np.uint8)
        rgb = arr[..., :3].astype(np.float32)
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        out = rgb * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(out.round().astype(np.uint8))

    def close(self) -> None:
        """Release the slide."""
        self._slide.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_crop(path: str | os.PathLike[str], size: int, level: int = 0) -> np.ndarray:
    """A centred size x size crop (smaller if the image is) of a slide or image, RGB uint8."""
    with SlideReader(path, level) as r:
        w = min(size, r.width)
        h = min(size, r.height)
        return r.read((r.width - w) // 2, (r.height - h) // 2, w, h)
