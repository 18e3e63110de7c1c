"""core.synthesis: the learned upsampling's arithmetic (what formats/cinr-v1.md §5.4 specifies)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cinr_codec.core.config import LatentConfig
from cinr_codec.core.synthesis import BILINEAR_TAPS, Synthesis, double, macs_per_pixel, upsample_learned
from cinr_codec.encode.train.latent import PRESET_ARCH


def _double_reference(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """The spec's formula, one axis at a time, in float64."""

    def axis(a: np.ndarray) -> np.ndarray:  # doubles the last axis
        n = a.shape[-1]
        out = np.zeros(a.shape[:-1] + (2 * n,))
        at = lambda i: a[..., min(max(i, 0), n - 1)]  # noqa: E731
        f0, f1, f2, f3 = taps
        for i in range(n):
            out[..., 2 * i] = f0 * at(i) + f1 * at(i - 1) + f2 * at(i + 1) + f3 * at(i - 2)
            out[..., 2 * i + 1] = f0 * at(i) + f1 * at(i + 1) + f2 * at(i - 1) + f3 * at(i + 2)
        return out

    return np.swapaxes(axis(np.swapaxes(axis(x), -1, -2)), -1, -2)


def test_bilinear_taps_double_as_bilinear_interpolation() -> None:
    x = torch.randn(1, 3, 7, 5)
    got = double(x, torch.tensor(BILINEAR_TAPS))
    want = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert got.shape == (1, 3, 14, 10)
    assert torch.allclose(got, want, atol=1e-6)


def test_double_follows_the_specified_formula() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 6, 9, generator=g, dtype=torch.float64)
    taps = torch.randn(4, generator=g, dtype=torch.float64)
    got = double(x, taps).numpy()
    assert np.allclose(got, _double_reference(x.numpy(), taps.numpy()), atol=1e-12)


def test_learned_upsampling_puts_the_finest_grid_first_and_crops_odd_sizes() -> None:
    shapes = [(13, 10), (7, 5), (4, 3)]  # ceil halvings of 13 x 10
    grids = [torch.full((1, h, w), float(k + 1)) for k, (h, w) in enumerate(shapes)]
    filters = torch.tensor([BILINEAR_TAPS] * 2)
    out = upsample_learned(grids, filters, 13, 10)
    assert out.shape == (1, 3, 13, 10)
    # Constant grids stay constant through any filter whose taps sum to 1 per phase.
    for k in range(3):
        assert torch.allclose(out[0, k], torch.full((13, 10), float(k + 1)))


def test_learned_filters_are_stored_weights_and_cost_few_multiply_adds() -> None:
    cfg = LatentConfig(side=256, **PRESET_ARCH)
    assert cfg.upsampling == "learned"
    syn = Synthesis(cfg)
    assert syn.up is not None and tuple(syn.up.shape) == (cfg.levels - 1, 4)
    assert "up" in dict(syn.named_parameters())
    bilinear = macs_per_pixel(LatentConfig(side=256, **{**PRESET_ARCH, "upsampling": "bilinear"}))
    learned = macs_per_pixel(cfg)
    assert 24 < learned["upsampling"] < 80 and bilinear["upsampling"] == 24
    assert learned["total"] <= 2500  # the decoder budget
    assert "upsampling" not in LatentConfig(side=64).to_dict()  # format 1.2 headers unchanged
