"""One rate weight for a whole slide, aimed at a PSNR over tissue (the default compressive encode).

A fixed quality level lands where the tissue puts it: at q4, JPEG-tiled TIFFs of H&E reached
37.5-38.8 dB over tissue, and the more detail a JPEG source kept, the less a file at that PSNR
saves against a JPEG pyramid (0.75x at 38.8 dB, 0.65x at 37.2 dB on the same TIFF). So by
default the encoder aims at ``DEFAULT_SLIDE_PSNR``: the slide's prior block is fitted first at the
level's rate weight, and its squared error, with how hard each tissue block is for JPEG
(``difficulty``), predicts the slide's PSNR over tissue at any rate weight (``aimed_rate``). Every
other block is then fitted with the one weight that the prediction puts at the aim (one weight for
the slide, as rate-distortion theory asks of a slide measured by its pooled error), but never a
lower weight than the level's: on tissue that a short fit cannot reach the aim on (a JPEG q30
scan, 34.4 dB at q4), a quarter of the weight bought 0.55 dB for 30 % more bytes. There the unit
latent step is the limit: a slide that ``predicted_psnr`` puts under ``SLIDE_PSNR_FLOOR`` is
stored at a finer step instead (``encode.slide`` fits its prior again; ``BlockCodec.finer_config``),
or straight away where even JPEG's q95 stays well under the floor (``finer_at_once``).

By default the aim itself is chosen per slide (``chosen_aim``): a JPEG-tiled TIFF's pyramid costs
little more per dB just under the source's own quality (its 8x8 grid and tables re-encode almost
losslessly there), so where the slide's JPEG curve, measured on its tissue blocks, rises more
slowly than a ccinr file's (``LOG_BYTES_PER_DB``) a lower aim in ``AUTO_AIM_RANGE`` makes the file
smaller against the scanner's format, and where it rises faster a higher one.

The prediction assumes that a block's MSE is the prior's times the ratio of their JPEG errors, less
``OPTIMISM_DB``, and that it scales with lambda ** ``RATE_EXPONENT`` (``DB_PER_HALVING`` dB per
halving of lambda). Both corrections are measured on 300-step fits (docs/architecture.md,
"Nineteenth session"). Where the aim raises the weight, a third of the later tissue blocks
(``calibration_blocks``) are fitted at it first, and what their errors say of the prediction sets
the rest's weight (``corrected_rate``).

The prediction is open loop: on a TCGA region it was not calibrated on, slides landed 0.5 and 1.0
dB under their aims, one of them under the floor. So once every block is fitted, a slide under
min(aim, ``SLIDE_PSNR_FLOOR``) over tissue has its later blocks fitted again at the one weight their
measured errors put at the floor plus ``FLOOR_MARGIN_DB`` (``floor_rate``; ``encode.slide``), and one
that lands more than ``TRIM_MIN_DB`` over its aim has its blocks' stored latents searched again at a
higher weight (``trim_factor``), which costs a fraction of a fit and saves as many bytes per dB.
The trim's own fall per factor differs from slide to slide, so a trim that stopped short of the aim
is followed by one more, at the factor its measured fall puts at the aim (``retrim_factor``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .train.latent import LAMBDA_RANGE

#: The PSNR over tissue that a default ccinr encode aims at: 1 dB over issue 13's floor. 37 dB until
#: the twenty-second session; on JPEG-tiled TIFFs of one TCGA region at libvips Q 75 and Q 70 that
#: aim left the file at 0.73x and 0.81x a JPEG pyramid at equal PSNR (its curve is flat near the
#: source's own quality), 36 dB at 0.65x and 0.75x (docs/architecture.md, "Twenty-second session").
DEFAULT_SLIDE_PSNR = 36.0
#: The range a default encode chooses its aim in (``chosen_aim``): 0.75 dB over the floor, as the
#: prediction had landed slides up to 0.58 dB under their aim (0.21 since the calibration blocks;
#: docs/architecture.md, "Twenty-third session"); 38 dB at most.
AUTO_AIM_RANGE = (35.75, 38.0)
#: How a ccinr file's bytes grow per dB of PSNR over tissue (natural log): 0.110, 0.108 and 0.110
#: from 36.4 to 37.7 dB on libvips Q 70/75/80 TIFFs of a TCGA region, 0.111 on the bundled
#: sample's Q 80 TIFF (35.7 to 37.0 dB), at 300 steps.
LOG_BYTES_PER_DB = 0.11
#: ``chosen_aim`` leaves ``DEFAULT_SLIDE_PSNR`` only for a file predicted this much smaller
#: against the JPEG pyramid (a fraction).
AIM_GAIN_MIN = 0.01
#: Aims outside this range are refused.
SLIDE_PSNR_RANGE = (25.0, 55.0)
#: What the slide's aim credits for a JPEG-tiled source's re-quantization (``core.requant``), in
#: dB of the blocks' own error under what the file is to reach. The gain differs from block to
#: block (0 to 3 dB on the blocks of a TCGA region at Q 60) and falls with the source's quality
#: (pooled, at 34.6-34.8 dB of the blocks' own error: Q 60 0.83, Q 65 0.69, Q 70 0.54, Q 75 0.36,
#: Q 80 0.23 dB), while the prior block alone had gained 1.33 dB or more on each, and the prior
#: with the calibration blocks 1.7 at Q 60 against 0.57 for the slide. So the aim credits
#: ``REQUANT_SHARE`` of the prior's gain, and then of the prior's and calibration blocks' pooled
#: gain for the rest, at most ``REQUANT_MAX`` each time; once the calibration blocks are fitted
#: the rest's budget counts the error they and the prior leave in the file. docs/architecture.md,
#: "Twenty-sixth session".
REQUANT_SHARE = 0.5
REQUANT_MAX = 0.75
#: The JPEG quality whose error measures a block's difficulty.
DIFFICULTY_QUALITY = 50
#: At most this many tissue blocks are measured (evenly spaced); the rest are extrapolated.
MAX_MEASURED_BLOCKS = 256
#: How the slide's PSNR over tissue falls per halving of lambda: at 300 steps, 1.66 dB from q4 to
#: q3 on a Q 80 TIFF of the bundled sample, 1.44 on the prostate image (the 1.3 of
#: ``train.latent.DB_PER_HALVING`` starts --target-psnr's per-block search); 1.5 until the
#: twenty-third session, when slides aimed at 1-2.4x the level's weight fell 1.70-1.96 dB per
#: halving (the same TIFF at two aims: a TCGA region's Q 70/75/80 1.74/1.74/1.70, another's Q 80
#: 1.92, the sample's Q 80 1.96); MSE ~ lambda ** RATE_EXPONENT.
DB_PER_HALVING = 1.8
RATE_EXPONENT = DB_PER_HALVING / (10 * math.log10(2))
#: How much better than the slide turns out the prediction from the prior and JPEG errors put it
#: at the prior's weight: 0.3 dB on the bundled sample, 0.6 dB on its Q 80 TIFF (at q4).
OPTIMISM_DB = 0.4
#: At most this many of a slide's tissue blocks calibrate the aimed weight (``calibration_blocks``).
MAX_CALIBRATION_BLOCKS = 16
#: The aimed weight is the level's at least and this many times it at most.
MAX_FACTOR = 16.0
#: The PSNR over tissue (dB) under which a slide's prediction at the level's weight, from a prior
#: fitted at the level's latent step, has the prior fitted again at the next finer step
#: (``BlockCodec.finer_config``) and the whole slide stored at it (issue 13's floor). On tissue
#: that a short fit leaves under it (the bundled sample, a JPEG q30 scan: 34.39 dB at q4), a
#: quarter of the weight at a unit step bought 0.55 dB for 30 % more bytes; see the module's
#: measurements in docs/architecture.md ("Twentieth session").
SLIDE_PSNR_FLOOR = 35.0
#: Where no JPEG quality (up to q95) reaches the floor less this many dB over the slide's tissue
#: blocks (``finer_at_once``), the prior is fitted at the finer step straight away instead of first
#: at the level's, whose prediction would send it there anyway (one fit of the prior less). On
#: noise-like tissue ccinr at q4 lands over JPEG's q95 (the bundled sample: a 256^2 crop 33.45
#: against 32.92 dB, the slide predicted at 34.05 against 33.34), on ordinary tissue 1.9-4.7 dB
#: under it (TCGA and prostate crops): a margin of 1 dB over the largest lead seen, 0.71 dB.
FINER_AT_ONCE_MARGIN = 1.0


def chosen_aim(
    jpeg_psnr: ArrayLike,
    jpeg_bytes: ArrayLike,
    lo: float = AUTO_AIM_RANGE[0],
    hi: float = AUTO_AIM_RANGE[1],
) -> float:
    """The aim in [``lo``, ``hi``] dB at which a ccinr file (bytes ~ exp(``LOG_BYTES_PER_DB`` x
    PSNR)) is predicted smallest against a JPEG pyramid of the slide at equal PSNR, given the
    pyramid's PSNR over tissue and bytes per quality (``reference.block_reference`` summed over
    tissue blocks); ``DEFAULT_SLIDE_PSNR`` (or the nearest end) where that is within
    ``AIM_GAIN_MIN`` of the best or the curve does not reach the range."""
    from .reference import equal_psnr_bytes, frontier

    fallback = min(hi, max(lo, DEFAULT_SLIDE_PSNR))
    p = np.asarray(jpeg_psnr, dtype=np.float64)
    finite = np.isfinite(p)
    p, size = p[finite], np.asarray(jpeg_bytes, dtype=np.float64)[finite]
    if p.size < 2:
        return fallback
    # The cost is linear between the frontier's points: its least lies at one of them or an end.
    points = {lo, hi, fallback} | {float(p[j]) for j in frontier(p, size) if lo < p[j] < hi}
    cost: dict[float, float] = {}
    for aim in sorted(points):
        bytes_ = equal_psnr_bytes(p, size, aim)
        if bytes_ is not None and bytes_ > 0:
            cost[aim] = LOG_BYTES_PER_DB * aim - math.log(bytes_)
    if not cost:
        return fallback
    best = min(cost, key=lambda a: (cost[a], -a))  # ties: the higher PSNR
    if fallback in cost and cost[fallback] - cost[best] <= math.log1p(AIM_GAIN_MIN):
        return fallback
    return best


def finer_at_once(jpeg_psnr: ArrayLike, floor: float = SLIDE_PSNR_FLOOR) -> bool:
    """Whether the slide's JPEG curve (PSNR over tissue per quality, as for ``chosen_aim``) stays
    ``FINER_AT_ONCE_MARGIN`` under ``floor`` at every quality: a ccinr prior at the level's step
    would then be predicted under the floor too (``SLIDE_PSNR_FLOOR``)."""
    p = np.asarray(jpeg_psnr, dtype=np.float64)
    return bool(p.size) and not bool(np.isnan(p).any()) and float(p.max()) < floor - FINER_AT_ONCE_MARGIN


def difficulty(pixels: np.ndarray) -> float:
    """Mean squared error (8-bit units, per value) of uint8 RGB ``pixels`` stored as JPEG at
    ``DIFFICULTY_QUALITY`` (libjpeg-turbo through imagecodecs: the same on every machine)."""
    import imagecodecs

    px = np.ascontiguousarray(pixels)
    d = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(px, level=DIFFICULTY_QUALITY))
    diff = d.astype(np.float64) - px
    return float((diff * diff).mean())


def measured_blocks(blocks: Sequence[int], limit: int = MAX_MEASURED_BLOCKS) -> list[int]:
    """Evenly spaced members of ``blocks`` (sorted), at most ``limit`` of them."""
    ordered = sorted(blocks)
    if len(ordered) <= limit:
        return ordered
    return [ordered[(i * len(ordered)) // limit] for i in range(limit)]


@dataclass(frozen=True)
class SlideDifficulty:
    """What the other tissue blocks of a slide hold, for ``aimed_rate``: ``values``, their values
    (pixels x 3), and ``weighted``, the sum of values x JPEG MSE, both extrapolated from the
    measured blocks to all; ``prior``, the prior block's JPEG MSE."""

    prior: float
    values: float
    weighted: float


def _weight_bounds(lam: float) -> tuple[float, float]:
    """The least and greatest rate weight an aim may give when the level's is ``lam``: ``lam`` and
    ``MAX_FACTOR`` x ``lam`` (within ``LAMBDA_RANGE``)."""
    return lam, max(lam, min(lam * MAX_FACTOR, LAMBDA_RANGE[1]))


def _slide_error(db: float, prior_values: int, slide: SlideDifficulty) -> float:
    """The squared error, summed over the prior's and the other blocks' values, of a slide at
    ``db`` dB."""
    return 255.0**2 * 10 ** (-db / 10) * (prior_values + slide.values)


def _others_sse(prior_sse: float, prior_values: int, slide: SlideDifficulty) -> float:
    """The other blocks' squared error at the prior's weight: the prior's MSE times each block's
    JPEG error over the prior's, summed over their values."""
    return prior_sse / max(1, prior_values) * slide.weighted / max(slide.prior, 1e-6)


def calibration_blocks(later: Sequence[int]) -> list[int]:
    """The blocks, of the slide's ``later`` tissue blocks, fitted first at the aimed weight to
    correct it for the rest (``corrected_rate``): a third of them, evenly spaced, 2 to
    ``MAX_CALIBRATION_BLOCKS``; none for fewer than 4."""
    if len(later) < 4:
        return []
    return measured_blocks(later, min(MAX_CALIBRATION_BLOCKS, max(2, math.ceil(len(later) / 3))))


def corrected_rate(
    aim: float,
    lam0: float,
    lam1: float,
    prior_sse: float,
    prior_values: int,
    slide: SlideDifficulty,
    fitted: Sequence[tuple[float, int, float]],
    spent: float | None = None,
    credit: float = 0.0,
) -> float:
    """The rate weight for the slide's last blocks that puts its PSNR over tissue at ``aim`` dB,
    once the ``fitted`` blocks (squared error, values and JPEG MSE of each) were fitted at
    ``lam1``: the prediction of ``aimed_rate`` (the prior fitted at ``lam0``) scaled by what those
    fits measured against it, instead of ``OPTIMISM_DB``; bounded as ``aimed_rate``'s. ``spent``:
    the squared error the prior and the fitted blocks leave in the file, where it differs from
    their own (re-quantization), and ``credit``: dB the last blocks' file error is expected under
    their own."""
    lo, hi = _weight_bounds(lam0)
    per_difficulty = prior_sse / max(1, prior_values) / max(slide.prior, 1e-6)
    done_sse = sum(e for e, _, _ in fitted)
    done_weighted = sum(n * d for _, n, d in fitted)
    predicted = per_difficulty * done_weighted * (lam1 / lam0) ** RATE_EXPONENT
    rest = slide.weighted - done_weighted
    if predicted <= 0 or done_sse <= 0 or rest <= 0:
        return lam1  # nothing measured against the prediction, or nothing left to correct
    scale = done_sse / predicted
    left = _slide_error(aim, prior_values, slide) - (prior_sse + done_sse if spent is None else spent)
    budget = left * 10 ** (credit / 10)
    if budget <= 0:
        return lo
    return min(hi, max(lo, lam0 * (budget / (scale * per_difficulty * rest)) ** (1 / RATE_EXPONENT)))


#: A slide that lands under its floor (min(aim, ``SLIDE_PSNR_FLOOR``)) over tissue once every block
#: is fitted has its later blocks fitted again at the one weight ``floor_rate`` predicts for the
#: floor plus this much (dB): the aim's prediction is open-loop and landed 0.5 and 1.0 dB under
#: its aim on a TCGA region it was not calibrated on (docs/architecture.md, "Thirtieth session"),
#: while this one starts from every block's measured error.
FLOOR_MARGIN_DB = 0.3
#: The journal key that marks a block fitted again for the floor, with the weight it was fitted at.
FLOOR_KEY = "floor_weight"
#: The journal key of such a block's record that keeps the calibration's corrected weight and
#: credit from the first fits (``corrected_rate``, ``requant_credit``), which its record replaced.
FIRST_PASS_KEY = "first_pass"


def floor_rate(
    target: float, kept_sse: float, values: int, fitted: Sequence[tuple[float, float]]
) -> float | None:
    """The one rate weight at which the ``fitted`` blocks ((squared error, rate weight) each),
    fitted again, put the slide at ``target`` dB over its ``values`` tissue values, beside
    ``kept_sse`` of blocks that stay: each block's error scales as its weight ** ``RATE_EXPONENT``;
    at most ``LAMBDA_RANGE``'s greatest, and None where even its least is predicted under ``target``."""
    budget = 255.0**2 * 10 ** (-target / 10) * values - kept_sse
    scale = sum(sse * lam ** (-RATE_EXPONENT) for sse, lam in fitted if sse > 0 and lam > 0)
    if budget <= 0 or scale <= 0:
        return None
    lam = (budget / scale) ** (1 / RATE_EXPONENT)
    return None if lam < LAMBDA_RANGE[0] else float(min(LAMBDA_RANGE[1], lam))


#: A slide that lands more than this over its aim (dB over tissue) once every block is fitted has
#: its tissue blocks' latents searched again at a higher rate weight (``trim_factor``;
#: ``encode.slide``'s trim): the aim's prediction is open loop, and a 1.5 MP TCGA region at 600
#: steps a block landed 0.42 dB over its aim (docs/architecture.md, "Thirty-second session").
TRIM_MIN_DB = 0.1
#: How far a block's own PSNR falls when its stored latents are searched again
#: (``rdo.refine_latents`` with the recipe's sweeps) at ``g`` times the weight it was fitted at:
#: about ``TRIM_DB`` x (ln g)^2 dB. On 512^2 blocks of JPEG Q 60 TCGA tissue: 1.15, 1.24 and 1.20
#: at g = 1.25, 1.5 and 2 after 600 steps, 1.8 at g = 1.5 after 270, each point as cheap in bytes
#: per dB as fitting the block again at that weight (9.7-12.3 % a dB).
TRIM_DB = 1.5
#: Where the slide's blocks are re-quantized to a JPEG source's lattice, its PSNR over tissue falls
#: faster, about ``TRIM_DB_REQUANT`` x ln g dB (the lattice's gain goes first): on the 1537 x 1023
#: TCGA region's Q 60 TIFF, 1.73 at g = 1.69, 1.60 at 1.41 and, at seed 1, 1.53 at 1.36
#: (docs/architecture.md, "Thirty-second session"). The trims take the larger figures, so that
#: they stop short of the aim rather than under it.
TRIM_DB_REQUANT = 1.75
#: The trim's factor also keeps a slide over the floor (min(aim, ``SLIDE_PSNR_FLOOR``)) plus this
#: much were its fall twice ``TRIM_DB``'s.
TRIM_FLOOR_MARGIN_DB = 0.1
#: The trim's weight is at most this many times the fitted one.
TRIM_MAX_FACTOR = 2.0
#: The least training steps a block of a trimmed slide has: the trim costs about 11 s of a core
#: a 512^2 block, a twelfth of a 600-step fit and a fifth of a 270-step one; slides at the CPU's
#: 270 steps (the bundled sample's work, within the README's 10 minutes) are not trimmed.
TRIM_MIN_STEPS = 300
#: The journal key that marks a block whose stored fit was searched again for the trim, with the
#: factor of its weight.
TRIM_KEY = "trim_factor"


def trim_factor(
    landed: float, aim: float, floor: float = SLIDE_PSNR_FLOOR, requantized: bool = False
) -> float | None:
    """By how much the trim raises the blocks' weights for a slide that landed at ``landed`` dB
    over tissue: the factor g whose expected fall (``TRIM_DB`` x (ln g)^2, or with
    ``requantized`` blocks ``TRIM_DB_REQUANT`` x ln g) puts it at ``aim``, at most
    ``TRIM_MAX_FACTOR``, and at most the one whose twice that fall would put it at min(aim,
    ``floor``) plus ``TRIM_FLOOR_MARGIN_DB``; None where that takes off less than ``TRIM_MIN_DB``
    (a slide near its aim, under it, or near the floor)."""
    excess = landed - aim
    if not math.isfinite(excess) or excess < TRIM_MIN_DB:
        return None
    fall = min(excess, (landed - min(aim, floor) - TRIM_FLOOR_MARGIN_DB) / 2)
    if fall < TRIM_MIN_DB:
        return None
    log_g = fall / TRIM_DB_REQUANT if requantized else math.sqrt(fall / TRIM_DB)
    return float(min(TRIM_MAX_FACTOR, math.exp(log_g)))


#: The journal key of a trimmed record's round (1, or 2 for ``retrim_factor``'s; absent: 1), and
#: the one of the slide's PSNR over tissue before its trim (what ``retrim_factor`` measures from).
TRIM_ROUND_KEY = "trim_round"
TRIM_LANDED_KEY = "trim_landed"
#: A second trim is run only where it raises the first's factor by more than this fraction.
RETRIM_MIN_GROWTH = 0.02


def retrim_factor(
    before: float,
    after: float,
    aim: float,
    factor: float,
    floor: float = SLIDE_PSNR_FLOOR,
    requantized: bool = False,
) -> float | None:
    """The factor (times the first fits' weights) of a second trim for a slide that landed at
    ``before`` dB over tissue and, trimmed at ``factor``, at ``after``: the fall that trim measured,
    per ln g (``requantized``, as ``TRIM_DB_REQUANT`` models it) or per (ln g)^2 (``TRIM_DB``'s),
    carried to the aim (to min(aim, ``floor``) plus ``TRIM_FLOOR_MARGIN_DB`` at the least), at most
    ``TRIM_MAX_FACTOR``. None where ``after`` is within ``TRIM_MIN_DB`` of the aim, where the trim
    made no fall, or where the factor would grow by ``RETRIM_MIN_GROWTH`` or less. On a 1056^2 TCGA
    region's Q 60 TIFF the first trim fell 1.15 dB per ln g where ``TRIM_DB_REQUANT`` says 1.75
    (docs/architecture.md, "Thirty-fifth session")."""
    if not (math.isfinite(before) and math.isfinite(after)) or after - aim < TRIM_MIN_DB or factor <= 1.0:
        return None
    fell = before - after
    if fell <= 0:
        return None
    want = before - max(aim, min(aim, floor) + TRIM_FLOOR_MARGIN_DB)
    log_f = math.log(factor)
    log_g = want / fell * log_f if requantized else math.sqrt(want / fell) * log_f
    g = min(TRIM_MAX_FACTOR, math.exp(log_g))
    return float(g) if g > factor * (1.0 + RETRIM_MIN_GROWTH) else None


def model_sse(meta: Mapping[str, Any]) -> float:
    """A fitted block's own squared error (``raw_sse``: before the decoder's re-quantization to a
    JPEG source's lattice, where there is one), what the aim's predictions are of."""
    return float(meta.get("raw_sse", meta["sse"]))


def requant_credit(records: Sequence[Mapping[str, Any]], share: float, most: float) -> float:
    """dB by which the slide's aim for its blocks' own error is lowered: ``share`` of what
    re-quantization added to the fitted blocks' pooled PSNR (``records``: their journal records),
    at most ``most``; 0 without re-quantization."""
    fitted = [m for m in records if "raw_sse" in m]
    sse = sum(float(m["sse"]) for m in fitted)
    raw = sum(float(m["raw_sse"]) for m in fitted)
    if not sse > 0 or not raw > 0:
        return 0.0
    return min(most, max(0.0, share * 10 * math.log10(raw / sse)))


def predicted_psnr(prior_sse: float, prior_values: int, slide: SlideDifficulty) -> float:
    """The slide's PSNR over tissue (dB) predicted with every block at the prior's rate weight,
    less ``OPTIMISM_DB`` (the prior block fitted with squared error ``prior_sse`` over
    ``prior_values`` values)."""
    mse = (prior_sse + _others_sse(prior_sse, prior_values, slide)) / max(1.0, prior_values + slide.values)
    if mse <= 0:
        return math.inf
    return 10 * math.log10(255.0**2 / mse) - OPTIMISM_DB


def aimed_rate(aim: float, lam: float, prior_sse: float, prior_values: int, slide: SlideDifficulty) -> float:
    """The rate weight for the slide's other blocks that puts its PSNR over tissue at ``aim`` dB,
    given the prior block fitted at ``lam`` with squared error ``prior_sse`` over ``prior_values``
    values (its weight stays): in [``lam``, ``MAX_FACTOR`` x ``lam``] (and ``LAMBDA_RANGE``), so
    a slide predicted under the aim keeps ``lam``."""
    lo, hi = _weight_bounds(lam)
    budget = _slide_error(aim + OPTIMISM_DB, prior_values, slide) - prior_sse
    if slide.values <= 0:
        return lam  # nothing else to fit
    if budget <= 0:
        return lo  # the prior alone spends the whole error
    at_lam = _others_sse(prior_sse, prior_values, slide)
    if at_lam <= 0:
        return hi
    return min(hi, max(lo, lam * (budget / at_lam) ** (1 / RATE_EXPONENT)))
