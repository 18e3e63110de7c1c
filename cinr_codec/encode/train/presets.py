"""Named recipes for each model: architecture, hash grid and training schedule.

``paper`` reproduces the authors' notebook. ``default`` is our CPU-friendly recipe and
``fast`` a small one for tests and demos; all resolve the hash grid against the image size.
The numbers behind the defaults are in ``docs/architecture.md`` and ``benchmarks/results/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...core.config import MODEL_KINDS, HashGridConfig, ModelConfig


@dataclass(frozen=True)
class Preset:
    """A named recipe: architecture, hash grid (resolved against the image size) and training."""

    name: str
    kind: str
    arch: dict[str, Any]
    hash: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)

    def resolve_hash(self, height: int, width: int) -> HashGridConfig:
        """Concrete hash grid for an image; ``max_resolution`` is a fraction of its longest side."""
        h = dict(self.hash)
        if "max_resolution" in h:
            frac = h.pop("max_resolution")
            side = max(height, width)
            n_max = max(float(h["base_resolution"]), frac * side)
            return HashGridConfig.from_max_resolution(
                h["n_levels"], h["n_features"], h["log2_table_size"], h["base_resolution"], n_max
            )
        return HashGridConfig(**h)

    def model_config(
        self,
        height: int,
        width: int,
        hash_config: HashGridConfig | None = None,
        arch: dict[str, Any] | None = None,
    ) -> ModelConfig:
        """ModelConfig for an image of this size (optionally another hash grid or architecture)."""
        hc = hash_config or self.resolve_hash(height, width)
        return ModelConfig(kind=self.kind, hash=hc, **{**self.arch, **(arch or {})})


# Hash grid shared by the default presets of every model, so that `benchmarks.models`
# compares networks at equal hash configuration.
DEFAULT_HASH = {
    "n_levels": 16,
    "n_features": 2,
    "log2_table_size": 15,
    "base_resolution": 8,
    "max_resolution": 0.5,
}
# The fast presets share the default grid and differ in network width and step count
# (demo: 27.2 dB in 16 s on a 512^2 crop of the bundled sample; a smaller L12 T14 grid
# gave 25.7 dB in 14 s).
FAST_HASH = dict(DEFAULT_HASH)
# The high-quality preset (GPU): a 4x larger table per level and 10x the fast preset's steps
# on 4x larger batches; ~20 s per 1024^2 block on an H100-class GPU (docs/architecture.md).
HIGH_HASH = {**DEFAULT_HASH, "log2_table_size": 17}
PAPER_HASH = {
    "n_levels": 24,
    "n_features": 2,
    "log2_table_size": 24,
    "base_resolution": 4,
    "per_level_scale": 1.5,
}

# NGP's recipe: Adam on random pixels (4096 per step measured better than 16384 at equal
# time: 37.8 vs 34.7 dB after 40 s on a 512^2 H&E crop; network lr 3e-3 better than 1e-3:
# 37.39 vs 36.81 dB after 2000 steps on a TCGA crop), cosine decay.
_NGP_TRAIN = {
    "sampling": "pixels",
    "batch_pixels": 4096,
    "lr_hash": 1e-2,
    "lr_net": 3e-3,
    "betas": (0.9, 0.99),
    "eps": 1e-15,
    "schedule": "cosine",
    "steps": 3000,
}
# The default presets train the hash tables at 2e-2 (fast and high keep 1e-2, as measured for
# the encoder): at the equivalent of 120 s on a 512^2 crop, NGP 40.24 -> 40.86 dB (TCGA) and
# 31.96 -> 32.45 dB (CMU); CINR gains as much or more (docs/architecture.md).
_NGP_DEFAULT_TRAIN = {**_NGP_TRAIN, "lr_hash": 2e-2}

# CINR's CPU recipe (docs/architecture.md): phase 1 trains the per-pixel part (hash grid,
# MLP flow, residual RGB head) on random pixels for `pixel_phase` of the run; phase 2 trains
# the CNN flows on patches (paper-style sampling) while the per-pixel part continues at
# `phase2_lr_*` times its learning rate. Both phases use their own cosine decay.
_CINR_TRAIN = {
    "pixel_phase": 0.9,
    "batch_pixels": 4096,
    "sampling": "patches",
    "patch": 64,
    "batch_patches": 4,
    "overlap": 0.2,
    "jitter": 0.1,
    "lr_hash": 1e-2,
    "lr_net": 3e-3,
    "lr_conv": 2e-3,
    "phase2_lr_hash": 0.1,
    "phase2_lr_net": 0.1,
    "phase2_warmup": 0.3,
    "betas": (0.9, 0.99),
    "eps": 1e-15,
    "schedule": "cosine",
    "steps": 3000,
}

# CINR's architecture for the high-quality GPU preset (measured in benchmarks/results/gpu/).
_CINR_ARCH = {
    "conv_width": 16,
    "mlp_width": 64,
    "mlp_depth": 2,
    "mlp2_depth": 1,
    "activation": "relu",
    "residual": True,
}
# The default (CPU) preset widens the MLP flow to 96: at equal time it beat 64 and 128
# (TCGA crop 41.60 / 41.95 / 41.52 dB, CMU crop 32.76 / 33.01 / 32.87 dB; a third MLP
# layer or 2048-pixel batches were worse), docs/architecture.md.
_CINR_DEFAULT_ARCH = {**_CINR_ARCH, "mlp_width": 96}
_CINR_DEFAULT_TRAIN = {**_CINR_TRAIN, "lr_hash": 2e-2}

PRESETS: dict[str, dict[str, Preset]] = {
    "ngp": {
        "default": Preset(
            "default", "ngp", {"mlp_width": 128, "mlp_depth": 4}, DEFAULT_HASH, _NGP_DEFAULT_TRAIN
        ),
        "fast": Preset(
            "fast", "ngp", {"mlp_width": 32, "mlp_depth": 2}, FAST_HASH, {**_NGP_TRAIN, "steps": 1000}
        ),
        "high": Preset(
            "high",
            "ngp",
            {"mlp_width": 64, "mlp_depth": 2},
            HIGH_HASH,
            {**_NGP_TRAIN, "steps": 10000, "batch_pixels": 16384},
        ),
        "paper": Preset("paper", "ngp", {"mlp_width": 128, "mlp_depth": 4}, PAPER_HASH, _NGP_TRAIN),
    },
    "engp": {
        "default": Preset(
            "default", "engp", {"mlp_width": 256, "mlp_depth": 8}, DEFAULT_HASH, _NGP_DEFAULT_TRAIN
        ),
        "fast": Preset(
            "fast", "engp", {"mlp_width": 64, "mlp_depth": 4}, FAST_HASH, {**_NGP_TRAIN, "steps": 1000}
        ),
        "high": Preset(
            "high",
            "engp",
            {"mlp_width": 256, "mlp_depth": 8},
            HIGH_HASH,
            {**_NGP_TRAIN, "steps": 10000, "batch_pixels": 16384},
        ),
        "paper": Preset("paper", "engp", {"mlp_width": 256, "mlp_depth": 8}, PAPER_HASH, _NGP_TRAIN),
    },
    "cinr": {
        "default": Preset("default", "cinr", _CINR_DEFAULT_ARCH, DEFAULT_HASH, _CINR_DEFAULT_TRAIN),
        "fast": Preset(
            "fast",
            "cinr",
            {
                "conv_width": 8,
                "mlp_width": 32,
                "mlp_depth": 2,
                "mlp2_depth": 1,
                "activation": "relu",
                "residual": True,
            },
            FAST_HASH,
            {**_CINR_TRAIN, "steps": 1000},
        ),
        "high": Preset(
            "high",
            "cinr",
            _CINR_ARCH,
            HIGH_HASH,
            {**_CINR_TRAIN, "steps": 10000, "batch_pixels": 16384, "batch_patches": 16},
        ),
        "paper": Preset(
            "paper",
            "cinr",
            {
                "conv_width": 128,
                "mlp_width": 128,
                "mlp_depth": 3,
                "mlp2_depth": 1,
                "activation": "sine",
                "w0": 30.0,
                "bias": False,
                "residual": False,
            },
            PAPER_HASH,
            {
                "sampling": "patches",
                "patch": 128,
                "batch_patches": 100,
                "overlap": 0.2,
                "jitter": 0.1,
                "lr_hash": 1e-5,
                "lr_net": 1e-5,
                "betas": (0.9, 0.99),
                "eps": 1e-8,
                "schedule": "none",
                "steps": 20000,
            },
        ),
    },
}


def get_preset(model: str, name: str | None = None) -> Preset:
    """Look up a preset by model and name (``None`` means ``default``)."""
    if model not in MODEL_KINDS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_KINDS)}")
    name = name or "default"
    try:
        return PRESETS[model][name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r} for {model}; choose one of {', '.join(PRESETS[model])}"
        ) from None
