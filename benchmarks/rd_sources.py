"""Rate-distortion benchmark, sources: the region of each image, the source's own tiles, a JPEG pyramid.

``read_region`` picks the region (the most saturated window of a thumbnail, or the centred crop).
``source_tiles`` counts the bytes of the source slide's own level-0 tiles that cover it (from the
TIFF tile tables, read with ``tifffile``; an untiled file is estimated pro rata by area), and
``jpeg_pyramid`` the bytes per level of a JPEG-tiled pyramid of the region written by libvips.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cinr_codec.encode.source import SlideSource
from cinr_codec.encode.tissue import hsv_saturation_value

from .rd_codecs import image_metrics

__all__ = [
    "PYRAMID_QUALITIES",
    "PYRAMID_TILE",
    "TileTable",
    "jpeg_pyramid",
    "read_region",
    "saturated_window",
    "source_tiles",
    "tile_bytes",
    "tile_tables",
]

PYRAMID_QUALITIES = (80, 90)
PYRAMID_TILE = 256


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------


def saturated_window(path: Path, width: int, height: int, w: int, h: int) -> tuple[int, int]:
    """Level-0 (x, y) of the w x h window with the highest mean HSV saturation on a thumbnail.

    Ties go to the window nearest the centre.
    """
    import openslide

    with openslide.open_slide(str(path)) as slide:
        thumb = np.asarray(slide.get_thumbnail((1024, 1024)).convert("RGB"))
    th, tw = thumb.shape[:2]
    sx, sy = width / tw, height / th
    ww, wh = max(1, round(w / sx)), max(1, round(h / sy))
    if ww >= tw and wh >= th:
        return (width - w) // 2, (height - h) // 2
    ww, wh = min(ww, tw), min(wh, th)
    s = hsv_saturation_value(thumb)[0].astype(np.float64)
    ii = np.zeros((th + 1, tw + 1))
    ii[1:, 1:] = s.cumsum(0).cumsum(1)
    sums = ii[wh:, ww:] - ii[:-wh, ww:] - ii[wh:, :-ww] + ii[:-wh, :-ww]  # (th-wh+1, tw-ww+1)
    ys, xs = np.mgrid[0 : sums.shape[0], 0 : sums.shape[1]]
    dist = np.hypot(xs - (tw - ww) / 2, ys - (th - wh) / 2)
    best = np.lexsort((dist.ravel(), -np.round(sums.ravel(), 6)))[0]
    ty, tx = divmod(int(best), sums.shape[1])
    x = min(max(int(round(tx * sx)), 0), width - w)
    y = min(max(int(round(ty * sy)), 0), height - h)
    return x, y


def read_region(path: Path, size: int, how: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The size x size region (smaller if the image is) chosen by ``how``: RGB uint8 and where it is."""
    with SlideSource(path) as r:
        w, h = min(size, r.width), min(size, r.height)
        if how == "centre":
            x, y = (r.width - w) // 2, (r.height - h) // 2
        else:
            x, y = saturated_window(path, r.width, r.height, w, h)
        pixels = r.read(x, y, w, h)
        return pixels, {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "how": "most saturated window of a thumbnail" if how == "saturated" else "centred crop",
            "image_width": r.width,
            "image_height": r.height,
        }


# --------------------------------------------------------------------------------------------
# TIFF tile tables: the source's own tiles and the JPEG pyramid's levels
# --------------------------------------------------------------------------------------------

#: TIFF Compression codes -> names for the report.
_COMPRESSION = {
    1: "none",
    5: "LZW",
    7: "JPEG",
    8: "deflate",
    33003: "JPEG 2000 (Aperio YCbCr)",
    33005: "JPEG 2000 (Aperio RGB)",
    34712: "JPEG 2000",
    50001: "WebP",
    50002: "JPEG XL",
}


@dataclass(frozen=True)
class TileTable:
    """The tile table of one tiled TIFF image (one page of the main IFD chain)."""

    width: int  # ImageWidth
    height: int  # ImageLength
    tile_width: int  # TileWidth
    tile_height: int  # TileLength
    byte_counts: tuple[int, ...]  # TileByteCounts, row by row
    jpeg_tables: int  # bytes of the shared JPEGTables (0 when absent)
    compression: int  # Compression code
    description: str  # ImageDescription ("" when absent)


def tile_tables(source: str | Path | BinaryIO) -> list[TileTable]:
    """The tile tables of the tiled images of a classic or Big TIFF (``tifffile``), in file order.

    Raises ``tifffile.TiffFileError`` (or ``OSError``) when ``source`` cannot be read as a TIFF.
    """
    import tifffile

    out = []
    with tifffile.TiffFile(source) as tif:
        for page in tif.pages:
            if not isinstance(page, tifffile.TiffPage) or not page.is_tiled:
                continue
            tags = page.tags
            counts = tags.get(325)
            if counts is None:
                continue
            tables = tags.get(347)
            desc = tags.get(270)
            out.append(
                TileTable(
                    width=int(page.imagewidth),
                    height=int(page.imagelength),
                    tile_width=int(page.tilewidth),
                    tile_height=int(page.tilelength),
                    byte_counts=tuple(int(c) for c in counts.value),
                    jpeg_tables=len(tables.value) if tables is not None else 0,
                    compression=int(page.compression),
                    description=str(desc.value) if desc is not None else "",
                )
            )
    return out


def tile_bytes(table: TileTable, x: int, y: int, w: int, h: int) -> dict[str, Any]:
    """Bytes of the tiles of a tiled image that intersect the region (plus shared JPEG tables, once)."""
    tw, th = table.tile_width, table.tile_height
    across = -(-table.width // tw)
    total, n, area = 0, 0, 0
    for row in range(y // th, (y + h - 1) // th + 1):
        for col in range(x // tw, (x + w - 1) // tw + 1):
            total += table.byte_counts[row * across + col]
            n += 1
            area += (min(tw, table.width - col * tw)) * (min(th, table.height - row * th))
    return {
        "tiles": n,
        "tile_size": [tw, th],
        "tile_bytes": total,
        "jpeg_tables_bytes": table.jpeg_tables,
        "bytes": total + table.jpeg_tables,
        "covered_pixels": area,
    }


def source_tiles(path: Path, region: dict[str, Any]) -> dict[str, Any]:
    """The source's own compressed bytes for the region: exact for a tiled TIFF, else pro rata by area."""
    import tifffile

    x, y, w, h = region["x"], region["y"], region["width"], region["height"]
    n = w * h
    try:
        tiled = tile_tables(path)
    except (OSError, ValueError, tifffile.TiffFileError):
        tiled = []
    if tiled:
        level0 = max(tiled, key=lambda t: t.width)
        if (level0.width, level0.height) == (region["image_width"], region["image_height"]):
            out = tile_bytes(level0, x, y, w, h)
            q = re.search(r"\bQ=(\d+)", level0.description)
            comp = level0.compression
            out.update(
                exact=True,
                how="level-0 tiles intersecting the region (TIFF TileByteCounts"
                + (", plus the shared JPEGTables once)" if out["jpeg_tables_bytes"] else ")"),
                compression=_COMPRESSION.get(comp, str(comp)),
                quality=int(q.group(1)) if q else None,
                bpp_region=8.0 * out["bytes"] / n,
                bpp_covered=8.0 * out["bytes"] / out["covered_pixels"],
            )
            return out
    size = path.stat().st_size
    try:
        from PIL import Image

        with Image.open(path) as im:
            fmt = im.format or path.suffix
    except Exception:  # noqa: BLE001
        fmt = path.suffix.lstrip(".") or "file"
    est = size * n / (region["image_width"] * region["image_height"])
    return {
        "exact": False,
        "how": f"estimate: untiled {fmt} file ({size:,} B for the whole image) pro rata by area",
        "compression": fmt,
        "quality": None,
        "bytes": int(round(est)),
        "bpp_region": 8.0 * est / n,
        "bpp_covered": 8.0 * est / n,
    }


def jpeg_pyramid(region: np.ndarray, quality: int) -> dict[str, Any]:
    """A JPEG-tiled pyramidal TIFF of the region (libvips): bytes per level, level-0 quality."""
    import pyvips

    h, w = region.shape[:2]
    im = pyvips.Image.new_from_memory(np.ascontiguousarray(region).tobytes(), w, h, 3, "uchar")
    buf = im.tiffsave_buffer(
        tile=True,
        pyramid=True,
        compression="jpeg",
        Q=quality,
        tile_width=PYRAMID_TILE,
        tile_height=PYRAMID_TILE,
    )
    levels = []
    for table in tile_tables(io.BytesIO(buf)):
        t = tile_bytes(table, 0, 0, table.width, table.height)
        levels.append(
            {"width": table.width, "height": table.height, "bytes": t["bytes"], "tiles": t["tiles"]}
        )
    dec = pyvips.Image.new_from_buffer(buf, "", page=0)
    decoded = np.ndarray(
        buffer=dec.write_to_memory(), dtype=np.uint8, shape=(dec.height, dec.width, dec.bands)
    )
    p, s = image_metrics(decoded, region)
    n = w * h
    lower = sum(lv["bytes"] for lv in levels[1:])
    return {
        "quality": quality,
        "levels": levels,
        "level0_bytes": levels[0]["bytes"],
        "lower_levels_bytes": lower,
        "file_bytes": len(buf),
        "level0_bpp": 8.0 * levels[0]["bytes"] / n,
        "lower_levels_bpp": 8.0 * lower / n,
        "file_bpp": 8.0 * len(buf) / n,
        "level0_psnr": p,
        "level0_ssim": s,
    }
