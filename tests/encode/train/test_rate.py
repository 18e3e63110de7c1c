"""The compiled training rate (``encode.train.rate``): the same bits and gradients as torch's
``ContextModel.bits``."""

from __future__ import annotations

import pytest
import torch

from cinr_codec.core import native
from cinr_codec.core.config import LatentConfig
from cinr_codec.core.synthesis import LatentImage
from cinr_codec.encode.train import rate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_kernel = pytest.mark.skipif(rate._lib() is None, reason="no C compiler: the rate kernel is not built")


def _model(seed: int, side: tuple[int, int], **arch: object) -> LatentImage:
    torch.manual_seed(seed)
    model = LatentImage(LatentConfig(**arch), *side)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.arm.parameters():
            p.normal_(0, 0.4)
        for g in model.latents:
            g.normal_(0, 2.5)  # latents far from the mean too: both of the Laplace's formulas
    return model


def _bits_and_grads(model: LatentImage, native_path: bool) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    ys = model.quantized("ste", 0.2)
    if native_path:
        bits = rate.latent_bits(model.arm, ys, model.offsets)
    else:
        with native.disabled():
            bits = rate.latent_bits(model.arm, ys, model.offsets)
    (bits * 0.37).backward()
    grads = [p.grad.clone() for p in (*model.arm.parameters(), *model.latents)]  # type: ignore[union-attr]
    return bits.item(), grads


@needs_kernel
@pytest.mark.parametrize(
    ("side", "arch"),
    [
        ((48, 40), {}),  # the presets' 16 neighbours, 16 wide, 2 layers
        ((1, 1), {}),  # grids smaller than the context's reach
        ((23, 9), {"context": 12, "arm_width": 8, "arm_layers": 3}),
        ((17, 30), {"context": 24, "arm_width": 20, "arm_layers": 1}),
    ],
)
def test_rate_kernel_matches_torch(side: tuple[int, int], arch: dict[str, object]) -> None:
    model = _model(0, side, **arch)
    got_bits, got = _bits_and_grads(model, True)
    want_bits, want = _bits_and_grads(model, False)
    assert got_bits == pytest.approx(want_bits, rel=1e-5)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-6
    assert any(float(g.abs().max()) > 0 for g in got)  # gradients reached the latents and weights


@needs_kernel
def test_rate_kernel_clamps_the_log_scale_as_torch() -> None:
    """Log-scales past the table's range get no gradient, and probabilities at the floor none."""
    model = _model(1, (20, 20))
    with torch.no_grad():
        model.arm.out.bias.copy_(torch.tensor([0.0, 30.0]))  # every log-scale above the range
    got_bits, got = _bits_and_grads(model, True)
    want_bits, want = _bits_and_grads(model, False)
    assert got_bits == pytest.approx(want_bits, rel=1e-5)
    out_bias_grad = got[len(list(model.arm.parameters())) - 1]
    assert float(out_bias_grad[1]) == 0.0 == float(want[len(want) - len(model.latents) - 1][1])


def test_rate_without_the_kernel_is_the_context_models() -> None:
    model = _model(2, (16, 16), arm_width=80)  # wider than the kernel takes
    ys = [torch.round(g.detach()) for g in model.latents]
    with torch.no_grad():
        assert float(rate.latent_bits(model.arm, ys, model.offsets)) == float(
            model.arm.bits(ys, model.offsets)
        )
