"""Encode one in-memory RGB image as a single-block ``.cinr`` file.

``encode_image`` fits one block covering the whole image; ``write_fitted`` stores a fit made
earlier (so several storage settings can be compared on one model). The file has the shape
of a slide encoding -- a 1 x 1 grid, margin 0 -- and its quality figures are measured after
storage, by decoding the payload exactly as ``decode.image.decode_image`` does.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..coding.base import FitSettings, FittedBlock
from ..coding.registry import DEFAULT_MODEL, get_codec
from ..core.metrics import psnr, ssim
from ..errors import CinrIOError
from ..format.container import MINOR_JSON_ZSTD, CinrWriter
from ..format.grid import BlockGrid
from ..format.header import (
    DB_DECIMALS,
    MAX_PIXELS,
    MAX_SIDE,
    SSIM_DECIMALS,
    build_header,
    finite_or_none,
    image_footer,
    slide_fields,
)

log = logging.getLogger(__name__)


def check_destination(dst: str | os.PathLike[str]) -> Path:
    """``dst`` as a Path, when it can be written: not a folder, and in an existing folder (CinrIOError)."""
    path = Path(dst)
    if path.is_dir():
        raise CinrIOError(f"{path}: is a directory")
    if not path.parent.is_dir():
        parent = path.parent
        try:
            os.stat(parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise CinrIOError(f"{path}: {parent} is a symbolic link loop, not a folder") from None
            if exc.errno == errno.ENOTDIR:
                raise CinrIOError(f"{path}: {parent} is under a file, not a folder") from None
            raise CinrIOError(f"{path}: folder {parent} does not exist") from None
        raise CinrIOError(f"{path}: {parent} is a file, not a folder")
    return path


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` as a contiguous RGB uint8 array of a size one block may have (ValueError)."""
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
    result: FittedBlock,
    image: np.ndarray,
    dst: str | os.PathLike[str],
    *,
    quant: str | None = None,
    source_properties: Mapping[str, str] | None = None,
    preset: str = "",
) -> dict[str, Any]:
    """Store a fitted model of ``image``, measure its decoded quality, write ``dst``; return a summary.

    ``result`` is a fit of one block covering the whole image (``fit_image(image, ...)``, or any
    representation's ``BlockCodec.fit``); ``quant`` is a storage setting of its representation
    (default: the representation's).
    The file is written atomically: on any exception ``dst`` is untouched.
    """
    img = check_image(image)
    height, width = img.shape[:2]
    fitted_size = (getattr(result, "height", height), getattr(result, "width", width))
    if fitted_size != (height, width):
        raise ValueError(
            f"the model was fitted to {fitted_size[1]}x{fitted_size[0]}, the image is {width}x{height}"
        )
    preset = str(getattr(result, "preset", None) or preset)
    codec = get_codec(result.config.kind)
    quant = codec.default_storage if quant is None else quant
    codec.check_storage(quant)
    path = check_destination(dst)
    slide = slide_fields(width, height, source_properties)
    payload = codec.serialize(result, quant)
    # One block of side max(W, H) at the origin: pixel (i, j) has coordinates
    # ((j + 0.5) / S, (i + 0.5) / S) with S = block_size (cinr_codec.core.render).
    grid = BlockGrid(width, height, max(width, height))
    header = build_header(
        slide=slide,
        grid=grid,
        representation=codec.header_fields(result.config, quant),
        preset=preset,
    )
    pixels = width * height
    compact = codec.compact_json
    minor = max(codec.minor_version(header), MINOR_JSON_ZSTD if compact else 0)
    with CinrWriter(
        path, header, 1, max_block_bytes=max(8, len(payload)), minor_version=minor, compress_json=compact
    ) as writer:
        stored = writer.add_model_block(0, payload, check=codec.check_payload)
        # Measure what a decoder will see: the stored payload, decoded on the CPU.
        decoded = codec.load(payload, result.config, f"{path}: block 0").render(
            height, width, float(grid.side)
        )
        q_psnr, q_ssim = psnr(decoded, img), ssim(decoded, img)
        fit = {
            "psnr_db": finite_or_none(result.psnr, DB_DECIMALS),
            "ssim": finite_or_none(result.ssim, SSIM_DECIMALS),
            "steps": result.steps,
            "seconds": round(result.seconds, 3),
            "device": result.device,
        }
        writer.commit(image_footer(psnr=q_psnr, ssim=q_ssim, pixels=pixels, payload_bytes=stored, fit=fit))
    size = path.stat().st_size
    summary = {
        "path": str(path),
        "width": width,
        "height": height,
        "model": result.config.kind,
        "preset": preset,
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
        "n_params": getattr(result, "n_params", None),
        "steps": result.steps,
        "seconds": result.seconds,
        "device": result.device,
    }
    log.info(
        "%s: %dx%d, %s, %.2f dB after storage (%.2f dB fitted), %d bytes, %.3f bpp",
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
    model: str = DEFAULT_MODEL,
    preset: str | None = None,
    steps: int | None = None,
    time_budget: float | None = None,
    quant: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    source_properties: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Fit one ``model`` block (default ccinr at its default quality) to a whole RGB uint8 image and
    write it as the ``.cinr`` file ``dst``.

    Returns a summary: ``psnr``/``ssim`` of the decoded file against ``image`` (after
    storage), ``psnr_fit`` (before), ``bytes`` (file size), ``bpp`` (file bits per
    pixel), ``payload_bytes``/``payload_bpp`` (the compressed model alone), ``steps``, ...
    Bad arguments raise ``ValueError`` (before any fitting); an unwritable ``dst`` ``CinrIOError``.
    """
    img = check_image(image)
    codec = get_codec(model)
    quant = codec.default_storage if quant is None else quant
    preset = codec.default_preset if preset is None else preset
    codec.check_storage(quant)
    check_destination(dst)
    slide_fields(img.shape[1], img.shape[0], source_properties)  # validate before the (long) fit
    height, width = img.shape[:2]
    side = max(height, width)
    config = codec.config_for(model, preset, side, side)
    settings = FitSettings(steps=steps, time_budget=time_budget, device=device, seed=seed)
    result = codec.fit(img, config, model, preset, settings)
    return write_fitted(result, img, dst, quant=quant, source_properties=source_properties, preset=preset)
