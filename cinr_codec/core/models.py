"""Coordinate networks: NGP, ENGP and the dual-flow CINR model, configured by data, not code.

Every model maps pixel-centre coordinates to RGB in [-1, 1]. Convolutional models see real
neighbouring features: they evaluate the hash grid on a halo of ``model.halo`` pixels around
the requested pixels and use unpadded ("valid") convolutions, so a pixel's value never
depends on how an image is cut into patches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .hashgrid import HashGrid, make_hashgrid
from .workspace import Workspace


class _Sine(nn.Module):
    def __init__(self, w0: float) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)


_ACTIVATIONS = {  # one entry per name in core.config.ACTIVATIONS
    # In place: every ReLU follows a layer whose fresh output nothing else reads; one fewer
    # multi-megabyte allocation per layer (512^2 reads at scale 1, one thread, quiet machine:
    # 0.81-0.99 s -> 0.64-0.90 s with glibc's default malloc, 0.47-0.63 s -> 0.39-0.51 s tuned).
    "relu": lambda w0: nn.ReLU(inplace=True),
    "silu": lambda w0: nn.SiLU(),
    "gelu": lambda w0: nn.GELU(),
    "leaky_relu": lambda w0: nn.LeakyReLU(0.1),
    "sine": lambda w0: _Sine(w0),
}


def _act(cfg: ModelConfig) -> nn.Module:
    return _ACTIVATIONS[cfg.activation](cfg.w0)  # type: ignore[no-untyped-call]


def _siren_init(layer: nn.Linear | nn.Conv2d, w0: float, first: bool) -> None:
    weight: torch.Tensor = layer.weight
    fan_in = weight[0].numel()
    bound = 1.0 / fan_in if first else math.sqrt(6.0 / fan_in) / w0
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        bias: torch.Tensor | None = layer.bias
        if bias is not None:
            bias.uniform_(-bound, bound)


def _mlp(cfg: ModelConfig, n_in: int, width: int, depth: int, out: int | None, first: bool) -> nn.Sequential:
    """depth x (Linear + activation), then an optional linear output layer."""
    layers: list[nn.Module] = []
    d_in = n_in
    for i in range(depth):
        lin = nn.Linear(d_in, width, bias=cfg.bias)
        if cfg.activation == "sine":
            _siren_init(lin, cfg.w0, first=first and i == 0)
        layers += [lin, _act(cfg)]
        d_in = width
    if out is not None:
        lin = nn.Linear(d_in, out, bias=cfg.bias)
        if cfg.activation == "sine":
            _siren_init(lin, cfg.w0, first=False)
        layers.append(lin)
    return nn.Sequential(*layers)


def _conv(cfg: ModelConfig, c_in: int, c_out: int, first: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=0, bias=cfg.bias)
    if cfg.activation == "sine":
        _siren_init(conv, cfg.w0, first=first)
    return conv


def _crop(x: torch.Tensor, m: int) -> torch.Tensor:
    """Remove m pixels from each side of a (B, C, H, W) map."""
    return x if m == 0 else x[..., m:-m, m:-m]


def _linear_cf(
    seq: nn.Module, x: torch.Tensor, ws: Workspace | None = None, out: str = "out"
) -> torch.Tensor:
    """Apply a per-pixel MLP (``nn.Sequential`` or one ``nn.Linear``) to a channels-first map
    (B, C, H, W).

    The pixels go through as one (B*H*W, C) matrix: 2-D matrix products are about 3x faster on
    CPU than the same product on a 4-D view, and the result is the same. With a workspace (CPU
    inference only: no gradients) every tensor lives in its buffers: the result in ``out``, the
    input's copy (when ``x`` is not already pixels-major) and the hidden layers in ``in``, ``h0``
    and ``h1``, which the next call may overwrite; through ``addmm(..., out=)``, what ``nn.Linear``
    calls on a 2-D input, so the same values.
    """
    b, c, h, w = x.shape
    if ws is None:
        y = seq(x.permute(0, 2, 3, 1).reshape(b * h * w, c))
        return y.reshape(b, h, w, -1).permute(0, 3, 1, 2)
    layers = list(seq) if isinstance(seq, nn.Sequential) else [seq]
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear))
    y = x.permute(0, 2, 3, 1)
    if not y.is_contiguous():
        y = ws.get("in", b, h, w, c).copy_(y)
    y = y.reshape(b * h * w, c)
    hidden = 0
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            name = out if i == last else f"h{hidden}"
            hidden ^= 1  # a hidden layer never writes the buffer it reads
            dst = ws.get(name, b * h * w, layer.out_features)
            if layer.bias is not None:
                torch.addmm(layer.bias, y, layer.weight.t(), out=dst)
            else:
                torch.mm(y, layer.weight.t(), out=dst)
            y = dst
        else:
            y = _activate(layer, y, ws)
    return y.view(b, h, w, -1).permute(0, 3, 1, 2)


def _activate(act: nn.Module, x: torch.Tensor, ws: Workspace | None) -> torch.Tensor:
    """``act(x)``; with a workspace (no gradients) in place where the activation allows it (the
    same values)."""
    if ws is not None:
        if isinstance(act, nn.ReLU):
            return x.relu_()
        if isinstance(act, nn.LeakyReLU):
            return F.leaky_relu_(x, act.negative_slope)
        if isinstance(act, nn.SiLU):
            return F.silu(x, inplace=True)
        if isinstance(act, _Sine):
            return x.mul_(act.w0).sin_()
    return act(x)  # type: ignore[no-any-return]


def _cat(parts: tuple[torch.Tensor, ...], ws: Workspace | None, tag: str) -> torch.Tensor:
    """``torch.cat(parts, dim=1)``; with a workspace written into its buffer ``tag``, with the
    layout ``cat`` would give."""
    if ws is None:
        return torch.cat(parts, dim=1)
    b, _, h, w = parts[0].shape
    c = sum(p.shape[1] for p in parts)
    if all(p.is_contiguous(memory_format=torch.channels_last) for p in parts):
        out = ws.get(tag, b, h, w, c).permute(0, 3, 1, 2)
    else:
        out = ws.get(tag, b, c, h, w)
    return torch.cat(parts, dim=1, out=out)


#: Submodules of the per-pixel network (NGP's MLP; CINR's MLP flow and its RGB head).
PIXEL_PREFIXES = ("mlp.", "mlp_b.", "head.")


class ImageModel(nn.Module):
    """Base class: coordinates (B, H, W, 2) in, RGB (B, 3, H, W) in [-1, 1] out."""

    halo: int = 0

    def __init__(self, config: ModelConfig, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.config = config
        self.grid = make_hashgrid(config.hash, backend=config.backend, device=str(device))

    def encode_grid(self, xs: torch.Tensor, ys: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
        """Hash features on the separable grid xs (B, W), ys (B, H): (B, C, H, W); with a
        workspace (no gradients, float32 table) written into its buffer ``x``."""
        grid = self.grid
        if isinstance(grid, HashGrid):
            z = None
            if ws is not None and grid.table.dtype == torch.float32:
                z = ws.get("x", xs.shape[0], ys.shape[1], xs.shape[1], grid.out_dim)
            feats = grid.forward_grid(xs, ys, out=z)
        else:
            pts = torch.stack(
                torch.broadcast_tensors(xs.unsqueeze(1), ys.unsqueeze(2)), dim=-1
            )  # (B, H, W, 2)
            feats = grid(pts)
        return feats.permute(0, 3, 1, 2)

    def forward_grid(self, xs: torch.Tensor, ys: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
        """RGB on the grid without its halo: xs (B, W + 2h), ys (B, H + 2h) -> (B, 3, H, W).

        ``ws`` (CPU inference only: no gradients): the large tensors go into its reused buffers
        (``core.workspace``); the same values, and the result may be a view of a buffer, valid
        until the workspace's next use.
        """
        raise NotImplementedError

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """RGB at a regular grid of coordinates (B, H, W, 2) (x, y), as (B, 3, H, W).

        The grid must be axis-aligned (x varies along W only, y along H only); the halo that
        convolutional models need is extrapolated from its spacing.
        """
        if coords.dim() != 4 or coords.shape[-1] != 2:
            raise ValueError(f"expected coordinates of shape (B, H, W, 2), got {tuple(coords.shape)}")
        xs = coords[:, 0, :, 0]
        ys = coords[:, :, 0, 1]
        if not (
            torch.equal(coords[..., 0], xs.unsqueeze(1).expand_as(coords[..., 0]))
            and torch.equal(coords[..., 1], ys.unsqueeze(2).expand_as(coords[..., 1]))
        ):
            raise ValueError("coordinates must form an axis-aligned grid")
        h = self.halo
        if h:
            xs = _extend(xs, h)
            ys = _extend(ys, h)
        return self.forward_grid(xs, ys)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role: ``hash`` (tables), ``pixel`` (per-pixel network: NGP's MLP,
        CINR's MLP flow and head) and ``conv`` (CINR's convolutional flows)."""
        groups: dict[str, list[nn.Parameter]] = {"hash": [], "pixel": [], "conv": []}
        for name, p in self.named_parameters():
            if name.startswith("grid."):
                groups["hash"].append(p)
            elif name.startswith(PIXEL_PREFIXES):
                groups["pixel"].append(p)
            else:
                groups["conv"].append(p)
        return groups

    def table_names(self) -> list[str]:
        """State-dict names of the hash tables (stored per level, not per row)."""
        return [name for name, _ in self.named_parameters() if name.startswith("grid.")]

    def n_params(self) -> int:
        """Number of parameters (hash tables and network)."""
        return sum(p.numel() for p in self.parameters())


def _extend(v: torch.Tensor, h: int) -> torch.Tensor:
    """Extend each row of regularly spaced coordinates by h samples on both sides."""
    if v.shape[1] < 2:
        raise ValueError("convolutional models need grids at least 2 pixels wide")
    step = (v[:, -1:] - v[:, :1]) / (v.shape[1] - 1)
    before = v[:, :1] - step * torch.arange(h, 0, -1, device=v.device, dtype=v.dtype)
    after = v[:, -1:] + step * torch.arange(1, h + 1, device=v.device, dtype=v.dtype)
    return torch.cat((before, v, after), dim=1)


class NGP(ImageModel):
    """Instant-NGP image model: hash grid, then a per-pixel MLP (``ngp``: 4x128, ``engp``: 8x256)."""

    halo = 0

    def __init__(self, config: ModelConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        self.mlp = _mlp(config, config.hash.out_dim, config.mlp_width, config.mlp_depth, 3, first=True)

    def forward_grid(self, xs: torch.Tensor, ys: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
        return _linear_cf(self.mlp, self.encode_grid(xs, ys, ws), ws, "mlp")

    def forward_points(self, pts: torch.Tensor) -> torch.Tensor:
        """RGB at scattered points (P, 2) -> (P, 3); only for per-pixel models."""
        return self.mlp(self.grid(pts))  # type: ignore[no-any-return]


class CINR(ImageModel):
    """Dual-flow CINR (Lee et al., MICCAI 2024), wired as in the authors' public notebook.

    Features z go to (a) a CNN flow of two 3x3 convs and (b) an MLP flow; cat(a, b) passes
    two more 3x3 convs (c); a second MLP acts on (b) (d); one 3x3 conv maps cat(c, d) to RGB.
    The paper's prose describes the flows slightly differently (it fuses the MLP flow only
    once, at the output); we follow the notebook. With ``residual=True`` a linear RGB head
    on the MLP flow is added to the output, so the network starts as an NGP and the CNN
    flows learn a correction (our CPU recipe). The notebook has two convolutions per CNN flow
    (``conv_a_depth = conv_c_depth = 2``), hence a receptive-field halo of 5 pixels; in
    general the halo is ``conv_a_depth + conv_c_depth + 1``.
    """

    def __init__(self, config: ModelConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        z = config.hash.out_dim
        cw = config.conv_width
        mw = config.mlp_width
        na, nc = config.conv_a_depth, config.conv_c_depth
        if na < 1 or nc < 1:
            raise ValueError("CINR needs at least one convolution in each CNN flow")
        self.halo = na + nc + 1
        self.cnn_a = nn.ModuleList(
            [_conv(config, z, cw, first=True)] + [_conv(config, cw, cw) for _ in range(na - 1)]
        )
        self.mlp_b = _mlp(config, z, mw, config.mlp_depth, None, first=True)
        self.cnn_c = nn.ModuleList(
            [_conv(config, cw + mw, cw)] + [_conv(config, cw, cw) for _ in range(nc - 1)]
        )
        self.mlp_d = _mlp(config, mw, mw, config.mlp2_depth, None, first=False)
        self.out = _conv(config, cw + mw, 3)
        self.act = _act(config)
        self.head: nn.Linear | None = None
        if config.residual:
            self.head = nn.Linear(mw, 3, bias=True)
            if config.activation == "sine":
                _siren_init(self.head, config.w0, first=False)
            # The CNN flows start as an exact no-op on top of the per-pixel head.
            nn.init.zeros_(self.out.weight)
            if self.out.bias is not None:
                nn.init.zeros_(self.out.bias)

    def forward_points(self, pts: torch.Tensor) -> torch.Tensor:
        """The per-pixel part only (MLP flow and residual head) at points (P, 2) -> (P, 3).

        Used to pre-train the hash grid and MLP flow on random pixels before the CNN flows.
        """
        if self.head is None:
            raise ValueError("forward_points needs a CINR model with residual=True")
        return self.head(self.mlp_b(self.grid(pts)))  # type: ignore[no-any-return]

    def forward_grid(self, xs: torch.Tensor, ys: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
        # With a workspace, buffer "x" holds the features, then cat(a, b), then cat(c, d): each
        # is dead when the next is written. "b" lives until the head, "d" until cat(c, d).
        na, nc = self.config.conv_a_depth, self.config.conv_c_depth
        z = self.encode_grid(xs, ys, ws)  # (B, C, H + 2 halo, W + 2 halo)
        a = z
        for conv in self.cnn_a:
            a = _activate(self.act, conv(a), ws)  # each 3x3 conv trims one pixel per side
        b = _linear_cf(self.mlp_b, _crop(z, na), ws, "b")
        c = _cat((a, b), ws, "x")
        for conv in self.cnn_c:
            c = _activate(self.act, conv(c), ws)
        d = _linear_cf(self.mlp_d, _crop(b, nc), ws, "d")
        out = self.out(_cat((c, d), ws, "x"))
        if self.head is not None:
            out = out + _linear_cf(self.head, _crop(b, nc + 1), ws, "head")
        return out


def build_model(config: ModelConfig, device: str | torch.device = "cpu") -> ImageModel:
    """Instantiate the model a config describes, on ``device``."""
    model: ImageModel
    if config.kind in ("ngp", "engp"):
        model = NGP(config, device)
    else:
        model = CINR(config, device)
    return model.to(device)
