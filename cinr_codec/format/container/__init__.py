"""The ``.cinr`` container: byte format (``formats/cinr-v1.md``), streaming atomic writer, lazy
thread-safe reader.

It does not know the models: the header and footer are the caller's JSON, model blocks are
opaque payloads that the block representation checks (``coding``), image blocks PNG, JPEG or
AVIF (stored short from format 1.11, ``short_avif``).
Format v1's tensor payloads (``add_tensors``/``read_tensors``) are coded by ``coding.quant``,
imported when those are called. No torch import here.
"""

from __future__ import annotations

from .binary import (
    DEFAULT_MAX_BLOCK_BYTES,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    HARD_MAX_BLOCK_BYTES,
    MAGIC,
    MAX_BLOCKS,
    MINOR_AVIF,
    MINOR_JSON_ZSTD,
    MINOR_SHORT_AVIF,
    MINOR_SOURCE_JPEG,
    MINOR_SOURCE_JPEG_1_10,
)
from .reader import AssociatedImage, BlockInfo, CinrReader
from .writer import CinrWriter

__all__ = [
    "DEFAULT_MAX_BLOCK_BYTES",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "HARD_MAX_BLOCK_BYTES",
    "MAGIC",
    "MAX_BLOCKS",
    "MINOR_AVIF",
    "MINOR_JSON_ZSTD",
    "MINOR_SHORT_AVIF",
    "MINOR_SOURCE_JPEG",
    "MINOR_SOURCE_JPEG_1_10",
    "AssociatedImage",
    "BlockInfo",
    "CinrReader",
    "CinrWriter",
]
