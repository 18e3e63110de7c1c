"""The ``.cinr`` container: byte format (``formats/cinr-v1.md``), streaming atomic writer,
lazy thread-safe reader, and tensor quantization.

This package does not depend on the models: the header and footer are the caller's JSON,
and blocks hold named tensors.
"""

from __future__ import annotations

from .format import (
    DEFAULT_MAX_BLOCK_BYTES,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    HARD_MAX_BLOCK_BYTES,
    MAX_BLOCKS,
)
from .quant import STORAGE_DTYPES, dequantize_tensors, quantize_tensors
from .reader import AssociatedImage, BlockInfo, CinrReader
from .tensors import load_safetensors
from .writer import CinrWriter

__all__ = [
    "DEFAULT_MAX_BLOCK_BYTES",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "HARD_MAX_BLOCK_BYTES",
    "MAX_BLOCKS",
    "STORAGE_DTYPES",
    "AssociatedImage",
    "BlockInfo",
    "CinrReader",
    "CinrWriter",
    "dequantize_tensors",
    "load_safetensors",
    "quantize_tensors",
]
