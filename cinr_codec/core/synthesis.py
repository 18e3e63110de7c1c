"""Compressive CINR in torch: latent grids, their CINR synthesis, and the float context model.

``Synthesis`` turns upsampled latent grids into RGB: a per-pixel MLP flow (1x1 convolutions)
beside a 3x3 convolutional flow over the same features (CINR's idea: each pixel sees its
neighbours), a 1x1 head to RGB, then residual 3x3 convolutions on RGB. ``ContextModel`` is the
float twin of ``coding.entropy.IntContextModel`` (training estimates rates with it).
``LatentImage`` holds the learnable grids of one block. The grids reach full resolution
bilinearly (``upsample``) or, coarse to fine, through learned 2x filters (``upsample_learned``,
format 1.3).
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import LEAKY_SLOPE, LatentConfig, causal_offsets, context_border, upsampling_macs_per_pixel

#: Log-scales the context model may output (the entropy coder's table range).
LOG_SCALE_RANGE = (-4.6, -4.6 + 63 * 0.15)


def upsample(grids: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """Grids (C_k, h_k, w_k) bilinearly upsampled to (1, sum C_k, height, width)."""
    out = []
    for g in grids:
        g = g.unsqueeze(0)
        if g.shape[-2:] != (height, width):
            g = F.interpolate(g, size=(height, width), mode="bilinear", align_corners=False)
        out.append(g)
    return torch.cat(out, dim=1)


#: A learned filter's initial taps (f0, f1, f2, f3): bilinear doubling.
BILINEAR_TAPS = (0.75, 0.25, 0.0, 0.0)


def double(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) -> (1, C, 2h, 2w) through the symmetric 8-tap filter ``taps`` = (f0 … f3),
    separably: out[2a] = f0 x[a] + f1 x[a-1] + f2 x[a+1] + f3 x[a-2] and
    out[2a+1] = f0 x[a] + f1 x[a+1] + f2 x[a-1] + f3 x[a+2], indices clamped to the grid."""
    c = x.shape[1]
    h, w = x.shape[-2:]
    k = torch.cat([taps.flip(0), taps])
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv_transpose2d(x, k.view(1, 1, 1, 8).expand(c, 1, 1, 8), stride=(1, 2), groups=c)
    x = x[..., :, 7 : 7 + 2 * w]
    x = F.conv_transpose2d(x, k.view(1, 1, 8, 1).expand(c, 1, 8, 1), stride=(2, 1), groups=c)
    return x[..., 7 : 7 + 2 * h, :]


def upsample_learned(
    grids: list[torch.Tensor], filters: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Grids (C_k, h_k, w_k), finest first, -> (1, sum C_k, height, width), coarse to fine: the
    features so far are doubled with ``filters[j]`` (``double``), cropped to grid j's size, and
    grid j is put in front; a result of another size is then bilinearly resized."""
    x = grids[-1].unsqueeze(0)
    for j in range(len(grids) - 2, -1, -1):
        g = grids[j].unsqueeze(0)
        x = double(x, filters[j])[..., : g.shape[-2], : g.shape[-1]]
        x = torch.cat([g, x], dim=1)
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x


def upsample_learned_window(
    grids: list[torch.Tensor], filters: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]
) -> torch.Tensor:
    """Rows ``rows`` and columns ``cols`` (half-open) of ``upsample_learned(grids, filters, *grid 0's
    shape)``, made from windows of the grids only: cost proportional to the window.

    Doubling reads the coarser stack two cells either side of a position (out[2a] needs x[a-2 …
    a+1], out[2a+1] x[a-1 … a+2]), so each coarser window is the finer one halved and widened by 2,
    clamped to its grid; inside a grid the widening keeps ``double``'s edge replication away from
    the rows and columns kept, and at a grid's edge it is the same replication."""

    def window(j: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        g = grids[j][:, r0:r1, c0:c1].unsqueeze(0)
        if j == len(grids) - 1:
            return g
        h, w = grids[j + 1].shape[-2:]
        cr0, cr1 = max(0, r0 // 2 - 2), min(h, (r1 + 1) // 2 + 2)
        cc0, cc1 = max(0, c0 // 2 - 2), min(w, (c1 + 1) // 2 + 2)
        x = double(window(j + 1, cr0, cr1, cc0, cc1), filters[j])
        x = x[..., r0 - 2 * cr0 : r1 - 2 * cr0, c0 - 2 * cc0 : c1 - 2 * cc0]
        return torch.cat([g, x], dim=1)

    return window(0, rows[0], rows[1], cols[0], cols[1])


def _pointwise(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution (``nn.Conv2d``) on channels as matrix rows: (C, N) in, (C', N) out."""
    conv = cast(nn.Conv2d, layer)
    assert conv.bias is not None
    return torch.addmm(conv.bias[:, None], conv.weight.view(conv.out_channels, conv.in_channels), x)


def _conv3x3(layer: nn.Module, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A 3x3 convolution (``nn.Conv2d``) with replicate padding on channels as matrix rows:
    (C, height * width) in, (C', height * width) out; computed channels last."""
    conv = cast(nn.Conv2d, layer)
    y = F.pad(x.view(1, -1, height, width), (1, 1, 1, 1), mode="replicate")
    y = F.conv2d(y.contiguous(memory_format=torch.channels_last), conv.weight, conv.bias)
    return y.contiguous().view(conv.out_channels, height * width)


class Synthesis(nn.Module):
    """Upsampled latents (1, L, H, W) -> RGB (1, 3, H, W) in [0, 1] (see the module docstring);
    ``features`` upsamples the grids as the configuration says."""

    def __init__(self, config: LatentConfig) -> None:
        super().__init__()
        self.leaky = config.activation == "leaky_relu"
        #: What one integer step of a latent is worth in feature units (exact: a power of two).
        self.latent_scale = 2.0**-config.latent_shift
        c_in = config.levels
        self.mlp = nn.ModuleList()
        d = c_in
        for w in config.mlp:
            self.mlp.append(nn.Conv2d(d, w, 1))
            d = w
        self.conv = nn.ModuleList()
        dc = c_in
        for _ in range(config.conv_layers if config.conv_width > 0 else 0):
            self.conv.append(nn.Conv2d(dc, config.conv_width, 3, padding=1, padding_mode="replicate"))
            dc = config.conv_width
        #: The head also reads the latent features (a linear path beside the flows).
        self.stabiliser = config.stabiliser
        self.head = nn.Conv2d(d + (dc if len(self.conv) else 0) + (c_in if self.stabiliser else 0), 3, 1)
        if self.head.bias is not None:
            nn.init.constant_(self.head.bias, 0.5)  # start from mid-grey (outputs are in [0, 1])
        self.res = nn.ModuleList()
        for _ in range(config.residual_convs):
            m = nn.Conv2d(3, 3, 3, padding=1, padding_mode="replicate")
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            self.res.append(m)
        # Learned upsampling: one filter (f0 … f3) per doubling, started at bilinear.
        self.up: nn.Parameter | None = None
        if config.upsampling == "learned" and config.levels > 1:
            self.up = nn.Parameter(torch.tensor([BILINEAR_TAPS] * (config.levels - 1)))

    def features(self, grids: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
        """The grids (C_k, h_k, w_k), finest first, times ``latent_scale``, at full resolution
        (1, sum C_k, height, width)."""
        if self.up is not None and grids[0].shape[-2:] == (height, width):
            native = _native_window(self, grids, (0, height), (0, width))
            if native is not None:
                return native
        if self.latent_scale != 1.0:
            grids = [g * self.latent_scale for g in grids]
        if self.up is None:
            return upsample(grids, height, width)
        return upsample_learned(grids, self.up, height, width)

    def window_features(
        self, grids: list[torch.Tensor], rows: tuple[int, int], cols: tuple[int, int]
    ) -> torch.Tensor | None:
        """``features(grids, *grid 0's shape)[..., rows, cols]`` from windows of the grids (learned
        upsampling only; None otherwise: the caller computes all features)."""
        if self.up is None:
            return None
        native = _native_window(self, grids, rows, cols)
        if native is not None:
            return native
        if self.latent_scale != 1.0:
            grids = [g * self.latent_scale for g in grids]
        return upsample_learned_window(grids, self.up, rows, cols)

    @property
    def halo(self) -> int:
        """Pixels a window's edge changes inward (its replicated border): one per 3x3 layer."""
        return len(self.conv) + len(self.res)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The configured activation (ReLU or leaky ReLU)."""
        return F.leaky_relu(x, LEAKY_SLOPE) if self.leaky else F.relu(x)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # Channels as the rows of (C, H*W) matrices: the 1x1 layers are products W @ X, a few
        # rows times all pixels, a shape BLAS handles well (pixels as rows, (H*W, C) @ (C, C'),
        # ran its backward 2-5x slower, e.g. the head's 3-row gradient), and the 3x3 layers are
        # channels-last convolutions. The head reads its inputs' parts through slices of its
        # weight instead of a concatenation. A 256^2 training step's synthesis, forward and
        # backward on one thread: 41 ms channels last, 33 ms so (docs/architecture.md). CPU
        # training runs encode/train/_synthesis_grad.c instead (18 ms); GPUs and machines
        # without a compiler run this.
        n, c, height, width = f.shape
        if n != 1:
            return torch.cat([self(f[i : i + 1]) for i in range(n)])
        x = f.reshape(c, height * width)
        parts = []
        h = x
        for layer in self.mlp:
            h = self.act(_pointwise(layer, h))
        parts.append(h)
        if len(self.conv):
            k = x
            for layer in self.conv:
                k = self.act(_conv3x3(layer, k, height, width))
            parts.append(k)
        if self.stabiliser:
            parts.append(x)
        head = self.head.weight.view(self.head.out_channels, -1)
        assert self.head.bias is not None
        out, at = self.head.bias[:, None], 0
        for part in parts:
            out = torch.addmm(out, head[:, at : at + part.shape[0]], part)
            at += part.shape[0]
        for i, layer in enumerate(self.res):
            out = out + _conv3x3(layer, out if i == 0 else self.act(out), height, width)
        return out.view(1, -1, height, width)

    def pixels(self, f: torch.Tensor) -> np.ndarray:
        """``forward(f)`` as uint8 pixels (H, W, 3) (clamped to [0, 1], times 255, rounded half to
        even), for inference: on the CPU through the compiled kernel (``_synthesis.c``; no
        allocation per layer, so its speed does not depend on the process's malloc settings),
        else through torch. Both compute the same network; a pixel may differ by a rounding step."""
        from . import native

        lib = _synthesis_lib() if f.device.type == "cpu" and native.enabled() else None
        if lib is not None and within_limits(self, f, KERNEL_LIMITS):
            return _native_pixels(lib, self, f)
        with torch.inference_mode():
            x = self(f)[0]
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # type: ignore[no-any-return]

    def macs_per_pixel(self) -> int:
        """Multiply-adds per output pixel of the convolutions (the upsampling's: module-level
        ``macs_per_pixel``)."""
        return sum(
            m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            for m in self.modules()
            if isinstance(m, nn.Conv2d)
        )


# -- the compiled synthesis (``_synthesis.c``) -----------------------------------------------------

#: Limits of the compiled synthesis (``_synthesis.c``: MAX_IN, MAX_MLP, MAX_WIDTH, MAX_CONV,
#: MAX_CONV_WIDTH, MAX_RES); other networks run in torch.
KERNEL_LIMITS = {"in": 16, "mlp": 4, "width": 128, "conv": 4, "conv_width": 64, "res": 4, "side": 1 << 15}


def _synthesis_lib() -> ctypes.CDLL | None:
    """The compiled synthesis, or None (no compiler, ``CINR_NATIVE=0``, or the build failed)."""
    from . import native

    def setup(lib: ctypes.CDLL) -> None:
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.cinr_synthesis.restype = ctypes.c_int
        lib.cinr_synthesis.argtypes = [
            ptr, i64, i64, i64, i64, ptr, ptr, i64, i64, ptr, i64, ptr, i64, ptr, ctypes.c_float, ptr,
        ]  # fmt: skip
        lib.cinr_upsample_window.restype = ctypes.c_int
        lib.cinr_upsample_window.argtypes = [
            ptr, ptr, ptr, i64, ptr, i64, i64, i64, i64, ctypes.c_float, ptr,
        ]  # fmt: skip

    return native.compiled(Path(__file__).with_name("_synthesis.c"), "synthesis", setup)


def within_limits(net: Synthesis, f: torch.Tensor, limits: dict[str, int]) -> bool:
    """True when a network and its features (1, L, H, W) fit a compiled kernel's ``limits``
    (keys ``in``, ``side``, ``mlp``, ``width``, ``conv``, ``conv_width``, ``res``; this module's
    ``KERNEL_LIMITS``, ``encode.train.synthesis_grad.LIMITS``), every layer with a bias."""
    conv_width = cast(nn.Conv2d, net.conv[0]).out_channels if len(net.conv) else 0
    return (
        f.dim() == 4
        and f.shape[0] == 1
        and 1 <= f.shape[1] <= limits["in"]
        and 1 <= f.shape[2] <= limits["side"]
        and 1 <= f.shape[3] <= limits["side"]
        and 1 <= len(net.mlp) <= limits["mlp"]
        and all(cast(nn.Conv2d, m).out_channels <= limits["width"] for m in net.mlp)
        and len(net.conv) <= limits["conv"]
        and conv_width <= limits["conv_width"]
        and len(net.res) <= limits["res"]
        and all(cast(nn.Conv2d, m).bias is not None for m in (*net.mlp, *net.conv, net.head, *net.res))
    )


def _native_window(
    net: Synthesis, grids: list[torch.Tensor], rows: tuple[int, int], cols: tuple[int, int]
) -> torch.Tensor | None:
    """``upsample_learned_window`` of the grids times ``latent_scale`` through the compiled kernel
    (inference on the CPU: no autograd), or None where it does not apply (a GPU, gradients,
    CINR_NATIVE=0, no compiler, one-channel grids beyond its limits)."""
    from . import native

    if (
        net.up is None
        or not native.enabled()
        or torch.is_grad_enabled()
        and (net.up.requires_grad or any(g.requires_grad for g in grids))
        or any(g.device.type != "cpu" or g.dim() != 3 or g.shape[0] != 1 for g in grids)
        or not 1 <= len(grids) <= KERNEL_LIMITS["in"]
    ):
        return None
    lib = _synthesis_lib()
    if lib is None:
        return None
    planes = [np.ascontiguousarray(g.detach()[0].float().numpy()) for g in grids]
    ptrs = (ctypes.c_void_p * len(planes))(*[p.ctypes.data for p in planes])
    hs = np.array([p.shape[0] for p in planes], dtype=np.int64)
    ws = np.array([p.shape[1] for p in planes], dtype=np.int64)
    filters = np.ascontiguousarray(net.up.detach().float().numpy())
    (r0, r1), (c0, c1) = rows, cols
    out = np.empty((len(planes), r1 - r0, c1 - c0), dtype=np.float32)
    rc = lib.cinr_upsample_window(
        ptrs, hs.ctypes.data, ws.ctypes.data, len(planes), filters.ctypes.data, r0, r1, c0, c1,
        net.latent_scale, out.ctypes.data,
    )  # fmt: skip
    if rc == 3:
        raise MemoryError(f"upsampling a {c1 - c0}x{r1 - r0} window: out of memory")
    if rc != 0:
        return None
    return torch.from_numpy(out)[None]


def _flat(layers: list[nn.Module]) -> np.ndarray:
    """Each layer's weight then bias, flattened and concatenated (float32)."""
    parts = []
    for m in layers:
        conv = cast(nn.Conv2d, m)
        assert conv.bias is not None
        parts += [conv.weight.detach().reshape(-1), conv.bias.detach()]
    if not parts:
        return np.zeros(1, dtype=np.float32)
    return np.ascontiguousarray(torch.cat(parts).float().cpu().numpy())


def _native_pixels(lib: ctypes.CDLL, net: Synthesis, f: torch.Tensor) -> np.ndarray:
    """``Synthesis.pixels`` through ``cinr_synthesis``."""
    _, n_in, h, w = f.shape
    feats = np.ascontiguousarray(f.detach()[0].float().numpy())
    widths = np.array([cast(nn.Conv2d, m).out_channels for m in net.mlp], dtype=np.int64)
    mlp, conv, head, res = (
        _flat(list(net.mlp)),
        _flat(list(net.conv)),
        _flat([net.head]),
        _flat(list(net.res)),
    )
    conv_width = cast(nn.Conv2d, net.conv[0]).out_channels if len(net.conv) else 0
    out = np.empty((h, w, 3), dtype=np.uint8)
    rc = lib.cinr_synthesis(
        feats.ctypes.data, n_in, h, w, len(widths), widths.ctypes.data, mlp.ctypes.data, len(net.conv),
        conv_width, conv.ctypes.data, int(net.stabiliser), head.ctypes.data, len(net.res), res.ctypes.data,
        LEAKY_SLOPE if net.leaky else 0.0, out.ctypes.data,
    )  # fmt: skip
    if rc == 3:
        raise MemoryError(f"synthesis of a {w}x{h} window: out of memory")
    if rc != 0:
        raise ValueError(f"the compiled synthesis refused a {n_in}-channel {w}x{h} window (code {rc})")
    return out


class ContextModel(nn.Module):
    """Causal neighbours (context, n), one column per latent, -> (mean, log-scale) of each latent;
    ReLU layers, residual after the first (the same structure as ``coding.entropy.IntContextModel``).
    Columns, not rows: its matrix products are then a few rows times all latents, the shape
    BLAS handles well."""

    def __init__(self, config: LatentConfig) -> None:
        super().__init__()
        dims = [config.context] + [config.arm_width] * config.arm_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.out = nn.Linear(dims[-1], 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = ctx
        for i, module in enumerate(self.hidden):
            layer = cast(nn.Linear, module)
            z = F.relu(torch.addmm(layer.bias[:, None], layer.weight, h))
            h = h + z if i > 0 else z
        o = torch.addmm(self.out.bias[:, None], self.out.weight, h)
        return o[0], o[1].clamp(*LOG_SCALE_RANGE)

    def bits(self, grids: list[torch.Tensor], offsets: list[tuple[int, int]]) -> torch.Tensor:
        """Total estimated bits of the grids (1, h_k, w_k) under this model: one pass over all
        their latents (a pass per grid cost 7 passes of small operations)."""
        ctx = torch.cat([gather_context(g[0], offsets) for g in grids], dim=1)
        flat = torch.cat([g.reshape(-1) for g in grids])
        mean, log_scale = self(ctx)
        return laplace_bits(flat, mean, log_scale).sum()


def gather_context(grid: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """(h, w) grid -> (len(offsets), h*w) causal neighbours, one column per latent, zero
    outside (as the coder)."""
    h, w = grid.shape
    p = context_border(offsets)
    padded = F.pad(grid[None, None], (p, p, p, p))[0, 0]
    rows = [padded[p + di : p + di + h, p + dj : p + dj + w] for di, dj in offsets]
    return torch.stack(rows).view(len(offsets), h * w)


def laplace_bits(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log2 of the probability of the unit bin around x under Laplace(mean, exp(log_scale))."""
    b = torch.exp(log_scale)
    d = torch.abs(x - mean)
    tail = math.log(0.5) - (d - 0.5).clamp(min=0) / b + torch.log(-torch.expm1(-1.0 / b))
    dc = d.clamp(max=0.5)
    centre = torch.log(
        (1 - 0.5 * torch.exp(-(dc + 0.5) / b) - 0.5 * torch.exp((dc - 0.5) / b)).clamp(min=2**-16)
    )
    lp = torch.where(d >= 0.5, tail, centre)
    return -lp.clamp(min=math.log(2**-16)) / math.log(2.0)


class _SoftRound(torch.autograd.Function):
    """``soft_round`` with its derivative written out: it keeps only the tanh for the backward
    and works in place, about half the elementwise passes of the composed expression (a training
    step's roundings of a 512^2 block's latents 27 -> 15 ms with the noise below)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: float) -> torch.Tensor:  # type: ignore[override]
        fx = torch.floor(x)
        th = torch.tanh((x - fx).sub_(0.5).div_(t))
        c = 0.5 / math.tanh(1 / (2 * t))
        ctx.slope = c / t
        ctx.save_for_backward(th)
        return fx.add_(th, alpha=c).add_(0.5)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (th,) = ctx.saved_tensors
        return th.square().sub_(1).mul_(-ctx.slope).mul_(grad), None


def soft_round(x: torch.Tensor, t: float) -> torch.Tensor:
    """Differentiable rounding (Agustsson & Theis): floor(x) + 1/2 + tanh((x - floor(x) - 1/2) / t)
    / (2 tanh(1 / 2t)), -> round(x) as t -> 0."""
    return _SoftRound.apply(x, t)  # type: ignore[no-any-return]


def kumaraswamy_noise(like: torch.Tensor, a: float) -> torch.Tensor:
    """Noise in [-1/2, 1/2] from a Kumaraswamy(a, b) law with mode 1/2 (a = 1: uniform; larger a
    concentrates it near 0), as Cool-chic anneals it: (1 - (1 - u)^(1/b))^(1/a) - 1/2 for uniform
    u, its powers as exp(log1p(.) / n) in place (half the time of ``**``)."""
    with torch.no_grad():
        u = torch.rand_like(like).clamp_(1e-6, 1 - 1e-6)
        b = (2**a * (a - 1) + 1) / a
        v = torch.log1p(u.neg_()).div_(b).exp_()
        return torch.log1p(v.neg_()).div_(a).exp_().sub_(0.5)


def quantize(x: torch.Tensor, mode: str, t: float, a: float = 1.0) -> torch.Tensor:
    """Training-time rounding: ``soft`` (soft round, Kumaraswamy noise of parameter ``a``, soft
    round), ``soft-gauss`` (the same with Gaussian noise of standard deviation ``a``), ``ste``
    (round forward, soft-round gradient backward) or ``hard``."""
    if mode == "soft":
        return soft_round(soft_round(x, t) + kumaraswamy_noise(x, a), t)
    if mode == "soft-gauss":
        return soft_round(soft_round(x, t) + torch.randn_like(x) * a, t)
    if mode == "ste":
        y = soft_round(x, t)
        return y + (torch.round(x) - y).detach()
    return torch.round(x)


class LatentImage(nn.Module):
    """The learnable part of one block: latent grids (float while training), synthesis, context model."""

    def __init__(self, config: LatentConfig, height: int, width: int) -> None:
        super().__init__()
        self.config = config
        self.height, self.width = height, width
        self.latents = nn.ParameterList(
            nn.Parameter(torch.zeros(1, h, w)) for h, w in config.grid_shapes(height, width)
        )
        self.synthesis = Synthesis(config)
        self.arm = ContextModel(config)
        self.offsets = causal_offsets(config.context)

    def forward(
        self, mode: str = "soft", t: float = 0.3, a: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(RGB (1, 3, H, W), total bits of the latents) under the given rounding."""
        ys = self.quantized(mode, t, a)
        return self.render(ys), self.arm.bits(ys, self.offsets)

    def quantized(self, mode: str = "soft", t: float = 0.3, a: float = 1.0) -> list[torch.Tensor]:
        """The grids under the given rounding (``quantize``)."""
        return [quantize(g, mode, t, a) for g in self.latents]

    def render(self, grids: list[torch.Tensor]) -> torch.Tensor:
        """RGB (1, 3, H, W) of the given (rounded) grids."""
        return self.synthesis(self.synthesis.features(grids, self.height, self.width))


def macs_per_pixel(config: LatentConfig) -> dict[str, float]:
    """Decoder multiply-adds per pixel: ``synthesis`` and ``context`` (per latent times latents
    per pixel, for a large block) counted on the modules, ``upsampling``
    (``core.config.upsampling_macs_per_pixel``) and ``total``."""
    with torch.device("meta"):
        syn = Synthesis(config).macs_per_pixel()
        arm = ContextModel(config)
    per_latent = sum(m.in_features * m.out_features for m in arm.modules() if isinstance(m, nn.Linear))
    levels = range(config.first_level, config.first_level + config.levels)
    latents_per_pixel = sum(4.0**-k for k in levels)
    upsampling = upsampling_macs_per_pixel(config)
    context = per_latent * latents_per_pixel
    return {
        "synthesis": syn,
        "context": context,
        "upsampling": upsampling,
        "total": syn + context + upsampling,
    }
