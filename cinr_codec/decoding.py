"""Deprecated: the decoder moved to ``cinr_codec.decode`` (``tune_allocator`` to ``decode.cache``).

Kept so that existing imports (``from cinr_codec.decoding import tune_allocator``) go on working.
"""

from __future__ import annotations

import warnings

from .decode.cache import tune_allocator
from .decode.decoder import DEFAULT_CACHE_BYTES, MAX_SCALE, TILE, SlideDecoder, finite_number
from .decode.image import decode_image
from .format.header import MAX_READ_PIXELS, parse_layout

warnings.warn(
    "cinr_codec.decoding is deprecated; import from cinr_codec.decode (or cinr_codec)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "MAX_READ_PIXELS",
    "MAX_SCALE",
    "TILE",
    "SlideDecoder",
    "decode_image",
    "finite_number",
    "parse_layout",
    "tune_allocator",
]
