"""Multiresolution hash-grid encoding for 2-D coordinates (Mueller et al., Instant-NGP 2022).

The pure-PyTorch implementation runs on CPU and CUDA and is differentiable in its tables.
Semantics (documented in ``docs/architecture.md``):

* level ``l`` has resolution ``N_l = floor(N_min * b**l)``; a coordinate ``x`` in [0, 1]
  lands at grid position ``x * N_l`` (cell corners are the integers ``0 .. N_l``);
* levels with ``(N_l + 1)**2 <= 2**T`` index their table densely (``ix + iy * (N_l + 1)``,
  collision-free); the others hash ``(ix * 1) XOR (iy * 2654435761) mod 2**T``;
* the 4 cell corners are blended bilinearly, all levels' features are concatenated
  (level-major: ``[l0f0, l0f1, l1f0, ...]``);
* tables are initialised from U(-1e-4, 1e-4);
* positions are clamped to the grid, so coordinates outside [0, 1] (convolution halos at
  the image border) read the border cells instead of failing.

Speed: all levels and corners are gathered by a single ``embedding_bag`` call over one
concatenated table, whose weighted-sum kernel and backward are far faster on CPU than a
gather per corner (see ``benchmarks/hashgrid_speed.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .config import HashGridConfig

log = logging.getLogger(__name__)

PRIME_Y = 2654435761


class _WeightedGather(torch.autograd.Function):
    """out[m] = sum_k w[m, k] * table[idx[m, k]], with a scatter (index_add) backward.

    ``embedding_bag`` has the fastest CPU forward, but its backward with per-sample weights
    is ~10x slower than ``index_add_`` with int64 indices, hence this function. On the CPU
    with the compiled kernels built, the backward is the native scatter (``native.py``).
    """

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx, w)
        ctx.n_rows = table.shape[0]
        # The forward stays on embedding_bag, which is multi-threaded: a one-thread native
        # gather was 2x slower on the paper's 257 M-entry table (benchmarks/results/hashgrid_speed_cpu.md).
        ctx.native = _native_ok(table, idx, w)
        fwd_idx = idx.to(torch.int32) if table.shape[0] < 2**31 else idx
        return F.embedding_bag(fwd_idx, table, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        idx, w = ctx.saved_tensors
        grad_table = None
        if ctx.needs_input_grad[0] and ctx.native:
            g = native.wgather_backward(grad.contiguous(), idx.contiguous(), w.contiguous(), ctx.n_rows)
            return g, None, None
        if ctx.needs_input_grad[0]:
            n_feat = grad.shape[-1]
            src = (w.unsqueeze(-1) * grad.unsqueeze(-2)).reshape(-1, n_feat)
            grad_table = torch.zeros(ctx.n_rows, n_feat, dtype=grad.dtype, device=grad.device)
            grad_table.index_add_(0, idx.reshape(-1), src)
        return grad_table, None, None


def _native_ok(*tensors: torch.Tensor) -> bool:
    """Whether the compiled kernels serve these tensors (CPU; float32 values, int64 indices)."""
    return all(t.dtype in (torch.float32, torch.int64) for t in tensors) and native.usable(*tensors)


class _PointsEncode(torch.autograd.Function):
    """Fused native encode of scattered points; the backward recomputes corners and weights."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, pts: torch.Tensor, plan: native.LevelPlan) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(pts)
        ctx.plan = plan
        ctx.n_rows = table.shape[0]
        return native.points_forward(plan, pts, table.contiguous())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        (pts,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return native.points_backward(ctx.plan, pts, grad.contiguous(), ctx.n_rows), None, None


def weighted_gather(table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Differentiable ``sum_k w[:, k] * table[idx[:, k]]`` for idx (M, K) int64, w (M, K)."""
    return _WeightedGather.apply(table, idx, w.to(table.dtype))  # type: ignore[no-any-return]


class HashGrid(nn.Module):
    """Pure-PyTorch multiresolution hash encoding of points in [0, 1]^2 (any leading shape)."""

    _res: torch.Tensor
    _res_i: torch.Tensor
    _dense: torch.Tensor
    _offsets: torch.Tensor

    def __init__(self, config: HashGridConfig) -> None:
        super().__init__()
        self.config = config
        sizes = config.table_sizes()
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.table = nn.Parameter(torch.empty(sum(sizes), config.n_features))
        nn.init.uniform_(self.table, -1e-4, 1e-4)
        res = torch.tensor(config.resolutions(), dtype=torch.float64)
        self.register_buffer("_res", res.to(torch.float32), persistent=False)
        self.register_buffer(
            "_res_i", torch.tensor(config.resolutions(), dtype=torch.int64), persistent=False
        )
        self.register_buffer("_dense", torch.tensor(config.is_dense(), dtype=torch.bool), persistent=False)
        self.register_buffer("_offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self._mask = 2**config.log2_table_size - 1
        dense = config.is_dense()
        # Resolutions grow with the level, so the dense levels are a prefix.
        self._n_dense = sum(dense)
        if dense != [True] * self._n_dense + [False] * (len(dense) - self._n_dense):
            raise ValueError("dense levels must precede hashed levels")
        self._plan = native.LevelPlan(
            config.resolutions(), offsets, sizes, self._n_dense, config.log2_table_size
        )

    @property
    def out_dim(self) -> int:
        """Number of output channels, L * F."""
        return self.config.out_dim

    def _indices_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Corner indices (P*L, 4) into the flat table and bilinear weights (P*L, 4).

        Vectorised over levels: a few dozen tensor operations whatever L is, because for
        small batches per-operation overhead, not arithmetic, dominates.
        """
        res = self._res
        pos = x.to(torch.float32).unsqueeze(-2) * res.unsqueeze(-1)  # (P, L, 2)
        pos = torch.minimum(pos.clamp_min(0.0), res.unsqueeze(-1))
        cell = torch.minimum(pos.floor(), (res - 1).clamp_min(0).unsqueeze(-1))
        frac = pos - cell
        ci = cell.to(torch.int64)
        ix0 = ci[..., 0]
        iy0 = ci[..., 1]
        k = self._n_dense
        parts = []
        if k:
            stride = self._res_i[:k] + 1
            i00 = iy0[:, :k] * stride + ix0[:, :k] + self._offsets[:k]
            i01 = i00 + stride
            parts.append(torch.stack((i00, i00 + 1, i01, i01 + 1), dim=-1))
        if k < self.config.n_levels:
            ix = ix0[:, k:]
            iy = iy0[:, k:]
            mask = self._mask
            h0 = (iy * PRIME_Y) & mask
            h1 = ((iy + 1) * PRIME_Y) & mask
            ix1 = ix + 1
            off = self._offsets[k:]
            ix = ix & mask
            ix1 = ix1 & mask
            parts.append(torch.stack((ix ^ h0, ix1 ^ h0, ix ^ h1, ix1 ^ h1), dim=-1) + off.unsqueeze(-1))
        idx = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        fx = frac[..., 0]
        fy = frac[..., 1]
        gx = 1.0 - fx
        gy = 1.0 - fy
        w = torch.stack((gx * gy, fx * gy, gx * fy, fx * fy), dim=-1)
        return idx.reshape(-1, 4), w.reshape(-1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode points ``x`` of shape (..., 2) to features of shape (..., L*F)."""
        if x.shape[-1] != 2:
            raise ValueError(f"expected coordinates with a last dimension of 2, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        pts = x.reshape(-1, 2)
        if self.table.dtype == torch.float32 and native.usable(self.table, pts):
            p32 = pts.detach().to(torch.float32).contiguous()
            out = _PointsEncode.apply(self.table, p32, self._plan)
            return out.reshape(*lead, self.out_dim)  # type: ignore[no-any-return]
        with torch.no_grad():
            idx, w = self._indices_weights(pts)
        out = weighted_gather(self.table, idx, w)
        return out.reshape(*lead, self.out_dim)

    def forward_grid(
        self, xs: torch.Tensor, ys: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode the separable grids ``(xs[b, j], ys[b, i])``: xs (B, W), ys (B, H) -> (B, H, W, L*F).

        Each row of ``xs``/``ys`` must be non-decreasing (pixel rows and columns). Without
        gradients the features are written into ``out`` when given.
        """
        return self.encode_grid_with(self.table, xs, ys, out)

    def _axis(self, v: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower cell index (int64) and fractional offset along one axis at resolution n."""
        p = (v.to(torch.float32) * n).clamp(0.0, float(n))
        c = p.floor().clamp(max=float(max(n - 1, 0)))
        return c.to(torch.int64), p - c

    def encode_grid_with(
        self, table: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`forward_grid` with an explicit table (for tests and functional use).

        Bilinear interpolation is done in two passes per level: along x for just the grid rows the patch touches, then along y by
        copying whole rows. Coarse levels touch few rows, so this does far fewer random
        gathers than four per pixel. Without gradients each level is finished before the next
        starts and written into ``out`` (B, H, W, L*F) when given (a reused buffer: the
        temporaries stay a level's size, so the allocator keeps reusing the same memory).
        """
        if xs.dim() != 2 or ys.dim() != 2 or xs.shape[0] != ys.shape[0]:
            raise ValueError("forward_grid expects xs (B, W) and ys (B, H)")
        cfg = self.config
        bsz, width = xs.shape
        levels = zip(cfg.resolutions(), cfg.is_dense(), cfg.table_sizes())
        offsets = [0]
        for size in cfg.table_sizes()[:-1]:
            offsets.append(offsets[-1] + size)
        if not (torch.is_grad_enabled() and table.requires_grad):
            # One gather per level, its rows interpolated and stored before the next level.
            feats = []
            for (n, dense, _), offset in zip(levels, offsets):
                idx, wx, n_rows, ly, fy = self._level_plan(n, dense, offset, xs, ys)
                feats.append(
                    self._interpolate_rows(weighted_gather(table, idx, wx), n_rows, ly, fy, bsz, width)
                )
            return torch.cat(feats, dim=-1, out=out) if out is not None else torch.cat(feats, dim=-1)
        # With gradients, one gather over all levels so that the backward scatters into a single
        # table-sized gradient.
        plans = [self._level_plan(n, dense, offset, xs, ys) for (n, dense, _), offset in zip(levels, offsets)]
        rows_all = weighted_gather(table, torch.cat([p[0] for p in plans]), torch.cat([p[1] for p in plans]))
        level_rows = torch.split(rows_all, [p[0].shape[0] for p in plans])
        feats = [self._interpolate_rows(rows, *p[2:], bsz, width) for p, rows in zip(plans, level_rows)]
        return torch.cat(feats, dim=-1)

    def _level_plan(
        self, n: int, dense: bool, offset: int, xs: torch.Tensor, ys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]:
        """One level's pass-1 gather (corner indices and x weights, (M, 2) each) and its pass-2
        plan: the band's row count, each output row's first band row, the y fractions."""
        bsz, width = xs.shape
        height = ys.shape[1]
        dev = xs.device
        ix0, fx = self._axis(xs, n)
        iy0, fy = self._axis(ys, n)
        r0 = iy0.min(dim=1).values  # (B,)
        n_rows = int((iy0.max(dim=1).values - r0).max().item()) + 2
        if n_rows <= 2 * height:
            # Contiguous band of grid rows shared by all output rows of the patch.
            ry = torch.clamp(r0.unsqueeze(1) + torch.arange(n_rows, device=dev), max=n)
            ly = iy0 - r0.unsqueeze(1)
        else:
            # Grid finer than the output rows: interpolate only the two rows each needs.
            n_rows = 2 * height
            ry = torch.stack((iy0, iy0 + 1), dim=-1).reshape(bsz, n_rows)
            ly = 2 * torch.arange(height, device=dev).expand(bsz, height)
        ixc = torch.stack((ix0, ix0 + 1), dim=-1)  # (B, W, 2)
        if dense:
            idx = ixc.unsqueeze(1) + (ry * (n + 1) + offset).unsqueeze(-1).unsqueeze(-1)
        else:
            hy = (ry * PRIME_Y) & self._mask
            idx = ((ixc & self._mask).unsqueeze(1) ^ hy.unsqueeze(-1).unsqueeze(-1)) + offset
        wx = torch.stack((1.0 - fx, fx), dim=-1).unsqueeze(1).expand(bsz, n_rows, width, 2)
        ly = (ly + (torch.arange(bsz, device=dev) * n_rows).unsqueeze(1)).reshape(-1)  # rows of this band
        return idx.reshape(-1, 2), wx.reshape(-1, 2), n_rows, ly, fy

    def _interpolate_rows(
        self, rows: torch.Tensor, n_rows: int, ly: torch.Tensor, fy: torch.Tensor, bsz: int, width: int
    ) -> torch.Tensor:
        """Pass 2: y-interpolation of a level's x-interpolated band rows, (B, H, W, F)."""
        nf = self.config.n_features
        rows = rows.reshape(bsz * n_rows, width * nf)
        top = rows.index_select(0, ly)
        bot = rows.index_select(0, ly + 1)
        wy = fy.reshape(-1, 1).to(top.dtype)
        return torch.lerp(top, bot, wy).reshape(bsz, fy.shape[1], width, nf)


def naive_hashgrid(x: torch.Tensor, table: torch.Tensor, config: HashGridConfig) -> torch.Tensor:
    """Reference encoding: one gather per level and corner (the 'naive' baseline for speed)."""
    feats = []
    sizes = config.table_sizes()
    start = 0
    for n, dense, size in zip(config.resolutions(), config.is_dense(), sizes):
        tab = table[start : start + size]
        start += size
        pos = (x * n).clamp(0, n)
        cell = pos.floor().clamp(max=float(max(n - 1, 0)))
        frac = pos - cell
        ci = cell.long()
        acc = torch.zeros(x.shape[0], config.n_features, dtype=table.dtype, device=table.device)
        for dx in (0, 1):
            for dy in (0, 1):
                ix = ci[:, 0] + dx
                iy = ci[:, 1] + dy
                if dense:
                    ind = ix + iy * (n + 1)
                else:
                    ind = (ix ^ (iy * PRIME_Y)) & (2**config.log2_table_size - 1)
                wx = frac[:, 0] if dx else 1 - frac[:, 0]
                wy = frac[:, 1] if dy else 1 - frac[:, 1]
                acc = acc + (wx * wy).unsqueeze(-1) * tab[ind]
        feats.append(acc)
    return torch.cat(feats, dim=-1)


def tcnn_available() -> bool:
    """True when the tiny-cuda-nn Python bindings import and CUDA is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn HashGrid with the same hyper-parameters (CUDA only, optional).

    tiny-cuda-nn places level l's grid at ``x * (N_min * b**l - 1) + 0.5``, half a cell
    from this package's convention, so the two backends give the same *kind* of encoding
    but not bit-identical features for the same table; a model fitted with one backend
    must be decoded with the same backend (the container records it).
    """

    def __init__(self, config: HashGridConfig) -> None:
        super().__init__()
        import tinycudann as tcnn  # type: ignore[import-not-found]

        self.config = config
        self.enc = tcnn.Encoding(
            n_input_dims=2,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": config.n_levels,
                "n_features_per_level": config.n_features,
                "log2_hashmap_size": config.log2_table_size,
                "base_resolution": config.base_resolution,
                "per_level_scale": config.per_level_scale,
                "interpolation": "Linear",
            },
            dtype=torch.float32,
        )

    @property
    def out_dim(self) -> int:
        """Number of output channels, L * F."""
        return self.config.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode points ``x`` of shape (..., 2) to features of shape (..., L*F)."""
        lead = x.shape[:-1]
        out = self.enc(x.reshape(-1, 2).clamp(0.0, 1.0))
        return out.reshape(*lead, self.out_dim).float()


def make_hashgrid(config: HashGridConfig, backend: str = "auto", device: str = "cpu") -> nn.Module:
    """Create a hash grid on ``backend`` ("torch", "tcnn" or "auto": tcnn on CUDA when it imports)."""
    if backend not in ("auto", "torch", "tcnn"):
        raise ValueError(f"unknown hash-grid backend {backend!r}")
    use_tcnn = backend == "tcnn" or (
        backend == "auto" and str(device).startswith("cuda") and tcnn_available()
    )
    if use_tcnn:
        if not tcnn_available():
            raise RuntimeError("backend='tcnn' needs tinycudann and CUDA")
        log.info("hash grid: tiny-cuda-nn backend")
        return TcnnHashGrid(config)
    return HashGrid(config)
