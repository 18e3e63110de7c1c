"""The compiled training synthesis (``encode.train.synthesis_grad``): the same pixels and
gradients as torch's ``Synthesis.forward``."""

from __future__ import annotations

import pytest
import torch

from cinr_codec.core import native
from cinr_codec.core.config import LatentConfig
from cinr_codec.core.synthesis import Synthesis
from cinr_codec.encode.train import synthesis_grad as SG

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_kernel = pytest.mark.skipif(
    SG._lib() is None, reason="no C compiler: the training synthesis is not built"
)


def _run(net: Synthesis, f: torch.Tensor, kernel: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    x = f.clone().requires_grad_()
    if kernel:
        out = SG.synthesize(net, x)
    else:
        with native.disabled():
            out = SG.synthesize(net, x)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    grads = [x.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]
    return out.detach(), [g.clone() for g in grads if g is not None]


@needs_kernel
@pytest.mark.parametrize(
    "arch",
    [
        {},  # the presets: MLP 24-24, one 3x3 flow of 8, stabiliser, two residual convs, leaky ReLU
        {"activation": "relu", "stabiliser": False},
        {"conv_width": 0, "residual_convs": 0, "mlp": (13,)},
        {"mlp": (16, 7, 9), "conv_width": 5, "residual_convs": 3, "levels": 4},
    ],
)
@pytest.mark.parametrize(("h", "w"), [(37, 53), (1, 1), (1, 9), (10, 2)])
def test_training_synthesis_matches_torch(arch: dict[str, object], h: int, w: int) -> None:
    torch.manual_seed(0)
    net = Synthesis(LatentConfig(**arch))  # type: ignore[arg-type]
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.4)
    f = torch.randn(1, net.mlp[0].in_channels, h, w)
    got, got_g = _run(net, f, True)
    want, want_g = _run(net, f, False)
    assert got.shape == want.shape == (1, 3, h, w)
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    assert len(got_g) == len(want_g)
    for a, b in zip(got_g, want_g, strict=True):
        assert a.shape == b.shape
        assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-6
    assert float(got_g[0].abs().max()) > 0  # the features' gradient reached the latents' side


def test_training_synthesis_falls_back_to_torch() -> None:
    net = Synthesis(LatentConfig(conv_layers=2))  # two 3x3 feature layers: beyond the kernel
    f = torch.randn(1, net.mlp[0].in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(SG.synthesize(net, f), net(f))
