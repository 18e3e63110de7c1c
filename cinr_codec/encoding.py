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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .container import CinrWriter, dequantize_tensors, quantize_tensors
from .errors import CinrIOError
from .fitting import FitResult, fit_image, render
from .metrics import psnr, ssim

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
