"""Bjøntegaard delta rate (BD-rate) with piecewise-cubic (PCHIP) interpolation, numpy only.

``bd_rate(anchor_rates, anchor_psnrs, test_rates, test_psnrs)`` is the average difference in
rate, in percent, that the *test* codec needs against the *anchor* over the PSNR interval
where both curves have points: each curve's log10(rate) is interpolated as a function of
PSNR with a monotone piecewise-cubic Hermite interpolant (PCHIP, Fritsch-Carlson with the
Fritsch-Butland derivative formula, as ``scipy.interpolate.PchipInterpolator``), integrated
exactly over the overlap, and ``100 * (10 ** (mean difference) - 1)`` is returned.
Negative means the test codec needs fewer bits for the same PSNR.

Before interpolation each curve is cleaned the usual way: non-finite or non-positive
points are dropped, points are sorted by rate, and a point is kept only if its PSNR is
strictly above that of every lower-rate point (a dominated point would make log-rate a
non-function of PSNR). ``None`` when a cleaned curve has fewer than two points or the PSNR
ranges do not overlap.

``window=(lo, hi)`` restricts the integration to the part of the overlap inside [lo, hi] dB
(``None`` when that part is empty); without it the whole overlap is used.
``rate_at(rates, psnrs, target)`` is the rate one curve needs for a PSNR, on its front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def rd_front(rates: Sequence[float], psnrs: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(rates, psnrs) of the points that beat every lower-rate point, sorted by rate."""
    pts = sorted(
        ((float(r), float(p)) for r, p in zip(rates, psnrs) if p is not None),
        key=lambda rp: (rp[0], -rp[1]),
    )
    out: list[tuple[float, float]] = []
    for r, p in pts:
        if not (math.isfinite(r) and math.isfinite(p) and r > 0):
            continue
        if not out or p > out[-1][1]:  # at equal rates the highest PSNR comes first
            out.append((r, p))
    return np.array([r for r, _ in out]), np.array([p for _, p in out])


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives at the knots of the PCHIP interpolant through (x, y), x strictly increasing."""
    h = np.diff(x)
    m = np.diff(y) / h
    n = len(x)
    d = np.zeros(n)
    if n == 2:
        d[:] = m[0]
        return d
    for k in range(1, n - 1):
        if m[k - 1] * m[k] > 0:
            w1 = 2 * h[k] + h[k - 1]
            w2 = h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / m[k - 1] + w2 / m[k])
    d[0] = _end_slope(h[0], h[1], m[0], m[1])
    d[-1] = _end_slope(h[-1], h[-2], m[-1], m[-2])
    return d


def _end_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    """Shape-preserving one-sided three-point derivative at an end knot."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > abs(3 * m0):
        return 3 * m0
    return float(d)


def pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Integral over [lo, hi] (inside [x[0], x[-1]]) of the PCHIP interpolant through (x, y)."""
    d = pchip_slopes(x, y)
    total = 0.0
    for k in range(len(x) - 1):
        a, b = max(lo, x[k]), min(hi, x[k + 1])
        if b <= a:
            continue
        h = x[k + 1] - x[k]
        m = (y[k + 1] - y[k]) / h
        c2 = (3 * m - 2 * d[k] - d[k + 1]) / h
        c3 = (d[k] + d[k + 1] - 2 * m) / (h * h)

        def prim(t: float, k: int = k, c2: float = c2, c3: float = c3) -> float:
            return y[k] * t + d[k] * t**2 / 2 + c2 * t**3 / 3 + c3 * t**4 / 4

        total += prim(b - x[k]) - prim(a - x[k])
    return float(total)


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_psnrs: Sequence[float | None],
    test_rates: Sequence[float],
    test_psnrs: Sequence[float | None],
    window: tuple[float, float] | None = None,
) -> float | None:
    """BD-rate in percent of the test curve against the anchor (negative: the test needs fewer bits).

    ``window=(lo, hi)``: only the part of the curves' PSNR overlap inside [lo, hi] dB counts.
    """
    ra, pa = rd_front(anchor_rates, anchor_psnrs)
    rt, pt = rd_front(test_rates, test_psnrs)
    if len(ra) < 2 or len(rt) < 2:
        return None
    lo = max(pa[0], pt[0])
    hi = min(pa[-1], pt[-1])
    if window is not None:
        lo, hi = max(lo, float(window[0])), min(hi, float(window[1]))
    if not hi > lo:
        return None
    ia = pchip_integral(pa, np.log10(ra), lo, hi)
    it = pchip_integral(pt, np.log10(rt), lo, hi)
    return float((10 ** ((it - ia) / (hi - lo)) - 1) * 100)


def rate_at(rates: Sequence[float], psnrs: Sequence[float | None], target: float) -> float | None:
    """The rate the curve needs for PSNR ``target`` (PCHIP of log-rate on PSNR); None outside its range."""
    r, p = rd_front(rates, psnrs)
    if len(r) == 0 or not p[0] <= target <= p[-1]:
        return None
    if len(r) == 1:
        return float(r[0])
    k = int(min(np.searchsorted(p, target, side="right") - 1, len(p) - 2))
    y = np.log10(r)
    d = pchip_slopes(p, y)
    h = p[k + 1] - p[k]
    t = (target - p[k]) / h
    h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
    h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
    return float(10 ** (h00 * y[k] + h10 * h * d[k] + h01 * y[k + 1] + h11 * h * d[k + 1]))
