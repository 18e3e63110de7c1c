"""Mip levels of a block: box-filtered downsamples stored as small AVIF, JPEG (or PNG) images.

At scale s a slide pixel is the mean of the level pixels it covers. Reading that from the neural
model would cost 1/s^2 model evaluations per output pixel, so the encoder stores, per block, the
box-filtered picture at downsamples 2, 4, 8, ... and a read at scale s starts from the coarsest
mip that is at least as fine as the output. Each mip is the smallest of AVIF (format 1.6, when
Pillow has it) and JPEG at the lowest quality whose PSNR against the exact box-filtered pixels
reaches the block's own level PSNR plus a margin, so a coarse read is never worse than a
full-resolution one (PNG when neither reaches it). On H&E mips AVIF needs about 28 % fewer
bytes than JPEG for the same PSNR (docs/architecture.md).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..coding.images import avif_available, encode_avif, encode_jpeg, encode_png
from ..core.metrics import psnr
from ..core.resample import to_uint8

#: JPEG qualities tried, lowest first, each with 4:2:0 and 4:4:4 chroma.
JPEG_LADDER = (50, 60, 70, 75, 80, 85, 88, 90, 92, 94, 96, 98, 100)
#: A mip must be this much better (dB) than the block's level PSNR (rounding headroom).
PSNR_MARGIN = 0.1


def _smallest_jpeg(
    target: np.ndarray, ref: np.ndarray, min_psnr: float, subsampling: int
) -> tuple[bytes, float, int] | None:
    """Binary search on the ladder (PSNR grows with quality) for the lowest quality reaching min_psnr."""
    lo, hi = 0, len(JPEG_LADDER) - 1
    best: tuple[bytes, float, int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        q = JPEG_LADDER[mid]
        data = encode_jpeg(target, q, subsampling)
        got = psnr(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), ref)
        if got >= min_psnr:
            best = (data, got, q)
            hi = mid - 1
        else:
            lo = mid + 1
    return best


def _smallest_avif(target: np.ndarray, ref: np.ndarray, min_psnr: float) -> tuple[bytes, float, int] | None:
    """Binary search over libavif qualities 0-100 for the lowest reaching min_psnr (None if 100 does not)."""
    lo, hi = 0, 100
    best: tuple[bytes, float, int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = encode_avif(target, mid)
        got = psnr(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), ref)
        if got >= min_psnr:
            best = (data, got, mid)
            hi = mid - 1
        else:
            lo = mid + 1
    return best


def encode_mip(exact: np.ndarray, min_psnr: float, avif: bool | None = None) -> tuple[bytes, float, int]:
    """Smallest stored form of a mip whose PSNR against ``exact`` (float box means) reaches ``min_psnr``.

    Tries JPEG at 4:2:0 and 4:4:4 over the quality ladder and, when ``avif`` (default: when Pillow
    has AVIF), AVIF at 4:4:4 over qualities 0-100, and keeps the smallest file; PNG when none
    reaches the target. Returns (bytes, PSNR of the stored pixels against the exact means, the
    codec's quality or 0 for PNG).
    """
    ref = exact.astype(np.float64)
    target = to_uint8(exact)
    if avif is None:
        avif = avif_available()
    found = [
        r
        for r in (
            _smallest_jpeg(target, ref, min_psnr, 2) if min(target.shape[:2]) >= 16 else None,
            _smallest_jpeg(target, ref, min_psnr, 0),
            _smallest_avif(target, ref, min_psnr) if avif else None,
        )
        if r is not None
    ]
    if not found:
        data = encode_png(target)
        return data, psnr(target, ref), 0
    return min(found, key=lambda r: len(r[0]))
