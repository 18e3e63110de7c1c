"""AVIF image blocks without their boxes (format 1.11): the AV1 data and the few fields that vary.

An AVIF mip of a compressive file is a few hundred to a few thousand bytes, and about 290 of
them are the ISO BMFF boxes around the AV1 data (``ftyp``, ``meta`` with its item, location and
properties, the ``mdat`` header), the same for every mip but for its size and AV1 configuration.
A writer of format 1.11 stores such an image as ``SHORT_AVIF_MAGIC``, width and height (u16 LE),
the 4-byte ``av1C`` record and the ``mdat`` payload; a reader rebuilds the one canonical AVIF
file that ``rebuild`` writes (formats/cinr-v1.md §7). A writer shortens an AVIF only when the
rebuild gives back its bytes exactly, so readers decode what the encoder measured; any other
AVIF is stored whole. No imaging library is needed here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .binary import AVIF_BRAND, SHORT_AVIF_MAGIC

#: Magic, width, height, ``av1C``: the fixed part of a short AVIF block.
SHORT_HEAD = struct.Struct("<4sHH4s")
#: The colour box every rebuilt file carries: ``nclx``, BT.709 primaries (1), sRGB transfer (13),
#: BT.601 matrix (6), full range (Pillow's AVIF writer's signalling of an RGB image).
NCLX = struct.pack(">4sHHHB", b"nclx", 1, 13, 6, 0x80)
#: ``av1C``'s first byte: marker bit and version 1.
AV1C_MARKER = 0x81


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, payload: bytes) -> bytes:  # version 0, flags 0
    return _box(kind, b"\0\0\0\0" + payload)


def rebuild(width: int, height: int, av1c: bytes, obus: bytes) -> bytes:
    """The canonical AVIF file of one 8-bit, three-channel AV1 still image: ``ftyp`` (brand
    ``MA1B`` for AV1 profile 0, else ``MA1A``), ``meta`` (``hdlr`` pict, ``pitm`` 1, ``iloc``,
    ``iinf`` with one ``av01`` item named "Color", ``iprp`` with ``ispe``, ``pixi``, ``av1C``,
    ``colr`` ``NCLX``), then ``mdat`` holding ``obus``."""
    brand = b"MA1B" if av1c[1] >> 5 == 0 else b"MA1A"
    ftyp = _box(b"ftyp", b"avif\0\0\0\0avifmif1miaf" + brand)
    infe = _box(b"infe", b"\x02\0\0\0" + struct.pack(">HH", 1, 0) + b"av01Color\0")
    ipco = _box(
        b"ipco",
        _full_box(b"ispe", struct.pack(">II", width, height))
        + _full_box(b"pixi", bytes((3, 8, 8, 8)))
        + _box(b"av1C", av1c)
        + _box(b"colr", NCLX),
    )
    ipma = _full_box(b"ipma", struct.pack(">IHB", 1, 1, 4) + bytes((0x01, 0x02, 0x83, 0x04)))

    def meta(data_offset: int) -> bytes:
        iloc = _full_box(b"iloc", b"\x44\0" + struct.pack(">HHHHII", 1, 1, 0, 1, data_offset, len(obus)))
        return _full_box(
            b"meta",
            _full_box(b"hdlr", b"\0\0\0\0pict" + bytes(13))
            + _full_box(b"pitm", struct.pack(">H", 1))
            + iloc
            + _full_box(b"iinf", struct.pack(">H", 1) + infe)
            + _box(b"iprp", ipco + ipma),
        )

    head = ftyp + meta(0)
    return ftyp + meta(len(head) + 8) + _box(b"mdat", obus)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset, size) of the boxes in ``data[start:end]``; stops at a malformed size."""
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        if size < 8 or i + size > end:
            return
        yield kind, i, size
        i += size


def shorten(data: bytes) -> bytes | None:
    """The short form of an AVIF file whose canonical rebuild is exactly ``data``, else None."""
    found: dict[bytes, tuple[int, int]] = {}

    def walk(start: int, end: int) -> None:
        for kind, i, size in _boxes(data, start, end):
            found.setdefault(kind, (i, size))
            if kind == b"meta":
                walk(i + 12, i + size)
            elif kind in (b"iprp", b"ipco"):
                walk(i + 8, i + size)

    walk(0, len(data))
    if not {b"ispe", b"av1C", b"mdat"} <= found.keys():
        return None
    i, size = found[b"ispe"]
    if size != 20:
        return None
    width, height = struct.unpack(">II", data[i + 12 : i + 20])
    i, size = found[b"av1C"]
    av1c = data[i + 8 : i + size]
    i, size = found[b"mdat"]
    obus = data[i + 8 : i + size]
    if not (0 < width < 1 << 16 and 0 < height < 1 << 16 and len(av1c) == 4):
        return None
    if rebuild(width, height, av1c, obus) != data:
        return None
    return SHORT_HEAD.pack(SHORT_AVIF_MAGIC, width, height, av1c) + obus


def stored_form(data: bytes) -> bytes:
    """What a writer of format 1.11 stores for an image file: an AVIF short where ``shorten`` can,
    anything else as it is."""
    if data[4:12] == AVIF_BRAND:
        return shorten(data) or data
    return data


def is_short(data: bytes) -> bool:
    """Whether ``data`` starts as a short AVIF block."""
    return data[:4] == SHORT_AVIF_MAGIC


def short_size(data: bytes) -> tuple[int, int]:
    """(width, height) a short AVIF block declares; ``ValueError`` when it is not one."""
    if len(data) <= SHORT_HEAD.size or not is_short(data):
        raise ValueError("not a short AVIF image block")
    _, width, height, av1c = SHORT_HEAD.unpack_from(data)
    if not width or not height or av1c[0] != AV1C_MARKER:
        raise ValueError(f"short AVIF image block of {width}x{height} pixels, av1C marker {av1c[0]:#04x}")
    return width, height


def expand(data: bytes) -> bytes:
    """The AVIF file a short block stands for (``rebuild``); ``ValueError`` for a malformed one."""
    width, height = short_size(data)
    av1c = data[8:12]
    return rebuild(width, height, av1c, data[SHORT_HEAD.size :])
