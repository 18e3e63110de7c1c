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


@needs_kernel
def test_vector_exp_and_log_are_within_a_few_ulp() -> None:
    """The kernel's 8-lane e^x, 1 - e^-u and log (the Laplace bins' formulas) against float64,
    over the ranges the rate meets: x in [-100, 90] (clamped to [-87, 88]), u from 2^-16 to 100,
    log of 2^-16 ... 100."""
    import numpy as np

    lib = rate._lib()
    assert lib is not None
    x = np.concatenate(
        [
            np.linspace(-100.0, 90.0, 20000),
            np.geomspace(2.0**-16, 100.0, 20000),
            [0.5, 0.49999997, 1.0, 2.0**-16],
        ]
    ).astype(np.float32)
    x = np.concatenate([x, np.zeros((-len(x)) % 8, np.float32)])
    e, om, lg = (np.empty_like(x) for _ in range(3))
    lib.cinr_rate_vmath(x.ctypes.data, len(x), e.ctypes.data, om.ctypes.data, lg.ctypes.data)
    x64 = x.astype(np.float64)
    a = np.abs(x64)

    def ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
        return np.abs(got.astype(np.float64) - want) / np.spacing(np.abs(want).astype(np.float32)).astype(
            np.float64
        )

    want_e = np.exp(np.clip(x64, -87.0, 88.0))
    assert ulps(e, want_e).max() <= 4
    assert ulps(om, -np.expm1(-a)).max() <= 4
    pos = a >= 2.0**-16
    assert ulps(lg[pos], np.log(a[pos])).max() <= 4
