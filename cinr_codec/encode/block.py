"""One block's encode, as a pure function: ``encode_block(BlockJob, pixels)``.

A block's pixels travel: tissue check (``encode.tissue``) -> a background colour, or a fit by
the block's representation (``coding``: any ``BlockCodec``) -> its payload -> a CPU decode of
that payload, measured against the pixels (PSNR, SSIM, seam strips) -> box-filtered mips
stored as small JPEG/PNG images (``encode.mips``). Every block is also measured as a JPEG-tiled
pyramid would store it (``encode.reference``): the summary's yardstick. Nothing here knows what
the payload holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..coding.base import FitSettings
from ..coding.registry import get_codec
from ..core.metrics import ssim
from ..core.requant import SourceJpeg, requantize
from ..core.resample import box_downsample
from ..format.grid import BlockGrid
from ..format.header import psnr_of
from .mips import PSNR_MARGIN, encode_mip
from .reference import block_reference
from .tissue import is_glass

#: Width of the strips along internal block borders whose PSNR is reported (seams).
SEAM_STRIP = 16
#: A block the tissue mask calls background is still fitted when a flat colour would be worse than this.
BACKGROUND_MIN_PSNR = 30.0
#: PSNR assumed for a lossless block when choosing its mips' quality.
LOSSLESS_MIP_PSNR = 60.0


def block_seed(seed: int, block_id: int) -> int:
    """The seed of block ``block_id``'s fit for an encode seeded with ``seed``."""
    return (seed * 0x9E3779B1 + block_id * 0x85EBCA6B + 1) % (2**31 - 1)


def candidate_seed(seed: int, k: int) -> int:
    """The seed of candidate ``k`` of a block fitted from several seeds (``k = 0``: ``seed`` itself)."""
    return seed if k == 0 else (seed + k * 0x27D4EB2F) % (2**31 - 1)


def strip_sums(
    decoded: np.ndarray, original: np.ndarray, edges: tuple[bool, bool, bool, bool], strip: int
) -> dict[str, float]:
    """Squared-error sums and counts of three zones of a block, by distance to its internal edges.

    ``border``: within ``strip`` px of an edge shared with another block; ``adjacent``: the next
    ``2 * strip`` px inward (the same neighbourhood of tissue, as a control for content);
    ``interior``: every pixel not in ``border``. A seam shows as ``border`` worse than ``adjacent``.
    """
    h, w = decoded.shape[:2]
    d = decoded.astype(np.float64) - original.astype(np.float64)
    se = (d * d).sum(axis=2)
    big = h + w
    left, top, right, bottom = edges
    cols = np.arange(w)
    rows = np.arange(h)
    dx = np.minimum(np.where(left, cols, big), np.where(right, w - 1 - cols, big))
    dy = np.minimum(np.where(top, rows, big), np.where(bottom, h - 1 - rows, big))
    dist = np.minimum(dx[None, :], dy[:, None])
    border = dist < strip
    adjacent = (dist >= strip) & (dist < 3 * strip)
    return {
        "border_sse": float(se[border].sum()),
        "border_n": int(border.sum()) * 3,
        "adjacent_sse": float(se[adjacent].sum()),
        "adjacent_n": int(adjacent.sum()) * 3,
        "interior_sse": float(se[~border].sum()),
        "interior_n": int((~border).sum()) * 3,
    }


@dataclass(frozen=True)
class BlockJob:
    """Everything needed to encode one level block, independent of the slide and the journal.

    ``encode_block(job, pixels)`` is a pure function of these and the block's pixels, so blocks
    can be encoded in any order, in other processes or on other machines (a Dask cluster).
    ``model`` names the block model (a kind in ``coding.registry``), ``config`` its configuration
    and ``quant`` its storage setting.
    """

    block_id: int
    grid: BlockGrid
    config: Any
    model: str
    preset: str
    quant: str
    steps: int | None
    time_budget: float | None
    target_psnr: float | None
    device: str
    seed: int
    maybe_background: bool  # the thumbnail saw (almost) no tissue in this block
    tissue_threshold: float
    mip_avif: bool = False  # mips may be AVIF (format 1.6), else JPEG or PNG
    #: The payload of the slide's prior block, whose networks start this block's fit
    #: (``FitSettings.init``; ``encode.slide``), or None.
    init: bytes | None = field(default=None, repr=False)
    #: The rate weight of the fit instead of the preset's (``FitSettings.lam``; ``encode.slide``
    #: aims a slide at a PSNR with one), or None.
    lam: float | None = None
    #: The source's JPEG coding (``slide.source_jpeg``): the decoded block is measured after the
    #: decoder's re-quantization to it (``core.requant``), or None.
    requant: SourceJpeg | None = None
    #: The block's own stored payload, continued at ``lam`` instead of fitted anew
    #: (``FitSettings.start``; ``encode.slide``'s trim), or None.
    start: bytes | None = field(default=None, repr=False)


def _sse(a: np.ndarray, b: np.ndarray) -> float:
    """Summed squared difference of two pixel arrays (``b`` may broadcast), in float64."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return float((d * d).sum())


def encode_block(job: BlockJob, fit_pixels: np.ndarray) -> tuple[dict[str, Any], list[bytes]]:
    """Encode one block from its fit-region pixels: a background colour, or a fitted model.

    Returns the journal metadata (kind, quality sums, seam sums, fit statistics) and the parts
    to store: the model payload, then one stored mip image per mip downsample. Quality is
    measured on a CPU decode of the stored payload: what readers get.
    """
    grid, bid = job.grid, job.block_id
    x, y, w, h = grid.owned(bid)
    ox, oy = grid.frame_origin(bid)
    fx0, fy0, fw, fh = grid.fit_region(bid)
    if fit_pixels.shape != (fh, fw, 3):
        raise ValueError(f"block {bid}: expected {fw}x{fh} pixels, got {fit_pixels.shape}")
    owned = fit_pixels[y - fy0 : y - fy0 + h, x - fx0 : x - fx0 + w]
    meta: dict[str, Any] = {"block_id": bid}
    if job.maybe_background and is_glass(owned, job.tissue_threshold):
        colour = tuple(int(v) for v in np.median(owned.reshape(-1, 3), axis=0))
        sse = _sse(owned, np.asarray(colour))
        flat_psnr = psnr_of(sse, owned.size)
        if flat_psnr is not None and flat_psnr >= BACKGROUND_MIN_PSNR:
            meta.update(kind="background", colour=list(colour), sse=sse, n=int(owned.size))
            meta["jpeg_reference"] = block_reference(owned, error=False)  # its bytes in a JPEG pyramid
            return meta, []
    codec = get_codec(job.model)
    side = float(grid.side)
    settings = FitSettings(
        steps=job.steps,
        time_budget=job.time_budget,
        target_psnr=job.target_psnr,
        device=job.device,
        seed=job.seed,
        frame=(fx0 - ox, fy0 - oy, side),
        measure=False,  # measured below, on the stored payload
        init=job.init,
        lam=job.lam,
        start=job.start,
    )
    fitted = codec.fit(fit_pixels, job.config, job.model, job.preset, settings)
    payload = codec.serialize(fitted, job.quant)
    decoded = codec.load(payload, job.config, f"block {bid}").render(h, w, side, x0=x - ox, y0=y - oy)
    if job.requant is not None:  # what readers get: the block's parts of the source tiles on its lattice
        meta["raw_sse"] = _sse(decoded, owned)  # the model's own error, which the slide's aim predicts
        decoded = requantize(decoded, x, y, job.requant)
    sse = _sse(decoded, owned)
    meta.update(
        kind="model",
        sse=sse,
        n=int(owned.size),
        ssim=ssim(decoded, owned),
        **strip_sums(decoded, owned, grid.internal_edges(bid), SEAM_STRIP),
        steps=fitted.steps,
        seconds=round(fitted.seconds, 3),
        device=fitted.device,
    )
    parts = [payload]
    block_psnr = psnr_of(sse, owned.size)
    floor = block_psnr if block_psnr is not None and math.isfinite(block_psnr) else LOSSLESS_MIP_PSNR
    qualities = []
    boxes: dict[int, np.ndarray] = {}  # box means by downsample: the mips' and the yardstick's

    def box(d: int) -> np.ndarray:
        if d not in boxes:
            boxes[d] = box_downsample(owned, d)
        return boxes[d]

    for dsm in grid.mip_downsamples:
        # Compressive files' mips are a large share of them (docs/architecture.md): worth a slower AVIF.
        data, _, q = encode_mip(
            box(dsm), floor + PSNR_MARGIN, avif=job.mip_avif, refine=codec.name == "latent"
        )
        parts.append(data)
        qualities.append(q)
    meta["mip_quality"] = qualities
    meta["jpeg_reference"] = block_reference(owned, error=True, box=box)  # the summary's yardstick
    return meta, parts
