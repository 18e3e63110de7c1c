"""``SlideDecoder``: any region of a ``.cinr`` slide at any scale, from its blocks and mips.

A read travels: ``read`` (validate, pick the source: a mip, the level, or the level's models
sampled on a coarser lattice; count what it will decode and refuse it beyond the limits) -> per
256 x 256 piece of the output, the blocks its boxes meet: background blocks as their colours
(whole rows of blocks at once), stored blocks as a mip image or model tiles rendered by the
block's representation (``coding`` -- the decoder never knows which) and kept in an LRU pixel
cache -> area integrals or bilinear weights (``core.resample``). Memory is bounded by the output
piece and one block, never by the region the read covers (``formats/cinr-v1.md`` §12).

The header is validated once (``format.header.parse_layout``), so a malformed or
hand-crafted file raises ``CinrFormatError`` naming the file, never ``KeyError``/``TypeError``.
This module imports no training code, and torch only through the representations (and the device check).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..coding.base import BlockModel
from ..coding.images import decode_image_bytes
from ..core.requant import SourceJpeg, requantize, source_jpeg_of
from ..core.resample import (
    bilinear_weights,
    box_downsample,
    box_mean_uint8,
    integrate_cells,
    to_uint8,
    weighted_sum,
)
from ..errors import CinrFormatError, CinrRequestError
from ..format.container import CinrReader
from ..format.container.binary import KIND_BACKGROUND, KIND_IMAGE, KIND_MODEL, KIND_NAMES
from ..format.header import MAX_READ_PIXELS, parse_layout
from .cache import LRUCache

if TYPE_CHECKING:
    from concurrent.futures import Executor

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "MAX_READ_IMAGES",
    "MAX_READ_MODELS",
    "MAX_READ_OUTPUT",
    "MAX_READ_PIXELS",
    "MAX_READ_SOURCE_PIXELS",
    "MAX_SCALE",
    "MAX_WHOLE_BLOCK_BYTES",
    "MAX_WHOLE_BLOCK_PIXELS",
    "TILE",
    "SlideDecoder",
    "Source",
    "finite_number",
]

# -- whole slides: any region at any scale ------------------------------------------------------

#: Side of the decode tiles inside a block (the unit of work and of the pixel cache) unless the
#: block representation names its own (``BlockCodec.decode_tile``).
TILE = 256
#: Largest scale a read accepts (bilinear interpolation of level pixels above 1).
MAX_SCALE = 4.0
#: Default size of the decoded-pixel cache.
DEFAULT_CACHE_BYTES = 256 << 20
#: Models kept loaded.
MODEL_CACHE = 16
#: Side of the pieces of output a read is computed in (bounds its float intermediates).
OUT_TILE = 256
#: Without a mip at least this coarse, reads at 1/scale >= SAMPLE_STEP sample the models once per
#: cell of the largest power of two <= 1/scale pixels (1 to 4 samples per output pixel) instead of
#: decoding every pixel: their cost follows the output, not the region covered.
SAMPLE_STEP = 4.0
#: Largest f of the aligned path (output pixels that are plain f x f means of source cells).
MAX_ALIGNED = 8
#: Largest output of one read (pixels): 8192 x 8192, 192 MiB as RGB (formats/cinr-v1.md §12).
#: Larger images are exported in strips (``cinr_codec.export``).
MAX_READ_OUTPUT = 1 << 26
#: Most model blocks, and most mip images, one read may decode (formats/cinr-v1.md §12). Each
#: model block costs a render call even for one cell: a hostile 192 x 1048575 slide of 64-px
#: blocks sharing one CINR model took 14.4 s for its last level at 4096 (fuzz mutant 51196 of
#: seed 0); only coarse reads of slides without mips reach this limit.
MAX_READ_MODELS = 1024
MAX_READ_IMAGES = 1 << 16
#: Largest frame (pixels) of a block representation that synthesises whole blocks (ccinr).
MAX_WHOLE_BLOCK_PIXELS = 1 << 22
#: Largest working memory of one whole-block synthesis (``LatentConfig.synthesis_planes`` float32
#: planes): 1.5 GiB. The format's widest networks at 2048^2 would need 3.6 GiB; the default
#: network needs 0.05 GiB at 512^2 and 0.8 GiB at 2048^2.
MAX_WHOLE_BLOCK_BYTES = 3 << 29
#: Most source pixels (cells) one read may decode: this many, plus SOURCE_PIXELS_PER_OUTPUT per
#: output pixel.
MAX_READ_SOURCE_PIXELS = 1 << 26
SOURCE_PIXELS_PER_OUTPUT = 16


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


@dataclass(frozen=True)
class Source:
    """Where a read's pixels come from: mip ``k`` (cells of ``cell`` = its downsample) or, for
    ``k = -1``, the level blocks' models, rendered at every pixel (``cell = 1``) or sampled once per
    ``cell`` x ``cell`` pixels (reads coarser than ``SAMPLE_STEP`` without a usable mip)."""

    k: int
    cell: int


class SlideDecoder:
    """Decode any region of a ``.cinr`` slide at any scale; thread-safe, with an LRU pixel cache.

    Level pixels come from the blocks' models in fixed tiles (``tile``: the representation's
    ``decode_tile``, ``TILE`` = 256 px for the hash grids, 128 for ccinr; so a pixel's
    value never depends on the region asked for); scales below 1 start from the coarsest stored
    mip at least as fine as the output and average it over each output pixel's box; scales above
    1 interpolate level pixels bilinearly. ``device`` runs the models on a GPU ("cuda"; "auto"
    picks it when present); pixels may then differ from a CPU decode by a rounding step.
    ``threads`` fixes the torch CPU threads of each render; by default each render takes the cores
    other processes leave free, at most the caller's own torch setting (restored afterwards).

    A read is computed in ``OUT_TILE`` x ``OUT_TILE`` pieces of its output, block by block, so its
    memory is bounded by the output and the blocks, never by the source region it covers;
    background blocks cost arithmetic on their colours only (whole rows of them at once), and a read
    that would decode more blocks or source pixels than ``formats/cinr-v1.md`` §12 allows is
    refused (``CinrRequestError``) before anything is decoded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_block_bytes: int | None = None,
        device: str = "cpu",
        remote: Mapping[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        from ..core.render import resolve_device

        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, not {threads!r}")
        #: Torch CPU threads per render; None: the cores other processes leave free, re-measured
        #: at most twice a second, never above the caller's setting (``core.threads.decode_threads``).
        self.threads = threads
        self.device = resolve_device(device)

        self.reader = CinrReader(path, max_block_bytes=max_block_bytes, remote=remote)
        try:
            self.layout = parse_layout(self.reader)
            self.grid = self.layout.grid
            self.codec = self.layout.codec
            self.tile = int(self.codec.decode_tile)
            #: The source's JPEG coding, when the encoder recorded it (``slide.source_jpeg``):
            #: level tiles are then moved to its lattice (``core.requant``).
            self.requant = self._source_jpeg()
            self.background = self.layout.background
            self._check_whole_blocks()
            self._codes = self.reader.kind_codes()
            self._colours = self.reader.colours()
            self._check_kinds()
        except BaseException:
            self.reader.close()
            raise
        self._pixels = LRUCache(cache_bytes)
        self._models = LRUCache(MODEL_CACHE)
        # Work in progress by key: a thread that needs what another is making waits for it
        # instead of making it again (a tile server's clients ask for neighbours at once).
        self._making: dict[Any, threading.Event] = {}
        self._making_lock = threading.Lock()
        self._closed = False

    def _source_jpeg(self) -> SourceJpeg | None:
        """The header's ``slide.source_jpeg``, checked (``CinrFormatError``), or None."""
        sj = source_jpeg_of(self.reader.header, self.reader.name)
        if sj is not None and (self.grid.block_size % sj.mcu[0] or self.grid.block_size % sj.mcu[1]):
            raise CinrFormatError(
                f"{self.reader.name}: slide.source_jpeg: the block size {self.grid.block_size} is not a "
                f"multiple of the {sj.mcu[0]}x{sj.mcu[1]} MCU"
            )
        return sj

    def _check_whole_blocks(self) -> None:
        """Refuse a representation that synthesises each block's whole domain for any read (the
        compressive ``ccinr`` blocks, ``coding.latent.LatentBlock``) when a block's frame is over
        ``MAX_WHOLE_BLOCK_PIXELS``, or its synthesis' working memory over ``MAX_WHOLE_BLOCK_BYTES``: a
        64 x 64 read would otherwise cost the whole frame (a 2 KB file declaring a 4096-px frame took
        34 s and 5.3 GB). Tile-wise representations have no such bound."""
        from ..core.config import LatentConfig

        config = self.layout.config
        if not isinstance(config, LatentConfig):
            return
        if config.side * config.side > MAX_WHOLE_BLOCK_PIXELS:
            raise CinrFormatError(
                f"{self.reader.name}: model: ccinr blocks of side {config.side} are synthesised whole, "
                f"over the {MAX_WHOLE_BLOCK_PIXELS}-pixel limit of this decoder (side <= "
                f"{math.isqrt(MAX_WHOLE_BLOCK_PIXELS)})"
            )
        need = config.side * config.side * 4 * config.synthesis_planes()
        if need > MAX_WHOLE_BLOCK_BYTES:
            raise CinrFormatError(
                f"{self.reader.name}: model: synthesising a {config.side} px ccinr block with this network "
                f"needs {need / 2**30:.1f} GiB, over this decoder's {MAX_WHOLE_BLOCK_BYTES / 2**30:.1f} GiB"
            )

    def _check_kinds(self) -> None:
        """Level blocks must be model or background blocks, mip blocks image or background blocks
        (``CinrFormatError`` naming the first that is not; unknown kinds are left to the reader)."""
        n = self.grid.n_level_blocks
        bad = np.concatenate(
            (np.flatnonzero(self._codes[:n] == KIND_IMAGE), n + np.flatnonzero(self._codes[n:] == KIND_MODEL))
        )
        if bad.size:
            i = int(bad.min())
            kind = KIND_NAMES[int(self._codes[i])]
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

    def block_counts(self) -> dict[str, int]:
        """Number of level blocks of each kind: ``model``, ``background`` and ``other``."""
        codes = self._codes[: self.grid.n_level_blocks]
        model = int(np.count_nonzero(codes == KIND_MODEL))
        back = int(np.count_nonzero(codes == KIND_BACKGROUND))
        return {"model": model, "background": back, "other": len(codes) - model - back}

    # -- sources ---------------------------------------------------------------------------------

    def _once(self, cache: LRUCache, key: Any, make: Callable[[], Any], cost: Callable[[Any], int]) -> Any:
        """``cache[key]``, made by ``make`` and cached when missing; made once when several threads
        ask at the same time (the others wait; if the maker fails, each tries for itself)."""
        v = cache.get(key)
        if v is not None:
            return v
        with self._making_lock:
            done = self._making.get(key)
            mine = done is None
            if mine:
                done = self._making[key] = threading.Event()
        assert done is not None
        if not mine:
            done.wait()
            v = cache.get(key)
            if v is None:  # the maker failed, or its result is already evicted
                v = make()
                cache.put(key, v, cost(v))
            return v
        try:
            v = make()
            cache.put(key, v, cost(v))
            return v
        finally:
            with self._making_lock:
                del self._making[key]
            done.set()

    def _model(self, block_id: int) -> BlockModel:
        info = self.reader.block_info(block_id)
        # Keyed by the payload, not the block: blocks that share one (a hostile file's index may
        # point many records at the same bytes) load it once.
        key = (info.offset, info.stored_length, info.crc32)

        def load() -> BlockModel:
            where = f"{self.reader.name}: block {block_id} (at offset {info.offset})"
            return self.codec.load(
                self.reader.read_payload(block_id), self.layout.config, where, str(self.device)
            )

        return self._once(self._models, key, load, lambda _: 1)  # type: ignore[no-any-return]

    def _tile(self, block_id: int, cell: int, ti: int, tj: int, threads: int | None = None) -> np.ndarray:
        """Tile (ti, tj) of a model block's cells: ``tile`` x ``tile`` cells of ``cell`` x ``cell``
        level pixels on a lattice from the block's origin (``cell = 1``: its decoded pixels),
        rendered with ``threads`` torch threads when not cached (None: the decoder's choice)."""
        key = ("t", block_id, cell, ti, tj)
        return self._once(  # type: ignore[no-any-return]
            self._pixels,
            key,
            lambda: self._make_tile(block_id, cell, ti, tj, threads),
            lambda t: int(t.nbytes),
        )

    def _make_tile(
        self, block_id: int, cell: int, ti: int, tj: int, threads: int | None = None
    ) -> np.ndarray:
        from ..core.threads import decode_threads, torch_threads

        # On a busy machine, threads on cores others keep busy wait for each other at every
        # parallel region: a cold 256^2 ccinr tile took 378 ms with two, 181 with one, beside one
        # busy process (docs/architecture.md, "CPU threads on a busy machine").
        if threads is None:
            threads = self.threads if self.threads is not None else decode_threads()
        with torch_threads(threads):
            return self._render_tile(block_id, cell, ti, tj)

    def _render_tile(self, block_id: int, cell: int, ti: int, tj: int) -> np.ndarray:
        x, y, w, h = self.grid.owned(block_id)
        ts = self.tile
        tw = min(ts, -(-w // cell) - tj * ts)
        th = min(ts, -(-h // cell) - ti * ts)
        ox, oy = self.grid.frame_origin(block_id)
        fx, fy = x - ox + tj * ts * cell, y - oy + ti * ts * cell  # the tile's origin in the frame
        side = float(self.grid.side)
        model = self._model(block_id)
        if cell == 1:
            rx, ry, rw, rh = self._level_rect(block_id, ti, tj)
            pixels = model.render(rh, rw, side, x0=rx, y0=ry)
            if self.requant is None:
                return pixels
            # Re-quantized on the source's lattice, then the tile cropped from its margin.
            out = requantize(pixels, rx + ox, ry + oy, self.requant)
            return out[fy - ry : fy - ry + th, fx - rx : fx - rx + tw]
        if hasattr(model, "render_coarse"):
            return model.render_coarse(th, tw, side, x0=fx, y0=fy, stride=cell)  # type: ignore[no-any-return]
        # No coarse lattice: box means of decoded pixels, a band of cells at a time.
        pw, ph = min(tw * cell, x + w - (ox + fx)), min(th * cell, y + h - (oy + fy))
        t = np.empty((th, tw, 3), dtype=np.uint8)
        band = max(1, (1 << 22) // max(1, pw * cell))
        for i in range(0, th, band):
            rows = min(band * cell, ph - i * cell)
            pixels = model.render(rows, pw, side, x0=fx, y0=fy + i * cell)
            t[i : i + -(-rows // cell)] = to_uint8(box_downsample(pixels, cell))
        return t

    def _level_rect(self, block_id: int, ti: int, tj: int) -> tuple[int, int, int, int]:
        """The frame rectangle (x0, y0, width, height) that level tile (ti, tj) of a block asks
        its model for: the tile itself, or with ``requant`` the tile with a margin of one MCU
        inside the block along each axis whose chroma is upsampled (libjpeg's upsampling reads
        one chroma sample beyond; ``core.requant``): re-quantizing that rectangle gives the tile
        the same pixels as re-quantizing the whole block."""
        x, y, w, h = self.grid.owned(block_id)
        ox, oy = self.grid.frame_origin(block_id)
        ts = self.tile
        c0, r0 = tj * ts, ti * ts
        tw, th = min(ts, w - c0), min(ts, h - r0)
        mx, my = self.requant.margin if self.requant is not None else (0, 0)
        ex0, ey0 = max(0, c0 - mx), max(0, r0 - my)
        ex1, ey1 = min(w, c0 + tw + mx), min(h, r0 + th + my)
        return x - ox + ex0, y - oy + ey0, ex1 - ex0, ey1 - ey0

    def _mip(self, block_id: int, k: int) -> np.ndarray:
        return self._once(  # type: ignore[no-any-return]
            self._pixels, ("m", block_id, k), lambda: self._make_mip(block_id, k), lambda t: int(t.nbytes)
        )

    def _make_mip(self, block_id: int, k: int) -> np.ndarray:
        mid = self.grid.mip_id(block_id, k)
        w, h = self.grid.mip_size(block_id, k)
        if self._codes[mid] != KIND_IMAGE:
            raise CinrFormatError(
                f"{self.reader.name}: block {mid} (mip of block {block_id}) is not an image block"
            )
        where = f"{self.reader.name}: block {mid} (mip of block {block_id})"
        return decode_image_bytes(self.reader.read_image_block(mid), where, (w, h))  # size checked first

    def _cells(self, block_id: int, src: Source, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        """Cells [i0, i1) x [j0, j1) of a stored block's picture at ``src`` (uint8 (rows, cols, 3))."""
        if src.k >= 0:
            return self._mip(block_id, src.k)[i0:i1, j0:j1]
        out = np.empty((i1 - i0, j1 - j0, 3), dtype=np.uint8)
        ts = self.tile
        for ti in range(i0 // ts, -(-i1 // ts)):
            for tj in range(j0 // ts, -(-j1 // ts)):
                t = self._tile(block_id, src.cell, ti, tj)
                r0, c0 = max(i0, ti * ts), max(j0, tj * ts)
                r1, c1 = min(i1, ti * ts + t.shape[0]), min(j1, tj * ts + t.shape[1])
                out[r0 - i0 : r1 - i0, c0 - j0 : c1 - j0] = t[
                    r0 - ti * ts : r1 - ti * ts, c0 - tj * ts : c1 - tj * ts
                ]
        return out

    def _records(self, k: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Container ids of the records for block rows [r0, r1) and columns [c0, c1) at mip ``k``
        (``k = -1``: the level blocks), an int64 array (rows, cols)."""
        base = 0 if k < 0 else self.grid.mip_id(0, k)
        rows = np.arange(r0, r1, dtype=np.int64)[:, None] * self.grid.cols
        return base + rows + np.arange(c0, c1, dtype=np.int64)[None, :]  # type: ignore[no-any-return]

    def _row_chunk(self, n_cols: int) -> int:
        """Block rows handled at once when every block of a row range is looked at (bounds the
        arrays of per-block values by about 2^20 entries)."""
        return max(1, (1 << 20) // max(1, n_cols))

    def level_region(self, x0: int, y0: int, w: int, h: int, k: int = -1, cell: int = 1) -> np.ndarray:
        """Pixels [x0, x0+w) x [y0, y0+h) of the level (k = -1), of mip level k, or of the level sampled
        once per ``cell`` x ``cell`` pixels (k = -1; ``cell`` must divide the block size), all inside."""
        self._check_open()
        src = Source(k, self.grid.mip_downsamples[k] if k >= 0 else cell)
        d = src.cell
        if self.grid.block_size % d:
            raise ValueError(f"cell {d} does not divide the block size {self.grid.block_size}")
        if w * h > MAX_READ_OUTPUT:
            raise CinrRequestError(f"{w} x {h} pixels is over the {MAX_READ_OUTPUT}-pixel limit of one read")
        out = np.empty((h, w, 3), dtype=np.uint8)
        bd = self.grid.block_size // d  # a block's side in cells
        W, H = -(-self.width // d), -(-self.height // d)
        if w <= 0 or h <= 0 or x0 < 0 or y0 < 0 or x0 + w > W or y0 + h > H:
            raise ValueError(f"region ({x0}, {y0}, {w}, {h}) is not inside the {W} x {H} source")
        r0, r1 = y0 // bd, (y0 + h - 1) // bd + 1
        c0, c1 = x0 // bd, (x0 + w - 1) // bd + 1
        # Background: each block row's colours spread over its pixel columns (no per-block loop).
        xs = (np.arange(x0, x0 + w) // bd) - c0
        stored: list[np.ndarray] = []
        step = self._row_chunk(c1 - c0)
        for ra in range(r0, r1, step):
            rb = min(r1, ra + step)
            ids = self._records(k, ra, rb, c0, c1)
            back = self._codes[ids] == KIND_BACKGROUND
            stored.append(ids[~back])
            if not back.any():
                continue
            colour = np.where(back[..., None], self._colours[ids], 0).astype(np.uint8)
            for r in range(ra, rb):
                py0, py1 = max(y0, r * bd), min(y0 + h, (r + 1) * bd)
                out[py0 - y0 : py1 - y0] = colour[r - ra][xs]
        for bid in np.concatenate(stored):
            lid = int(bid) % self.grid.n_level_blocks
            bx, by, bw, bh = self.grid.owned(lid)
            ex0, ey0 = bx // d, by // d
            ex1, ey1 = ex0 + -(-bw // d), ey0 + -(-bh // d)
            ix0, iy0 = max(x0, ex0), max(y0, ey0)
            ix1, iy1 = min(x0 + w, ex1), min(y0 + h, ey1)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = self._cells(
                lid, src, iy0 - ey0, iy1 - ey0, ix0 - ex0, ix1 - ex0
            )
        return out

    # -- reads -----------------------------------------------------------------------------------

    def _check_read(
        self, x: float, y: float, w: float, h: float, scale: float
    ) -> tuple[float, float, float, float, float, int, int]:
        """Validated (x, y, w, h, scale) as floats and the output size (CinrRequestError naming the problem)."""
        self._check_open()
        x, y, w, h, scale = (
            finite_number(v, name, CinrRequestError)
            for name, v in (("x", x), ("y", y), ("w", w), ("h", h), ("scale", scale))
        )
        if w <= 0 or h <= 0:
            raise CinrRequestError(f"region size must be positive, not {w} x {h}")
        if not 0 < scale <= MAX_SCALE:
            raise CinrRequestError(f"scale must be in (0, {MAX_SCALE}], not {scale}")
        if not (math.isfinite(w * scale) and math.isfinite(h * scale)):  # round(inf): OverflowError
            raise CinrRequestError(f"a {w} x {h} region at scale {scale} is too large")
        ow, oh = int(round(w * scale)), int(round(h * scale))
        if ow < 1 or oh < 1:
            raise CinrRequestError(f"a {w} x {h} region at scale {scale} has no output pixels")
        if ow * oh > MAX_READ_OUTPUT:
            raise CinrRequestError(
                f"{ow} x {oh} output pixels is over the {MAX_READ_OUTPUT}-pixel limit of one read"
            )
        return x, y, w, h, scale, ow, oh

    def _source(self, scale: float) -> Source:
        """The coarsest stored mip whose downsample d <= 1/scale; else the level's models, sampled on
        a lattice of the largest power of two <= 1/scale when 1/scale >= ``SAMPLE_STEP``."""
        if scale >= 1.0:
            return Source(-1, 1)
        step = 1.0 / scale
        k = -1
        for i, d in enumerate(self.grid.mip_downsamples):
            if d <= step * (1 + 1e-9):
                k = i
        if k >= 0:
            return Source(k, self.grid.mip_downsamples[k])
        if step < SAMPLE_STEP:
            return Source(-1, 1)
        return Source(-1, 1 << min(30, int(math.floor(math.log2(step) + 1e-9))))

    def _source_level(self, scale: float) -> int:
        """Index of the coarsest mip whose downsample d <= 1/scale (-1: the level itself)."""
        return self._source(scale).k

    def _source_rect(
        self, x: float, y: float, scale: float, ow: int, oh: int
    ) -> tuple[float, float, float, float, int, int, int, int] | None:
        """(X0, X1, Y0, Y1, r0, r1, c0, c1): the level rectangle a read needs (one pixel more
        around it when magnifying) and the block rows and columns it touches; None when it lies
        outside the slide."""
        step = 1.0 / scale
        pad = 1.0 if scale > 1.0 else 0.0
        W, H, B = self.width, self.height, self.grid.block_size
        X0, X1 = max(0.0, x - pad), min(float(W), x + ow * step + pad)
        Y0, Y1 = max(0.0, y - pad), min(float(H), y + oh * step + pad)
        if X1 <= X0 or Y1 <= Y0:
            return None
        c0, c1 = int(X0 // B), min(self.grid.cols, int(math.ceil(X1 / B)))
        r0, r1 = int(Y0 // B), min(self.grid.rows, int(math.ceil(Y1 / B)))
        return X0, X1, Y0, Y1, r0, r1, c0, c1

    def _uncached(
        self, x: float, y: float, scale: float, ow: int, oh: int, src: Source
    ) -> tuple[list[int], list[tuple[int, int, int, int]]]:
        """What this read will decode and has not cached: the container ids of its stored blocks
        whose model is not loaded (or mip not cached) while a tile under the read is missing, and
        the missing model tiles themselves as ``(block, cell, ti, tj)``. Called after
        ``_check_cost``, so both are bounded."""
        rect = self._source_rect(x, y, scale, ow, oh)
        if rect is None:
            return [], []
        X0, X1, Y0, Y1, r0, r1, c0, c1 = rect
        ids = self._records(src.k, r0, r1, c0, c1).ravel()
        ids = ids[self._codes[ids] != KIND_BACKGROUND]
        d = src.cell
        need: list[int] = []
        tiles: list[tuple[int, int, int, int]] = []
        for bid in ids:
            lid = int(bid) % self.grid.n_level_blocks
            if src.k >= 0:
                if ("m", lid, src.k) not in self._pixels:
                    need.append(int(bid))
                continue
            bx, by, bw, bh = self.grid.owned(lid)
            # The block's tiles under the rectangle: any of them not cached needs the model.
            ts = self.tile
            j0, j1 = int(max(X0 - bx, 0) // d) // ts, int(math.ceil(min(X1 - bx, bw) / d) - 1) // ts
            i0, i1 = int(max(Y0 - by, 0) // d) // ts, int(math.ceil(min(Y1 - by, bh) / d) - 1) // ts
            missing = [
                (lid, d, ti, tj)
                for ti in range(i0, i1 + 1)
                for tj in range(j0, j1 + 1)
                if ("t", lid, d, ti, tj) not in self._pixels
            ]
            if not missing:
                continue
            tiles += missing
            info = self.reader.block_info(lid)
            if (info.offset, info.stored_length, info.crc32) not in self._models:
                need.append(int(bid))
        return need, tiles

    def _prepare(self, x: float, y: float, scale: float, ow: int, oh: int, src: Source) -> None:
        """Before a read decodes: over a URL, fetch together the stored blocks it needs
        (``CinrReader.prefetch``: one round trip, not one per block); on a CPU with free cores,
        render the model tiles it needs in parallel, as many at once as there are free cores
        (entropy decoding and the compiled synthesis run in C without the GIL; a tile whose block
        another thread is loading waits for that model), or, when those tiles would not all fit
        the pixel cache, load its block models in parallel."""
        remote = self.reader.is_remote
        threads = 1
        if src.k < 0 and self.device.type == "cpu":
            from ..core.threads import decode_threads

            threads = self.threads if self.threads is not None else decode_threads()
        if not remote and threads < 2:
            return
        need, tiles = self._uncached(x, y, scale, ow, oh, src)
        if remote and len(need) > 1:
            self.reader.prefetch(need)
        if threads < 2:
            return
        from concurrent.futures import ThreadPoolExecutor

        tile_bytes = self.tile * self.tile * 3
        if (
            len(tiles) >= 2
            and len(need) <= MODEL_CACHE
            and len(tiles) * tile_bytes <= self._pixels.capacity // 2
        ):
            # Each block's first tile before any block's second, so that blocks load side by side;
            # the pool's threads are the free cores, so each render takes one torch thread.
            rank: dict[int, int] = {}
            order = []
            for t in tiles:
                rank[t[0]] = rank.get(t[0], -1) + 1
                order.append((rank[t[0]], t))
            order.sort(key=lambda o: o[0])

            def render(o: tuple[int, tuple[int, int, int, int]]) -> None:
                block_id, cell, ti, tj = o[1]
                self._tile(block_id, cell, ti, tj, threads=1)

            with ThreadPoolExecutor(min(threads, len(tiles))) as pool:
                # The latents' pieces first, the largest first, then the tiles: a tile that meets
                # a piece still being decoded waits for it, instead of the pieces being decoded
                # in the order the tiles ask for them (docs/architecture.md, "Thirty-fourth
                # session").
                work: list[Callable[[], None]] = [
                    functools.partial(self._decode_piece, block_id, k)
                    for block_id, k in self._pieces(pool, tiles)
                ]
                work += [functools.partial(render, o) for o in order]
                list(pool.map(lambda job: job(), work))
        elif 2 <= len(need) <= MODEL_CACHE:
            with ThreadPoolExecutor(min(threads, len(need))) as pool:
                list(pool.map(self._model, need))

    def _pieces(self, pool: Executor, tiles: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
        """The entropy-coded pieces (``LatentBlock.pieces``) that rendering these level tiles will
        decode, as (block, piece), the most latents first; their blocks' models are loaded on
        ``pool`` meanwhile, side by side. Empty for models without pieces, and when the blocks
        would not all stay in the model cache (their tiles then decode what they need)."""
        by_block: dict[int, list[tuple[int, int]]] = {}
        for block_id, cell, ti, tj in tiles:
            if cell == 1:
                by_block.setdefault(block_id, []).append((ti, tj))
        if len(by_block) > MODEL_CACHE:
            return []

        def plan(block_id: int) -> list[tuple[int, int, int]]:
            model = self._model(block_id)
            pieces = getattr(model, "pieces", None)
            if pieces is None:
                return []
            sizes: dict[int, int] = {}
            for ti, tj in by_block[block_id]:
                rx, ry, rw, rh = self._level_rect(block_id, ti, tj)
                sizes.update(pieces(rh, rw, x0=rx, y0=ry))
            return [(-n, block_id, k) for k, n in sizes.items()]

        found = sorted(p for ps in pool.map(plan, by_block) for p in ps)
        return [(block_id, k) for _, block_id, k in found]

    def _decode_piece(self, block_id: int, k: int) -> None:
        """Entropy-decode piece ``k`` of a block's latents (``LatentBlock.decode_piece``)."""
        model = self._model(block_id)
        model.decode_piece(k)  # type: ignore[attr-defined]

    def _check_cost(self, x: float, y: float, scale: float, ow: int, oh: int, src: Source) -> None:
        """Refuse (CinrRequestError) a read that would decode more stored blocks or source pixels
        than one read may (``MAX_READ_MODELS``, ``MAX_READ_IMAGES``, ``MAX_READ_SOURCE_PIXELS``),
        counted over the blocks its source rectangle touches before anything is decoded."""
        rect = self._source_rect(x, y, scale, ow, oh)
        if rect is None:
            return
        X0, X1, Y0, Y1, r0, r1, c0, c1 = rect
        W, H, B = self.width, self.height, self.grid.block_size

        def cells(lo: float, hi: float, i0: int, i1: int, length: int) -> np.ndarray:
            starts = np.arange(i0, i1, dtype=np.float64) * B
            ends = np.minimum(starts + B, length)
            if src.k >= 0:  # a mip image is decoded whole
                return np.ceil((ends - starts) / src.cell)
            span = np.minimum(ends, hi) - np.maximum(starts, lo)
            return np.minimum(np.ceil((ends - starts) / src.cell), np.ceil(span / src.cell) + 2 * self.tile)

        cx, cy = cells(X0, X1, c0, c1, W), cells(Y0, Y1, r0, r1, H)
        n_stored, pixels = 0, 0.0
        chunk = self._row_chunk(c1 - c0)
        for ra in range(r0, r1, chunk):
            rb = min(r1, ra + chunk)
            stored = self._codes[self._records(src.k, ra, rb, c0, c1)] != KIND_BACKGROUND
            n_stored += int(np.count_nonzero(stored))
            pixels += float(cy[ra - r0 : rb - r0] @ (stored @ cx))
        what, limit = ("mip images", MAX_READ_IMAGES) if src.k >= 0 else ("model blocks", MAX_READ_MODELS)
        hint = "read a smaller region" + (
            "" if src.k >= 0 or self.grid.mip_downsamples else " (this file has no mips)"
        )
        if n_stored > limit:
            raise CinrRequestError(
                f"{self.reader.name}: this read would decode {n_stored} {what}, over the limit of "
                f"{limit} for one read; {hint}"
            )
        budget = MAX_READ_SOURCE_PIXELS + SOURCE_PIXELS_PER_OUTPUT * ow * oh
        if pixels > budget:
            raise CinrRequestError(
                f"{self.reader.name}: this read would decode about {pixels:,.0f} source pixels for "
                f"{ow * oh:,} output pixels, over the limit of {budget:,} for one read; {hint}"
            )

    def _aligned(self, x: float, y: float, scale: float, ow: int, oh: int, src: Source) -> int | None:
        """f when every output box is f x f whole cells of ``src``, inside the slide, with f <= ``MAX_ALIGNED``.

        That is the case for power-of-two scales at positions on the source's lattice, inside the
        slide (what viewers ask for): the box means are then cells (f = 1) or plain f x f averages.
        None when the general (area-weighted) path is needed.
        """
        d = src.cell
        if scale > 1 or self.grid.block_size % d:
            return None
        f = 1.0 / (scale * d)
        fi = int(round(f))
        if abs(f - fi) > 1e-9 or not 1 <= fi <= MAX_ALIGNED or x < 0 or y < 0:
            return None
        if x + ow * fi * d > self.width or y + oh * fi * d > self.height:
            return None  # boxes reach outside the slide: coverage < 1 somewhere
        sx, sy = x / d, y / d
        if sx != int(sx) or sy != int(sy):
            return None
        return fi

    def _area(
        self, x: float, y: float, step: float, src: Source, o0: int, o1: int, p0: int, p1: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sum of source values x area over each output box of rows [o0, o1) and columns [p0, p1)
        (RGB float64, in level pixels squared), coverage: the fraction of each box inside the slide)."""
        W, H, B = self.width, self.height, self.grid.block_size
        ay = y + np.arange(o0, o1, dtype=np.float64) * step
        ax = x + np.arange(p0, p1, dtype=np.float64) * step
        by, bx = ay + step, ax + step
        cy = np.clip((np.minimum(by, H) - np.maximum(ay, 0.0)) / step, 0.0, 1.0)
        cx = np.clip((np.minimum(bx, W) - np.maximum(ax, 0.0)) / step, 0.0, 1.0)
        cov = cy[:, None] * cx[None, :]
        acc = np.zeros((o1 - o0, p1 - p0, 3), dtype=np.float64)
        rows, cols = np.flatnonzero(cy > 0), np.flatnonzero(cx > 0)
        if rows.size == 0 or cols.size == 0:
            return acc, cov
        Y0, Y1 = max(0.0, float(ay[rows[0]])), min(float(H), float(by[rows[-1]]))
        X0, X1 = max(0.0, float(ax[cols[0]])), min(float(W), float(bx[cols[-1]]))
        r0, r1 = int(Y0 // B), min(self.grid.rows, int(math.ceil(Y1 / B)))
        c0, c1 = int(X0 // B), min(self.grid.cols, int(math.ceil(X1 / B)))
        if r1 <= r0 or c1 <= c0:
            return acc, cov
        # Background blocks: their colours integrated over the boxes, whole rows of blocks at once.
        col_edges = np.minimum(np.arange(c0, c1 + 1, dtype=np.float64) * B, W)
        row_edges = np.minimum(np.arange(r0, r1 + 1, dtype=np.float64) * B, H)
        by_rows = np.zeros((r1 - r0, p1 - p0, 3), dtype=np.float64)
        stored: list[np.ndarray] = []
        chunk = self._row_chunk(c1 - c0)
        for ra in range(r0, r1, chunk):
            rb = min(r1, ra + chunk)
            ids = self._records(src.k, ra, rb, c0, c1)
            back = self._codes[ids] == KIND_BACKGROUND
            stored.append(ids[~back])
            if back.any():
                colour = np.where(back[..., None], self._colours[ids], 0)
                by_rows[ra - r0 : rb - r0] = integrate_cells(colour, col_edges, ax, bx, axis=1)
        acc += integrate_cells(by_rows, row_edges, ay, by, axis=0)
        # Stored blocks (mip images or models), one at a time.
        d = src.cell
        for bid in np.concatenate(stored):
            lid = int(bid) % self.grid.n_level_blocks
            ex, ey, ew, eh = self.grid.owned(lid)
            q0, q1 = int(np.searchsorted(by, ey, "right")), int(np.searchsorted(ay, ey + eh, "left"))
            s0, s1 = int(np.searchsorted(bx, ex, "right")), int(np.searchsorted(ax, ex + ew, "left"))
            if q1 <= q0 or s1 <= s0:
                continue
            lo_y, hi_y = max(float(ey), float(ay[q0])), min(float(ey + eh), float(by[q1 - 1]))
            lo_x, hi_x = max(float(ex), float(ax[s0])), min(float(ex + ew), float(bx[s1 - 1]))
            i0, i1 = int((lo_y - ey) // d), min(-(-eh // d), int(math.ceil((hi_y - ey) / d)))
            j0, j1 = int((lo_x - ex) // d), min(-(-ew // d), int(math.ceil((hi_x - ex) / d)))
            if i1 <= i0 or j1 <= j0:
                continue
            cells = self._cells(lid, src, i0, i1, j0, j1)
            e_y = np.minimum(ey + d * np.arange(i0, i1 + 1, dtype=np.float64), ey + eh)
            e_x = np.minimum(ex + d * np.arange(j0, j1 + 1, dtype=np.float64), ex + ew)
            part = integrate_cells(cells, e_y, ay[q0:q1], by[q0:q1], axis=0)
            acc[q0:q1, s0:s1] += integrate_cells(part, e_x, ax[s0:s1], bx[s0:s1], axis=1)
        return acc, cov

    def _bilinear(
        self, x: float, y: float, step: float, o0: int, o1: int, p0: int, p1: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(RGB float64 bilinear interpolation of level pixels, coverage) for output rows [o0, o1)
        and columns [p0, p1) of a read at scale 1/step > 1."""
        iy, wy, cy = bilinear_weights(y, step, o1 - o0, self.height, o0)
        ix, wx, cx = bilinear_weights(x, step, p1 - p0, self.width, p0)
        cov = cy[:, None] * cx[None, :]
        mean = np.zeros((o1 - o0, p1 - p0, 3), dtype=np.float64)
        rows, cols = np.flatnonzero(cy > 0), np.flatnonzero(cx > 0)
        if rows.size == 0 or cols.size == 0:
            return mean, cov
        q0, q1, s0, s1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        iy, wy, ix, wx = iy[q0:q1], wy[q0:q1], ix[s0:s1], wx[s0:s1]
        ry0, ry1 = int(iy.min()), int(iy.max()) + 1
        rx0, rx1 = int(ix.min()), int(ix.max()) + 1
        src = self.level_region(rx0, ry0, rx1 - rx0, ry1 - ry0).astype(np.float32)
        mean[q0:q1, s0:s1] = weighted_sum(weighted_sum(src, iy, wy, 0, ry0), ix, wx, 1, rx0)
        return mean, cov

    def _read(self, x: float, y: float, scale: float, ow: int, oh: int, rgba: bool) -> np.ndarray:
        """The read of ``_check_read``'s values: RGB, or RGBA with alpha = coverage."""
        src = self._source(scale)
        self._check_cost(x, y, scale, ow, oh, src)
        self._prepare(x, y, scale, ow, oh, src)
        out = np.empty((oh, ow, 4 if rgba else 3), dtype=np.uint8)
        if rgba:
            out[..., 3] = 255
        fi = self._aligned(x, y, scale, ow, oh, src)
        d = src.cell
        if fi == 1:
            out[..., :3] = self.level_region(int(x / d), int(y / d), ow, oh, src.k, d)
            return out
        step = 1.0 / scale
        bg = np.asarray(self.background, dtype=np.float64)
        for o0 in range(0, oh, OUT_TILE):
            o1 = min(oh, o0 + OUT_TILE)
            for p0 in range(0, ow, OUT_TILE):
                p1 = min(ow, p0 + OUT_TILE)
                dst = out[o0:o1, p0:p1]
                if fi is not None:
                    cells = self.level_region(
                        int(x / d) + p0 * fi, int(y / d) + o0 * fi, (p1 - p0) * fi, (o1 - o0) * fi, src.k, d
                    )
                    dst[..., :3] = box_mean_uint8(cells, fi)
                    continue
                if scale > 1.0:
                    mean, cov = self._bilinear(x, y, step, o0, o1, p0, p1)
                    total = mean * cov[..., None]
                else:
                    acc, cov = self._area(x, y, step, src, o0, o1, p0, p1)
                    total = acc / (step * step)  # the mean over the part inside, times the coverage
                if rgba:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        mean = total / cov[..., None]
                    dst[..., :3] = np.where(cov[..., None] > 0, np.clip(np.rint(mean), 0, 255), 0)
                    dst[..., 3] = np.clip(np.rint(cov * 255.0), 0, 255)
                    dst[dst[..., 3] == 0] = 0
                else:
                    dst[...] = np.clip(np.rint(total + bg * (1.0 - cov[..., None])), 0, 255)
        return out

    def read(self, x: float, y: float, w: float, h: float, scale: float = 1.0) -> np.ndarray:
        """RGB uint8 (round(h*scale), round(w*scale), 3) of the region at level coordinates (x, y, w, h).

        Pixels outside the slide take the slide's background colour.
        """
        x, y, w, h, scale, ow, oh = self._check_read(x, y, w, h, scale)
        return self._read(x, y, scale, ow, oh, rgba=False)

    def read_rgba(self, x: float, y: float, w: float, h: float, scale: float = 1.0) -> np.ndarray:
        """RGBA uint8: the region's pixels, alpha = the fraction of each pixel inside the slide (0 outside)."""
        x, y, w, h, scale, ow, oh = self._check_read(x, y, w, h, scale)
        return self._read(x, y, scale, ow, oh, rgba=True)

    # -- lifetime --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CinrRequestError(f"{self.reader.name}: the slide is closed")

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
        """Drop decoded pixels, and the loaded block models (with the hash-grid renders' kept
        buffers, ``core.workspace``) unless ``models`` is False."""
        self._pixels.clear()
        if models:
            self._models.clear()
            # Loaded (with torch) only once a hash-grid block has rendered: nothing to drop before.
            workspaces = sys.modules.get(__name__.rsplit(".", 2)[0] + ".core.workspace")
            if workspaces is not None:
                workspaces.release()

    def close(self) -> None:
        """Close the file and drop the caches."""
        self._closed = True
        self.clear_cache()
        self.reader.close()

    def __enter__(self) -> SlideDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
