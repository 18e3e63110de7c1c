"""Image blocks: the PNG, JPEG and AVIF bytes of mips and associated images, written and read back.

The encoder chooses what to store (``encode.mips``); the decoder reads it here, with a bound on
the pixels an image block may declare (``CinrFormatError`` for anything wrong with its bytes).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..errors import CinrError, CinrFormatError

#: Largest mip image a decoder accepts (pixels).
MAX_MIP_PIXELS = 1 << 24


def encode_jpeg(img: np.ndarray, quality: int, subsampling: int = 0) -> bytes:
    """Baseline JPEG with optimised Huffman tables; subsampling 0 = 4:4:4, 2 = 4:2:0."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling, optimize=True)
    return buf.getvalue()


#: AVIF encoder speed of the quality search (libavif 0-10): 9 searched 9x faster than 6 for 9 %
#: more bytes on H&E mips (benchmarks/results/mip_codecs.md; ``encode.mips`` may refine slower).
AVIF_SPEED = 9


def avif_available() -> bool:
    """Whether this Pillow reads and writes AVIF (its wheels do since 11.3)."""
    from PIL import features

    return bool(features.check("avif"))


def encode_avif(img: np.ndarray, quality: int, speed: int | None = None) -> bytes:
    """AVIF (AV1 intra) at libavif ``quality`` 0-100, 4:4:4 chroma, 8-bit (``speed``: ``AVIF_SPEED``)."""
    speed = AVIF_SPEED if speed is None else speed
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="AVIF", quality=quality, subsampling="4:4:4", speed=speed)
    return buf.getvalue()


def encode_png(img: np.ndarray) -> bytes:
    """Lossless PNG."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def decode_image_bytes(
    data: bytes, where: str, size: tuple[int, int] | None = None, max_pixels: int = MAX_MIP_PIXELS
) -> np.ndarray:
    """RGB uint8 pixels of a stored PNG, JPEG or AVIF image.

    The image's own header is checked before its pixels are decoded: it must be ``size`` =
    (width, height) when given, and at most ``max_pixels``. Anything wrong -- a size, a
    truncated or corrupt image, a decompression bomb, whatever the decoder (PIL) raises --
    is a ``CinrFormatError`` naming ``where``.
    """
    rgb = np.asarray(_decode_rgb(data, where, size, max_pixels))
    if size is not None and rgb.shape[:2] != (size[1], size[0]):  # pragma: no cover - PIL keeps the size
        raise CinrFormatError(f"{where}: the stored image decoded to an unexpected size")
    return rgb


def decode_associated_image(data: bytes, where: str) -> Image.Image:
    """An associated image's PNG/JPEG bytes as an RGB PIL image, at most ``MAX_ASSOCIATED_PIXELS``
    pixels (checked before decoding); ``CinrFormatError`` naming ``where`` for anything wrong."""
    from ..format.container.binary import MAX_ASSOCIATED_PIXELS

    return _decode_rgb(data, where, None, MAX_ASSOCIATED_PIXELS)


def _decode_rgb(data: bytes, where: str, size: tuple[int, int] | None, max_pixels: int) -> Image.Image:
    """PNG/JPEG bytes as an RGB PIL image, its size checked (``check_image_size``) before the
    pixels are decoded; every decoder error a ``CinrFormatError`` naming ``where``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_image_size(im, where, size, max_pixels)
            im.load()
            return im.convert("RGB")
    except CinrError:
        raise
    except MemoryError:
        raise CinrFormatError(f"{where}: the stored image does not fit in memory") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on hostile bytes
        raise CinrFormatError(f"{where}: cannot decode the stored image ({_one_line(exc)})") from None


def check_image_size(im: Image.Image, where: str, size: tuple[int, int] | None, max_pixels: int) -> None:
    """``CinrFormatError`` naming ``where`` unless an opened (not yet loaded) image is ``size``
    (when given) and at most ``max_pixels`` pixels."""
    w, h = im.size
    if size is not None and (w, h) != tuple(size):
        raise CinrFormatError(f"{where}: image is {w}x{h}, expected {size[0]}x{size[1]}")
    if w * h > max_pixels:
        raise CinrFormatError(f"{where}: image of {w}x{h} pixels is over the limit of {max_pixels} pixels")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
