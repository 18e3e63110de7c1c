"""Encode an RGB image as a ``.cinr`` file: one neural block covering the whole image.

This is the first, single-block encoder: ``encode_image`` fits one model to the whole
image, quantizes its tensors, and writes a file whose header (``formats/cinr-v1.md`` §4.2)
already has the shape of a slide encoding — a grid of blocks (here 1 x 1, margin 0), each
block's tensors in its own payload — so that the block-grid encoder of whole slides writes
the same layout. Quality figures in the footer are measured *after* quantization, by
decoding the stored tensors exactly as ``cinr_codec.decoding.decode_image`` does.

Storage settings (``quant=``) name how the hash table and the network weights are stored:

====================  ======================  =================================
setting               hash table              network weights and biases
====================  ======================  =================================
``float32``           float32                 float32
``float16``           float16                 float16
``bfloat16``          bfloat16                bfloat16
``int8``              int8, one range/level   int8, one range per output row
                                              (biases and 1-D tensors: one range)
``int8+float16``      int8, one range/level   float16
====================  ======================  =================================

``DEFAULT_QUANT`` was chosen by ``python -m benchmarks.quant`` (``benchmarks/results/quant.md``):
the smallest setting that loses at most 0.1 dB of PSNR against float32 on every test image.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .blocks import BlockGrid
from .container import CinrWriter, dequantize_tensors, quantize_tensors
from .errors import CinrInputError, CinrIOError
from .fitting import FitResult, fit_image, render
from .journal import Journal
from .metrics import psnr, ssim
from .models import ModelConfig

log = logging.getLogger(__name__)

#: Storage settings: name -> (hash-table storage, network storage).
QUANT_SETTINGS: dict[str, tuple[str, str]] = {
    "float32": ("float32", "float32"),
    "float16": ("float16", "float16"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "int8": ("int8", "int8"),
    "int8+float16": ("int8", "float16"),
}

#: Default storage: the smallest setting within 0.1 dB of float32 on every image of
#: ``benchmarks/results/quant.md``.
DEFAULT_QUANT = "int8+float16"

#: Name of the hash table in a model's state dict (the PyTorch hash-grid backend).
TABLE_KEY = "grid.table"

#: Largest image side the single-block path accepts (the decoder enforces the same bound).
MAX_SIDE = 1 << 20
#: Largest pixel count of a single block (the decoder enforces the same bound).
MAX_PIXELS = 1 << 28


def storage_plan(
    state: Mapping[str, torch.Tensor], table_sizes: list[int], quant: str
) -> tuple[str, dict[str, str], dict[str, list[int]]]:
    """``(dtype, dtypes, groups)`` arguments of ``quantize_tensors`` for a state dict and a setting.

    The hash table's int8 groups are its levels (``table_sizes``); other int8 tensors of two
    or more dimensions get one group per row (output channel), 1-D tensors one group.
    """
    if quant not in QUANT_SETTINGS:
        raise ValueError(f"unknown storage setting {quant!r}; choose one of {', '.join(QUANT_SETTINGS)}")
    table_dtype, net_dtype = QUANT_SETTINGS[quant]
    dtypes: dict[str, str] = {}
    groups: dict[str, list[int]] = {}
    for name, t in state.items():
        storage = table_dtype if name == TABLE_KEY else net_dtype
        dtypes[name] = storage
        if storage != "int8" or not t.is_floating_point():
            continue
        if name == TABLE_KEY:
            if sum(table_sizes) != t.shape[0]:
                raise ValueError(f"table sizes sum to {sum(table_sizes)}, the table has {t.shape[0]} rows")
            groups[name] = list(table_sizes)
        elif t.dim() >= 2 and t.shape[0] > 0:
            groups[name] = [1] * int(t.shape[0])
    return net_dtype, dtypes, groups


def quantize_state(state: Mapping[str, torch.Tensor], table_sizes: list[int], quant: str) -> bytes:
    """safetensors bytes (``quantize_tensors``) of a model state dict under a storage setting."""
    dtype, dtypes, groups = storage_plan(state, table_sizes, quant)
    return quantize_tensors(state, dtype, dtypes=dtypes, groups=groups)


def _slide_fields(width: int, height: int, properties: Mapping[str, str] | None) -> dict[str, Any]:
    """The header's ``slide`` object (§4.2) from the image size and the source's properties."""
    props = dict(properties or {})
    for k, v in props.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError("source_properties must map strings to strings")

    def number(key: str) -> float | None:
        try:
            v = float(props[key])
        except (KeyError, ValueError):
            return None
        return v if math.isfinite(v) and v > 0 else None

    return {
        "width": width,
        "height": height,
        "mpp_x": number("openslide.mpp-x"),
        "mpp_y": number("openslide.mpp-y"),
        "objective_power": number("openslide.objective-power"),
        "vendor": props.get("openslide.vendor"),
        "properties": props,
    }


def _finite_or_none(v: float) -> float | None:
    """JSON has no infinity: a lossless decode's PSNR is stored as null."""
    return v if math.isfinite(v) else None


def _check_destination(dst: str | os.PathLike[str]) -> Path:
    path = Path(dst)
    if path.is_dir():
        raise CinrIOError(f"{path}: is a directory")
    if not path.parent.is_dir():
        raise CinrIOError(f"{path}: folder {path.parent} does not exist")
    return path


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    if not (2 <= h <= MAX_SIDE and 2 <= w <= MAX_SIDE) or h * w > MAX_PIXELS:
        raise ValueError(
            f"image of {w}x{h} pixels: each side must be in [2, {MAX_SIDE}] and the area at most "
            f"{MAX_PIXELS} pixels for a single block"
        )
    return np.ascontiguousarray(img)


def write_fitted(
    result: FitResult,
    image: np.ndarray,
    dst: str | os.PathLike[str],
    *,
    quant: str = DEFAULT_QUANT,
    source_properties: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Quantize a fitted model of ``image``, measure its decoded quality, write ``dst``; return a summary.

    ``result`` is ``fit_image(image, ...)``'s output (one block covering the whole image).
    The file is written atomically: on any exception ``dst`` is untouched. Fitting once and
    calling this for several settings compares storage settings on the same model.
    """
    img = _check_image(image)
    height, width = img.shape[:2]
    if (result.height, result.width) != (height, width):
        raise ValueError(
            f"the model was fitted to {result.width}x{result.height}, the image is {width}x{height}"
        )
    if quant not in QUANT_SETTINGS:
        raise ValueError(f"unknown storage setting {quant!r}; choose one of {', '.join(QUANT_SETTINGS)}")
    path = _check_destination(dst)
    slide = _slide_fields(width, height, source_properties)
    cfg = result.config
    if cfg.backend != "torch":
        raise ValueError(
            f"a model with the {cfg.backend!r} hash-grid backend cannot be stored: files must decode on a CPU"
        )
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    payload = quantize_state(state, cfg.hash.table_sizes(), quant)
    table_dtype, net_dtype = QUANT_SETTINGS[quant]
    from . import __version__

    header = {
        "slide": slide,
        # One block of side max(W, H) at the origin: pixel (i, j) has coordinates
        # ((j + 0.5) / S, (i + 0.5) / S) with S = block_size (cinr_codec.fitting).
        "grid": {"block_size": max(width, height), "halo": 0, "cols": 1, "rows": 1},
        "model": cfg.to_dict(),
        "quantization": {
            "setting": quant,
            "hash_table": table_dtype + (" (one range per level)" if table_dtype == "int8" else ""),
            "network": net_dtype + (" (one range per output row)" if net_dtype == "int8" else ""),
        },
        "encoder": {
            "software": f"cinr_codec {__version__}",
            "model": cfg.kind,
            "preset": result.preset,
        },
    }
    with CinrWriter(path, header, 1, max_block_bytes=max(8, len(payload))) as writer:
        stored = writer.add_model_block(0, payload)
        # Measure what a decoder will see: the dequantized tensors in a CPU copy of the model.
        decoder_model = copy.deepcopy(result.model).to("cpu")
        decoder_model.load_state_dict(dequantize_tensors(payload, where=f"{path}: block 0"), strict=True)
        decoded = render(decoder_model, height, width)
        q_psnr, q_ssim = psnr(decoded, img), ssim(decoded, img)
        pixels = width * height
        footer = {
            "quality": {
                "region": "whole image",
                "after_quantization": True,
                "psnr_db": _finite_or_none(q_psnr),
                "ssim": q_ssim,
                "pixels": pixels,
                "payload_bytes": stored,
                "payload_bpp": 8.0 * stored / pixels,
            },
            "fit": {
                "psnr_db": _finite_or_none(result.psnr),
                "ssim": result.ssim,
                "steps": result.steps,
                "seconds": round(result.seconds, 3),
                "device": result.device,
            },
        }
        writer.commit(footer)
    size = path.stat().st_size
    summary = {
        "path": str(path),
        "width": width,
        "height": height,
        "model": cfg.kind,
        "preset": result.preset,
        "quant": quant,
        "psnr": q_psnr,
        "ssim": q_ssim,
        "psnr_fit": result.psnr,
        "ssim_fit": result.ssim,
        "bytes": size,
        "payload_bytes": stored,
        "raw_bytes": len(payload),
        "bpp": 8.0 * size / pixels,
        "payload_bpp": 8.0 * stored / pixels,
        "n_params": result.n_params,
        "steps": result.steps,
        "seconds": result.seconds,
        "device": result.device,
    }
    log.info(
        "%s: %dx%d, %s, %.2f dB after quantization (%.2f dB fitted), %d bytes, %.3f bpp",
        path,
        width,
        height,
        quant,
        q_psnr,
        result.psnr,
        size,
        summary["bpp"],
    )
    return summary


def encode_image(
    image: np.ndarray,
    dst: str | os.PathLike[str],
    *,
    model: str = "cinr",
    preset: str = "fast",
    steps: int | None = None,
    time_budget: float | None = None,
    quant: str = DEFAULT_QUANT,
    seed: int = 0,
    device: str = "cpu",
    source_properties: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Fit one ``model`` block to a whole RGB uint8 image and write it as the ``.cinr`` file ``dst``.

    Returns a summary: ``psnr``/``ssim`` of the decoded file against ``image`` (after
    quantization), ``psnr_fit`` (before), ``bytes`` (file size), ``bpp`` (file bits per
    pixel), ``payload_bytes``/``payload_bpp`` (the compressed model alone), ``steps``, ...
    Bad arguments raise ``ValueError`` (before any fitting); an unwritable ``dst`` ``CinrIOError``.
    """
    img = _check_image(image)
    if quant not in QUANT_SETTINGS:
        raise ValueError(f"unknown storage setting {quant!r}; choose one of {', '.join(QUANT_SETTINGS)}")
    _check_destination(dst)
    _slide_fields(img.shape[1], img.shape[0], source_properties)  # validate before the (long) fit
    result = fit_image(
        img, model=model, preset=preset, steps=steps, time_budget=time_budget, device=device, seed=seed
    )
    return write_fitted(result, img, dst, quant=quant, source_properties=source_properties)


# -- whole slides ------------------------------------------------------------------------------

#: Default block side (pixels) and fitting margin; see docs/architecture.md for the measurements.
DEFAULT_BLOCK_SIZE = 1024
DEFAULT_MARGIN = 0
#: Smallest block side accepted (tests use small blocks; real encodes use >= 1024).
MIN_BLOCK_SIZE = 64
#: Smallest level accepted for a slide encode.
MIN_SLIDE_SIDE = 16
#: Width of the strips along internal block borders whose PSNR is reported (seams).
SEAM_STRIP = 16
#: A block the tissue mask calls background is still fitted when a flat colour would be worse than this.
BACKGROUND_MIN_PSNR = 30.0

#: A block whose thumbnail tissue fraction is below this is checked at full resolution.
THUMB_TISSUE_MIN = 0.005
#: At full resolution (4x4 means) a background block has at most this fraction of saturated pixels.
GLASS_MAX_TISSUE = 0.0005

ProgressEvent = dict[str, Any]


def _is_glass(pixels: np.ndarray, threshold: float) -> bool:
    """Whether a block's own pixels show no tissue: few 4x4-averaged pixels above the saturation threshold.

    The thumbnail pre-selects candidates; this full-resolution check keeps small fragments that
    the thumbnail blurred away (a false "background" destroys tissue, a false "tissue" costs bytes).
    """
    from .mips import box_downsample, to_uint8
    from .tissue import DARK_VALUE, hsv_saturation_value

    sat, val = hsv_saturation_value(to_uint8(box_downsample(pixels, 4)))
    tissue = (sat > threshold) | (val < DARK_VALUE)
    return bool(tissue.sum() <= GLASS_MAX_TISSUE * tissue.size)


def _block_seed(seed: int, block_id: int) -> int:
    return (seed * 0x9E3779B1 + block_id * 0x85EBCA6B + 1) % (2**31 - 1)


def _strip_sums(
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


def _psnr_of(sse: float, n: float) -> float | None:
    if n == 0:
        return None
    m = sse / n
    return math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m)


def _fingerprint(src: Path, header: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    st = src.stat()
    return {
        "source": str(src.resolve()),
        "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns,
        "header": header,
        **settings,
    }


@dataclass(frozen=True)
class BlockJob:
    """Everything needed to encode one level block, independent of the slide and the journal.

    ``encode_block(job, pixels)`` is a pure function of these and the block's pixels, so blocks
    can be encoded in any order, in other processes or on other machines (a Dask cluster).
    """

    block_id: int
    grid: BlockGrid
    config: ModelConfig
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


def encode_block(job: BlockJob, fit_pixels: np.ndarray) -> tuple[dict[str, Any], list[bytes]]:
    """Encode one block from its fit-region pixels: a background colour, or a fitted model.

    Returns the journal metadata (kind, quality sums, seam sums, fit statistics) and the parts
    to store: the quantized model payload, then one stored mip image per mip downsample.
    Quality is measured on a CPU decode of the stored (quantized) tensors: what readers get.
    """
    from .mips import PSNR_MARGIN, box_downsample, encode_mip
    from .models import build_model

    grid, cfg, bid = job.grid, job.config, job.block_id
    x, y, w, h = grid.owned(bid)
    ox, oy = grid.frame_origin(bid)
    fx0, fy0, fw, fh = grid.fit_region(bid)
    if fit_pixels.shape != (fh, fw, 3):
        raise ValueError(f"block {bid}: expected {fw}x{fh} pixels, got {fit_pixels.shape}")
    owned = fit_pixels[y - fy0 : y - fy0 + h, x - fx0 : x - fx0 + w]
    meta: dict[str, Any] = {"block_id": bid}
    if job.maybe_background and _is_glass(owned, job.tissue_threshold):
        colour = tuple(int(v) for v in np.median(owned.reshape(-1, 3), axis=0))
        d = owned.astype(np.float64) - np.asarray(colour, dtype=np.float64)
        sse = float((d * d).sum())
        flat_psnr = _psnr_of(sse, owned.size)
        if flat_psnr is not None and flat_psnr >= BACKGROUND_MIN_PSNR:
            meta.update(kind="background", colour=list(colour), sse=sse, n=int(owned.size))
            return meta, []
    side = float(grid.side)
    result = fit_image(
        fit_pixels,
        model=job.model,
        preset=job.preset,
        steps=job.steps,
        time_budget=job.time_budget,
        target_psnr=job.target_psnr,
        device=job.device,
        seed=job.seed,
        hash_config=cfg.hash,
        frame=(fx0 - ox, fy0 - oy, side),
        measure=False,  # measured below, on the stored (quantized) model
    )
    if result.config != cfg:
        raise RuntimeError("block model configuration differs from the header's")
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    payload = quantize_state(state, cfg.hash.table_sizes(), job.quant)
    decoder = build_model(cfg, "cpu")
    decoder.load_state_dict(dequantize_tensors(payload, where=f"block {bid}"), strict=True)
    decoded = render(decoder, h, w, side, x0=x - ox, y0=y - oy)
    d = decoded.astype(np.float64) - owned.astype(np.float64)
    sse = float((d * d).sum())
    meta.update(
        kind="model",
        sse=sse,
        n=int(owned.size),
        ssim=ssim(decoded, owned),
        **_strip_sums(decoded, owned, grid.internal_edges(bid), SEAM_STRIP),
        steps=result.steps,
        seconds=round(result.seconds, 3),
        device=result.device,
    )
    parts = [payload]
    block_psnr = _psnr_of(sse, owned.size)
    floor = block_psnr if block_psnr is not None and math.isfinite(block_psnr) else 60.0
    qualities = []
    for dsm in grid.mip_downsamples:
        data, _, q = encode_mip(box_downsample(owned, dsm), floor + PSNR_MARGIN)
        parts.append(data)
        qualities.append(q)
    meta["mip_quality"] = qualities
    return meta, parts


def encode_slide(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    level: int = 0,
    model: str = "cinr",
    preset: str = "fast",
    steps: int | None = None,
    time_budget: float | None = None,
    total_time_budget: float | None = None,
    target_psnr: float | None = None,
    device: str = "auto",
    quant: str = DEFAULT_QUANT,
    block_size: int = DEFAULT_BLOCK_SIZE,
    margin: int = DEFAULT_MARGIN,
    tissue_mask: bool = True,
    mips: bool = True,
    seed: int = 0,
    resume: bool = False,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> dict[str, Any]:
    """Encode level ``level`` of a slide or image ``src`` as the ``.cinr`` file ``dst``; return a summary.

    The level is cut into ``block_size`` blocks (``cinr_codec.blocks``), each fitted with
    ``margin`` pixels of context on every side; blocks without tissue are stored as a colour.
    Finished blocks go to a journal beside ``dst`` (``--resume`` continues an interrupted
    encode); ``dst`` appears, atomically, only when complete. ``time_budget`` bounds each
    block's training, ``total_time_budget`` the whole encode's, ``target_psnr`` stops a block
    early. Bad input raises ``CinrInputError``/``ValueError`` before any fitting.
    """
    from . import __version__
    from .blocks import default_mip_downsamples
    from .fitting import resolve_device
    from .journal import journal_path
    from .presets import get_preset
    from .slide import SlideSource
    from .tissue import block_tissue, detect_tissue

    t_start = time.perf_counter()
    if quant not in QUANT_SETTINGS:
        raise ValueError(f"unknown storage setting {quant!r}; choose one of {', '.join(QUANT_SETTINGS)}")
    if not isinstance(block_size, int) or block_size < MIN_BLOCK_SIZE or block_size % 16:
        raise ValueError(f"block size must be a multiple of 16, at least {MIN_BLOCK_SIZE}")
    if not 0 <= margin <= block_size // 2:
        raise ValueError("margin must be in [0, block_size / 2]")
    if steps is not None and steps < 0:
        raise ValueError("steps must be >= 0")
    for name, v in (("time budget", time_budget), ("total time budget", total_time_budget)):
        if v is not None and not v > 0:
            raise ValueError(f"{name} must be > 0 seconds")
    pre = get_preset(model, preset)
    dev = resolve_device(device)
    src_path = Path(src)
    path = _check_destination(dst)
    if src_path.exists() and path.exists() and src_path.resolve() == path.resolve():
        raise ValueError(f"{path}: the output would overwrite the source")

    with SlideSource(src_path, level) as source:
        width, height = source.width, source.height
        if width < MIN_SLIDE_SIDE or height < MIN_SLIDE_SIDE:
            raise CinrInputError(
                f"{src_path}: level {level} is {width}x{height} pixels; at least "
                f"{MIN_SLIDE_SIDE}x{MIN_SLIDE_SIDE} is needed"
            )
        grid = BlockGrid(
            width,
            height,
            block_size,
            margin,
            default_mip_downsamples(block_size) if mips else (),
        )
        cfg = pre.model_config(grid.side, grid.side)
        if cfg.backend != "torch":
            raise ValueError("only the PyTorch hash-grid backend can be stored (files must decode on a CPU)")
        # Tissue: Otsu on the saturation of a thumbnail with at least ~4 thumbnail pixels per block.
        thumb_side = int(min(8192, max(1024, 4 * max(width, height) / block_size)))
        tmap = detect_tissue(source.thumbnail(thumb_side), width, height)
        if tissue_mask:
            fractions = block_tissue(tmap, block_size, grid.cols, grid.rows, margin_px=margin)
        else:
            fractions = np.ones((grid.rows, grid.cols))
        props = source.properties
        slide = _slide_fields(width, height, props)
        if source.downsample != 1.0:
            for key in ("mpp_x", "mpp_y"):
                if slide[key] is not None:
                    slide[key] *= source.downsample
            if slide["objective_power"] is not None:
                slide["objective_power"] /= source.downsample
        slide["level"] = level
        slide["level_downsample"] = source.downsample
        slide["background"] = list(tmap.background)
        table_dtype, net_dtype = QUANT_SETTINGS[quant]
        header: dict[str, Any] = {
            "slide": slide,
            "grid": grid.to_header(),
            "model": cfg.to_dict(),
            "quantization": {
                "setting": quant,
                "hash_table": table_dtype + (" (one range per level)" if table_dtype == "int8" else ""),
                "network": net_dtype + (" (one range per output row)" if net_dtype == "int8" else ""),
            },
            "encoder": {"software": f"cinr_codec {__version__}", "model": cfg.kind, "preset": pre.name},
            "tissue": {
                "method": "otsu-saturation",
                "threshold": round(float(tmap.threshold), 3),
                "fraction": round(float(tmap.tissue_fraction), 5),
                "masked": bool(tissue_mask),
            },
        }
        if grid.mip_downsamples:
            header["mips"] = {
                "downsamples": list(grid.mip_downsamples),
                "first_block": grid.n_level_blocks,
                "filter": "box",
            }
        settings = {
            "seed": seed,
            "steps": steps,
            "time_budget": time_budget,
            "total_time_budget": total_time_budget,
            "target_psnr": target_psnr,
            "train": {k: list(v) if isinstance(v, tuple) else v for k, v in pre.train.items()},
            "software": __version__,
        }
        jpath = journal_path(path)
        fingerprint = _fingerprint(src_path, header, settings)
        journal = Journal.resume(jpath, fingerprint) if resume else Journal.create(jpath, fingerprint)
        try:
            done = journal.done
            n_tissue = int(sum(1 for b in range(grid.n_level_blocks) if fractions.flat[b] > 0))
            todo_tissue = sum(
                1 for b in range(grid.n_level_blocks) if fractions.flat[b] > 0 and b not in done
            )
            if progress is not None:
                progress(
                    {
                        "stage": "start",
                        "total": grid.n_level_blocks,
                        "done": len(done),
                        "tissue_blocks": n_tissue,
                    }
                )
            for block_id in range(grid.n_level_blocks):
                if block_id in done:
                    continue
                budget = time_budget
                if total_time_budget is not None:
                    left = total_time_budget - (time.perf_counter() - t_start)
                    share = max(1.0, left / max(1, todo_tissue))
                    budget = share if budget is None else min(budget, share)
                job = BlockJob(
                    block_id=block_id,
                    grid=grid,
                    config=cfg,
                    model=model,
                    preset=preset,
                    quant=quant,
                    steps=steps,
                    time_budget=budget,
                    target_psnr=target_psnr,
                    device=str(dev),
                    seed=_block_seed(seed, block_id),
                    maybe_background=bool(fractions.flat[block_id] < THUMB_TISSUE_MIN),
                    tissue_threshold=float(tmap.threshold),
                )
                fx0, fy0, fw, fh = grid.fit_region(block_id)
                meta, parts = encode_block(job, source.read(fx0, fy0, fw, fh))
                if meta["kind"] == "model":
                    todo_tissue = max(0, todo_tissue - 1)
                journal.append(meta, parts)
                if progress is not None:
                    progress(
                        {
                            "stage": "block",
                            "block_id": block_id,
                            "kind": meta["kind"],
                            "psnr": _psnr_of(meta["sse"], meta["n"]),
                            "total": grid.n_level_blocks,
                        }
                    )
            # All blocks are in the journal: assemble the file.
            if progress is not None:
                progress({"stage": "write"})
            images = source.associated_images()
            summary = _assemble(
                path, journal, grid, header, images, quant, cfg, pre.name, tmap.tissue_fraction
            )
        except BaseException:
            journal.close()
            raise
        journal.delete()
        summary.update(
            source=str(src_path),
            source_bytes=source.source_bytes,
            level=level,
            device=str(dev),
        )
    summary["seconds"] = time.perf_counter() - t_start
    summary["compression_ratio"] = summary["source_bytes"] / summary["bytes"] if summary["bytes"] else None
    log.info(
        "%s: %d blocks, %.2f dB over tissue, %d bytes",
        path,
        summary["blocks"],
        summary["psnr"] or 0.0,
        summary["bytes"],
    )
    return summary


#: Quality of associated images (macro, thumbnail) re-encoded as JPEG; labels stay lossless PNG.
ASSOCIATED_JPEG_QUALITY = 90


def _compact_associated(name: str, png: bytes) -> bytes:
    """The associated image as JPEG (quality 90) when smaller, except the label (barcodes, text: PNG)."""
    import io

    from PIL import Image

    if name == "label":
        return png
    with Image.open(io.BytesIO(png)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=ASSOCIATED_JPEG_QUALITY, optimize=True)
    jpg = buf.getvalue()
    return jpg if len(jpg) < len(png) else png


def _assemble(
    path: Path,
    journal: Journal,
    grid: BlockGrid,
    header: dict[str, Any],
    images: Mapping[str, bytes],
    quant: str,
    cfg: ModelConfig,
    preset: str,
    tissue_fraction: float,
) -> dict[str, Any]:
    """Write the ``.cinr`` file from the journal's records; return the summary figures."""
    totals = {
        "sse": 0.0,
        "n": 0,
        "t_sse": 0.0,
        "t_n": 0,
        "b_sse": 0.0,
        "b_n": 0,
        "i_sse": 0.0,
        "i_n": 0,
        "a_sse": 0.0,
        "a_n": 0,
        "ssim_w": 0.0,
        "model_bytes": 0,
        "mip_bytes": 0,
        "steps": 0,
        "fit_seconds": 0.0,
    }
    n_tissue = n_background = 0
    # Every model block has the same tensor names, shapes and storage, hence the same payload
    # size; the header's bound is twice the first one's, and each block is checked when added.
    max_raw = 8
    for rec in journal.records():
        if rec.meta["kind"] == "model":
            max_raw = min(2 * len(rec.parts[0]), 1 << 30)
            break
    minor = 1 if grid.mip_downsamples else 0
    mip_q: list[list[int]] = []
    with CinrWriter(path, header, grid.n_blocks, max_block_bytes=max_raw, minor_version=minor) as writer:
        for rec in journal.records():
            m = rec.meta
            bid = int(m["block_id"])
            totals["sse"] += m["sse"]
            totals["n"] += m["n"]
            if m["kind"] == "background":
                n_background += 1
                colour = tuple(m["colour"])
                writer.add_background_block(bid, colour)
                for k in range(len(grid.mip_downsamples)):
                    writer.add_background_block(grid.mip_id(bid, k), colour)
                continue
            n_tissue += 1
            totals["model_bytes"] += writer.add_model_block(bid, rec.parts[0])
            for k, data in enumerate(rec.parts[1:]):
                totals["mip_bytes"] += writer.add_image_block(grid.mip_id(bid, k), data)
            totals["t_sse"] += m["sse"]
            totals["t_n"] += m["n"]
            totals["b_sse"] += m["border_sse"]
            totals["b_n"] += m["border_n"]
            totals["i_sse"] += m["interior_sse"]
            totals["i_n"] += m["interior_n"]
            totals["a_sse"] += m["adjacent_sse"]
            totals["a_n"] += m["adjacent_n"]
            totals["ssim_w"] += m["ssim"] * m["n"]
            totals["steps"] += m["steps"]
            totals["fit_seconds"] += m["seconds"]
            mip_q.append(m.get("mip_quality", []))
        associated_bytes = 0
        for name, data in sorted(images.items()):
            data = _compact_associated(name, data)
            writer.add_associated_image(name, data)
            associated_bytes += len(data)
        pixels = grid.width * grid.height
        tissue_pixels = totals["t_n"] // 3
        q_tissue = _psnr_of(totals["t_sse"], totals["t_n"])
        q_all = _psnr_of(totals["sse"], totals["n"])
        q_border = _psnr_of(totals["b_sse"], totals["b_n"])
        q_interior = _psnr_of(totals["i_sse"], totals["i_n"])
        q_adjacent = _psnr_of(totals["a_sse"], totals["a_n"])
        ssim_tissue = totals["ssim_w"] / totals["t_n"] if totals["t_n"] else None
        footer = {
            "quality": {
                "after_quantization": True,
                "psnr_db": _finite_or_none(q_tissue) if q_tissue is not None else None,
                "ssim": ssim_tissue,
                "region": "tissue blocks",
                "psnr_all_db": _finite_or_none(q_all) if q_all is not None else None,
                "psnr_border_db": _finite_or_none(q_border) if q_border is not None else None,
                "psnr_interior_db": _finite_or_none(q_interior) if q_interior is not None else None,
                "psnr_adjacent_db": _finite_or_none(q_adjacent) if q_adjacent is not None else None,
                "border_strip_px": SEAM_STRIP,
                "pixels": pixels,
                "tissue_pixels": tissue_pixels,
                "model_bytes": totals["model_bytes"],
                "mip_bytes": totals["mip_bytes"],
            },
            "fit": {"steps": totals["steps"], "seconds": round(totals["fit_seconds"], 3)},
            "blocks": {"total": grid.n_level_blocks, "tissue": n_tissue, "background": n_background},
        }
        writer.commit(footer)
    size = path.stat().st_size
    return {
        "path": str(path),
        "width": grid.width,
        "height": grid.height,
        "model": cfg.kind,
        "preset": preset,
        "quant": quant,
        "block_size": grid.block_size,
        "margin": grid.margin,
        "blocks": grid.n_level_blocks,
        "tissue_blocks": n_tissue,
        "background_blocks": n_background,
        "tissue_fraction": tissue_fraction,
        "psnr": q_tissue,
        "ssim": ssim_tissue,
        "psnr_all": q_all,
        "psnr_border": q_border,
        "psnr_interior": q_interior,
        "psnr_adjacent": q_adjacent,
        "bytes": size,
        "model_bytes": totals["model_bytes"],
        "mip_bytes": totals["mip_bytes"],
        "associated_bytes": associated_bytes,
        "bpp": 8.0 * size / pixels,
        "bpp_tissue": 8.0 * size / tissue_pixels if tissue_pixels else None,
        "steps": totals["steps"],
        "fit_seconds": totals["fit_seconds"],
    }
