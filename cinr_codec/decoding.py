"""Decode a ``.cinr`` file written by ``cinr_codec.encoding`` back to RGB pixels.

The header's application fields (``formats/cinr-v1.md`` §4.2) are validated before they
are used, so a malformed or hand-crafted file raises ``CinrFormatError`` naming the file,
never ``KeyError``/``TypeError``, and never allocates more than its payload justifies:
the model is first built on PyTorch's ``meta`` device (no memory) and its tensor names
and shapes compared with the block's payload, which the container bounds.

This first decoder reads single-block files (a 1 x 1 grid, margin 0); the layout and model
parsing are already per grid and per block for the slide decoder that follows.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import torch

from .container import CinrReader
from .errors import CinrFormatError
from .fitting import render
from .hashgrid import HashGridConfig
from .models import MODEL_KINDS, ImageModel, ModelConfig, build_model

log = logging.getLogger(__name__)

#: Largest slide side a header may declare (the single-block encoder's limit too).
MAX_SIDE = 1 << 20
#: Largest pixel count of a single block this decoder renders.
MAX_PIXELS = 1 << 28

# Bounds on the model configuration read from a file: generous for real models, tight enough
# that no field can make the decoder compute with absurd numbers before the shape check.
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "mlp_width": (1, 4096),
    "mlp_depth": (0, 64),
    "conv_width": (1, 4096),
    "mlp2_depth": (0, 64),
    "conv_a_depth": (0, 64),
    "conv_c_depth": (0, 64),
}
_HASH_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "n_levels": (1, 64),
    "n_features": (1, 64),
    "log2_table_size": (1, 30),
    "base_resolution": (1, 1 << 24),
}
_BOOL_FIELDS = ("bias", "residual")
_BACKENDS = ("torch",)
#: Largest finest-level grid resolution accepted.
_MAX_RESOLUTION = 1 << 30


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> TypeGuard[int | float]:
    """A JSON number that is not a bool, NaN or infinity (ints of any size: no float conversion)."""
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _get_object(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise CinrFormatError(f"{where}: header field {key!r} is missing or not an object")
    return value


def _get_int(obj: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    value = obj.get(key)
    if not _is_int(value) or not lo <= value <= hi:
        raise CinrFormatError(f"{where}: {key} = {str(value)[:40]!r} is not an integer in [{lo}, {hi}]")
    return int(value)


@dataclass(frozen=True)
class Layout:
    """What a header says about the slide and its blocks: size, block grid, model configuration."""

    width: int
    height: int
    block_size: int
    halo: int
    cols: int
    rows: int
    config: ModelConfig

    @property
    def n_blocks(self) -> int:
        """Number of blocks (cols x rows)."""
        return self.cols * self.rows


def parse_model_config(value: Any, where: str) -> ModelConfig:
    """A ``ModelConfig`` from the header's ``model`` object, every field checked (CinrFormatError)."""
    if not isinstance(value, dict):
        raise CinrFormatError(f"{where}: header field 'model' is missing or not an object")
    where = f"{where}: model"
    known = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise CinrFormatError(f"{where}: unknown configuration keys {unknown[:5]} (newer encoder?)")
    if value.get("kind") not in MODEL_KINDS:
        raise CinrFormatError(f"{where}: kind {str(value.get('kind'))[:40]!r} is not one of {MODEL_KINDS}")
    for key, (lo, hi) in _INT_BOUNDS.items():
        if key in value:
            _get_int(value, key, lo, hi, where)
    for key in _BOOL_FIELDS:
        if key in value and not isinstance(value[key], bool):
            raise CinrFormatError(f"{where}: {key} is not a boolean")
    if "w0" in value and not (_is_number(value["w0"]) and abs(value["w0"]) <= 1e6):
        raise CinrFormatError(f"{where}: w0 is not a finite number")
    if "activation" in value and not isinstance(value["activation"], str):
        raise CinrFormatError(f"{where}: activation is not a string")
    if value.get("backend", "torch") not in _BACKENDS:
        raise CinrFormatError(
            f"{where}: backend {str(value.get('backend'))[:40]!r} cannot be decoded here (only {_BACKENDS})"
        )
    h = _get_object(value, "hash", where)
    unknown = sorted(set(h) - set(HashGridConfig.__dataclass_fields__))
    if unknown:
        raise CinrFormatError(f"{where}.hash: unknown keys {unknown[:5]} (newer encoder?)")
    for key, (lo, hi) in _HASH_INT_BOUNDS.items():
        _get_int(h, key, lo, hi, f"{where}.hash")
    scale = h.get("per_level_scale")
    if not (_is_number(scale) and 1.0 <= scale <= 1e3):
        raise CinrFormatError(f"{where}.hash: per_level_scale is not a number in [1, 1000]")
    finest = h["base_resolution"] * float(scale) ** (h["n_levels"] - 1)
    if not finest <= _MAX_RESOLUTION:
        raise CinrFormatError(f"{where}.hash: finest resolution {finest:.3g} is over {_MAX_RESOLUTION}")
    try:
        return ModelConfig.from_dict(value)
    except (ValueError, TypeError) as exc:
        raise CinrFormatError(f"{where}: invalid configuration: {exc}") from None


def parse_layout(reader: CinrReader) -> Layout:
    """Validate the header's ``slide``, ``grid`` and ``model`` fields against each other and the index."""
    where = reader.name
    header = reader.header
    slide = _get_object(header, "slide", where)
    width = _get_int(slide, "width", 1, MAX_SIDE, f"{where}: slide")
    height = _get_int(slide, "height", 1, MAX_SIDE, f"{where}: slide")
    grid = _get_object(header, "grid", where)
    block_size = _get_int(grid, "block_size", 1, MAX_SIDE, f"{where}: grid")
    halo = _get_int(grid, "halo", 0, block_size, f"{where}: grid")
    cols = _get_int(grid, "cols", 1, MAX_SIDE, f"{where}: grid")
    rows = _get_int(grid, "rows", 1, MAX_SIDE, f"{where}: grid")
    if cols != -(-width // block_size) or rows != -(-height // block_size):
        raise CinrFormatError(
            f"{where}: grid of {cols}x{rows} blocks of {block_size} px does not cover {width}x{height} pixels"
        )
    if cols * rows != reader.n_blocks:
        raise CinrFormatError(f"{where}: grid has {cols * rows} blocks, the file {reader.n_blocks}")
    config = parse_model_config(header.get("model"), where)
    return Layout(width, height, block_size, halo, cols, rows, config)


def load_block_model(reader: CinrReader, block_id: int, config: ModelConfig) -> ImageModel:
    """Rebuild model block ``block_id`` on the CPU from its payload (CinrFormatError on any mismatch)."""
    where = f"{reader.name}: block {block_id}"
    try:
        with torch.device("meta"):  # every tensor, even those created on the CPU first, costs nothing
            skeleton = build_model(config, "meta")
    except (ValueError, RuntimeError) as exc:
        raise CinrFormatError(f"{where}: cannot build the model in the header: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    tensors = reader.read_tensors(block_id)
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])[:3]
        detail = "; ".join(
            part
            for part in (
                f"missing {missing}" if missing else "",
                f"unexpected {extra}" if extra else "",
                ", ".join(f"{k} is {found[k]}, expected {expected[k]}" for k in wrong),
            )
            if part
        )
        raise CinrFormatError(f"{where}: tensors do not match the model in the header ({detail})")
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise CinrFormatError(f"{where}: tensor {name!r} is {t.dtype}, expected a floating type")
        if not bool(torch.isfinite(t).all()):
            raise CinrFormatError(f"{where}: tensor {name!r} holds non-finite values")
    model = build_model(config, "cpu")
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CinrFormatError(
            f"{where}: tensors do not fit the model: {' '.join(str(exc).split())[:200]}"
        ) from None
    model.eval()
    return model


def decode_image(path: str | os.PathLike[str], *, max_block_bytes: int | None = None) -> np.ndarray:
    """Decode a single-block ``.cinr`` file to RGB uint8 (H, W, 3), on the CPU (deterministic).

    ``max_block_bytes`` lowers the decompressed payload size accepted (see ``CinrReader``).
    """
    with CinrReader(path, max_block_bytes=max_block_bytes) as reader:
        layout = parse_layout(reader)
        where = reader.name
        if layout.n_blocks != 1 or layout.block_size != max(layout.width, layout.height):
            raise CinrFormatError(
                f"{where}: a grid of {layout.cols}x{layout.rows} blocks of {layout.block_size} px; this "
                "decoder reads single-block files only (block_size = max(width, height))"
            )
        if layout.halo != 0:
            raise CinrFormatError(f"{where}: a single-block file must have grid.halo = 0, not {layout.halo}")
        if layout.width * layout.height > MAX_PIXELS:
            raise CinrFormatError(
                f"{where}: {layout.width}x{layout.height} pixels is over {MAX_PIXELS} for one block"
            )
        info = reader.block_info(0)
        if info.kind == "background":
            assert info.colour is not None
            return np.full((layout.height, layout.width, 3), info.colour, dtype=np.uint8)
        model = load_block_model(reader, 0, layout.config)
    log.debug("%s: decoding %dx%d", where, layout.width, layout.height)
    return render(model, layout.height, layout.width)
