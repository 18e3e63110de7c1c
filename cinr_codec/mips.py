"""Mip levels of a block: box-filtered downsamples stored as small JPEG (or PNG) images.

At scale s a slide pixel is the mean of the level pixels it covers. Reading that from the neural
model would cost 1/s^2 model evaluations per output pixel, so the encoder stores, per block, the
box-filtered picture at downsamples 2, 4, 8, ... and a read at scale s starts from the coarsest
mip that is at least as fine as the output. Each mip's JPEG quality is the lowest of a ladder
whose PSNR against the exact box-filtered pixels reaches the block's own level PSNR plus a
margin, so a coarse read is never worse than a full-resolution one (PNG when no JPEG quality
does).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .metrics import psnr

#: JPEG qualities tried, lowest first, each with 4:2:0 and 4:4:4 chroma.
JPEG_LADDER = (50, 60, 70, 75, 80, 85, 88, 90, 92, 94, 96, 98, 100)
#: A mip must be this much better (dB) than the block's level PSNR (rounding headroom).
PSNR_MARGIN = 0.1
#: Largest mip image a decoder accepts (pixels).
MAX_MIP_PIXELS = 1 << 24


def box_downsample(img: np.ndarray, d: int) -> np.ndarray:
    """Mean of each d x d box (partial boxes at the right/bottom edge average what they cover), float32."""
    h, w = img.shape[:2]
    oh, ow = -(-h // d), -(-w // d)
    ph, pw = oh * d - h, ow * d - w
    x = img.astype(np.float32)
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)))
    sums = x.reshape(oh, d, ow, d, -1).sum(axis=(1, 3))
    ones = np.ones((h, w), dtype=np.float32)
    if ph or pw:
        ones = np.pad(ones, ((0, ph), (0, pw)))
    counts = ones.reshape(oh, d, ow, d).sum(axis=(1, 3))
    return sums / counts[..., None]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round to the nearest uint8."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray, quality: int, subsampling: int = 0) -> bytes:
    """Baseline JPEG with optimised Huffman tables; subsampling 0 = 4:4:4, 2 = 4:2:0."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling, optimize=True)
    return buf.getvalue()


def encode_png(img: np.ndarray) -> bytes:
    """Lossless PNG."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """RGB uint8 pixels of a stored PNG/JPEG (ValueError naming ``where`` on failure)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_MIP_PIXELS:
                raise ValueError(f"{where}: image of {im.width}x{im.height} is too large")
            return np.asarray(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"{where}: cannot decode the stored image ({exc})") from None


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


def encode_mip(exact: np.ndarray, min_psnr: float) -> tuple[bytes, float, int]:
    """Smallest stored form of a mip whose PSNR against ``exact`` (float box means) reaches ``min_psnr``.

    Tries JPEG at 4:2:0 and 4:4:4 over the quality ladder and keeps the smaller file; PNG when
    no JPEG reaches the target. Returns (bytes, PSNR of the stored pixels against the exact
    means, JPEG quality or 0 for PNG).
    """
    ref = exact.astype(np.float64)
    target = to_uint8(exact)
    found = [
        r
        for r in (
            _smallest_jpeg(target, ref, min_psnr, 2) if min(target.shape[:2]) >= 16 else None,
            _smallest_jpeg(target, ref, min_psnr, 0),
        )
        if r is not None
    ]
    if not found:
        data = encode_png(target)
        return data, psnr(target, ref), 0
    return min(found, key=lambda r: len(r[0]))
