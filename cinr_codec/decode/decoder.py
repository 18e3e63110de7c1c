"""``SlideDecoder``: any region of a ``.cinr`` slide at any scale, from its blocks and mips.

A read travels: ``read`` (validate, pick the source level) -> ``level_region`` (which blocks
and tiles it touches) -> per block a background colour, a stored mip image, or a model tile
rendered by the block's representation (``coding`` -- the decoder never knows which) and
kept in an LRU pixel cache -> area or bilinear resampling (``core.resample``).

The header is validated once (``format.header.parse_layout``), so a malformed or
hand-crafted file raises ``CinrFormatError`` naming the file, never ``KeyError``/``TypeError``.
This module imports no training code, and torch only through the representations (and the device check).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from ..coding.base import BlockModel
from ..coding.images import decode_image_bytes
from ..core.resample import area_weights, bilinear_weights, weighted_sum
from ..errors import CinrFormatError
from ..format.container import CinrReader
from ..format.header import MAX_READ_PIXELS, parse_layout
from .cache import LRUCache

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CACHE_BYTES", "MAX_READ_PIXELS", "MAX_SCALE", "TILE", "SlideDecoder", "finite_number"]

# -- whole slides: any region at any scale ------------------------------------------------------

#: Side of the decode tiles inside a block (the unit of work and of the pixel cache).
TILE = 256
#: Largest scale a read accepts (bilinear interpolation of level pixels above 1).
MAX_SCALE = 4.0
#: Default size of the decoded-pixel cache.
DEFAULT_CACHE_BYTES = 256 << 20
#: Models kept loaded.
MODEL_CACHE = 16


def finite_number(v: Any, name: str, error: type[ValueError] = ValueError) -> float:
    """``v`` as a float when it is a real number (not a bool) and finite; else ``error`` naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise error(f"{name} must be a number, not {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:  # an int beyond the float range
        f = math.inf
    if not math.isfinite(f):
        raise error(f"{name} must be finite, not {str(v)[:40]}")
    return f


class SlideDecoder:
    """Decode any region of a ``.cinr`` slide at any scale; thread-safe, with an LRU pixel cache.

    Level pixels come from the blocks' models in fixed ``TILE`` x ``TILE`` tiles (so a pixel's
    value never depends on the region asked for); scales below 1 start from the coarsest stored
    mip at least as fine as the output and average it over each output pixel's box; scales above
    1 interpolate level pixels bilinearly. ``device`` runs the models on a GPU ("cuda"; "auto"
    picks it when present); pixels may then differ from a CPU decode by a rounding step.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_block_bytes: int | None = None,
        device: str = "cpu",
    ) -> None:
        from ..core.render import resolve_device

        self.device = resolve_device(device)

        self.reader = CinrReader(path, max_block_bytes=max_block_bytes)
        try:
            self.layout = parse_layout(self.reader)
            self.grid = self.layout.grid
            self.codec = self.layout.codec
            self.background = self.layout.background
            self._kinds = [self.reader.block_info(i).kind for i in range(self.reader.n_blocks)]
            self._check_kinds()
        except BaseException:
            self.reader.close()
            raise
        self._pixels = LRUCache(cache_bytes)
        self._models = LRUCache(MODEL_CACHE)
        self._closed = False

    def _check_kinds(self) -> None:
        """Level blocks must be model or background blocks, mip blocks image or background blocks
        (``CinrFormatError`` naming the first that is not; unknown kinds are left to the reader)."""
        n = self.grid.n_level_blocks
        for i, kind in enumerate(self._kinds):
            bad = "image" if i < n else "model"
            if kind == bad:
                role = "level block" if i < n else f"mip block (of block {i % n})"
                raise CinrFormatError(
                    f"{self.reader.name}: block {i} is a {role} but its index record says {kind}"
                )

    @property
    def width(self) -> int:
        """Level width in pixels."""
        return self.layout.width

    @property
    def height(self) -> int:
        """Level height in pixels."""
        return self.layout.height

    # -- sources ---------------------------------------------------------------------------------

    def _model(self, block_id: int) -> BlockModel:
        m = self._models.get(block_id)
        if m is None:
            info = self.reader.block_info(block_id)
            where = f"{self.reader.name}: block {block_id} (at offset {info.offset})"
            m = self.codec.load(
                self.reader.read_payload(block_id), self.layout.config, where, str(self.device)
            )
            self._models.put(block_id, m, 1)
        return m  # type: ignore[no-any-return]

    def _tile(self, block_id: int, tx: int, ty: int) -> np.ndarray:
        """Decoded level pixels of one tile of a model block (tile origin (tx, ty) in level pixels)."""
        key = ("t", block_id, tx, ty)
        t = self._pixels.get(key)
        if t is not None:
            return t  # type: ignore[no-any-return]
        x, y, w, h = self.grid.owned(block_id)
        tw, th = min(TILE, x + w - tx), min(TILE, y + h - ty)
        ox, oy = self.grid.frame_origin(block_id)
        t = self._model(block_id).render(th, tw, float(self.grid.side), x0=tx - ox, y0=ty - oy)
        self._pixels.put(key, t, t.nbytes)
        return t

    def _mip(self, block_id: int, k: int) -> np.ndarray:
        key = ("m", block_id, k)
        t = self._pixels.get(key)
        if t is not None:
            return t  # type: ignore[no-any-return]
        mid = self.grid.mip_id(block_id, k)
        w, h = self.grid.mip_size(block_id, k)
        if self._kinds[mid] != "image":
            raise CinrFormatError(
                f"{self.reader.name}: block {mid} (mip of block {block_id}) is not an image block"
            )
        where = f"{self.reader.name}: block {mid} (mip of block {block_id})"
        t = decode_image_bytes(self.reader.read_image_block(mid), where, (w, h))  # size checked first
        self._pixels.put(key, t, t.nbytes)
        return t

    def level_region(self, x0: int, y0: int, w: int, h: int, k: int = -1) -> np.ndarray:
        """Pixels [x0, x0+w) x [y0, y0+h) of the level (k = -1) or of mip level k, all inside the image."""
        self._check_open()
        out = np.empty((h, w, 3), dtype=np.uint8)
        d = 1 if k < 0 else self.grid.mip_downsamples[k]
        for bid in self.grid.overlapping(x0 * d, y0 * d, (x0 + w) * d, (y0 + h) * d):
            bx, by, bw, bh = self.grid.owned(bid)
            # This block's extent in this level's pixels.
            ex0, ey0 = bx // d, by // d
            ex1, ey1 = ex0 + -(-bw // d), ey0 + -(-bh // d)
            ix0, iy0 = max(x0, ex0), max(y0, ey0)
            ix1, iy1 = min(x0 + w, ex1), min(y0 + h, ey1)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            kind = self._kinds[bid]
            dst = out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            if kind == "background":
                colour = self.reader.block_info(bid).colour
                assert colour is not None
                dst[...] = colour
            elif k >= 0:
                m = self._mip(bid, k)
                dst[...] = m[iy0 - ey0 : iy1 - ey0, ix0 - ex0 : ix1 - ex0]
            else:
                # Tiles on a TILE lattice from the block origin.
                for ty in range(by + (iy0 - by) // TILE * TILE, iy1, TILE):
                    for tx in range(bx + (ix0 - bx) // TILE * TILE, ix1, TILE):
                        t = self._tile(bid, tx, ty)
                        sx0, sy0 = max(ix0, tx), max(iy0, ty)
                        sx1, sy1 = min(ix1, tx + t.shape[1]), min(iy1, ty + t.shape[0])
                        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = t[
                            sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx
                        ]
        return out

    # -- reads -----------------------------------------------------------------------------------

    def _check_read(
        self, x: float, y: float, w: float, h: float, scale: float
    ) -> tuple[float, float, float, float, float, int, int]:
        """Validated (x, y, w, h, scale) as floats and the output size (ValueError naming the problem)."""
        self._check_open()
        x, y, w, h, scale = (
            finite_number(v, name) for name, v in (("x", x), ("y", y), ("w", w), ("h", h), ("scale", scale))
        )
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, not {w} x {h}")
        if not 0 < scale <= MAX_SCALE:
            raise ValueError(f"scale must be in (0, {MAX_SCALE}], not {scale}")
        if not (math.isfinite(w * scale) and math.isfinite(h * scale)):  # round(inf): OverflowError
            raise ValueError(f"a {w} x {h} region at scale {scale} is too large")
        ow, oh = int(round(w * scale)), int(round(h * scale))
        if ow < 1 or oh < 1:
            raise ValueError(f"a {w} x {h} region at scale {scale} has no output pixels")
        if ow * oh > MAX_READ_PIXELS:
            raise ValueError(
                f"{ow} x {oh} output pixels is over the {MAX_READ_PIXELS}-pixel limit of one read"
            )
        return x, y, w, h, scale, ow, oh

    def _resample(
        self, x: float, y: float, w: float, h: float, scale: float, ow: int, oh: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(RGB float64 mean over the part of each output box inside the slide, coverage in [0, 1]),
        for values that ``_check_read`` returned."""
        step = 1.0 / scale
        W, H = self.width, self.height
        if scale > 1.0:
            k = -1
            iy, wy, cy = bilinear_weights(y, step, oh, H)
            ix, wx, cx = bilinear_weights(x, step, ow, W)
            norm = 1.0
        else:
            k = self._source_level(scale)
            d = 1 if k < 0 else self.grid.mip_downsamples[k]
            iy, wy, cy = area_weights(y / d, step / d, oh, H / d)
            ix, wx, cx = area_weights(x / d, step / d, ow, W / d)
            norm = (step / d) ** 2
        cov = cy[:, None] * cx[None, :]
        mean = np.zeros((oh, ow, 3), dtype=np.float64)
        rows, cols = np.flatnonzero(cy > 0), np.flatnonzero(cx > 0)
        if rows.size == 0 or cols.size == 0:
            return mean, cov
        # Only the output pixels that overlap the slide (a contiguous block) are resampled.
        o0, o1, p0, p1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        iy, wy, ix, wx = iy[o0:o1], wy[o0:o1], ix[p0:p1], wx[p0:p1]
        ry0, ry1 = int(iy.min()), int(iy.max()) + 1
        rx0, rx1 = int(ix.min()), int(ix.max()) + 1
        src = self.level_region(rx0, ry0, rx1 - rx0, ry1 - ry0, k).astype(np.float32)
        num = weighted_sum(weighted_sum(src, iy, wy, 0, ry0), ix, wx, 1, rx0)
        sub = cov[o0:o1, p0:p1]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean[o0:o1, p0:p1] = np.where(
                sub[..., None] > 0, num / (norm * np.maximum(sub, 1e-300))[..., None], 0.0
            )
        return mean, cov

    def _source_level(self, scale: float) -> int:
        """Index of the coarsest mip whose downsample d <= 1/scale (-1: the level itself)."""
        k = -1
        for i, d in enumerate(self.grid.mip_downsamples):
            if d <= (1.0 / scale) * (1 + 1e-9):
                k = i
        return k

    def _aligned(self, xf: float, yf: float, sf: float, ow: int, oh: int) -> np.ndarray | None:
        """The read's pixels without resampling, when every output box is f x f whole source pixels.

        That is the case for power-of-two scales at positions on the source's pixel lattice, inside
        the slide (what viewers ask for): the box means are then source pixels (f = 1) or plain
        f x f averages. Takes ``_check_read``'s values; None when the general (area-weighted) path
        is needed.
        """
        if sf > 1:
            return None
        k = self._source_level(sf)
        d = 1 if k < 0 else self.grid.mip_downsamples[k]
        f = 1.0 / (sf * d)
        fi = int(round(f))
        sx, sy = xf / d, yf / d
        if abs(f - fi) > 1e-9 or sx != int(sx) or sy != int(sy) or sx < 0 or sy < 0:
            return None
        if xf + ow * fi * d > self.width or yf + oh * fi * d > self.height:
            return None  # boxes reach outside the slide: coverage < 1 somewhere
        src = self.level_region(int(sx), int(sy), ow * fi, oh * fi, k)
        if fi == 1:
            return src
        means = src.reshape(oh, fi, ow, fi, 3).astype(np.float32).mean(axis=(1, 3))
        return np.clip(np.rint(means), 0, 255).astype(np.uint8)

    def read(self, x: float, y: float, w: float, h: float, scale: float = 1.0) -> np.ndarray:
        """RGB uint8 (round(h*scale), round(w*scale), 3) of the region at level coordinates (x, y, w, h).

        Pixels outside the slide take the slide's background colour.
        """
        x, y, w, h, scale, ow, oh = self._check_read(x, y, w, h, scale)
        fast = self._aligned(x, y, scale, ow, oh)
        if fast is not None:
            return fast
        mean, cov = self._resample(x, y, w, h, scale, ow, oh)
        bg = np.asarray(self.background, dtype=np.float64)
        rgb = mean * cov[..., None] + bg * (1.0 - cov[..., None])
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    def read_rgba(self, x: float, y: float, w: float, h: float, scale: float = 1.0) -> np.ndarray:
        """RGBA uint8: the region's pixels, alpha = the fraction of each pixel inside the slide (0 outside)."""
        x, y, w, h, scale, ow, oh = self._check_read(x, y, w, h, scale)
        fast = self._aligned(x, y, scale, ow, oh)
        if fast is not None:
            out = np.empty(fast.shape[:2] + (4,), dtype=np.uint8)
            out[..., :3] = fast
            out[..., 3] = 255
            return out
        mean, cov = self._resample(x, y, w, h, scale, ow, oh)
        out = np.zeros(mean.shape[:2] + (4,), dtype=np.uint8)
        out[..., :3] = np.clip(np.rint(mean), 0, 255)
        out[..., 3] = np.clip(np.rint(cov * 255.0), 0, 255)
        out[out[..., 3] == 0] = 0
        return out

    # -- lifetime --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.reader.name}: the slide is closed")

    @property
    def cache_capacity(self) -> int:
        """Bytes of decoded pixels the cache may hold."""
        return self._pixels.capacity

    @cache_capacity.setter
    def cache_capacity(self, capacity: int) -> None:
        self._pixels.capacity = max(0, int(capacity))

    @property
    def cache_bytes(self) -> int:
        """Bytes of decoded pixels held now."""
        return self._pixels.cost

    @property
    def loaded_models(self) -> int:
        """Number of block models held in memory."""
        return len(self._models)

    def clear_cache(self, models: bool = True) -> None:
        """Drop decoded pixels, and the loaded block models unless ``models`` is False."""
        self._pixels.clear()
        if models:
            self._models.clear()

    def close(self) -> None:
        """Close the file and drop the caches."""
        self._closed = True
        self.clear_cache()
        self.reader.close()

    def __enter__(self) -> SlideDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
