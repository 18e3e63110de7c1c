"""How a JPEG-tiled TIFF level was coded (tables, sampling, colour transform, tiles), for the
decoder's re-quantization (``core.requant``, ``slide.source_jpeg``).

Read with tifffile from the level's TIFF page: its ``JPEGTables`` and the headers (up to the
scan) of its first tile. Anything this does not recognise (another compression, untiled pages,
progressive or 12-bit JPEG, sampling other than 1 or 2, tiles that are not square, a level
opened through a resize) gives None: the file is then decoded as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.requant import ZIGZAG, SourceJpeg, default_spread

log = logging.getLogger(__name__)

#: TIFF photometric interpretations and the colour transform their JPEG tiles use.
_PHOTOMETRIC = {2: "rgb", 6: "ycbcr"}
#: Bytes of a tile read to find its frame header.
_HEAD_BYTES = 4096


def _segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of the JPEG marker segments before the first scan."""
    out: list[tuple[int, bytes]] = []
    i = 2 if data[:2] == b"\xff\xd8" else 0
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        out.append((marker, data[i + 4 : i + 2 + length]))
        if marker == 0xDA:
            break
        i += 2 + length
    return out


def _tables(payload: bytes, into: dict[int, tuple[int, ...]]) -> None:
    j = 0
    while j < len(payload):
        pq, tq = payload[j] >> 4, payload[j] & 15
        n = 128 if pq else 64
        raw = payload[j + 1 : j + 1 + n]
        if len(raw) < n:
            return
        vals = [int.from_bytes(raw[2 * k : 2 * k + 2], "big") for k in range(64)] if pq else list(raw)
        natural = [0] * 64
        for k, z in enumerate(ZIGZAG):
            natural[z] = vals[k]
        into[tq] = tuple(natural)
        j += 1 + n


def parse_jpeg_coding(tables: bytes, tile_head: bytes, photometric: int, tile: int) -> SourceJpeg | None:
    """``SourceJpeg`` from a TIFF page's JPEGTables and the start of one of its tiles, or None."""
    transform = _PHOTOMETRIC.get(photometric)
    if transform is None:
        return None
    found: dict[int, tuple[int, ...]] = {}
    frame: bytes | None = None
    for marker, payload in _segments(tables) + _segments(tile_head):
        if marker == 0xDB:
            _tables(payload, found)
        elif marker in (0xC0, 0xC1):
            frame = payload
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # progressive, lossless, arithmetic: not taken
    if frame is None or len(frame) < 6 + 3 * 3 or frame[0] != 8 or frame[5] != 3:  # 8-bit, 3 components
        return None
    sampling, tabs = [], []
    for k in range(3):
        _, hv, tq = frame[6 + 3 * k : 9 + 3 * k]
        h, v = hv >> 4, hv & 15
        if h not in (1, 2) or v not in (1, 2) or tq not in found:
            return None
        sampling.append((h, v))
        tabs.append(found[tq])
    if any(min(t) < 1 for t in tabs):
        return None
    sj = SourceJpeg(
        tile=tile,
        transform=transform,
        sampling=tuple(sampling),
        tables=tuple(tabs),
        spread=default_spread(tuple(tabs)),
    )
    mw, mh = sj.mcu
    if tile % mw or tile % mh:
        return None
    return sj


def jpeg_coding(path: Path, level: int, width: int, height: int) -> SourceJpeg | None:
    """How level ``level`` (``width`` x ``height``) of the TIFF at ``path`` was JPEG-coded, or None
    where it was not, or not in a way the re-quantization takes."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return None
            levels = tif.series[0].levels
            if level >= len(levels):
                return None
            page = levels[level].keyframe
            if (
                page.compression != 7
                or not page.is_tiled
                or page.tilewidth != page.tilelength
                or page.imagewidth != width
                or page.imagelength != height
                or page.samplesperpixel != 3
                or not page.dataoffsets
                or not page.databytecounts[0]
            ):
                return None
            tif.filehandle.seek(page.dataoffsets[0])
            head = tif.filehandle.read(min(_HEAD_BYTES, page.databytecounts[0]))
            return parse_jpeg_coding(page.jpegtables or b"", head, int(page.photometric), int(page.tilewidth))
    except Exception as exc:  # noqa: BLE001 - a file tifffile cannot read is simply not taken
        log.debug("%s: no JPEG coding found (%s)", path, exc)
        return None
