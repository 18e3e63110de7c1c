"""Decoded pixels moved toward a JPEG source's quantization lattice (``slide.source_jpeg``).

A JPEG-tiled source's pixels are a JPEG decoder's output: in every 8x8 block of every colour
component, on the source's tile grid, the DCT coefficients are whole multiples of the source's
quantization steps. A decoded region that comes close to those pixels can be carried the rest of
the way: each component is transformed as the source's encoder did (colour transform, chroma box
means, 8x8 DCT), each coefficient is replaced by its expected lattice value under a Gaussian error
of ``spread`` around the decoded one, and the source's decoder is mimicked back (IDCT, rounding,
libjpeg's triangle "fancy" chroma upsampling, colour transform). On a TCGA region saved at libvips
Q 60 this brought a default ccinr file from 35.76 to 37.11 dB against its source, at the same
bytes (docs/architecture.md, "Twenty-sixth session"). The transform is per cell, a source tile's
part of a block (the whole tile when blocks hold whole tiles): a region handed to ``requantize``
starts on the MCU grid, and is cut at the source's tile lines; only whole MCUs are changed.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CinrFormatError
from ..format.header import is_int

#: JPEG's zigzag scan: position k of a DQT table is natural (row-major) index ``ZIGZAG[k]``.
ZIGZAG = (
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
)  # fmt: skip
#: Colour transforms: the JFIF YCbCr of a TIFF of photometric YCbCr, or none (components R, G, B).
TRANSFORMS = ("ycbcr", "rgb")
#: The Gaussian spread (DCT units) of a 1.9 writer's estimate, one for every coefficient: 4, 6, 8
#: and 11 gave 36.91, 37.11, 37.05 and 36.87 dB on the Q 60 region above (35.76 without); on its
#: Q 80 TIFF 4.5, 6, 8 and 11 gave 35.97, 36.05, 36.02 and 35.78 (35.56 without).
DEFAULT_SPREAD = 6.0
#: The encoder's spread per coefficient (format 1.10): max(SPREAD_FLOOR, SPREAD_RATIO * step).
#: A coarse step leaves the model's error a larger share of it: on stop 49's default files of the
#: Q 60 and Q 80 TIFFs of the 1537-px TCGA region and the bundled sample, against 6 for all,
#: +0.12, +0.13 and +0.47 dB (max(4, 0.25 q): +0.10, +0.08, +0.38; max(3, 0.35 q): +0.08, +0.09,
#: +0.33; max(4, 0.4 q): -0.12, -0.03, -0.11; docs/architecture.md, "Twenty-seventh session").
SPREAD_FLOOR = 4.0
SPREAD_RATIO = 0.3
#: Largest source tile side taken.
MAX_TILE = 4096
#: Smallest spread taken (a smaller one would divide by zero in float32).
MIN_SPREAD = 0.01


def _dct_matrix() -> np.ndarray:
    k = np.arange(8)
    d = np.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d


_D = _dct_matrix().astype(np.float32)


@dataclass(frozen=True)
class SourceJpeg:
    """How a JPEG-tiled source level was coded: ``tile`` (square tiles from the level's origin),
    the colour ``transform``, each component's ``sampling`` (h, v) and quantization ``tables``
    (64 steps, row-major), and the ``spread`` of the decoder's estimate: one for all coefficients,
    or each component's 64 (row-major; format 1.10)."""

    tile: int
    transform: str
    sampling: tuple[tuple[int, int], ...]
    tables: tuple[tuple[int, ...], ...]
    spread: float | tuple[tuple[float, ...], ...] = DEFAULT_SPREAD

    @property
    def spreads(self) -> np.ndarray:
        """The spread of every coefficient, float32 (3, 64)."""
        return np.broadcast_to(np.asarray(self.spread, dtype=np.float32), (3, 64))

    @property
    def spread_per_coefficient(self) -> bool:
        """True when the spread is given per coefficient (three rows of 64; format 1.10)."""
        return isinstance(self.spread, tuple)

    @property
    def mcu(self) -> tuple[int, int]:
        """(width, height) of a minimum coded unit, level pixels."""
        return 8 * max(h for h, _ in self.sampling), 8 * max(v for _, v in self.sampling)

    @property
    def margin(self) -> tuple[int, int]:
        """(x, y) margin a region re-quantized in parts needs around each part: one MCU along an
        axis on which some component is upsampled (libjpeg's upsampling reads one sample beyond
        an MCU's own), else 0. Any part of a cell on the MCU grid, re-quantized with this margin
        (clipped to the cell) and cropped, equals the same pixels of the cell re-quantized whole."""
        mw, mh = self.mcu
        return (
            mw if any(8 * h < mw for h, _ in self.sampling) else 0,
            mh if any(8 * v < mh for _, v in self.sampling) else 0,
        )

    def to_header(self) -> dict[str, Any]:
        """The ``slide.source_jpeg`` object (formats/cinr-v1.md §4.2)."""
        return {
            "tile": self.tile,
            "transform": self.transform,
            "sampling": [list(s) for s in self.sampling],
            "tables": [list(t) for t in self.tables],
            "spread": [list(r) for r in self.spread] if isinstance(self.spread, tuple) else self.spread,
        }


def default_spread(tables: tuple[tuple[int, ...], ...]) -> tuple[tuple[float, ...], ...]:
    """The encoder's spread of each coefficient, max(``SPREAD_FLOOR``, ``SPREAD_RATIO`` x its step),
    to 0.01."""
    return tuple(tuple(round(max(SPREAD_FLOOR, SPREAD_RATIO * q), 2) for q in t) for t in tables)


def source_jpeg_of(header: Mapping[str, Any], where: str) -> SourceJpeg | None:
    """A header's ``slide.source_jpeg``, checked (``parse_source_jpeg``), or None without one."""
    slide = header.get("slide")
    if not isinstance(slide, dict) or "source_jpeg" not in slide:
        return None
    return parse_source_jpeg(slide["source_jpeg"], where)


def parse_source_jpeg(value: Any, where: str) -> SourceJpeg:
    """``slide.source_jpeg`` checked (``CinrFormatError`` naming what is wrong)."""

    def bad(what: str) -> CinrFormatError:
        return CinrFormatError(f"{where}: slide.source_jpeg: {what}")

    if not isinstance(value, Mapping):
        raise bad("not an object")
    transform = value.get("transform")
    if transform not in TRANSFORMS:
        raise bad(f"transform must be one of {', '.join(TRANSFORMS)}")
    sampling = value.get("sampling")
    if (
        not isinstance(sampling, list)
        or len(sampling) != 3
        or not all(
            isinstance(s, list) and len(s) == 2 and all(is_int(v) and v in (1, 2) for v in s)
            for s in sampling
        )
    ):
        raise bad("sampling must be three [h, v] pairs of 1 or 2")
    tables = value.get("tables")
    if (
        not isinstance(tables, list)
        or len(tables) != 3
        or not all(
            isinstance(t, list) and len(t) == 64 and all(is_int(v) and 1 <= v <= 65535 for v in t)
            for t in tables
        )
    ):
        raise bad("tables must be three lists of 64 integers in [1, 65535]")

    def spread_ok(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and MIN_SPREAD <= v <= 1000

    raw: Any = value.get("spread")
    spread: float | tuple[tuple[float, ...], ...]
    if isinstance(raw, list) and len(raw) == 3:
        if not all(isinstance(t, list) and len(t) == 64 and all(map(spread_ok, t)) for t in raw):
            raise bad(f"spread must be a number in [{MIN_SPREAD}, 1000] or three lists of 64 of them")
        spread = tuple(tuple(float(v) for v in t) for t in raw)
    elif spread_ok(raw):
        spread = float(raw)
    else:
        raise bad(f"spread must be a number in [{MIN_SPREAD}, 1000] or three lists of 64 of them")
    tile = value.get("tile")
    mw, mh = 8 * max(h for h, _ in sampling), 8 * max(v for _, v in sampling)
    if not is_int(tile) or not 1 <= tile <= MAX_TILE or tile % mw or tile % mh:
        raise bad(f"tile must be an integer in [1, {MAX_TILE}], a multiple of the {mw}x{mh} MCU")
    return SourceJpeg(
        tile=tile,
        transform=str(transform),
        sampling=tuple((int(h), int(v)) for h, v in sampling),
        tables=tuple(tuple(int(v) for v in t) for t in tables),
        spread=spread,
    )


def _dct(plane: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The 8x8 block transform ``d`` . B . d^T of every block of ``plane`` (h, w multiples of 8), each
    block's coefficients where its pixels were."""
    h, w = plane.shape
    rows = np.matmul(d, plane.reshape(h // 8, 8, w)).reshape(h, w // 8, 8)
    return np.matmul(rows, d.T).reshape(h, w)  # type: ignore[no-any-return]


def _expected(c: np.ndarray, q: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """The mean of the lattice values (n + k) * q, k in [-2, 2], n * q the nearest to ``c``, each
    weighted by a Gaussian of ``spread`` around ``c`` (relative to n * q's weight: for k = +-1,
    w = exp((+-2 r q - q^2) / (2 spread^2)) with r = c - n q, at most 1; for k = +-2, w^2 exp(-q^2 /
    spread^2))."""
    n = np.round(c / q)
    r = c - n * q
    s2 = 2.0 * spread * spread
    qq = q * q
    up = np.exp((2.0 * r * q - qq) / s2)  # |r| <= q / 2: at most 1
    down = np.exp((-2.0 * r * q - qq) / s2)
    far = np.exp(-2.0 * qq / s2)
    up2, down2 = up * up * far, down * down * far
    shift = (up - down + 2.0 * (up2 - down2)) / (1.0 + up + down + up2 + down2)
    return (n + shift) * q  # type: ignore[no-any-return]


def _component(plane: np.ndarray, table: tuple[int, ...], spread: np.ndarray) -> np.ndarray:
    """One component plane (whole 8x8 blocks) carried to the expected lattice (``spread``: float32
    (64,), row-major), rounded as a decoder's samples."""
    h, w = plane.shape
    q = np.tile(np.asarray(table, dtype=np.float32).reshape(8, 8), (h // 8, w // 8))
    c = _expected(_dct(plane - 128.0, _D), q, np.tile(spread.reshape(8, 8), (h // 8, w // 8)))
    return np.clip(np.round(_dct(c, _D.T) + 128.0), 0, 255)  # type: ignore[no-any-return]


def _upsample(plane: np.ndarray, fx: int, fy: int) -> np.ndarray:
    """libjpeg's fancy upsampling by 2 along each axis whose factor is 2 (3/4 of the nearer sample,
    1/4 of the farther; edges repeat)."""
    out = plane
    for axis, f in ((0, fy), (1, fx)):
        if f == 1:
            continue
        p = np.moveaxis(out, axis, 0)
        e = np.concatenate([p[:1], p, p[-1:]])
        near = 3 * e[1:-1]
        up = np.empty((2 * p.shape[0], *p.shape[1:]), dtype=p.dtype)
        up[0::2] = near + e[:-2]
        up[1::2] = near + e[2:]
        out = np.moveaxis(up / 4.0, 0, axis)
    return out


def _requant_lib() -> ctypes.CDLL | None:
    """The compiled re-quantization (``_requant.c``), or None (no compiler, ``CINR_NATIVE=0``, or
    the build failed)."""
    from . import native

    def setup(lib: ctypes.CDLL) -> None:
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.cinr_requant.restype = ctypes.c_int
        lib.cinr_requant.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, ptr, ptr, ptr, ptr]

    return native.compiled(Path(__file__).with_name("_requant.c"), "re-quantization", setup)


def _tile(pixels: np.ndarray, sj: SourceJpeg) -> np.ndarray:
    """One cell (uint8 (h, w, 3), whole MCUs) on the source's lattice: through the compiled kernel
    when there is one (the same formulas in float32; a pixel may differ by a rounding step where
    a sum's order differs), else numpy (``_tile_numpy``, which defines the result)."""
    from . import native

    lib = _requant_lib() if native.enabled() else None
    if lib is None:
        return _tile_numpy(pixels, sj)
    src = np.ascontiguousarray(pixels)
    out = np.empty_like(src)
    h, w = src.shape[:2]
    sampling = np.asarray(sj.sampling, dtype=np.int64)
    tables = np.asarray(sj.tables, dtype=np.float32)
    spreads = np.ascontiguousarray(sj.spreads)
    native.raise_for(
        lib.cinr_requant(
            src.ctypes.data, h, w, w * 3, out.ctypes.data, w * 3, int(sj.transform == "ycbcr"),
            sampling.ctypes.data, tables.ctypes.data, _D.ctypes.data, spreads.ctypes.data,
        ),
        "re-quantization",
    )  # fmt: skip
    return out


def _tile_numpy(pixels: np.ndarray, sj: SourceJpeg) -> np.ndarray:
    """One cell on the source's lattice in numpy, float32: the reference ``_requant.c`` follows."""
    x = pixels.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    if sj.transform == "ycbcr":
        planes = [
            0.299 * r + 0.587 * g + 0.114 * b,
            -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0,
            0.5 * r - 0.418688 * g - 0.081312 * b + 128.0,
        ]
    else:
        planes = [r, g, b]
    hmax = max(h for h, _ in sj.sampling)
    vmax = max(v for _, v in sj.sampling)
    out = []
    for plane, (h, v), table, spread in zip(planes, sj.sampling, sj.tables, sj.spreads):
        fx, fy = hmax // h, vmax // v
        if fx > 1 or fy > 1:
            ph, pw = plane.shape
            plane = plane.reshape(ph // fy, fy, pw // fx, fx).mean(axis=(1, 3))
        plane = _component(plane, table, spread)
        if fx > 1 or fy > 1:
            plane = np.round(_upsample(plane, fx, fy))
        out.append(plane)
    if sj.transform == "ycbcr":
        y, cb, cr = out[0], out[1] - 128.0, out[2] - 128.0
        out = [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb]
    return np.clip(np.round(np.stack(out, axis=-1)), 0, 255).astype(np.uint8)


def requantize(pixels: np.ndarray, x0: int, y0: int, sj: SourceJpeg) -> np.ndarray:
    """``pixels`` (uint8 (h, w, 3)) of the level region at (``x0``, ``y0``), a point of the source's
    MCU grid: the region's part of each source tile (its cell; the whole tile when the region
    holds it) has its whole MCUs moved to the source's lattice (a new array; the rest unchanged).
    A block's cells are its parts of the source tiles (formats/cinr-v1.md §4.2)."""
    t = sj.tile
    mw, mh = sj.mcu
    if x0 % mw or y0 % mh:
        raise ValueError(f"({x0}, {y0}) is not on the source's {mw}x{mh} MCU grid")
    h, w = pixels.shape[:2]
    out = pixels.copy()
    for ra, rb in _cuts(y0, h, t):
        for ca, cb in _cuts(x0, w, t):
            th = (rb - ra) // mh * mh
            tw = (cb - ca) // mw * mw
            if th and tw:
                out[ra : ra + th, ca : ca + tw] = _tile(pixels[ra : ra + th, ca : ca + tw], sj)
    return out


def _cuts(start: int, length: int, t: int) -> list[tuple[int, int]]:
    """[a, b) spans, relative to ``start``, of [start, start + length) cut at multiples of ``t``."""
    spans = []
    a = 0
    while a < length:
        b = min(length, (start + a) // t * t + t - start)
        spans.append((a, b))
        a = b
    return spans
