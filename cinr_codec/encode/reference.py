"""The yardstick in every encode's summary: what a JPEG-tiled pyramid of the same level would cost.

A scanner stores a level as 256-px JPEG tiles (4:2:0; the quantization and Huffman tables shared
once in the TIFF's JPEGTables tag, so a tile carries little more than its entropy-coded data) and
adds lower levels, each half the last. ``block_reference`` measures, for one block and each quality
of ``QUALITIES`` (libjpeg-turbo through imagecodecs, as ``cinr decode -o x.tif`` writes tiles):
the bytes of its level tiles and of its box-filtered 1/2, 1/4 … down to ``MIN_SIDE`` pixels, each
counted from the start-of-scan marker on, and the squared error of its level tiles.
``PyramidTotals`` adds blocks up and interpolates the bytes at the file's PSNR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..core.resample import box_downsample, to_uint8
from ..format.header import psnr_of

#: JPEG qualities measured per block (q80 is the scanners' usual setting): 0.27 s for a 1024^2
#: tissue block on one core of the 2-core machine (the thirteen, twenty-third session). q65 and q70 lie where encodes land
#: (36-40 dB); without them, on a JPEG-sourced level whose own quality re-encodes almost
#: losslessly (the prostate image's q75: 58.8 dB), the bytes at 37-40 dB came from the chord
#: from q60 to that point, 3.3 % under what q65 measures at its 38.8 dB. q45-q55 likewise: on a
#: libvips Q 70 TIFF of a TCGA region q55 measured 350,529 bytes at 36.45 dB, where the chord from
#: q40 (31.64 dB) to q60 (38.43 dB) put 328,000.
QUALITIES = (20, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95)
#: Side of the pyramid's tiles.
TILE = 256
#: The smallest level side (pixels of the block) whose tiles are counted.
MIN_SIDE = 16
#: The start-of-scan marker: what comes before it (tables, headers) lives once per file in a TIFF.
SOS = b"\xff\xda"


def _scan_bytes(data: bytes | bytearray) -> int:
    """Bytes of a JPEG from its start-of-scan marker on (all of it if there is none)."""
    i = data.find(SOS)
    return len(data) - i if i >= 0 else len(data)


def _tiles(img: np.ndarray) -> Iterable[np.ndarray]:
    h, w = img.shape[:2]
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            yield np.ascontiguousarray(img[y : y + TILE, x : x + TILE])


def block_reference(
    pixels: np.ndarray, *, error: bool, box: Callable[[int], np.ndarray] | None = None
) -> dict[str, list[float]]:
    """``{"bytes": [...], "sse": [...]}`` per quality of ``QUALITIES`` for one block's uint8 RGB
    pixels: the tiles of the block and of its lower levels, and (with ``error``; else zeros) the
    squared error summed over the block's level tiles. ``box(d)`` gives the pixels' box means at
    downsample ``d`` when the caller has them already (``box_downsample`` otherwise)."""
    import imagecodecs

    levels = [pixels]
    d = 2
    while max(pixels.shape[:2]) // d >= MIN_SIDE:
        levels.append(to_uint8(box(d) if box is not None else box_downsample(pixels, d)))
        d *= 2
    size = [0.0] * len(QUALITIES)
    sse = [0.0] * len(QUALITIES)
    for i, q in enumerate(QUALITIES):
        for k, level in enumerate(levels):
            for tile in _tiles(level):
                data = imagecodecs.jpeg8_encode(tile, level=q)
                size[i] += _scan_bytes(data)
                if error and k == 0:
                    diff = imagecodecs.jpeg8_decode(data).astype(np.float64) - tile
                    sse[i] += float((diff * diff).sum())
    return {"bytes": size, "sse": sse}


class PyramidTotals:
    """The JPEG pyramid of a slide's blocks, added up from their journal records (``add``), then
    its bytes and PSNR over tissue at q80 and its bytes at the file's PSNR (``summary``)."""

    def __init__(self) -> None:
        self.size = np.zeros(len(QUALITIES))
        self.sse = np.zeros(len(QUALITIES))
        self.n = 0
        self.complete = True  # every block carried its reference

    def add(self, meta: Mapping[str, Any]) -> None:
        """Add one block's journal record (``block_reference`` under ``"jpeg_reference"``)."""
        ref = meta.get("jpeg_reference")
        if not isinstance(ref, Mapping) or len(ref.get("bytes", ())) != len(QUALITIES):
            # A journal from before the reference was measured, or measured at other qualities.
            self.complete = False
            return
        self.size += np.asarray(ref["bytes"], dtype=np.float64)
        if meta["kind"] == "model":
            self.sse += np.asarray(ref["sse"], dtype=np.float64)
            self.n += int(meta["n"])

    def summary(self, psnr: float | None) -> dict[str, Any] | None:
        """q80's bytes and PSNR over tissue, and the bytes at ``psnr`` (``equal_psnr_bytes``; None
        outside the qualities' PSNRs); None without tissue or with a block unmeasured."""
        if not self.complete or self.n == 0:
            return None
        p = np.array([v if (v := psnr_of(float(s), self.n)) is not None else math.inf for s in self.sse])
        q80 = QUALITIES.index(80)
        equal = None if psnr is None else equal_psnr_bytes(p, self.size, psnr)
        return {
            "jpeg_q80_bytes": int(self.size[q80]),
            "jpeg_q80_psnr": float(p[q80]),
            "jpeg_equal_psnr_bytes": None if equal is None else int(round(equal)),
            "jpeg_qualities": list(QUALITIES),
            "jpeg_psnr": [float(v) for v in p],
            "jpeg_bytes": [int(v) for v in self.size],
        }


def frontier(psnr: ArrayLike, size: ArrayLike) -> list[int]:
    """Indices, in increasing PSNR, of the qualities that no other beats in both bytes and PSNR (the
    cheapest pyramid reaching a PSNR: on a source that is itself a JPEG of one of the qualities, on
    the same 8x8 grid, that quality re-encodes almost losslessly and higher ones cost more for less)."""
    order = np.argsort(np.asarray(psnr, dtype=np.float64), kind="stable")
    size = np.asarray(size, dtype=np.float64)
    # Keep a point when every point of higher PSNR costs more bytes (scan from the top).
    front: list[int] = []
    for j in order[::-1]:
        if not front or size[j] < size[front[-1]]:
            front.append(int(j))
    front.reverse()
    return front


def equal_psnr_bytes(psnr: ArrayLike, size: ArrayLike, target: float) -> float | None:
    """A JPEG pyramid's bytes at ``target`` dB from its bytes ``size`` and PSNRs ``psnr`` per
    quality: log-bytes interpolated over their ``frontier``; None outside its PSNRs."""
    p = np.asarray(psnr, dtype=np.float64)
    if not math.isfinite(target) or not p.min() <= target <= p.max():
        return None
    front = frontier(p, size)
    b = np.log(np.maximum(np.asarray(size, dtype=np.float64)[front], 1.0))
    return float(np.exp(np.interp(target, p[front], b)))
