"""Configurations of the hash-grid models: plain data, importable without torch.

``HashGridConfig`` (the multiresolution hash grid) and ``ModelConfig`` (which network sits on
it) are what a ``.cinr`` header's ``model`` object stores; the modules that build them
(``core.hashgrid``, ``core.models``) need torch, these do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Integer fields carry ``metadata={"range": (lo, hi)}``: the bounds a file's value must respect
#: (generous for real models, tight enough that no header makes a decoder compute with absurd
#: numbers), checked by ``int_ranges`` users when a header is parsed.

#: Activation functions a model may use (``core.models`` builds them).
ACTIVATIONS = ("relu", "silu", "gelu", "leaky_relu", "sine")


@dataclass(frozen=True)
class HashGridConfig:
    """Hash-grid hyper-parameters: L levels of F features, 2**T entries, N_min, per-level scale b."""

    n_levels: int = field(default=16, metadata={"range": (1, 64)})
    n_features: int = field(default=2, metadata={"range": (1, 64)})
    log2_table_size: int = field(default=16, metadata={"range": (1, 30)})
    base_resolution: int = field(default=16, metadata={"range": (1, 1 << 24)})
    per_level_scale: float = 1.5

    def __post_init__(self) -> None:
        if self.n_levels < 1 or self.n_features < 1:
            raise ValueError("n_levels and n_features must be >= 1")
        if not 1 <= self.log2_table_size <= 30:
            raise ValueError("log2_table_size must be in [1, 30]")
        if self.base_resolution < 1:
            raise ValueError("base_resolution must be >= 1")
        if not self.per_level_scale >= 1.0:
            raise ValueError("per_level_scale must be >= 1")

    @classmethod
    def from_max_resolution(
        cls,
        n_levels: int,
        n_features: int,
        log2_table_size: int,
        base_resolution: int,
        max_resolution: float,
    ) -> HashGridConfig:
        """Build a config whose finest level has resolution ``max_resolution`` (b derived)."""
        if n_levels == 1:
            b = 1.0
        else:
            b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
        return cls(n_levels, n_features, log2_table_size, base_resolution, max(1.0, b))

    @property
    def out_dim(self) -> int:
        """Number of output channels, L * F."""
        return self.n_levels * self.n_features

    def resolutions(self) -> list[int]:
        """Grid resolution N_l of each level."""
        # A tiny epsilon makes exact products (e.g. 4 * 1.5**2 = 9) floor to the right integer.
        return [
            int(math.floor(self.base_resolution * self.per_level_scale**lvl + 1e-9))
            for lvl in range(self.n_levels)
        ]

    def is_dense(self) -> list[bool]:
        """Whether each level is indexed densely (collision-free)."""
        return [(n + 1) ** 2 <= 2**self.log2_table_size for n in self.resolutions()]

    def table_sizes(self) -> list[int]:
        """Number of table entries of each level."""
        return [
            (n + 1) ** 2 if d else 2**self.log2_table_size
            for n, d in zip(self.resolutions(), self.is_dense())
        ]

    def n_params(self) -> int:
        """Total number of table parameters."""
        return sum(self.table_sizes()) * self.n_features

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


MODEL_KINDS = ("ngp", "engp", "cinr")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a model: which kind, its hash grid, widths, depths and activation.

    ``mlp_width``/``mlp_depth`` are the MLP (NGP/ENGP) or the MLP flow (CINR);
    ``conv_width`` is the CNN flows' width (CINR only). ``activation`` is ``relu``, ``silu``,
    ``gelu``, ``leaky_relu`` or ``sine`` (``sin(w0 x)`` with SIREN initialisation).
    ``residual`` (CINR) adds a linear RGB head on the MLP flow to the convolutional output.
    """

    kind: str
    hash: HashGridConfig
    mlp_width: int = field(default=128, metadata={"range": (1, 4096)})
    mlp_depth: int = field(default=4, metadata={"range": (0, 64)})
    conv_width: int = field(default=128, metadata={"range": (1, 4096)})
    mlp2_depth: int = field(default=1, metadata={"range": (0, 64)})
    conv_a_depth: int = field(default=2, metadata={"range": (0, 64)})
    conv_c_depth: int = field(default=2, metadata={"range": (0, 64)})
    activation: str = "relu"
    w0: float = 30.0
    bias: bool = True
    residual: bool = False
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model {self.kind!r}; choose one of {', '.join(MODEL_KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        d["hash"] = self.hash.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["hash"] = HashGridConfig(**d["hash"])
        return cls(**d)


#: Decoding budget of one block model, in multiply-adds per output pixel (``macs_per_pixel``
#: here for hash-grid models, ``latent_macs_per_pixel`` for ccinr), checked
#: from the header before any tensor is loaded: the range checks alone admit networks (an NGP
#: of 8 x 1024 is 7.4 M, 64 x 4096 over 1 G) that take minutes to hours per block. The shipped
#: presets' costs: ngp fast 2 272, high 6 464, default 53 760, paper 55 872; engp fast 14 656,
#: default / high 467 840, paper 472 000; cinr fast 10 712, high 33 456, default 50 288, paper
#: 707 520 (the largest); ccinr 2 292 (its ranges allow at most about 190 000). The limit, 2 Mi,
#: is 3.0x the largest: a model just under 4 Mi took 7.6 s per 256^2 tile on the 2-core machine
#: (so about 30 s for a 512^2 read); at 2 Mi such a read stays under 20 s.
MAX_MACS_PER_PIXEL = 2_097_152


def macs_per_pixel(config: ModelConfig) -> int:
    """Multiply-adds per output pixel of a hash-grid model (``core.models``, pure arithmetic).

    The hash grid's bilinear interpolation (4 per feature of each level), then every Linear
    layer (inputs x outputs) and 3x3 convolution (9 x inputs x outputs) the model builds, each
    counted once per pixel of its output (a convolutional model's halo, a few pixels around
    tiles of 256, is not counted).
    """
    z = config.hash.out_dim
    mw, depth = config.mlp_width, config.mlp_depth

    def mlp(n_in: int, width: int, depth: int) -> tuple[int, int]:
        """(cost, output width) of ``core.models._mlp`` without its output layer."""
        if depth == 0:
            return 0, n_in
        return n_in * width + (depth - 1) * width * width, width

    grid = 4 * z
    if config.kind in ("ngp", "engp"):
        cost, d = mlp(z, mw, depth)
        return grid + cost + d * 3
    cw = config.conv_width
    na, nc = max(config.conv_a_depth, 1), max(config.conv_c_depth, 1)
    cnn_a = 9 * (z * cw + (na - 1) * cw * cw)
    mlp_b, _ = mlp(z, mw, depth)
    cnn_c = 9 * ((cw + mw) * cw + (nc - 1) * cw * cw)
    mlp_d, _ = mlp(mw, mw, config.mlp2_depth)
    out = 9 * (cw + mw) * 3
    head = mw * 3 if config.residual else 0
    return grid + cnn_a + mlp_b + cnn_c + mlp_d + out + head


#: The compressive CINR model kind (entropy-coded latent grids; ``coding.latent``).
LATENT_KINDS = ("ccinr",)
#: How latent grids reach full resolution: each grid bilinearly (format 1.2), or coarse to fine
#: through learned 2x filters (format 1.3; ``core.synthesis.upsample_learned``).
UPSAMPLINGS = ("bilinear", "learned")
#: The synthesis' activations: ReLU, or leaky ReLU of negative slope ``LEAKY_SLOPE`` (format 1.4).
LATENT_ACTIVATIONS = ("relu", "leaky_relu")
LEAKY_SLOPE = 0.01
#: How a payload codes its network weights: Exp-Golomb, or range-coded under a zero-mean Laplace
#: of one stored scale per tensor (format 1.5; ``coding.latent``).
WEIGHT_CODINGS = ("expgolomb", "laplace")


#: Smallest side of a first-grid tile (``LatentConfig.latent_tile``), and most tiles along a side
#: (a header cannot ask for more than 64 x 64 streams per block).
MIN_LATENT_TILE = 16
MAX_LATENT_TILES = 64


@dataclass(frozen=True)
class LatentConfig:
    """Architecture of a compressive CINR block: integer latent grids, their CINR synthesis and
    the context model that codes them.

    ``levels`` grids of one channel each, at 1/2**k of the block for k = ``first_level`` ...;
    ``mlp`` is the per-pixel MLP flow's widths, ``conv_width`` x ``conv_layers`` the 3x3
    convolutional flow over the same features (0: the MLP-only, NGP-like synthesis), then
    ``residual_convs`` 3x3 convolutions refine RGB. The context model predicts each latent from
    ``context`` causal neighbours through ``arm_layers`` layers of ``arm_width``. ``side`` is the
    block frame's side (a payload's grids may not be larger). ``upsampling`` is ``bilinear`` or
    ``learned`` (``UPSAMPLINGS``); ``activation`` the synthesis' ``relu`` or ``leaky_relu``
    (``LATENT_ACTIVATIONS``); ``weight_coding`` how the payload codes the networks' weights
    (``WEIGHT_CODINGS``). The synthesis reads each integer latent times ``2**-latent_shift``: a
    finer step in feature units, which the higher quality levels need (format 1.5). With
    ``stabiliser`` the head also reads the upsampled latents: a linear path from them to RGB beside
    the MLP and conv flows, as Cool-chic 5's synthesis has (format 1.7). ``latent_tile`` > 0 codes
    the first grid in independent tiles of that side, each its own stream (format 1.8: a read
    decodes only the tiles under it, and tiles decode on several cores at once).
    """

    kind: str = "ccinr"
    side: int = field(default=1024, metadata={"range": (1, 1 << 14)})
    levels: int = field(default=7, metadata={"range": (1, 12)})
    first_level: int = field(default=0, metadata={"range": (0, 6)})
    mlp: tuple[int, ...] = (24, 24)
    conv_width: int = field(default=8, metadata={"range": (0, 64)})
    conv_layers: int = field(default=1, metadata={"range": (0, 4)})
    residual_convs: int = field(default=2, metadata={"range": (0, 4)})
    context: int = field(default=16, metadata={"range": (1, 24)})
    arm_width: int = field(default=16, metadata={"range": (1, 64)})
    arm_layers: int = field(default=2, metadata={"range": (1, 4)})
    upsampling: str = "bilinear"
    activation: str = "relu"
    weight_coding: str = "expgolomb"
    latent_shift: int = field(default=0, metadata={"range": (0, 4)})
    stabiliser: bool = False
    latent_tile: int = field(default=0, metadata={"range": (0, 1 << 14)})

    def __post_init__(self) -> None:
        if self.latent_tile and not (
            MIN_LATENT_TILE <= self.latent_tile and self.tiles_per_side() <= MAX_LATENT_TILES
        ):
            raise ValueError(
                f"latent_tile must be 0 or at least {MIN_LATENT_TILE} with at most {MAX_LATENT_TILES} "
                f"tiles across the {self.side} px frame, not {self.latent_tile}"
            )
        if self.weight_coding not in WEIGHT_CODINGS:
            raise ValueError(
                f"unknown weight coding {self.weight_coding!r}; choose one of {', '.join(WEIGHT_CODINGS)}"
            )
        if self.kind not in LATENT_KINDS:
            raise ValueError(f"unknown latent model {self.kind!r}")
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(
                f"unknown upsampling {self.upsampling!r}; choose one of {', '.join(UPSAMPLINGS)}"
            )
        if self.activation not in LATENT_ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose one of {', '.join(LATENT_ACTIVATIONS)}"
            )
        if not (1 <= len(self.mlp) <= 4 and all(isinstance(w, int) and 1 <= w <= 128 for w in self.mlp)):
            raise ValueError("mlp must list 1 to 4 widths in [1, 128]")

    def synthesis_planes(self) -> int:
        """Float32 planes of the block's size that synthesising a whole block holds at once on the
        CPU: the upsampled features, the learned upsampling's work (two stacks and a plane) and
        the compiled synthesis' buffers (a padded copy, two conv-flow outputs, RGB and a spare)."""
        conv = self.conv_width if self.conv_layers and self.conv_width else 0
        return 3 * self.levels + 1 + max(self.levels, conv, 3) + 2 * conv + 4

    def tiles_per_side(self) -> int:
        """Most first-grid tiles along one side of the frame (1 without ``latent_tile``)."""
        return -(-self.side // self.latent_tile) if self.latent_tile else 1

    def latent_tiles(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(r0, r1, c0, c1) of the first grid's independently coded tiles for a height x width
        domain, row by row; empty when it is one stream with the other grids (no ``latent_tile``,
        or a first grid of one tile)."""
        t = self.latent_tile
        if not t:
            return []
        h, w = self.grid_shapes(height, width)[0]
        if h <= t and w <= t:
            return []
        return [(r, min(h, r + t), c, min(w, c + t)) for r in range(0, h, t) for c in range(0, w, t)]

    def grid_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Shapes of the latent grids of a height x width domain."""
        return [
            (-(-height // (1 << k)), -(-width // (1 << k)))
            for k in range(self.first_level, self.first_level + self.levels)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        d["mlp"] = list(self.mlp)
        if self.upsampling == "bilinear":
            del d["upsampling"]  # format 1.2's headers, unchanged
        if self.activation == "relu":
            del d["activation"]  # format 1.3's headers, unchanged
        if self.weight_coding == "expgolomb":
            del d["weight_coding"]  # format 1.4's headers, unchanged
        if self.latent_shift == 0:
            del d["latent_shift"]
        if not self.stabiliser:
            del d["stabiliser"]  # format 1.5's headers, unchanged
        if not self.latent_tile:
            del d["latent_tile"]  # format 1.7's headers, unchanged
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        if "mlp" in d:
            d["mlp"] = tuple(d["mlp"])
        return cls(**d)


def latent_macs_per_pixel(config: LatentConfig) -> float:
    """Decoder multiply-adds per pixel of a ccinr block, pure arithmetic (no torch, so that
    ``cinr info`` stays light): the total of ``core.synthesis.macs_per_pixel`` (synthesis
    convolutions, context model per latent times latents per pixel, upsampling)."""
    c = config.levels
    dims = [c, *config.mlp]
    synthesis = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    n_conv = config.conv_layers if config.conv_width > 0 else 0
    cw = config.conv_width
    if n_conv:
        synthesis += 9 * (c * cw + (n_conv - 1) * cw * cw)
    synthesis += (dims[-1] + (cw if n_conv else 0) + (c if config.stabiliser else 0)) * 3
    synthesis += 81 * config.residual_convs
    arm = [config.context] + [config.arm_width] * config.arm_layers
    per_latent = sum(a * b for a, b in zip(arm[:-1], arm[1:])) + arm[-1] * 2
    levels = range(config.first_level, config.first_level + config.levels)
    context = per_latent * sum(4.0**-k for k in levels)
    return synthesis + context + upsampling_macs_per_pixel(config)


def upsampling_macs_per_pixel(config: LatentConfig) -> float:
    """Multiply-adds per pixel of bringing a ccinr block's grids to full resolution: bilinear,
    4 per upsampled channel; learned, 8 per channel and pixel of each doubling's output (4 taps
    a direction), then 4 per channel when the finest grid is coarser than the block."""
    n = config.levels
    if config.upsampling != "learned":
        return 4.0 * sum(1 for k in range(config.first_level, config.first_level + n) if k > 0)
    # Doubling j outputs grid j's size (4**-(first_level + j) per pixel) for n - 1 - j channels.
    cost = sum(8.0 * (n - 1 - j) * 4.0 ** -(config.first_level + j) for j in range(n - 1))
    return cost + (4.0 * n if config.first_level > 0 else 0.0)


def causal_offsets(n: int, half: int = 3) -> list[tuple[int, int]]:
    """The ``n`` causal neighbours (row offset <= 0) nearest a latent, inside a (2*half+1)^2 window."""
    offs = [(-di, dj) for di in range(half, 0, -1) for dj in range(-half, half + 1)]
    offs += [(0, -dj) for dj in range(half, 0, -1)]
    if not 1 <= n <= len(offs):
        raise ValueError(f"context size must be in [1, {len(offs)}]")
    return sorted(sorted(offs, key=lambda o: (o[0] ** 2 + o[1] ** 2, o))[:n])


def context_border(offsets: Sequence[tuple[int, int]]) -> int:
    """Width of the zero border that holds every causal neighbour of a grid's positions."""
    return max(max(abs(di), abs(dj)) for di, dj in offsets)


def int_ranges(cls: type) -> dict[str, tuple[int, int]]:
    """``{field: (lo, hi)}`` of a config dataclass's bounded integer fields."""
    return {f.name: f.metadata["range"] for f in fields(cls) if "range" in f.metadata}
