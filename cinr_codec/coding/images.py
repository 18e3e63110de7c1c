"""Image blocks: the PNG and JPEG bytes of mips and associated images, written and read back.

The encoder chooses what to store (``encode.mips``); the decoder reads it here, with a bound on
the pixels an image block may declare.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: Largest mip image a decoder accepts (pixels).
MAX_MIP_PIXELS = 1 << 24


def encode_jpeg(img: np.ndarray, quality: int, subsampling: int = 0) -> bytes:
    """Baseline JPEG with optimised Huffman tables; subsampling 0 = 4:4:4, 2 = 4:2:0."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling, optimize=True)
    return buf.getvalue()


def encode_png(img: np.ndarray) -> bytes:
    """Lossless PNG."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """RGB uint8 pixels of a stored PNG/JPEG (ValueError naming ``where`` on failure)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_MIP_PIXELS:
                raise ValueError(f"{where}: image of {im.width}x{im.height} is too large")
            return np.asarray(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"{where}: cannot decode the stored image ({exc})") from None
