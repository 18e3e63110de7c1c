"""The greedy rate-distortion search over rounded latents (encode/train/rdo.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cinr_codec.core.config import LatentConfig, context_border
from cinr_codec.core.synthesis import LatentImage, gather_context, laplace_bits
from cinr_codec.encode.train import latent as L
from cinr_codec.encode.train.rdo import _footprints, _tile_sums, bits_at, refine_latents

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained(img: np.ndarray, steps: int = 40) -> L.LatentFit:
    cfg = LatentConfig(side=max(img.shape[:2]), **L.PRESET_ARCH)
    return L.fit_latents(img, cfg, L.QUALITY_LAMBDAS["q3"], steps=steps)


def _maps(
    model: LatentImage, ys: list[torch.Tensor], img: np.ndarray, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    syn = model.synthesis
    px = torch.from_numpy(syn.pixels(syn.features(ys, model.height, model.width))).float() / 255
    se = ((px - torch.from_numpy(img).float() / 255) ** 2).sum(-1)
    mean, ls = model.arm(gather_context(ys[k][0], model.offsets))
    return se, laplace_bits(ys[k].reshape(-1), mean, ls).view(ys[k].shape[-2:])


@pytest.mark.parametrize("k", [0, 1, 2])
def test_candidates_of_a_group_act_independently_inside_their_tiles(tissue_crop: np.ndarray, k: int) -> None:
    """Moving a whole group at once changes each candidate's tile by what moving that candidate
    alone does, and nothing outside the tiles: so one render prices every candidate."""
    img = np.ascontiguousarray(tissue_crop[:70, :90])
    model = _trained(img).model
    with torch.no_grad():
        ys = [torch.round(g.detach()) for g in model.latents]
        lv = _footprints(model)[k]
        b = context_border(model.offsets)
        gh, gw = ys[k].shape[-2:]
        orow, ocol = 1, 2
        counts = (-(-(gh - orow) // lv.S), -(-(gw - ocol) // lv.S))
        se0, bits0 = _maps(model, ys, img, k)
        group = ys[k].clone()
        group[0, orow :: lv.S, ocol :: lv.S] += 1
        se_g, bits_g = _maps(model, [*ys[:k], group, *ys[k + 1 :]], img, k)
        dse = _tile_sums(
            se_g - se0, (lv.step * orow + lv.start, lv.step * ocol + lv.start), lv.S * lv.step, counts
        )
        dbits = _tile_sums(bits_g - bits0, (orow - b, ocol - b), lv.S, counts)
        # Everything that changed lies in some tile: the tiles' sums add up to the whole change.
        assert float(dse.sum()) == pytest.approx(float((se_g - se0).sum()), abs=1e-6)
        assert float(dbits.sum()) == pytest.approx(float((bits_g - bits0).sum()), abs=1e-3)
        changed = 0
        for ti in range(counts[0]):
            for tj in range(counts[1]):
                alone = ys[k].clone()
                alone[0, orow + ti * lv.S, ocol + tj * lv.S] += 1
                se_a, bits_a = _maps(model, [*ys[:k], alone, *ys[k + 1 :]], img, k)
                assert float(dse[ti, tj]) == pytest.approx(float((se_a - se0).sum()), abs=1e-6)
                assert float(dbits[ti, tj]) == pytest.approx(float((bits_a - bits0).sum()), abs=1e-3)
                changed += int((se_a != se0).any())
        assert changed > 0  # the test moved something that shows


@pytest.mark.parametrize("sign", ["both", "predicted"])
def test_the_search_lowers_the_loss_and_leaves_integers(tissue_crop: np.ndarray, sign: str) -> None:
    img = np.ascontiguousarray(tissue_crop[:48, :40])
    fit = _trained(img, steps=30)
    before = [g.detach().round().clone() for g in fit.model.latents]
    out = refine_latents(fit.model, img, fit.lam, sweeps=2, sign=sign)
    after = [g.detach() for g in fit.model.latents]
    assert out["moved"] > 0 and out["loss_after"] < out["loss_before"]
    moved = sum(int((a != b).sum()) for a, b in zip(after, before, strict=True))
    assert moved > 0 and all(bool((a == a.round()).all()) for a in after)
    assert all(float((a - b).abs().max()) <= 2 for a, b in zip(after, before, strict=True))
    # The reported loss is the model's: decoded 8-bit pixels and the context model's bits.
    syn, model = fit.model.synthesis, fit.model
    with torch.no_grad():
        px = syn.pixels(syn.features(after, model.height, model.width)).astype(np.float64) / 255
        mse = float(((px - img / 255.0) ** 2).mean())
        bits = float(model.arm.bits(after, model.offsets))
    assert out["loss_after"] == pytest.approx(mse + fit.lam * bits / img[..., 0].size, rel=1e-5)


def test_later_sweeps_search_only_the_grids_asked(tissue_crop: np.ndarray) -> None:
    """``later_levels=1``: the second sweep moves latents of the finest grid only, so the coarser
    grids end as one sweep left them."""
    img = np.ascontiguousarray(tissue_crop[:48, :48])
    fit = _trained(img, steps=30)
    one, two = copy.deepcopy(fit.model), copy.deepcopy(fit.model)
    refine_latents(one, img, fit.lam, sweeps=1, levels=3, sign="predicted")
    out = refine_latents(two, img, fit.lam, sweeps=2, levels=3, later_levels=1, sign="predicted")
    assert out["loss_after"] <= refine_latents(copy.deepcopy(one), img, fit.lam, sweeps=0)["loss_after"]
    assert all(torch.equal(a, b) for a, b in zip(one.latents[1:], two.latents[1:], strict=True))
    assert not torch.equal(one.latents[0], two.latents[0])  # the second sweep moved the finest


def test_no_sweeps_change_nothing(tissue_crop: np.ndarray) -> None:
    img = np.ascontiguousarray(tissue_crop[:32, :32])
    fit = _trained(img, steps=10)
    before = [g.detach().round().clone() for g in fit.model.latents]
    out = refine_latents(fit.model, img, fit.lam, sweeps=0)
    assert out["moved"] == 0 and out["loss_after"] == pytest.approx(out["loss_before"])
    assert all(torch.equal(a.detach(), b) for a, b in zip(fit.model.latents, before, strict=True))


def test_without_the_compiled_kernels_the_search_runs_on_torch(tissue_crop: np.ndarray) -> None:
    """GPUs and machines without a compiler render through torch: the search works there too."""
    from cinr_codec.core import native

    img = np.ascontiguousarray(tissue_crop[:40, :40])
    fit = _trained(img, steps=20)
    for sign in ("both", "predicted"):
        model = copy.deepcopy(fit.model)
        with native.disabled():
            out = refine_latents(model, img, fit.lam, sweeps=1, levels=1, sign=sign)
        assert out["moved"] > 0 and out["loss_after"] < out["loss_before"]


def test_bits_at_some_positions_equal_the_whole_grids_there(tissue_crop: np.ndarray) -> None:
    """The search prices a group's bits at the positions it changes only; those equal the whole
    grid's bits there, at the grid's edges (the zero border) too."""
    img = np.ascontiguousarray(tissue_crop[:45, :61])
    model = _trained(img, steps=20).model
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for g in model.latents:
            y = torch.round(g.detach()) + torch.randint(-2, 3, g.shape, generator=gen).float()
            gh, gw = y.shape[-2:]
            rows = torch.cat(
                [torch.tensor([0, 0, gh - 1, gh - 1]), torch.randint(0, gh, (40,), generator=gen)]
            )
            cols = torch.cat(
                [torch.tensor([0, gw - 1, 0, gw - 1]), torch.randint(0, gw, (40,), generator=gen)]
            )
            mean, ls = model.arm(gather_context(y[0], model.offsets))
            whole = laplace_bits(y.reshape(-1), mean, ls).view(gh, gw)
            some = bits_at(model.arm, model.offsets, y, rows, cols)
            assert torch.allclose(some, whole[rows, cols], rtol=1e-5, atol=1e-5)


def test_an_unknown_search_direction_is_refused(tissue_crop: np.ndarray) -> None:
    img = np.ascontiguousarray(tissue_crop[:16, :16])
    fit = _trained(img, steps=2)
    with pytest.raises(ValueError, match="unknown search direction 'up'"):
        refine_latents(fit.model, img, fit.lam, sign="up")


@pytest.mark.parametrize("sign", ["both", "predicted"])
def test_a_level_that_reaches_no_pixel_is_searched_for_its_bits_alone(
    tissue_crop: np.ndarray, sign: str
) -> None:
    """Rounded to zero, one doubling's upsampling taps cut every coarser level off the pixels (the
    networks' quantizer may choose that): the search still runs (it failed on the empty reach),
    and moves on those levels change bits only, never the pixels."""
    img = np.ascontiguousarray(tissue_crop[:48, :48])
    fit = _trained(img, steps=20)
    model = fit.model
    assert model.synthesis.up is not None
    with torch.no_grad():
        model.synthesis.up[2].zero_()  # the doubling into grid 2: grids 3 and up reach nothing
    syn = model.synthesis
    cut = [torch.round(g.detach()) for g in model.latents]
    with torch.no_grad():
        px_before = syn.pixels(syn.features(cut, model.height, model.width))
    out = refine_latents(model, img, fit.lam, sweeps=1, sign=sign)
    assert out["loss_after"] <= out["loss_before"]
    after = [g.detach() for g in model.latents]
    assert all(bool((a == a.round()).all()) for a in after)
    with torch.no_grad():
        coarse_only = [*cut[:3], *after[3:]]  # only the cut-off levels' moves
        px_coarse = syn.pixels(syn.features(coarse_only, model.height, model.width))
    np.testing.assert_array_equal(px_coarse, px_before)


@pytest.mark.parametrize("upsampling", ["learned", "bilinear"])
def test_one_levels_feature_channel_alone_equals_it_among_all(upsampling: str) -> None:
    """``level_features`` (grid k, the finer grids as zeros, the coarser left out) gives channel k
    of the whole features bit for bit: what lets a search trial make only that channel."""
    from cinr_codec.encode.train.rdo import level_features

    torch.manual_seed(2)
    cfg = LatentConfig(side=96, **{**L.PRESET_ARCH, "upsampling": upsampling})
    model = LatentImage(cfg, 80, 96)
    syn = model.synthesis
    with torch.no_grad():
        if syn.up is not None:
            syn.up.copy_(torch.randn_like(syn.up) * 0.5)
        ys = [torch.randint(-9, 9, g.shape).float() for g in model.latents]
        full = syn.features(ys, 80, 96)
        for k in range(len(ys)):
            assert torch.equal(level_features(syn, ys[: k + 1], 80, 96), full[:, k])
