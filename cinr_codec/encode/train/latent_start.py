"""Where a slide's later blocks start their latents: a linear map from pixels, fitted on the prior block.

A short fit (the CPU's 270-600 steps) starts its latents at zero and spends steps finding values
that a linear function of the block's own pixels already predicts well once its networks start
from the prior's. A least-squares map from each latent's 5 x 5 neighbourhood of RGB (the block
box-averaged to the latent grid's resolution), fitted on the prior block, explained 85-90 % of
the variance of the full-resolution grid that a neighbouring block was then fitted to from zero;
started there instead, 512^2 blocks beside their prior needed 3.6-12.4 % fewer bytes at equal PSNR
at 270 steps and 1.2-2.4 % at 600 (docs/architecture.md, "Thirty-sixth session"). The map is
fitted on the prior's *decoded* pixels and stored latents, so it follows from the prior's payload
alone: a worker, a resumed encode and a serial encode start every block from the same numbers.
Grids with too few latents to fit it start at zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ...core.resample import box_downsample

#: The neighbourhood a latent is predicted from: (2 RADIUS + 1)^2 positions of RGB at its level.
RADIUS = 2
#: Features of the map: the neighbourhood's RGB values and a constant.
FEATURES = 3 * (2 * RADIUS + 1) ** 2 + 1
#: A level's map is fitted only where the prior's grid holds this many latents per feature (the
#: presets' 512-px blocks: the four finest grids, 512^2 to 64^2); coarser grids start at zero.
MIN_LATENTS_PER_FEATURE = 50
#: At most this many latents of a grid fit its map (every s-th row and column of a larger grid).
MAX_FIT_LATENTS = 1 << 16
#: Ridge term of the least squares, per fitted latent.
RIDGE = 1e-5


def _level_pixels(pixels: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """RGB in [0, 1], float64 (h, w, 3), of ``pixels`` box-averaged by 2^k to a grid of ``shape``
    (edges repeated where the grid outgrows the average) and bordered by ``RADIUS`` repeats."""
    d = 1 << k
    img = (box_downsample(pixels, d) if d > 1 else pixels).astype(np.float64) / 255.0
    h, w = shape
    img = img[:h, :w]
    return np.pad(
        img, ((RADIUS, RADIUS + h - img.shape[0]), (RADIUS, RADIUS + w - img.shape[1]), (0, 0)), mode="edge"
    )


def _design(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The features (n, ``FEATURES``) at grid positions (``rows`` x ``cols``) of a bordered level image."""
    side = 2 * RADIUS + 1
    parts = [
        img[rows[:, None] + dy, cols[None, :] + dx].reshape(-1, 3) for dy in range(side) for dx in range(side)
    ]
    return np.concatenate([*parts, np.ones((len(rows) * len(cols), 1))], axis=1)


def latent_map(pixels: np.ndarray, grids: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """Per latent grid (finest first), the least-squares weights (``FEATURES``,) predicting its
    latents from ``pixels`` (RGB uint8 of the grids' domain), or None for a grid with fewer than
    ``MIN_LATENTS_PER_FEATURE`` latents per feature."""
    maps: list[np.ndarray | None] = []
    for k, g in enumerate(grids):
        if g.size < MIN_LATENTS_PER_FEATURE * FEATURES:
            maps.append(None)
            continue
        h, w = g.shape
        s = max(1, math.ceil(math.sqrt(g.size / MAX_FIT_LATENTS)))
        rows, cols = np.arange(0, h, s), np.arange(0, w, s)
        x = torch.from_numpy(_design(_level_pixels(pixels, k, (h, w)), rows, cols))
        y = torch.from_numpy(np.asarray(g, dtype=np.float64)[rows[:, None], cols[None, :]].reshape(-1, 1))
        # torch's products in float64: the fits run on one torch thread, so every process that
        # fits the map sums in the same order and starts the block from the same numbers.
        a = x.T @ x + RIDGE * len(y) * torch.eye(FEATURES, dtype=torch.float64)
        maps.append(torch.linalg.solve(a, x.T @ y)[:, 0].numpy())
    return maps


def predicted_latents(
    pixels: np.ndarray, maps: Sequence[np.ndarray | None], shapes: Sequence[tuple[int, int]]
) -> list[np.ndarray]:
    """Each grid of ``shapes`` (finest first) as ``maps`` predict it from ``pixels`` (float32;
    zeros for a grid without a map)."""
    out = []
    side = 2 * RADIUS + 1
    for k, (m, (h, w)) in enumerate(zip(maps, shapes, strict=True)):
        if m is None:
            out.append(np.zeros((h, w), dtype=np.float32))
            continue
        img = _level_pixels(pixels, k, (h, w))
        acc = np.full((h, w), m[-1], dtype=np.float64)
        for j in range(side * side):
            dy, dx = divmod(j, side)
            acc += img[dy : dy + h, dx : dx + w] @ m[3 * j : 3 * j + 3]
        out.append(acc.astype(np.float32))
    return out
