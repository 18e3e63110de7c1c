"""Configurations of the hash-grid models: plain data, importable without torch.

``HashGridConfig`` (the multiresolution hash grid) and ``ModelConfig`` (which network sits on
it) are what a ``.cinr`` header's ``model`` object stores; the modules that build them
(``core.hashgrid``, ``core.models``) need torch, these do not.
"""

from __future__ import annotations

import math
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


#: The compressive CINR model kind (entropy-coded latent grids; ``coding.latent``).
LATENT_KINDS = ("ccinr",)
#: How latent grids reach full resolution: each grid bilinearly (format 1.2), or coarse to fine
#: through learned 2x filters (format 1.3; ``core.synthesis.LearnedUpsampling``).
UPSAMPLINGS = ("bilinear", "learned")


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
    ``learned`` (``UPSAMPLINGS``).
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

    def __post_init__(self) -> None:
        if self.kind not in LATENT_KINDS:
            raise ValueError(f"unknown latent model {self.kind!r}")
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(
                f"unknown upsampling {self.upsampling!r}; choose one of {', '.join(UPSAMPLINGS)}"
            )
        if not (1 <= len(self.mlp) <= 4 and all(isinstance(w, int) and 1 <= w <= 128 for w in self.mlp)):
            raise ValueError("mlp must list 1 to 4 widths in [1, 128]")

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
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        if "mlp" in d:
            d["mlp"] = tuple(d["mlp"])
        return cls(**d)


def causal_offsets(n: int, half: int = 3) -> list[tuple[int, int]]:
    """The ``n`` causal neighbours (row offset <= 0) nearest a latent, inside a (2*half+1)^2 window."""
    offs = [(-di, dj) for di in range(half, 0, -1) for dj in range(-half, half + 1)]
    offs += [(0, -dj) for dj in range(half, 0, -1)]
    if not 1 <= n <= len(offs):
        raise ValueError(f"context size must be in [1, {len(offs)}]")
    return sorted(sorted(offs, key=lambda o: (o[0] ** 2 + o[1] ** 2, o))[:n])


def int_ranges(cls: type) -> dict[str, tuple[int, int]]:
    """``{field: (lo, hi)}`` of a config dataclass's bounded integer fields."""
    return {f.name: f.metadata["range"] for f in fields(cls) if "range" in f.metadata}
