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


def int_ranges(cls: type) -> dict[str, tuple[int, int]]:
    """``{field: (lo, hi)}`` of a config dataclass's bounded integer fields."""
    return {f.name: f.metadata["range"] for f in fields(cls) if "range" in f.metadata}
