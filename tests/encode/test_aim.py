"""One rate weight per slide aimed at a PSNR over tissue (``encode.aim``; the default ccinr encode)."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cinr_container_helpers import stop_after_fitted_blocks, stored_blocks
from click.testing import CliRunner
from PIL import Image

from cinr_codec.cli import main
from cinr_codec.core.metrics import psnr
from cinr_codec.decode import SlideDecoder
from cinr_codec.encode.aim import (
    AIM_GAIN_MIN,
    AUTO_AIM_RANGE,
    DEFAULT_SLIDE_PSNR,
    FINER_AT_ONCE_MARGIN,
    FIRST_PASS_KEY,
    FLOOR_MARGIN_DB,
    LOG_BYTES_PER_DB,
    MAX_CALIBRATION_BLOCKS,
    MAX_FACTOR,
    OPTIMISM_DB,
    RATE_EXPONENT,
    REQUANT_MAX,
    REQUANT_SHARE,
    SLIDE_PSNR_FLOOR,
    TRIM_DB,
    TRIM_DB_REQUANT,
    TRIM_FLOOR_MARGIN_DB,
    TRIM_KEY,
    TRIM_MAX_FACTOR,
    TRIM_MIN_DB,
    TRIM_ROUND_KEY,
    SlideDifficulty,
    aimed_rate,
    calibration_blocks,
    chosen_aim,
    corrected_rate,
    difficulty,
    finer_at_once,
    floor_rate,
    measured_blocks,
    model_sse,
    requant_credit,
    retrim_factor,
    trim_factor,
)
from cinr_codec.encode.journal import MAGIC as JOURNAL_MAGIC
from cinr_codec.encode.journal import Journal, journal_path
from cinr_codec.encode.slide import encode_slide
from cinr_codec.encode.train import latent as L
from cinr_codec.format.container import CinrReader

SETTINGS: dict[str, Any] = {"model": "ccinr", "steps": 3, "block_size": 64, "threads": 1}


def _mse(db: float) -> float:
    return 255.0**2 * 10 ** (-db / 10)


def _predicted_psnr(lam: float, lam0: float, prior_sse: float, prior_n: int, s: SlideDifficulty) -> float:
    """The slide's PSNR over tissue under aimed_rate's model, the others fitted at ``lam``."""
    others = prior_sse / prior_n * s.weighted / s.prior * (lam / lam0) ** RATE_EXPONENT
    return 10 * math.log10(255.0**2 * (prior_n + s.values) / (prior_sse + others))


def test_the_aimed_weight_puts_the_predicted_psnr_at_the_aim() -> None:
    lam0, n = 2.5e-4, 3000
    for prior_db, hardness, aim in (
        (34.0, 0.3, 37.0),
        (40.0, 1.0, 37.0),
        (38.0, 0.5, 37.0),
        (38.0, 1.0, 36.0),
    ):
        sse = _mse(prior_db) * n
        s = SlideDifficulty(prior=20.0, values=9 * n, weighted=9 * n * 20.0 * hardness)
        lam = aimed_rate(aim, lam0, sse, n, s)
        assert lam0 < lam < lam0 * MAX_FACTOR
        # The prediction's own figure, less its measured optimism, at the aim.
        assert _predicted_psnr(lam, lam0, sse, n, s) - OPTIMISM_DB == pytest.approx(aim, abs=1e-6)
    # Others as hard as the prior, 3 dB over the aim: their error doubles, lambda grows.
    sse = _mse(40.0) * n
    same = SlideDifficulty(prior=20.0, values=9 * n, weighted=9 * n * 20.0)
    assert aimed_rate(40.0 - OPTIMISM_DB, lam0, sse, n, same) == pytest.approx(lam0)
    assert lam0 < aimed_rate(37.0, lam0, sse, n, same) < aimed_rate(34.0, lam0, sse, n, same)
    # Harder others need more: a lower weight than for others as hard as the prior.
    hard = SlideDifficulty(prior=20.0, values=9 * n, weighted=9 * n * 40.0)
    assert aimed_rate(37.0, lam0, sse, n, hard) < aimed_rate(37.0, lam0, sse, n, same)


def test_the_aimed_weight_stays_in_its_bounds() -> None:
    lam0, n = 2.5e-4, 3000
    nothing_else = SlideDifficulty(prior=20.0, values=0.0, weighted=0.0)
    assert aimed_rate(37.0, lam0, _mse(30.0) * n, n, nothing_else) == lam0
    # A slide predicted under the aim keeps the level's weight: never more bits than the level.
    s = SlideDifficulty(prior=20.0, values=n, weighted=n * 20.0)
    assert aimed_rate(37.0, lam0, _mse(34.0) * n, n, s) == lam0
    assert aimed_rate(45.0, lam0, _mse(30.0) * n, n, s) == lam0  # the prior alone spends it all
    # Others that JPEG stores without error, or far aims: at most MAX_FACTOR times the weight.
    flat = SlideDifficulty(prior=20.0, values=n, weighted=0.0)
    assert aimed_rate(37.0, lam0, _mse(36.0) * n, n, flat) == pytest.approx(lam0 * MAX_FACTOR)
    assert aimed_rate(25.0, lam0, _mse(50.0) * n, n, s) == pytest.approx(lam0 * MAX_FACTOR)


def test_calibration_blocks_are_a_third_evenly_spread() -> None:
    assert calibration_blocks([1, 2, 3]) == []  # too few to leave any to correct
    assert calibration_blocks([9, 3, 5, 7]) == [3, 7]
    assert calibration_blocks(list(range(12))) == [0, 3, 6, 9]
    m = MAX_CALIBRATION_BLOCKS
    assert calibration_blocks(list(range(1000))) == [(i * 1000) // m for i in range(m)]


def test_the_corrected_weight_puts_the_slide_at_the_aim_with_what_the_calibration_measured() -> None:
    lam0, lam1, n = 2.5e-4, 5e-4, 3000
    prior_sse = _mse(38.0) * n
    s = SlideDifficulty(prior=20.0, values=9 * n, weighted=9 * n * 20.0)
    per = prior_sse / n / s.prior * (lam1 / lam0) ** RATE_EXPONENT  # predicted MSE per difficulty at lam1

    def slide_psnr(scale: float, lam2: float) -> float:
        """Three blocks fitted at lam1 measured ``scale`` x the prediction, six at ``lam2``."""
        fitted_sse = 3 * scale * per * n * 20.0
        rest = 6 * scale * per * n * 20.0 * (lam2 / lam1) ** RATE_EXPONENT
        return 10 * math.log10(255.0**2 * 10 * n / (prior_sse + fitted_sse + rest))

    for scale in (0.8, 1.0, 1.3):
        fitted = [(scale * per * n * 20.0, n, 20.0)] * 3
        lam2 = corrected_rate(35.0, lam0, lam1, prior_sse, n, s, fitted)
        assert lam0 < lam2 < lam0 * MAX_FACTOR
        assert slide_psnr(scale, lam2) == pytest.approx(35.0, abs=1e-6)
    # Blocks worse than predicted: a lower weight for the rest.
    at = [
        corrected_rate(35.0, lam0, lam1, prior_sse, n, s, [(k * per * n * 20.0, n, 20.0)] * 3)
        for k in (0.8, 1.5)
    ]
    assert at[0] > at[1]
    # The calibration blocks spent more than the aim's error: the level's weight, never lower.
    assert corrected_rate(35.0, lam0, lam1, prior_sse, n, s, [(_mse(20.0) * n, n, 20.0)] * 3) == lam0
    # Nothing measured, or nothing left: the aimed weight stays.
    assert corrected_rate(35.0, lam0, lam1, prior_sse, n, s, []) == lam1
    assert corrected_rate(35.0, lam0, lam1, prior_sse, n, s, [(per * n * 20.0, 9 * n, 20.0)]) == lam1
    # Re-quantization: the file's error of the fitted blocks (``spent``) is what the budget counts,
    # and the rest's own error may exceed its share by ``credit`` dB.
    fitted = [(per * n * 20.0, n, 20.0)] * 3
    base = corrected_rate(35.0, lam0, lam1, prior_sse, n, s, fitted)
    own = prior_sse + 3 * per * n * 20.0
    assert corrected_rate(35.0, lam0, lam1, prior_sse, n, s, fitted, spent=own) == pytest.approx(base)
    lighter = corrected_rate(35.0, lam0, lam1, prior_sse, n, s, fitted, spent=0.8 * own)
    credited = corrected_rate(35.0, lam0, lam1, prior_sse, n, s, fitted, credit=0.5)
    assert lighter > base and credited > base
    rest = 6 * per * n * 20.0 * (credited / lam1) ** RATE_EXPONENT  # the rest's own error
    in_file = own + rest * 10 ** (-0.5 / 10)  # the rest 0.5 dB better once re-quantized
    assert 10 * math.log10(255.0**2 * 10 * n / in_file) == pytest.approx(35.0, abs=1e-6)


def _curve(slopes: dict[float, float], start: float = 30.0) -> tuple[list[float], list[float]]:
    """A JPEG curve from ``start`` dB: from each PSNR key on, log-bytes rising by its value a dB;
    a point every 0.5 dB up to 46."""
    psnr = list(np.arange(start, 46.01, 0.5))
    log_bytes, out = math.log(1e5), []
    for i, p in enumerate(psnr):
        if i:
            slope = [v for k, v in sorted(slopes.items()) if k <= psnr[i - 1]][-1]
            log_bytes += slope * 0.5
        out.append(math.exp(log_bytes))
    return [float(p) for p in psnr], out


def test_the_chosen_aim_is_where_the_file_is_smallest_against_the_jpeg_curve() -> None:
    lo, hi = AUTO_AIM_RANGE
    assert lo < DEFAULT_SLIDE_PSNR < hi
    # A flat curve (a JPEG-tiled source re-encoded just under its own quality): as low as allowed.
    assert chosen_aim(*_curve({0: 0.02})) == lo
    # A steep one (a Q 95 source): as high as allowed.
    assert chosen_aim(*_curve({0: 0.2})) == hi
    # Steep up to 37 dB, flat above: there.
    assert chosen_aim(*_curve({0: 0.25, 37.0: 0.02})) == pytest.approx(37.0)
    # As steep as ccinr's file, give or take: the default (a gain under AIM_GAIN_MIN).
    near = LOG_BYTES_PER_DB + 0.5 * AIM_GAIN_MIN / (hi - lo)
    assert chosen_aim(*_curve({0: near})) == DEFAULT_SLIDE_PSNR
    assert chosen_aim(*_curve({0: LOG_BYTES_PER_DB + 3 * AIM_GAIN_MIN})) == hi
    # The range given is kept.
    assert chosen_aim(*_curve({0: 0.02}), lo=36.5, hi=37.0) == 36.5


def test_the_chosen_aim_reads_the_cheapest_pyramid_of_a_jpeg_sourced_curve() -> None:
    # A libvips Q 70 TIFF of a TCGA region, over tissue (q20 ... q95, as encode.reference
    # measures): q70 re-encodes at 54 dB, and q75-q95 cost more for less.
    psnr = [28.59, 30.93, 31.95, 33.61, 35.79, 37.82, 41.17, 53.95, 42.69, 40.40, 46.46, 45.71, 46.56]
    size = [164, 242, 312, 327, 339, 354, 375, 394, 416, 465, 549, 628, 841]
    assert chosen_aim(psnr, [1e3 * b for b in size]) == AUTO_AIM_RANGE[0]
    # The order of the qualities does not matter; an unmeasurable quality (no error) is left out.
    assert chosen_aim(psnr[::-1] + [math.inf], [1e3 * b for b in size[::-1]] + [1.0]) == AUTO_AIM_RANGE[0]


def test_without_a_curve_over_the_range_the_aim_is_the_default() -> None:
    assert chosen_aim([], []) == DEFAULT_SLIDE_PSNR
    assert chosen_aim([30.0], [1e5]) == DEFAULT_SLIDE_PSNR
    assert chosen_aim(*_curve({0: 0.02}, start=39.0)) == DEFAULT_SLIDE_PSNR  # all over the range
    assert chosen_aim([20.0, 30.0], [1e4, 1e5]) == DEFAULT_SLIDE_PSNR  # all under it
    assert chosen_aim([20.0, 30.0], [1e4, 1e5], lo=37.0, hi=38.0) == 37.0  # the nearest end


def test_difficulty_is_jpegs_error_and_grows_with_detail() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 200, dtype=np.uint8)
    smooth = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    d = [difficulty(x) for x in (flat, smooth, noise)]
    assert d[0] < 1.0 and d[0] <= d[1] < d[2]
    assert difficulty(noise) == d[2]  # the same bytes, the same figure


def test_measured_blocks_are_evenly_spread() -> None:
    assert measured_blocks([5, 1, 3]) == [1, 3, 5]
    picked = measured_blocks(list(range(1000)), limit=10)
    assert picked == list(range(0, 1000, 100))


@pytest.mark.usefixtures("needs_prostate")
def test_a_default_encode_aims_one_weight_for_the_slide_from_its_prior(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits_seen: list[tuple[str, Any, Any]]
) -> None:
    monkeypatch.setitem(L.RECIPE, "prior_candidates", 1)
    curves: list[tuple[list[float], list[float], float]] = []

    def chosen(psnr: list[float], size: list[float]) -> float:
        curves.append((psnr, size, aim := chosen_aim(psnr, size)))
        return aim

    monkeypatch.setattr("cinr_codec.encode.slide.chosen_aim", chosen)
    summary = encode_slide(tissue_png, tmp_path / "aimed.cinr", **{**SETTINGS, "steps": 40})
    seen = [(preset, s.lam) for preset, s, _ in fits_seen]
    # The aim chosen once from the slide's JPEG curve over tissue: PSNR falling, bytes rising
    # with the quality, as the summary's yardstick measures them.
    assert len(curves) == 1 and summary["aim_chosen"] and summary["preset"] == "q4"
    psnr, size, aim = curves[0]
    assert summary["slide_psnr"] == aim and AUTO_AIM_RANGE[0] <= aim <= AUTO_AIM_RANGE[1]
    assert len(psnr) == len(summary["jpeg_psnr"]) and psnr[0] < psnr[-1] and 0 < size[0] < size[-1]
    lam = summary["rate_weight"]
    # The prior at the level's own weight (twice where it was fitted again at a finer step, below).
    k = 2 if summary["finer_step"] else 1
    assert len(seen) >= k + 2 and seen[:k] == [("q4", None)] * k
    assert all(preset == "q4" for preset, _ in seen[k:]) and lam >= L.lambda_of("q4")

    # No calibration where the aim kept the level's weight.
    assert (summary["corrected_rate_weight"] is None) == (lam == L.lambda_of("q4"))

    # A level given alone keeps its weight for every block.
    fits_seen.clear()
    fixed = encode_slide(tissue_png, tmp_path / "fixed.cinr", preset="q4", **SETTINGS)
    assert fixed["slide_psnr"] is None and fixed["rate_weight"] == L.lambda_of("q4")
    assert fits_seen and all((preset, s.lam) == ("q4", None) for preset, s, _ in fits_seen)


def _latent_shift(path: Path) -> int:
    with CinrReader(path) as r:
        return int(r.header["model"].get("latent_shift", 0))


@pytest.mark.usefixtures("needs_prostate")
def test_a_slide_predicted_under_the_floor_is_stored_at_a_finer_step(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits_seen: list[tuple[str, Any, Any]]
) -> None:
    """At 3 steps the prior predicts the slide far under ``SLIDE_PSNR_FLOOR``: it is fitted again
    (same seed) at the next finer latent step, and every later block and the header use that step;
    the file decodes to the PSNR its summary states. A level given alone never switches."""
    monkeypatch.setitem(L.RECIPE, "prior_candidates", 1)
    out = tmp_path / "finer.cinr"
    summary = encode_slide(tissue_png, out, **SETTINGS)
    assert summary["finer_step"] and summary["rate_weight"] == L.lambda_of("q4")
    shifts = [c.latent_shift for _, _, c in fits_seen]
    seeds = [s.seed for _, s, _ in fits_seen]
    assert len(shifts) >= 4 and shifts[0] == 0 and all(k == L.QUALITY_LATENT_SHIFT["q5"] for k in shifts[1:])
    assert seeds[0] == seeds[1]  # the prior, fitted twice
    assert _latent_shift(out) == L.QUALITY_LATENT_SHIFT["q5"]
    with SlideDecoder(out) as d:
        decoded = d.read(0, 0, d.width, d.height)
    source = np.asarray(Image.open(tissue_png).convert("RGB"))
    assert psnr(decoded, source) == pytest.approx(summary["psnr_all"], abs=1e-6)

    fits_seen.clear()
    fixed = encode_slide(tissue_png, tmp_path / "fixed.cinr", preset="q4", **SETTINGS)
    assert not fixed["finer_step"] and _latent_shift(tmp_path / "fixed.cinr") == 0
    assert all(c.latent_shift == 0 for _, _, c in fits_seen)


def test_a_curve_under_the_floor_less_the_margin_goes_finer_at_once() -> None:
    under = SLIDE_PSNR_FLOOR - FINER_AT_ONCE_MARGIN
    assert finer_at_once([28.0, 31.0, under - 0.01])
    assert not finer_at_once([28.0, 31.0, under])  # one quality reaches it
    assert not finer_at_once([28.0, math.inf])  # a quality without error
    assert not finer_at_once([])
    assert not finer_at_once([28.0, math.nan])
    assert finer_at_once([36.0], floor=40.0) and not finer_at_once([36.0], floor=37.0)


@pytest.mark.usefixtures("needs_prostate")
def test_a_slide_whose_jpeg_curve_is_under_the_floor_fits_its_prior_at_the_finer_step_at_once(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits_seen: list[tuple[str, Any, Any]]
) -> None:
    """Where no JPEG quality reaches the floor less the margin (here: the margin moved so that
    none does), the prior is fitted once, at the finer step, and the file holds the blocks of the
    encode that fitted it first at the level's step and then again at the finer one."""
    monkeypatch.setitem(L.RECIPE, "prior_candidates", 1)
    ref = tmp_path / "ref.cinr"
    assert encode_slide(tissue_png, ref, **SETTINGS)["finer_step"]
    level_first = len(fits_seen)
    assert fits_seen[0][2].latent_shift == 0  # that encode's first fit: the level's step

    fits_seen.clear()
    monkeypatch.setattr("cinr_codec.encode.aim.FINER_AT_ONCE_MARGIN", -100.0)
    out = tmp_path / "at_once.cinr"
    summary = encode_slide(tissue_png, out, **SETTINGS)
    assert summary["finer_step"] and len(fits_seen) == level_first - 1
    assert all(c.latent_shift == L.QUALITY_LATENT_SHIFT["q5"] for _, _, c in fits_seen)
    assert stored_blocks(out) == stored_blocks(ref)

    # Stopped once the prior is journaled at the finer step: the resume keeps it.
    resumed = tmp_path / "resumed.cinr"
    assert _stopped_then_resumed(tissue_png, resumed, "block", SETTINGS)["finer_step"]
    assert stored_blocks(resumed) == stored_blocks(ref)

    # An aim given by the user keeps the fit at the level's step first.
    fits_seen.clear()
    encode_slide(tissue_png, tmp_path / "given.cinr", slide_psnr=36.0, **SETTINGS)
    assert fits_seen[0][2].latent_shift == 0


@pytest.mark.usefixtures("needs_prostate")
def test_an_encode_stopped_before_the_finer_fit_resumes_to_the_same_file(
    tissue_png: Path, tmp_path: Path
) -> None:
    """Killed when the prior (journaled at the level's step) has just decided on a finer step: the
    resume decides again from the same record and writes the blocks of an uninterrupted encode."""
    ref = tmp_path / "ref.cinr"
    assert encode_slide(tissue_png, ref, **SETTINGS)["finer_step"]
    out = tmp_path / "out.cinr"
    resumed = _stopped_then_resumed(tissue_png, out, "finer", SETTINGS)
    assert resumed["finer_step"] and stored_blocks(out) == stored_blocks(ref)


def test_a_journal_from_before_the_floor_resumes_at_the_levels_step(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks journaled after the prior at the level's step (by an encoder without the floor) keep
    it: the resume does not switch the slide's step under them."""
    from cinr_codec.encode import slide

    monkeypatch.setattr(slide, "SLIDE_PSNR_FLOOR", 0.0)  # an encoder before the floor
    ref = tmp_path / "ref.cinr"
    assert not encode_slide(tissue_png, ref, **SETTINGS)["finer_step"]
    out = tmp_path / "out.cinr"
    with pytest.raises(KeyboardInterrupt):
        encode_slide(tissue_png, out, progress=stop_after_fitted_blocks(2), **SETTINGS)
    monkeypatch.setattr(slide, "SLIDE_PSNR_FLOOR", SLIDE_PSNR_FLOOR)  # this encoder
    resumed = encode_slide(tissue_png, out, resume=True, **SETTINGS)
    assert not resumed["finer_step"] and stored_blocks(out) == stored_blocks(ref)
    assert resumed["floor_rate_weight"] is None  # 3 steps: no weight is predicted to reach the floor


def _stopped_then_resumed(src: Path, out: Path, stage: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Encode ``src``, interrupted at the first progress event of ``stage``, then resumed: the
    resumed encode's summary."""

    def stop(ev: dict[str, Any]) -> None:
        if ev["stage"] == stage:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_slide(src, out, progress=stop, **settings)
    return encode_slide(src, out, resume=True, **settings)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "cinr", "--slide-psnr", "37"], "--slide-psnr is for --model ccinr"),
        (["--slide-psnr", "99"], "must lie in [25, 55] dB"),
        (["--slide-psnr", "37", "--target-psnr", "36"], "not both"),
    ],
)
def test_bad_aims_are_one_line_errors(
    tissue_png: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "x.cinr"
    res = CliRunner().invoke(main, ["encode", str(tissue_png), "-o", str(out), "--steps", "1", *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.usefixtures("needs_prostate")
def test_an_aim_under_the_levels_psnr_gives_a_higher_weight_and_a_smaller_slide(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits_seen: list[tuple[str, Any, Any]]
) -> None:
    """At 40 steps (3 leave the prior far under any aim) q4 reaches about 36 dB on these blocks:
    an aim of 30 dB raises the weight and lowers the PSNR and the bytes; 45 keeps the level's."""
    monkeypatch.setitem(L.RECIPE, "prior_candidates", 1)
    settings = {**SETTINGS, "steps": 40}
    low = encode_slide(tissue_png, tmp_path / "low.cinr", slide_psnr=30.0, **settings)
    # The raised weight for the calibration blocks first (a third of the later tissue blocks),
    # then the weight their fits corrected it to for the rest.
    lams = [s.lam for _, s, _ in fits_seen]
    k = 2 if low["finer_step"] else 1
    calibrating = len(calibration_blocks(list(range(low["tissue_blocks"] - 1))))
    rest = low["corrected_rate_weight"]
    assert calibrating == 4 and rest is not None and rest != low["rate_weight"]
    assert lams[:k] == [None] * k and lams[k : k + calibrating] == [low["rate_weight"]] * calibrating
    later = low["tissue_blocks"] - 1
    assert lams[k + calibrating : k + later] and set(lams[k + calibrating : k + later]) == {rest}
    # Where the slide landed under its floor (the aim: 30 dB), those blocks fitted again (floor_pass).
    again = low["floor_rate_weight"]
    assert lams[k + later :] == ([] if again is None else [again] * later)
    high = encode_slide(tissue_png, tmp_path / "high.cinr", slide_psnr=45.0, **settings)
    assert high["rate_weight"] == L.lambda_of("q4") < low["rate_weight"]
    assert low["psnr"] < high["psnr"] and low["bytes"] < high["bytes"]


def test_the_cli_summary_shows_the_aim_and_its_weight(tissue_png: Path, tmp_path: Path) -> None:
    base = ["encode", str(tissue_png), "--steps", "3", "--block-size", "64", "--threads", "1"]
    res = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "a.cinr")])
    assert res.exit_code == 0, res.output
    assert "dB over tissue (chosen from the slide's JPEG curve): rate weight" in res.output
    # 3 steps leave the slide far under the floor: stored at a finer step, and the summary says so.
    assert "stored at a finer latent step, as the level's predicted the slide under 35 dB" in res.output
    assert re.search(r"time: [0-9.]+ s \(3 steps a block, [0-9]+ in all\)", res.output), res.output
    res = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "b.cinr"), "--quality", "4", "--json"])
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["slide_psnr"] is None and summary["rate_weight"] == pytest.approx(L.lambda_of("q4"))
    assert summary["block_steps"] == 3


@pytest.mark.usefixtures("needs_prostate")
def test_a_resume_with_every_block_journaled_reports_the_aimed_weight(
    tissue_png: Path, tmp_path: Path
) -> None:
    settings = {**SETTINGS, "steps": 40, "slide_psnr": 30.0}
    resumed = _stopped_then_resumed(tissue_png, tmp_path / "out.cinr", "write", settings)
    ref = encode_slide(tissue_png, tmp_path / "ref.cinr", **settings)
    assert resumed["rate_weight"] == ref["rate_weight"] > L.lambda_of("q4")
    assert resumed["slide_psnr"] == ref["slide_psnr"] == 30.0 and not ref["aim_chosen"]
    assert resumed["corrected_rate_weight"] == ref["corrected_rate_weight"] is not None


def test_the_summarys_aim_line_names_the_corrected_weight() -> None:
    from cinr_codec.cli.encode import _aim_line

    level = L.lambda_of("q4")
    s = {"preset": "q4", "rate_weight": 2 * level, "slide_psnr": 35.75, "aim_chosen": True}
    line = _aim_line({**s, "corrected_rate_weight": 3 * level})
    assert line.startswith("35.75 dB over tissue (chosen from the slide's JPEG curve): rate weight")
    assert (
        "(2.00x q4's), corrected by the calibration blocks' fits to" in line
        and "(3.00x) for the rest" in line
    )
    assert "corrected" not in _aim_line({**s, "aim_chosen": False, "corrected_rate_weight": None})
    assert "aimed 0.80 dB lower (re-quantized to the source's JPEG)" in _aim_line(
        {**s, "requant_credit": 0.8}
    )
    assert "re-quantized" not in _aim_line({**s, "requant_credit": 0.0})


def test_re_quantization_credits_a_share_of_the_pooled_gain() -> None:
    """The aim predicts the blocks' own error (``raw_sse`` where the decoder re-quantizes) and
    credits a share of what re-quantization added to the fitted blocks, pooled, up to a bound."""
    assert model_sse({"sse": 10.0}) == 10.0 and model_sse({"sse": 10.0, "raw_sse": 20.0}) == 20.0
    assert requant_credit([{"sse": 10.0}], 0.5, 1.0) == 0.0
    gained = {"sse": 10.0, "raw_sse": 10.0 * 10**0.08}  # 0.8 dB
    assert requant_credit([gained], 0.5, 1.0) == pytest.approx(0.4)
    assert requant_credit([gained], 0.5, 0.3) == 0.3
    # Pooled: 0.8 dB on one block, nothing on another of the same error: 10 log10(18.0 / 16.3...).
    pooled = requant_credit([gained, {"sse": 10.0, "raw_sse": 10.0}], 1.0, 5.0)
    assert pooled == pytest.approx(10 * math.log10((10 * 10**0.08 + 10) / 20))
    assert requant_credit([{"sse": 20.0, "raw_sse": 10.0}], 1.0, 5.0) == 0.0  # it made them worse
    assert requant_credit([{"sse": 0.0, "raw_sse": 10.0}], 1.0, 5.0) == 0.0
    assert 0 < REQUANT_SHARE <= 1.0 and 0 < REQUANT_MAX


def test_a_jpeg_tiled_slide_is_aimed_with_its_re_quantization_credit(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a JPEG-tiled TIFF the blocks record their own error beside what readers get, and the
    aim credits re-quantization: at most the prior's bound, or the pooled bound once calibration
    blocks are fitted; the summary's PSNR is the decoded file's."""
    import pyvips

    from cinr_codec.encode.source import SlideSource

    monkeypatch.setitem(L.RECIPE, "prior_candidates", 1)
    px = np.asarray(Image.open(tissue_png).convert("RGB"))
    src = tmp_path / "q60.tif"
    img = pyvips.Image.new_from_memory(
        np.ascontiguousarray(px).tobytes(), px.shape[1], px.shape[0], 3, "uchar"
    )
    img.tiffsave(str(src), tile=True, tile_width=64, tile_height=64, compression="jpeg", Q=60)
    out = tmp_path / "q60.cinr"
    summary = encode_slide(src, out, **{**SETTINGS, "steps": 20})
    credit = summary["requant_credit"]
    assert 0.0 <= credit <= REQUANT_MAX
    with SlideSource(src) as source:
        original = source.read(0, 0, px.shape[1], px.shape[0])
    with SlideDecoder(out) as d:
        assert d.requant is not None
        assert psnr(d.read(0, 0, px.shape[1], px.shape[0]), original) == pytest.approx(
            summary["psnr_all"], abs=1e-6
        )


def test_floor_rate_scales_each_blocks_error_with_its_weight() -> None:
    """Blocks at the weights they were fitted at, their errors ~ weight ** RATE_EXPONENT: one
    weight that keeps the slide where it is lies between theirs, and given back as theirs it is
    found again; a slide that asks 2 ** -RATE_EXPONENT of the fitted blocks' error halves it; under
    the range's least weight, None; over its greatest, that."""
    n = 3 * 64 * 64
    fitted = [(_mse(33.0) * n, 4e-4), (_mse(35.0) * n, 8e-4)]
    kept = _mse(36.0) * n
    now = 10 * math.log10(255.0**2 / ((kept + sum(e for e, _ in fitted)) / (3 * n)))
    # One weight for both (here each at its own): where one weight gives the same total error.
    same = floor_rate(now, kept, 3 * n, fitted)
    assert same is not None and 4e-4 < same < 8e-4
    assert floor_rate(now, kept, 3 * n, [(e, same) for e, _ in fitted]) == pytest.approx(same)
    # Half the weight: the fitted blocks' error times 2 ** -RATE_EXPONENT, the kept block's as it was.
    target_sse = sum(e for e, _ in fitted) * 2**-RATE_EXPONENT
    target = 10 * math.log10(255.0**2 / ((kept + target_sse) / (3 * n)))
    assert floor_rate(target, kept, 3 * n, [(e, same) for e, _ in fitted]) == pytest.approx(same / 2)
    assert floor_rate(60.0, kept, 3 * n, fitted) is None  # the kept block alone is over the budget
    assert floor_rate(now + 30.0, kept / 1e6, 3 * n, fitted) is None  # under LAMBDA_RANGE's least
    assert floor_rate(5.0, kept, 3 * n, fitted) == L.LAMBDA_RANGE[1]


def _stop_in_pass(src: Path, out: Path, stage: str, settings: dict[str, Any]) -> None:
    """Encode ``src`` to ``out`` and stop it (KeyboardInterrupt) once the first block of the pass
    whose progress event is ``stage`` is journaled."""
    seen: list[str] = []

    def stop(ev: dict[str, Any]) -> None:
        seen.append(ev["stage"])
        if ev["stage"] == "block" and stage in seen:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_slide(src, out, progress=stop, **settings)


@pytest.mark.usefixtures("needs_prostate")
def test_a_slide_landed_under_its_floor_has_its_later_blocks_fitted_again(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits_seen: list[tuple[str, Any, Any]]
) -> None:
    """40 steps leave these blocks near 36 dB; with the floor moved to 40 (an aim of 45) the slide
    lands under it, so every tissue block but the prior is fitted again at the one lower weight
    ``floor_rate`` finds for 40 dB + ``FLOOR_MARGIN_DB`` from their errors, and the slide's PSNR
    rises. Stopped after one block of that pass, a resume finishes it at the journaled weight and
    writes the uninterrupted encode's blocks."""
    from cinr_codec.encode import slide

    monkeypatch.setitem(L.RECIPE, "prior_candidates", 1)
    monkeypatch.setattr(slide, "SLIDE_PSNR_FLOOR", 40.0)
    settings = {**SETTINGS, "steps": 40, "slide_psnr": 45.0}
    first: dict[int, float] = {}
    stages: list[str] = []
    targets: list[float] = []
    real = slide.floor_rate

    def spy(target: float, *args: Any) -> float:
        targets.append(target)
        return real(target, *args)

    monkeypatch.setattr(slide, "floor_rate", spy)

    def seen(ev: dict[str, Any]) -> None:
        stages.append(ev["stage"])
        if ev["stage"] == "block" and "floor" not in stages and ev["kind"] == "model":
            first[ev["block_id"]] = ev["psnr"]

    out = tmp_path / "floor.cinr"
    s = encode_slide(tissue_png, out, progress=seen, **settings)
    again = s["floor_rate_weight"]
    later = s["tissue_blocks"] - 1
    assert targets == [40.0 + FLOOR_MARGIN_DB] and again is not None and again < s["rate_weight"]
    assert stages.count("floor") == 1 and stages[stages.index("floor") :].count("block") == later
    assert [st.lam for _, st, _ in fits_seen[-later:]] == [again] * later
    with SlideDecoder(out) as d:
        n = {b: 3 * d.grid.owned(b)[2] * d.grid.owned(b)[3] for b in first}
    before = 10 * math.log10(sum(n.values()) / sum(n[b] * 10 ** (-p / 10) for b, p in first.items()))
    assert before < 40.0 and s["psnr"] > before + 0.5

    resumed = tmp_path / "resumed.cinr"
    _stop_in_pass(tissue_png, resumed, "floor", settings)
    targets.clear()
    r = encode_slide(tissue_png, resumed, resume=True, **settings)
    assert targets == [] and r["floor_rate_weight"] == again  # the weight from the journal
    assert stored_blocks(resumed) == stored_blocks(out)


def test_the_trim_factor_puts_the_slide_at_its_aim_by_the_measured_fall() -> None:
    # TRIM_DB x (ln g)^2 dB is what the factor is expected to take off.
    for landed, aim in ((36.17, 35.75), (36.0, 35.8), (36.8, 36.2)):
        g = trim_factor(landed, aim)
        assert g is not None and 1.0 < g < TRIM_MAX_FACTOR
        assert TRIM_DB * math.log(g) ** 2 == pytest.approx(landed - aim)
    assert trim_factor(35.75 + TRIM_MIN_DB - 0.01, 35.75) is None  # close enough: no pass
    assert trim_factor(35.5, 35.75) is None  # under the aim
    assert trim_factor(45.0, 35.75) == TRIM_MAX_FACTOR
    # Near the floor: twice the expected fall would leave the slide TRIM_FLOOR_MARGIN_DB over it.
    for landed, aim in ((35.5, 35.0), (35.5, 35.2), (35.3, 34.0)):
        g = trim_factor(landed, aim)
        assert g is not None
        assert 2 * TRIM_DB * math.log(g) ** 2 == pytest.approx(landed - min(aim, 35.0) - TRIM_FLOOR_MARGIN_DB)
    assert trim_factor(35.6, 35.5, floor=35.5) is None  # no room over the floor's margin
    assert trim_factor(35.15, 34.9) is None  # 0.25 over its aim, 0.075 to take off by the floor's margin
    assert trim_factor(float("nan"), 35.75) is None
    # Re-quantized blocks: TRIM_DB_REQUANT x ln g, and the same bounds.
    g = trim_factor(36.17, 35.75, requantized=True)
    assert g is not None and TRIM_DB_REQUANT * math.log(g) == pytest.approx(0.42)
    g = trim_factor(35.5, 35.0, requantized=True)
    assert g is not None and 2 * TRIM_DB_REQUANT * math.log(g) == pytest.approx(0.5 - TRIM_FLOOR_MARGIN_DB)
    assert trim_factor(45.0, 35.75, requantized=True) == TRIM_MAX_FACTOR
    assert trim_factor(35.8, 35.75, requantized=True) is None


def test_a_slide_landed_over_its_aim_has_its_blocks_latents_searched_again(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits_seen: list[tuple[str, Any, Any]]
) -> None:
    """Aimed at 25 dB, 20-step fits land far over it. Under ``TRIM_MIN_STEPS`` nothing follows; with
    trims allowed, every tissue block's stored fit but the prior's is continued (nothing trained)
    at ``TRIM_MAX_FACTOR`` times the weight it was fitted at, and the file is smaller than the same
    first pass's without the trim. Stopped after one continued block, a resume finishes the trim
    at the journaled factor and writes the uninterrupted encode's blocks; worker processes write
    them too."""
    from cinr_codec.encode import slide

    monkeypatch.setitem(L.RECIPE, "prior_candidates", 1)
    settings = {**SETTINGS, "steps": 20, "slide_psnr": 25.0}
    plain = encode_slide(tissue_png, tmp_path / "plain.cinr", **settings)
    assert plain["trim_factor"] is None and plain["psnr"] > 25.0 + TRIM_MIN_DB
    first = [st for _, st, _ in fits_seen]
    assert all(st.start is None for st in first)

    monkeypatch.setattr(slide, "TRIM_MIN_STEPS", 20)
    monkeypatch.setattr(slide, "TRIM_BATCH", 3)  # the jobs handed over a few at a time
    fits_seen.clear()
    stages: list[str] = []
    out = tmp_path / "trim.cinr"
    s = encode_slide(tissue_png, out, progress=lambda ev: stages.append(ev["stage"]), **settings)
    tissue = s["tissue_blocks"]
    assert s["trim_factor"] == TRIM_MAX_FACTOR
    later = tissue - 1
    assert stages.count("trim") == 1 and stages[stages.index("trim") :].count("block") == later
    trained = [st for _, st, _ in fits_seen if st.start is None]
    continued = [st for _, st, _ in fits_seen if st.start is not None]
    assert [st.lam for st in trained] == [st.lam for st in first]  # the same first pass
    assert len(continued) == later and all(st.steps == 20 and st.init is None for st in continued)
    weights = {st.lam for st in trained if st.lam is not None}  # the later blocks' (the prior's: None)
    assert {st.lam / TRIM_MAX_FACTOR for st in continued} <= weights  # each at twice its own weight
    assert s["bytes"] < plain["bytes"]

    resumed = tmp_path / "resumed.cinr"
    _stop_in_pass(tissue_png, resumed, "trim", settings)
    # The trimmed record keeps the calibration's weight and credit for the resume (as the floor's).
    jpath = journal_path(resumed)
    head = jpath.read_bytes()[: len(JOURNAL_MAGIC) + 4]
    (n,) = struct.unpack("<I", head[len(JOURNAL_MAGIC) :])
    fingerprint = json.loads(jpath.read_bytes()[len(head) : len(head) + n])
    journal = Journal.resume(jpath, fingerprint)
    try:
        tagged = [rec.meta for rec in journal.records() if TRIM_KEY in rec.meta]
    finally:
        journal.close()
    assert len(tagged) == 1 and tagged[0][TRIM_KEY] == TRIM_MAX_FACTOR
    assert tagged[0][FIRST_PASS_KEY] == [s["corrected_rate_weight"], s["requant_credit"]]
    fits_seen.clear()
    r = encode_slide(tissue_png, resumed, resume=True, **settings)
    assert r["trim_factor"] == TRIM_MAX_FACTOR
    assert len(fits_seen) == later - 1 and all(st.start is not None for _, st, _ in fits_seen)
    assert stored_blocks(resumed) == stored_blocks(out)
    # In worker processes (the CLI's default on two free cores): the same trim, the same blocks.
    pooled = tmp_path / "pooled.cinr"
    assert encode_slide(tissue_png, pooled, processes=2, **settings)["trim_factor"] == TRIM_MAX_FACTOR
    assert stored_blocks(pooled) == stored_blocks(out)


def test_a_second_trim_carries_the_first_ones_measured_fall_to_the_aim() -> None:
    # Re-quantized: the fall per ln g measured (0.44 dB at 1.467x) carried to the aim.
    g = retrim_factor(36.42, 35.98, 35.75, 1.467, requantized=True)
    assert g is not None and (36.42 - 35.75) / (0.44 / math.log(1.467)) == pytest.approx(math.log(g))
    # Otherwise per (ln g)^2, as TRIM_DB models it.
    g = retrim_factor(36.6, 36.3, 36.0, 1.3)
    assert g is not None and 0.6 / (0.3 / math.log(1.3) ** 2) == pytest.approx(math.log(g) ** 2)
    assert retrim_factor(40.0, 39.0, 35.75, 1.5, requantized=True) == TRIM_MAX_FACTOR  # capped
    assert retrim_factor(36.42, 35.75 + TRIM_MIN_DB - 0.01, 35.75, 1.4) is None  # landed near enough
    assert retrim_factor(36.42, 36.42, 35.75, 1.4) is None  # the first trim made no fall
    assert retrim_factor(36.42, 36.0, 35.75, TRIM_MAX_FACTOR) is None  # no room to grow
    assert retrim_factor(float("nan"), 36.0, 35.75, 1.4) is None
    # An aim at the floor: it stops TRIM_FLOOR_MARGIN_DB over it.
    g = retrim_factor(35.6, 35.4, 35.0, 1.2, requantized=True)
    assert g is not None and (35.6 - 35.0 - TRIM_FLOOR_MARGIN_DB) / (0.2 / math.log(1.2)) == pytest.approx(
        math.log(g)
    )


def test_a_trim_that_stopped_short_of_the_aim_is_followed_by_a_second(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits_seen: list[tuple[str, Any, Any]]
) -> None:
    """A first trim held to 1.2x (``trim_factor`` replaced) leaves the slide far over its 25 dB aim:
    a second round continues every later block's trimmed fit at the factor the first's measured
    fall puts at the aim (``TRIM_MAX_FACTOR`` here), and the file is smaller than the first round
    leaves it. Stopped after one block of the second round, a resume finishes it at the journaled
    factor and writes the uninterrupted encode's blocks."""
    from cinr_codec.encode import slide

    monkeypatch.setitem(L.RECIPE, "prior_candidates", 1)
    monkeypatch.setattr(slide, "TRIM_MIN_STEPS", 20)
    monkeypatch.setattr(slide, "trim_factor", lambda *args, **kwargs: 1.2)
    settings = {**SETTINGS, "steps": 20, "slide_psnr": 25.0}
    retrim = slide.retrim_factor
    monkeypatch.setattr(slide, "retrim_factor", lambda *args, **kwargs: None)
    once = encode_slide(tissue_png, tmp_path / "once.cinr", **settings)
    assert once["trim_factor"] == 1.2 and once["psnr"] > 25.0 + TRIM_MIN_DB
    monkeypatch.setattr(slide, "retrim_factor", retrim)

    fits_seen.clear()
    stages: list[str] = []
    out = tmp_path / "twice.cinr"
    s = encode_slide(tissue_png, out, progress=lambda ev: stages.append(ev["stage"]), **settings)
    later = s["tissue_blocks"] - 1
    assert s["trim_factor"] == TRIM_MAX_FACTOR and stages.count("trim") == 2
    continued = [st for _, st, _ in fits_seen if st.start is not None]
    assert len(continued) == 2 * later and all(st.steps == 20 and st.init is None for st in continued)
    first_round, second_round = continued[:later], continued[later:]  # the same blocks, in order
    assert [b.lam / a.lam for a, b in zip(first_round, second_round)] == pytest.approx(
        [TRIM_MAX_FACTOR / 1.2] * later
    )
    assert all(b.start != a.start for a, b in zip(first_round, second_round))  # from the first's fits
    assert s["bytes"] < once["bytes"] and s["psnr"] < once["psnr"]

    resumed = tmp_path / "resumed.cinr"
    seen: list[str] = []

    def stop(ev: dict[str, Any]) -> None:
        seen.append(ev["stage"])
        if ev["stage"] == "block" and seen.count("trim") == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_slide(tissue_png, resumed, progress=stop, **settings)
    jpath = journal_path(resumed)
    head = jpath.read_bytes()[: len(JOURNAL_MAGIC) + 4]
    (n,) = struct.unpack("<I", head[len(JOURNAL_MAGIC) :])
    journal = Journal.resume(jpath, json.loads(jpath.read_bytes()[len(head) : len(head) + n]))
    try:
        rounds = sorted(int(rec.meta[TRIM_ROUND_KEY]) for rec in journal.records() if TRIM_KEY in rec.meta)
    finally:
        journal.close()
    assert rounds == [1] * (later - 1) + [2]  # one block at the second round, the others at the first
    fits_seen.clear()
    r = encode_slide(tissue_png, resumed, resume=True, **settings)
    assert r["trim_factor"] == TRIM_MAX_FACTOR
    assert len(fits_seen) == later - 1 and all(st.start is not None for _, st, _ in fits_seen)
    assert stored_blocks(resumed) == stored_blocks(out)


def test_the_cli_aim_line_names_the_floor_pass() -> None:
    from cinr_codec.cli.encode import _aim_line

    s = {
        "preset": "q4",
        "rate_weight": 5e-4,
        "slide_psnr": 35.75,
        "aim_chosen": True,
        "floor_rate_weight": 3e-4,
    }
    assert "; landed under the floor, so those blocks were fitted again at 0.0003 (1.20x q4's)" in _aim_line(
        s
    )
    assert "landed under" not in _aim_line({**s, "floor_rate_weight": None})
    line = _aim_line({**s, "floor_rate_weight": None, "trim_factor": 1.7})
    assert line.endswith(
        "; landed over the aim, so the later blocks' latents were searched again at 1.70x their weights"
    )
    assert "landed over" not in _aim_line(s)
