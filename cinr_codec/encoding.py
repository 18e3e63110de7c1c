"""Deprecated: encoding moved to ``cinr_codec.encode`` (``encode.slide``, ``encode.image``,
``encode.block``) and storage settings to ``cinr_codec.coding.hashgrid``.

Kept so that existing imports (``from cinr_codec.encoding import encode_slide``) go on working.
"""

from __future__ import annotations

import warnings

from .coding.hashgrid import DEFAULT_QUANT, QUANT_SETTINGS
from .encode.block import BlockJob, encode_block
from .encode.image import encode_image, write_fitted
from .encode.slide import encode_slide

warnings.warn(
    "cinr_codec.encoding is deprecated; import from cinr_codec.encode (or cinr_codec)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "DEFAULT_QUANT",
    "QUANT_SETTINGS",
    "BlockJob",
    "encode_block",
    "encode_image",
    "encode_slide",
    "write_fitted",
]
