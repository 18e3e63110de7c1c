"""Decoding: ``SlideDecoder`` (any region at any scale), single-block images, caches.

Nothing here imports training code (``cinr_codec.encode``); block models come from their
representation (``cinr_codec.coding``).
"""

from __future__ import annotations

from .cache import LRUCache, tune_allocator
from .decoder import DEFAULT_CACHE_BYTES, MAX_SCALE, TILE, SlideDecoder, finite_number
from .image import decode_image

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "MAX_SCALE",
    "TILE",
    "LRUCache",
    "SlideDecoder",
    "decode_image",
    "finite_number",
    "tune_allocator",
]
