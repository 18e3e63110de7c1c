"""Area and bilinear resampling of RGB pixels: one home for the arithmetic of every scale.

A pixel at scale s is the mean of the source pixels its box covers (a box filter, as scanners'
lower levels are made). ``area_weights``/``bilinear_weights`` give per-axis weights for a
decoder's read; ``AreaAccumulator`` resizes a source fed tile by tile (thumbnails of slides);
``box_downsample`` averages whole d x d boxes (mips), ``box_mean_uint8`` whole boxes of 8-bit
pixels (a viewer's zoomed-out tiles). numpy only.
"""

from __future__ import annotations

import math

import numpy as np


def box_downsample(img: np.ndarray, d: int) -> np.ndarray:
    """Mean of each d x d box (partial boxes at the right/bottom edge average what they cover),
    float32. Costs about the input's size whatever d: a box far larger than the image is summed
    as it is, not padded to d x d (a 2 x 16 tile at d = 4096 once padded to 200 MB)."""
    h, w = img.shape[:2]
    oh, ow = -(-h // d), -(-w // d)
    ph, pw = oh * d - h, ow * d - w
    if (h + ph) * (w + pw) > 4 * h * w:
        # Sums in float64 (exact for uint8 boxes of up to 2**45 pixels), then float32 as below.
        rows = np.add.reduceat(img.astype(np.float64), np.arange(0, h, d), axis=0)
        sums = np.add.reduceat(rows, np.arange(0, w, d), axis=1).astype(np.float32)
        n = np.outer(np.minimum(d, h - np.arange(0, h, d)), np.minimum(d, w - np.arange(0, w, d)))
        return sums / n.astype(np.float32)[..., None]
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


#: Largest box side of ``box_mean_uint8`` (its sums are uint16: 255 * 16**2 < 2**16).
MAX_BOX_MEAN = 16


def box_mean_uint8(pixels: np.ndarray, f: int) -> np.ndarray:
    """The mean of each whole f x f box of uint8 ``pixels`` (both sides multiples of f), rounded
    half to even: ``to_uint8`` of the float32 box means, bit for bit, from integer sums.

    A viewer's zoomed-out tiles are such boxes. Summing the f * f strided views costs about two
    passes over the input; numpy's mean over the boxes' two axes took 8 ms per 256^2 output at
    f = 2 (the float32 mean of integers below 2**24 is exact up to its one division, which is
    correctly rounded and never creates a tie, so both round alike).
    """
    h, w = pixels.shape[:2]
    if not 1 <= f <= MAX_BOX_MEAN or h % f or w % f:
        raise ValueError(f"box_mean_uint8 needs 1 <= f <= {MAX_BOX_MEAN} dividing {h} x {w}, not {f}")
    if f == 1:
        return pixels.copy()
    sums = np.zeros((h // f, w // f, *pixels.shape[2:]), dtype=np.uint16)
    for a in range(f):
        for b in range(f):
            sums += pixels[a::f, b::f]
    n = f * f
    if n & (n - 1) == 0:
        shift = n.bit_length() - 1
        q, r = sums >> shift, sums & (n - 1)
    else:
        q, r = np.divmod(sums, np.uint16(n))
    up = (2 * r > n) | ((2 * r == n) & (q & 1 == 1))
    return (q + up).astype(np.uint8)


#: ``integrate_cells`` sums boxes that meet at most this many cells cell by cell.
FEW_CELLS = 4


def box_overlaps(a: np.ndarray, b: np.ndarray, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Overlaps of boxes [a_i, b_i) with the source pixels [p, p+1) ∩ [0, length) along one axis.

    Returns (indices (n, K) clipped to valid pixels, weights (n, K) in source-pixel units): box i
    averages ``sum_k w[i, k] * src[idx[i, k]] / (b_i - a_i)``. The one formula behind every area
    resampling in the package (decoder reads and tiled thumbnails).
    """
    # Boxes clipped to the source first: a box far larger than the source (a tiny scale) costs
    # what the source has, not what the box spans.
    span = np.minimum(b, length) - np.maximum(a, 0.0)
    k = int(math.ceil(max(0.0, float(np.max(span)))) if len(a) else 0.0) + 1
    p0 = np.floor(np.clip(a, 0.0, max(length - 1e-9, 0.0)))
    idx = p0[:, None] + np.arange(k)[None, :]
    lo = np.maximum(a[:, None], idx)
    hi = np.minimum(np.minimum(b[:, None], idx + 1.0), length)
    w = np.clip(hi - lo, 0.0, None)
    n_src = max(1, int(math.ceil(length)))
    return np.clip(idx, 0, n_src - 1).astype(np.int64), w


def area_weights(
    start: float, step: float, n_out: int, length: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area weights along one axis: output i covers [start + i*step, +step) of source pixels [p, p+1) ∩ [0, length).

    Returns (indices (n_out, K) clipped to valid pixels, weights (n_out, K) in source-pixel units,
    coverage (n_out,) = fraction of each output box inside [0, length)).
    """
    a = start + np.arange(n_out, dtype=np.float64) * step
    idx, w = box_overlaps(a, a + step, length)
    cov = w.sum(axis=1) / step
    return idx, w, np.clip(cov, 0.0, 1.0)


def integrate_cells(
    values: np.ndarray, edges: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int
) -> np.ndarray:
    """Integrals over boxes [a_i, b_i) of a piecewise-constant function along ``axis`` (float64).

    The function is ``values[c]`` on the cell [edges[c], edges[c+1]) (``len(edges)`` is one more
    than ``values``'s length along ``axis``; edges increase) and 0 outside [edges[0], edges[-1]).
    The result has ``len(a)`` entries along ``axis``: a box sum in source-length units. Boxes that
    meet at most ``FEW_CELLS`` cells are summed cell by cell (the overlap of each cell times its
    value, as ``weighted_sum``); larger ones through prefix sums, so the cost is one pass over
    ``values`` whatever the boxes' sizes (a box may cover a whole slide).
    """
    v = np.moveaxis(values, axis, 0)
    n = v.shape[0]
    bshape = (-1,) + (1,) * (v.ndim - 1)
    lo, hi = np.clip(a, edges[0], edges[-1]), np.clip(b, edges[0], edges[-1])
    ca = np.clip(np.searchsorted(edges, lo, side="right") - 1, 0, n - 1)
    cb = np.clip(np.searchsorted(edges, hi, side="right") - 1, 0, n - 1)
    k = int((cb - ca).max()) + 1 if len(a) else 1
    if k <= FEW_CELLS:
        out = np.zeros((len(a),) + v.shape[1:], dtype=np.float64)
        for j in range(k):
            c = ca + j
            inside = c <= cb
            c = np.minimum(c, n - 1)
            w = np.minimum(hi, edges[c + 1]) - np.maximum(lo, edges[c])
            out += np.where(inside, np.clip(w, 0.0, None), 0.0).reshape(bshape) * v[c]
        return np.moveaxis(out, 0, axis)
    widths = np.diff(edges).reshape(bshape)
    prefix = np.empty((n + 1,) + v.shape[1:], dtype=np.float64)
    prefix[0] = 0.0
    np.cumsum(np.ascontiguousarray(v, dtype=np.float64) * widths, axis=0, out=prefix[1:])
    upto_b = prefix[cb] + v[cb] * (hi - edges[cb]).reshape(bshape)
    upto_a = prefix[ca] + v[ca] * (lo - edges[ca]).reshape(bshape)
    return np.moveaxis(upto_b - upto_a, 0, axis)


def weighted_sum(src: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int, offset: int = 0) -> np.ndarray:
    """``out[i] = sum_k w[i, k] * src[idx[i, k] - offset]`` along ``axis`` (float64)."""
    shape = [1] * src.ndim
    shape[axis] = idx.shape[0]
    out_shape = list(src.shape)
    out_shape[axis] = idx.shape[0]
    out = np.zeros(out_shape, dtype=np.float64)
    for j in range(idx.shape[1]):
        out += w[:, j].reshape(shape) * np.take(src, idx[:, j] - offset, axis=axis)
    return out


def bilinear_weights(
    start: float, step: float, n_out: int, length: int, first: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear weights between level-pixel centres (edges replicated); coverage 1 inside the level, else 0.

    Output pixels ``first .. first + n_out - 1`` of a read starting at ``start`` (a part of a read
    gets the weights the whole read would)."""
    u = start + (np.arange(first, first + n_out, dtype=np.float64) + 0.5) * step
    p = np.clip(u - 0.5, 0.0, length - 1.0)
    i0 = np.floor(p)
    f = p - i0
    idx = np.stack((i0, np.minimum(i0 + 1, length - 1)), axis=1).astype(np.int64)
    w = np.stack((1.0 - f, f), axis=1)
    cov = ((u >= 0) & (u < length)).astype(np.float64)
    return idx, w * cov[:, None], cov


class AreaAccumulator:
    """Exact area-average resize of a (sh, sw) image to (th, tw), fed tile by tile."""

    def __init__(self, sw: int, sh: int, tw: int, th: int) -> None:
        self.xb = np.arange(tw + 1, dtype=np.float64) * (sw / tw)
        self.yb = np.arange(th + 1, dtype=np.float64) * (sh / th)
        self.xb[-1], self.yb[-1] = sw, sh
        self.area = (sw / tw) * (sh / th)
        self.acc = np.zeros((th, tw, 3), dtype=np.float64)

    @staticmethod
    def _span(bounds: np.ndarray, start: int, size: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Output cells [i0, i1) that overlap source [start, start+size), and their clipped bounds."""
        i0 = max(0, int(np.searchsorted(bounds, start, side="right")) - 1)
        i1 = min(len(bounds) - 1, int(np.searchsorted(bounds, start + size, side="left")))
        lo = np.clip(bounds[i0:i1] - start, 0, size)
        hi = np.clip(bounds[i0 + 1 : i1 + 1] - start, 0, size)
        return i0, i1, lo, hi

    def add(self, tile: np.ndarray, x: int, y: int) -> None:
        """Add the (h, w, 3) tile whose top-left source pixel is (x, y)."""
        h, w = tile.shape[:2]
        c0, c1, xlo, xhi = self._span(self.xb, x, w)
        r0, r1, ylo, yhi = self._span(self.yb, y, h)
        iy, wy = box_overlaps(ylo, yhi, h)
        ix, wx = box_overlaps(xlo, xhi, w)
        self.acc[r0:r1, c0:c1] += weighted_sum(weighted_sum(tile, iy, wy, 0), ix, wx, 1)

    def result(self) -> np.ndarray:
        """The resized image, RGB uint8."""
        return np.clip(np.rint(self.acc / self.area), 0, 255).astype(np.uint8)
