"""Greedy rate-distortion search over a trained block's rounded latents (the encoder's last step).

Training ends with rounded latents that straight-through gradients placed; moving single
latents by ±1 and keeping a move when the block's exact loss falls (the decoded 8-bit pixels'
squared error plus λ times the context model's bits) finds what those gradients did not, as
rate-distortion optimised quantization does in video encoders. Moves are tried in groups: the
latents of one level whose indices are congruent modulo a spacing ``S`` (per axis) change
together, one direction at a time. ``S`` is chosen so that their effects are independent: each
candidate's pixels (its footprint through the upsampling, which is linear and probed exactly, and
the 3×3 layers, one pixel each) and each candidate's bits (its own and those of the latents whose
context holds it) lie in a tile of its own. One render and one rate pass per group thus price every
candidate of the group, and the accepted moves' gains add up. Sweeps repeat until few moves remain.
Nothing in the format changes: the decoder reads whatever integers the encoder stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...core.config import context_border
from ...core.synthesis import LatentImage, gather_context, laplace_bits


@dataclass
class _Level:
    """How level k's candidates are grouped: spacing ``S`` (latents), and each candidate's
    pixel tile, ``[step * i + start, step * i + start + S * step)`` per axis (``step``: the level's
    downsample, 2**k for the k-th grid from full resolution)."""

    S: int
    step: int
    start: int


def _footprints(model: LatentImage) -> list[_Level]:
    """Per level, the spacing and pixel tiles that keep candidates independent (module docstring).
    A latent's reach through the upsampling is probed on zero grids of a domain large enough that
    the image's edges do not cut it (the upsampling is linear and the same everywhere), then
    widened by one pixel per 3x3 layer."""
    syn, config = model.synthesis, model.config
    c = syn.halo
    b = context_border(model.offsets)
    out = []
    for k in range(config.levels):
        step = 2 ** (config.first_level + k)  # level k's latent i sits at pixel step * i
        side = 16 * step
        grids = [
            torch.zeros(1, gh, gw, device=model.latents[0].device)
            for gh, gw in config.grid_shapes(side, side)
        ]
        i = grids[k].shape[-1] // 2
        grids[k][0, i, i] = 1.0
        reach = syn.features(grids, side, side).abs().sum(dim=(0, 1)) > 0
        rows = torch.nonzero(reach.any(dim=1)).flatten()
        cols = torch.nonzero(reach.any(dim=0)).flatten()
        lo = min(int(rows.min()), int(cols.min())) - i * step - c
        hi = max(int(rows.max()), int(cols.max())) - i * step + c
        out.append(_Level(S=max(2 * b + 1, math.ceil((hi - lo + 1) / step)), step=step, start=lo))
    return out


def _tile_sums(d: torch.Tensor, starts: tuple[int, int], tile: int, counts: tuple[int, int]) -> torch.Tensor:
    """Sums of ``d`` (H, W) over the tiles ``[start + tile * n, start + tile * (n + 1))`` per axis,
    ``counts`` tiles each way (zero outside ``d``)."""
    (r0, c0), (nr, nc) = starts, counts
    H, W = d.shape
    top, left = max(0, -r0), max(0, -c0)
    bottom = max(0, r0 + nr * tile - H)
    right = max(0, c0 + nc * tile - W)
    p = F.pad(d[None, None], (left, right, top, bottom))[0, 0]
    a = p[r0 + top : r0 + top + nr * tile, c0 + left : c0 + left + nc * tile]
    return a.reshape(nr, tile, nc, tile).sum(dim=(1, 3))


@torch.no_grad()
def refine_latents(
    model: LatentImage,
    image: np.ndarray,
    lam: float,
    *,
    sweeps: int = 2,
    levels: int | None = None,
) -> dict[str, float]:
    """Move single rounded latents of ``model`` by ±1 while the loss (MSE of the decoded 8-bit
    pixels, in [0, 1] units, plus ``lam`` times the estimated latent bits per pixel) falls; the
    latents are replaced by the chosen integers. ``levels``: how many grids, finest first (default
    all); ``sweeps``: passes over them at most (they stop early when fewer than one latent in a
    thousand moved). Returns the loss before and after and the number of latents moved."""
    h, w = model.height, model.width
    npx = h * w
    dev = model.latents[0].device
    target = torch.from_numpy(np.ascontiguousarray(image)).to(dev).permute(2, 0, 1).to(torch.float32) / 255.0
    ys = [torch.round(g.detach().float()) for g in model.latents]
    syn, arm = model.synthesis, model.arm

    def se_map(grids: list[torch.Tensor]) -> torch.Tensor:
        px = torch.from_numpy(syn.pixels(syn.features(grids, h, w))).to(dev)
        px = px.permute(2, 0, 1).to(torch.float32) / 255.0
        return ((px - target) ** 2).sum(dim=0)

    def bit_map(g: torch.Tensor) -> torch.Tensor:
        mean, log_scale = arm(gather_context(g[0], model.offsets))
        return laplace_bits(g.reshape(-1), mean, log_scale).view(g.shape[-2:])

    def loss(se: torch.Tensor, bits: list[torch.Tensor]) -> float:
        return float(se.sum()) / (3 * npx) + lam * float(sum(float(b.sum()) for b in bits)) / npx

    b = context_border(model.offsets)
    se = se_map(ys)
    bits = [bit_map(g) for g in ys]
    before = loss(se, bits)
    plan = _footprints(model)
    n_levels = len(ys) if levels is None else min(int(levels), len(ys))
    moved = 0
    for _ in range(max(0, sweeps)):
        moved_now = 0
        for k in range(n_levels):
            lv = plan[k]
            gh, gw = ys[k].shape[-2:]
            for orow in range(min(lv.S, gh)):
                for ocol in range(min(lv.S, gw)):
                    counts = (-(-(gh - orow) // lv.S), -(-(gw - ocol) // lv.S))
                    for d in (-1.0, 1.0):
                        trial = ys[k].clone()
                        trial[0, orow :: lv.S, ocol :: lv.S] += d
                        grids = [*ys[:k], trial, *ys[k + 1 :]]
                        se1, b1 = se_map(grids), bit_map(trial)
                        tile = lv.S * lv.step
                        px0 = (lv.step * orow + lv.start, lv.step * ocol + lv.start)
                        dse = _tile_sums(se1 - se, px0, tile, counts)
                        dbits = _tile_sums(b1 - bits[k], (orow - b, ocol - b), lv.S, counts)
                        keep = dse / (3 * npx) + lam * dbits / npx < 0
                        n = int(keep.sum())
                        if not n:
                            continue
                        sel = torch.zeros(gh, gw, dtype=torch.bool, device=dev)
                        sel[orow :: lv.S, ocol :: lv.S] = keep
                        ys[k] = ys[k] + d * sel
                        # The new state equals the trial inside the kept tiles, the old one elsewhere.
                        px_keep = _expand(keep, px0, tile, (h, w))
                        se = torch.where(px_keep, se1, se)
                        lat_keep = _expand(keep, (orow - b, ocol - b), lv.S, (gh, gw))
                        bits[k] = torch.where(lat_keep, b1, bits[k])
                        moved_now += n
        moved += moved_now
        if moved_now < 1e-3 * sum(g.numel() for g in ys):
            break
    for p, y in zip(model.latents, ys, strict=True):
        p.data.copy_(y.to(p.dtype))
    after = loss(se_map(ys), [bit_map(g) for g in ys])
    return {"loss_before": before, "loss_after": after, "moved": float(moved)}


def _expand(keep: torch.Tensor, starts: tuple[int, int], tile: int, shape: tuple[int, int]) -> torch.Tensor:
    """``keep`` (one flag per tile) as a (H, W) mask of the tiles ``_tile_sums`` summed."""
    (r0, c0), (H, W) = starts, shape
    full = keep.repeat_interleave(tile, dim=0).repeat_interleave(tile, dim=1)
    out = torch.zeros(H, W, dtype=torch.bool, device=keep.device)
    rs, cs = max(0, r0), max(0, c0)
    re, ce = min(H, r0 + full.shape[0]), min(W, c0 + full.shape[1])
    if re > rs and ce > cs:
        out[rs:re, cs:ce] = full[rs - r0 : re - r0, cs - c0 : ce - c0]
    return out
