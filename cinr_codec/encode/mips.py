"""Mip levels of a block: box-filtered downsamples stored as small AVIF, JPEG (or PNG) images.

At scale s a slide pixel is the mean of the level pixels it covers. Reading that from the neural
model would cost 1/s^2 model evaluations per output pixel, so the encoder stores, per block, the
box-filtered picture at downsamples 2, 4, 8, ... and a read at scale s starts from the coarsest
mip that is at least as fine as the output. Each mip is the smallest of AVIF (format 1.6, when
Pillow has it; stored without its boxes from 1.11, ``format.container.short_avif``) and JPEG at
the lowest quality whose PSNR against the exact box-filtered pixels reaches the block's own level
PSNR plus a margin, so a coarse read is never worse than a full-resolution one (PNG when neither
reaches it). On H&E mips AVIF needs about 28 % fewer bytes than JPEG for the same PSNR
(docs/architecture.md).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from ..coding.images import avif_available, encode_avif, encode_jpeg, encode_png
from ..core.metrics import psnr
from ..core.resample import to_uint8
from ..format.container import short_avif

#: JPEG qualities tried, lowest first, each with 4:2:0 and 4:4:4 chroma.
JPEG_LADDER = (50, 60, 70, 75, 80, 85, 88, 90, 92, 94, 96, 98, 100)
#: The libavif speed of the final AVIF encode, from the quality the fast search found (0: none).
AVIF_REFINE_SPEED = 8
#: A mip must be this much better (dB) than the block's level PSNR (rounding headroom).
PSNR_MARGIN = 0.1


def _measured(data: bytes, ref: np.ndarray, quality: int) -> tuple[bytes, float, int]:
    """(data, PSNR of its decoded pixels against ``ref``, quality)."""
    return data, psnr(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), ref), quality


def _lowest_reaching(
    qualities: Sequence[int], encode: Callable[[int], bytes], ref: np.ndarray, min_psnr: float
) -> tuple[bytes, float, int] | None:
    """Binary search on ``qualities`` (increasing; PSNR grows with quality) for the lowest whose
    encoding reaches min_psnr: (data, PSNR, quality), None when the highest does not."""
    lo, hi = 0, len(qualities) - 1
    best: tuple[bytes, float, int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        got = _measured(encode(qualities[mid]), ref, qualities[mid])
        if got[1] >= min_psnr:
            best = got
            hi = mid - 1
        else:
            lo = mid + 1
    return best


def _smallest_jpeg(
    target: np.ndarray, ref: np.ndarray, min_psnr: float, subsampling: int
) -> tuple[bytes, float, int] | None:
    """The lowest quality of the ladder reaching min_psnr."""
    return _lowest_reaching(JPEG_LADDER, lambda q: encode_jpeg(target, q, subsampling), ref, min_psnr)


def _smallest_avif(
    target: np.ndarray, ref: np.ndarray, min_psnr: float, refine_speed: int | None = None
) -> tuple[bytes, float, int] | None:
    """The lowest libavif quality 0-100 (at ``images.AVIF_SPEED``) reaching min_psnr (None if 100
    does not); then, with ``refine_speed`` (default ``AVIF_REFINE_SPEED``; 0: none), a slower,
    better encode from that quality down (or up a little), kept when smaller."""
    best = _lowest_reaching(range(101), lambda q: encode_avif(target, q), ref, min_psnr)
    speed = AVIF_REFINE_SPEED if refine_speed is None else refine_speed
    if best is None or not speed:
        return best
    q = best[2]
    tried = _measured(encode_avif(target, q, speed), ref, q)
    step = -1 if tried[1] >= min_psnr else 1
    for _ in range(3):  # the slower encoder usually reaches the target a step or two lower
        ok = tried[1] >= min_psnr
        if ok and len(tried[0]) < len(best[0]):
            best = tried
        if ok != (step < 0):  # going down: stop at the first miss; going up: at the first hit
            break
        q += step
        if not 0 <= q <= 100:
            break
        tried = _measured(encode_avif(target, q, speed), ref, q)
    return best


def encode_mip(
    exact: np.ndarray, min_psnr: float, avif: bool | None = None, refine: bool = False
) -> tuple[bytes, float, int]:
    """Smallest stored form of a mip whose PSNR against ``exact`` (float box means) reaches ``min_psnr``.

    Tries JPEG at 4:2:0 and 4:4:4 over the quality ladder and, when ``avif`` (default: when Pillow
    has AVIF), AVIF at 4:4:4 over qualities 0-100 (with ``refine``, then re-encoded slower from the
    quality found: 6 % fewer mip bytes for about 1 s more per 512^2 mip), and keeps the smallest
    file; PNG when none reaches the target. Returns (bytes, PSNR of the stored pixels against the
    exact means, the codec's quality or 0 for PNG).
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
            _smallest_avif(target, ref, min_psnr, None if refine else 0) if avif else None,
        )
        if r is not None
    ]
    if not found:
        data = encode_png(target)
        return data, psnr(target, ref), 0
    # The bytes the file stores: files that may hold AVIF mips are format 1.11, where it is short.
    return min(found, key=lambda r: len(short_avif.stored_form(r[0])))
