"""core.synthesis: the learned upsampling's arithmetic (what formats/cinr-v1.md §5.4 specifies), and the
compiled synthesis against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cinr_codec.core.config import LatentConfig
from cinr_codec.core.synthesis import (
    BILINEAR_TAPS,
    Synthesis,
    _synthesis_lib,
    double,
    macs_per_pixel,
    upsample_learned,
)
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


# -- the compiled synthesis (``_synthesis.c``) against torch ---------------------------------------

needs_kernel = pytest.mark.skipif(_synthesis_lib() is None, reason="needs a C compiler (compiled synthesis)")


@needs_kernel
@pytest.mark.parametrize(
    "arch",
    [
        {},
        {"stabiliser": True, "activation": "leaky_relu"},
        {"conv_layers": 2, "residual_convs": 3, "mlp": (16, 24, 13)},
        {"conv_width": 0, "residual_convs": 0},
        {"conv_width": 5, "mlp": (7,), "levels": 3, "residual_convs": 1},
        {"mlp": (8, 20), "conv_width": 3, "stabiliser": True},  # the MLP's blocks of 6 then 2
    ],
)
def test_compiled_synthesis_matches_torch(arch: dict[str, object]) -> None:
    """Every architecture the format allows (MLP depths and widths, conv flows, residual convs,
    stabiliser, leaky ReLU) and window shapes around the kernel's 16-pixel blocks (edges,
    single pixels): the same pixels as torch's, up to a rounding step on a few."""
    from cinr_codec.core import native

    torch.manual_seed(0)
    net = Synthesis(LatentConfig(**arch)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    for h, w in [(70, 53), (1, 1), (16, 16), (3, 37), (40, 1)]:
        f = torch.randn(1, net.mlp[0].in_channels, h, w)
        got = net.pixels(f)
        with native.disabled():
            want = net.pixels(f)
        with torch.inference_mode():
            direct = (net(f)[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert got.shape == want.shape == (h, w, 3) and got.dtype == np.uint8
        assert (want == direct).all()
        diff = np.abs(got.astype(int) - want)
        assert diff.max() <= 1 and (diff > 0).mean() < 5e-3  # a few rounding flips (1-2 in 10^4 seen)
        assert 0 < got.std()  # not a constant image: the comparison means something


@needs_kernel
def test_compiled_synthesis_rounds_half_to_even_and_clamps() -> None:
    """The output's conversion to uint8 (8 pixels at a time, then one at a time): a head whose only
    non-zero weights are its biases gives each pixel clamp(bias) * 255 rounded half to even."""
    net = Synthesis(LatentConfig(residual_convs=1)).eval()
    biases = [0.5, 1.5 / 255, -3.0, 7.0, 2.5 / 255, 254.5 / 255]  # 127.5 -> 128, 1.5 -> 2, 0, 255, ...
    for first in (0, 3):
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
            net.head.bias.copy_(torch.tensor(biases[first : first + 3]))
        f = torch.randn(1, net.mlp[0].in_channels, 3, 37)  # 37 columns: four blocks of 8, then 5 alone
        got = net.pixels(f)
        want = np.round(
            np.clip(np.float32(biases[first : first + 3]) * np.float32(255), 0, 255)
        )  # half to even
        assert (got == want.astype(np.uint8)).all(), (got[0, 0], want)


@needs_kernel
@pytest.mark.parametrize(("height", "width"), [(512, 512), (37, 53), (1, 1), (5, 300)])
def test_compiled_learned_upsampling_matches_torch(height: int, width: int) -> None:
    """The kernel's learned upsampling (whole domains and windows: inside, at the far corner)
    equals torch's to float rounding; with gradients on, training keeps torch's path."""
    from cinr_codec.core import native

    torch.manual_seed(1)
    cfg = LatentConfig(upsampling="learned", latent_shift=1)
    net = Synthesis(cfg).eval()
    with torch.no_grad():
        assert net.up is not None
        net.up.copy_(torch.randn_like(net.up) * 0.5)
    grids = [torch.randint(-20, 20, (1, h, w)).float() for h, w in cfg.grid_shapes(height, width)]
    windows = [
        (0, height, 0, width),
        (height // 3, height // 3 + max(1, height // 2), width // 5, width // 5 + max(1, width // 3)),
        (height - 1, height, width - 1, width),
    ]
    with torch.inference_mode():
        got = [net.features(grids, height, width)] + [
            net.window_features(grids, w[:2], w[2:]) for w in windows
        ]
        with native.disabled():
            want = [net.features(grids, height, width)] + [
                net.window_features(grids, w[:2], w[2:]) for w in windows
            ]
    for a, b in zip(got, want, strict=True):
        assert a is not None and b is not None and a.shape == b.shape
        assert float((a - b).abs().max()) < 1e-4 * max(1.0, float(b.abs().max()))
    params = [g.clone().requires_grad_() for g in grids]
    net.features(params, height, width).sum().backward()  # torch's path: gradients reach the grids
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("t", [0.05, 0.3, 1.0])
def test_soft_round_and_its_written_out_derivative_match_the_formula(t: float) -> None:
    """``soft_round`` (an autograd function with its derivative by hand) against the composed
    formula autograd differentiates: the same values and gradients to float rounding."""
    import math

    from cinr_codec.core.synthesis import soft_round

    torch.manual_seed(0)
    x = (torch.randn(5000) * 3).requires_grad_(True)
    g = torch.randn(5000)

    def formula(v: torch.Tensor) -> torch.Tensor:
        fv = torch.floor(v)
        return fv + 0.5 * torch.tanh((v - fv - 0.5) / t) / math.tanh(1 / (2 * t)) + 0.5

    want = formula(formula(x) + 0.25)
    (want_grad,) = torch.autograd.grad(want, x, g)
    got = soft_round(soft_round(x, t) + 0.25, t)
    (got_grad,) = torch.autograd.grad(got, x, g)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got_grad, want_grad, atol=1e-4, rtol=1e-4)
    assert not torch.equal(got_grad, torch.zeros_like(got_grad))
    assert torch.equal(soft_round(torch.tensor([-1.5, 0.0, 2.0]), 1e-3), torch.tensor([-1.5, 0.0, 2.0]))


def test_kumaraswamy_noise_lies_in_half_a_step_and_narrows_with_a() -> None:
    """The noise stays in [-1/2, 1/2], is uniform at a = 1, peaks at 0 and gathers there as a
    grows, and carries no gradient."""
    from cinr_codec.core.synthesis import kumaraswamy_noise

    torch.manual_seed(0)
    like = torch.zeros(200_000, requires_grad=True)
    spread = {}
    for a in (1.0, 2.0, 4.0):
        n = kumaraswamy_noise(like, a)
        assert not n.requires_grad
        assert float(n.min()) >= -0.5 and float(n.max()) <= 0.5
        spread[a] = float(n.abs().mean())
        if a > 1:  # its mode is 0 (the law's mode 1/2, shifted)
            assert int(torch.histc(n, bins=20, min=-0.5, max=0.5).argmax()) in (9, 10)
    assert abs(spread[1.0] - 0.25) < 0.005  # uniform on [-1/2, 1/2]
    assert spread[4.0] < spread[2.0] < spread[1.0]
