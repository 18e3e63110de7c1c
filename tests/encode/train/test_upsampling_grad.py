"""The compiled training upsampling (``encode.train.upsampling_grad``): the same features and
gradients (grids and taps) as torch's ``upsample_learned``."""

from __future__ import annotations

import pytest
import torch

from cinr_codec.core import native
from cinr_codec.core.config import LatentConfig
from cinr_codec.core.synthesis import Synthesis
from cinr_codec.encode.train import upsampling_grad as UG

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_kernel = pytest.mark.skipif(
    UG._lib() is None, reason="no C compiler: the training upsampling is not built"
)


def _run(
    net: Synthesis, grids: list[torch.Tensor], h: int, w: int, kernel: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    xs = [g.clone().requires_grad_() for g in grids]
    if kernel:
        out = UG.features(net, xs, h, w)
    else:
        with native.disabled():
            out = UG.features(net, xs, h, w)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    grads = [x.grad for x in xs] + ([net.up.grad] if net.up is not None else [])
    assert all(g is not None for g in grads)
    return out.detach(), [g.clone() for g in grads if g is not None]


@needs_kernel
@pytest.mark.parametrize("arch", [{}, {"levels": 3, "latent_shift": 2}, {"levels": 1}])
@pytest.mark.parametrize(("h", "w"), [(37, 53), (1, 1), (1, 9), (10, 2), (64, 64)])
def test_training_upsampling_matches_torch(arch: dict[str, object], h: int, w: int) -> None:
    torch.manual_seed(0)
    net = Synthesis(LatentConfig(upsampling="learned", **arch))  # type: ignore[arg-type]
    if net.up is not None:
        with torch.no_grad():
            net.up.add_(torch.randn_like(net.up) * 0.2)  # asymmetric taps: every tap's gradient differs
    cfg = LatentConfig(upsampling="learned", side=max(h, w), **arch)  # type: ignore[arg-type]
    grids = [torch.randn(1, a, b) * 3 for a, b in cfg.grid_shapes(h, w)]
    got, got_g = _run(net, grids, h, w, True)
    want, want_g = _run(net, grids, h, w, False)
    assert got.shape == want.shape == (1, len(grids), h, w)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    assert len(got_g) == len(want_g)
    for a, b in zip(got_g, want_g, strict=True):
        assert a.shape == b.shape
        assert float((a - b).norm()) <= 1e-5 * float(b.norm()) + 1e-6


def test_bilinear_upsampling_and_other_sizes_stay_on_torch() -> None:
    """Where the kernel does not apply (bilinear upsampling; an output not grid 0's size) the
    features are torch's, gradients included."""
    net = Synthesis(LatentConfig(upsampling="bilinear", levels=3))
    grids = [torch.randn(1, 8, 8, requires_grad=True), torch.randn(1, 4, 4), torch.randn(1, 2, 2)]
    out = UG.features(net, grids, 8, 8)
    assert out.grad_fn is not None and "Upsample" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, net.features(grids, 8, 8))
    learned = Synthesis(LatentConfig(upsampling="learned", levels=3))
    out = UG.features(learned, grids, 16, 16)  # a bilinear resize after the doublings
    torch.testing.assert_close(out, learned.features(grids, 16, 16))


@needs_kernel
def test_grids_the_doublings_cannot_reach_are_refused() -> None:
    """A grid more than twice the next coarser one (no config makes it) is refused before the
    kernel writes anything."""
    net = Synthesis(LatentConfig(upsampling="learned", levels=2))
    grids = [torch.zeros(1, 10, 10), torch.zeros(1, 2, 2)]
    with pytest.raises(ValueError, match="refused grids of shapes"):
        UG.features(net, grids, 10, 10)
