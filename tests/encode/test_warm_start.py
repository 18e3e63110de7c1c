"""Warm starts (``RECIPE["warm_start"]``): a slide's short ccinr fits start from the stored
networks of one block fitted first (the prior block, ``SlidePlan.prior``); the same payloads
serially, in processes and after a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cinr_container_helpers import stop_after_fitted_blocks, stored_blocks

from cinr_codec.coding.latent import LatentCodec
from cinr_codec.encode.slide import encode_slide
from cinr_codec.encode.train import latent as L
from cinr_codec.format.container import CinrReader

SETTINGS: dict[str, Any] = {"model": "ccinr", "preset": "q4", "steps": 3, "block_size": 64, "threads": 1}


def _payloads(path: Path) -> list[bytes]:
    """The model blocks' payloads (as the codec wrote them), in block order."""
    with CinrReader(path) as r:
        return [r.read_payload(b.block_id) for b in r.blocks() if b.kind == "model"]


def test_later_blocks_start_from_the_prior_blocks_stored_networks(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits_seen: list[tuple[str, Any, Any]]
) -> None:
    monkeypatch.setitem(L.RECIPE, "prior_candidates", 1)  # one fit of the prior (the race: below)
    warm = tmp_path / "warm.cinr"
    encode_slide(tissue_png, warm, **SETTINGS)
    seen = [s.init for _, s, _ in fits_seen]
    payloads = _payloads(warm)
    assert len(seen) == len(payloads) >= 3
    assert seen[0] is None and all(init == seen[1] for init in seen[1:])
    assert seen[1] in payloads  # the first fitted block's stored payload
    prior = payloads.index(seen[1])

    fits_seen.clear()
    monkeypatch.setitem(L.RECIPE, "warm_start", False)
    cold = tmp_path / "cold.cinr"
    encode_slide(tissue_png, cold, **SETTINGS)
    assert fits_seen and all(s.init is None for _, s, _ in fits_seen)
    fresh = _payloads(cold)
    assert fresh[prior] == payloads[prior]  # the prior block itself is fitted as before
    assert sum(a != b for a, b in zip(fresh, payloads, strict=True)) == len(payloads) - 1


#: The default encode's aim (``encode.aim``) from the journaled prior: at 40 steps q4 reaches
#: about 36 dB on these blocks, so an aim of 30 dB gives the later blocks a higher weight.
AIMED: dict[str, Any] = {**SETTINGS, "preset": None, "steps": 40, "slide_psnr": 30.0}
#: The default aim at 3 steps: the prior predicts the slide far under the floor, so it is fitted
#: again at the finer latent step, and every later block at it.
FINER: dict[str, Any] = {**SETTINGS, "preset": None}


@pytest.mark.parametrize("settings", [SETTINGS, AIMED, FINER], ids=["level", "aimed", "finer"])
def test_a_resumed_encode_starts_its_blocks_from_the_journaled_prior(
    tissue_png: Path, tmp_path: Path, settings: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """Interrupted after two blocks (the prior among them), then resumed in worker processes: the
    payloads of an uninterrupted serial encode (with an aim: the same weight found again)."""
    if settings is AIMED:
        request.getfixturevalue("needs_prostate")  # its weight above the level's is this image's
    ref = tmp_path / "ref.cinr"
    summary = encode_slide(tissue_png, ref, **settings)
    assert (summary["rate_weight"] > L.lambda_of("q4")) == (settings is AIMED)
    assert summary["finer_step"] == (settings is FINER)
    out = tmp_path / "out.cinr"
    with pytest.raises(KeyboardInterrupt):
        encode_slide(tissue_png, out, progress=stop_after_fitted_blocks(2), **settings)
    resumed = encode_slide(tissue_png, out, resume=True, processes=2, **{**settings, "threads": None})
    assert stored_blocks(out) == stored_blocks(ref) and resumed["rate_weight"] == summary["rate_weight"]


def test_networks_of_a_payload_are_the_decoders(tissue_png: Path, tmp_path: Path) -> None:
    """``LatentCodec.networks``: the stored synthesis as ``load`` rebuilds it, and a context model;
    ``fit_latents`` refuses tensors that are not this configuration's networks."""
    out = tmp_path / "one.cinr"
    encode_slide(tissue_png, out, **SETTINGS)
    payload = _payloads(out)[0]
    codec = LatentCodec()
    config = codec.config_for("ccinr", "q4", 64, 64)
    nets = codec.networks(payload, config, "test")
    synthesis = codec.load(payload, config, "test").synthesis  # type: ignore[attr-defined]
    for name, value in synthesis.state_dict().items():
        assert torch.equal(nets[f"synthesis.{name}"], value)
    assert any(n.startswith("arm.") for n in nets) and not any(n.startswith("latents.") for n in nets)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="not network tensors"):
        L.fit_latents(image, config, 1e-3, steps=1, init_networks={"latents.0": torch.zeros(1, 64, 64)})
    fit = L.fit_latents(image, config, 1e-3, steps=1, init_networks=nets)
    assert fit.steps == 1


def test_the_prior_block_is_the_best_of_its_candidate_fits(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RECIPE["prior_candidates"]``: the prior block is fitted from that many seeds, the one of
    lowest MSE + lambda * bits per pixel is stored and starts the others; the same file serially
    and in worker processes."""
    from cinr_codec.encode import slide
    from cinr_codec.encode.block import candidate_seed

    fits: list[tuple[int, int, float, bytes, bytes | None]] = []  # block, seed, loss, payload, init
    real = slide.encode_block

    def spy(job: Any, pixels: np.ndarray) -> Any:
        meta, parts = real(job, pixels)
        lam = L.lambda_of(job.preset)
        loss = meta["sse"] / (meta["n"] * 255.0**2) + lam * 8 * len(parts[0]) / (meta["n"] / 3)
        fits.append((job.block_id, job.seed, loss, parts[0], job.init))
        return meta, parts

    monkeypatch.setattr(slide, "encode_block", spy)
    monkeypatch.setitem(L.RECIPE, "prior_candidates", 2)
    raced = tmp_path / "raced.cinr"
    encode_slide(tissue_png, raced, **SETTINGS)
    (b0, s0, l0, p0, i0), (b1, s1, l1, p1, i1) = fits[:2]
    assert b0 == b1 and s1 == candidate_seed(s0, 1) != s0 and i0 is None and i1 is None
    assert p0 != p1  # two fits from two seeds
    best = p0 if l0 <= l1 else p1
    payloads = _payloads(raced)
    assert best in payloads and (p1 if best == p0 else p0) not in payloads
    assert len(fits) == len(payloads) + 1 and all(f[4] == best for f in fits[2:])

    # Pooled: the candidates run in the workers; the same file.
    monkeypatch.setattr(slide, "encode_block", real)
    pooled = tmp_path / "pooled.cinr"
    encode_slide(tissue_png, pooled, processes=2, **{**SETTINGS, "threads": None})
    assert stored_blocks(pooled) == stored_blocks(raced)
