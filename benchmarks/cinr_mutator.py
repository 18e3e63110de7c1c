"""A structure-aware mutator of ``.cinr`` files, written from ``formats/cinr-v1.md`` alone.

``parse`` splits a file into its parts with its own code (not ``cinr_codec.format``): preamble
fields, header and footer JSON, index records, block payloads (model payloads decompressed:
safetensors or ``CCB1`` compressive payloads), mip images and associated images. ``mutate``
changes one to three of those parts at the level of their structure -- JSON values and types
anywhere in the header and footer, the model configuration, the slide's geometry and block grid
(up to many blocks), the mips, index records (kinds, colours, swapped, shared or retargeted
payloads, longer records), safetensors headers, the quantization metadata and its int8 ranges,
compressive payload sections (domain, weight section, latent stream), zstd frames, and PNG/JPEG
images (sizes, modes, truncation, header bombs). ``assemble`` writes the parts back with every
length, offset and CRC-32 recomputed, so that a reader has to reject a mutant for what it means,
not by a checksum. ``background_slide`` builds huge all-background files (2^22 blocks) in a second.

Only the standard library, numpy, zstandard and Pillow are used: this is the second, independent
implementation of the format that the fuzzer (``benchmarks/fuzz.py``) checks the reader against.
"""

from __future__ import annotations

import copy
import io
import json
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

__all__ = [
    "MUTATIONS",
    "Assoc",
    "Block",
    "CinrFile",
    "assemble",
    "background_slide",
    "mutate",
    "parse",
]

MAGIC = b"CINR\r\n\x1a\n"
END_MAGIC = b"CINR-END"
KIND_MODEL, KIND_BACKGROUND, KIND_IMAGE = 1, 2, 3
PNG_SIG = b"\x89PNG\r\n\x1a\n"
JPEG_SIG = b"\xff\xd8\xff"
#: Required flag of format 1.5: header and footer JSON are zstd frames made with the format's
#: raw-content dictionary (§4.3).
FLAG_JSON_ZSTD = 0x0001
JSON_DICTIONARY = (
    Path(__file__).resolve().parents[1] / "cinr_codec" / "format" / "container" / "json_dictionary_v1.txt"
)
#: Most blocks a mutation that grows the grid adds (the spec allows 2^22; the fuzzer's workers
#: raise it for the benchmark).
DEFAULT_MAX_BLOCKS = 1 << 16


def crc(data: bytes) -> int:
    """CRC-32 (ISO-HDLC) of ``data`` (§1)."""
    return zlib.crc32(data) & 0xFFFFFFFF


def dumps(obj: Any) -> bytes:
    """JSON as the reference writer writes it (sorted keys, no spaces); NaN and unpaired surrogates
    pass through (a mutant may hold them: a reader must reject them)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


# -- the parts of a file ------------------------------------------------------------------------


@dataclass
class Block:
    """One index record and what it points at.

    ``payload`` is a model block's decompressed payload (re-compressed by ``assemble``) or an image
    block's bytes; None for background. ``stored`` replaces the stored bytes verbatim (a forged
    zstd frame); ``share`` points the record at another block's stored bytes; ``fields``
    overrides record fields after layout (``offset``, ``stored``, ``raw``, ``crc``, ``kind``);
    ``extra`` fills a record longer than 24 bytes.
    """

    kind: int
    rgb: tuple[int, int, int] = (0, 0, 0)
    payload: bytes | None = None
    stored: bytes | None = None
    share: int | None = None
    fields: dict[str, int] = field(default_factory=dict)
    #: Recompute the record's CRC over whatever range ``fields`` points it at.
    reseal: bool = True


@dataclass
class Assoc:
    """An associated image (§5.3) and its footer entry (``entry`` overrides the entry's fields)."""

    name: Any
    media_type: Any
    data: bytes
    entry: dict[str, Any] = field(default_factory=dict)


@dataclass
class CinrFile:
    """A parsed ``.cinr`` file (see ``parse`` and ``assemble``)."""

    header: dict[str, Any]
    footer: dict[str, Any]
    blocks: list[Block]
    images: list[Assoc] = field(default_factory=list)
    major: int = 1
    minor: int = 0
    flags: int = 0
    reserved: int = 0
    record_size: int = 24
    #: Overrides of the container objects after ``assemble`` fills them in.
    container: dict[str, Any] = field(default_factory=dict)
    footer_container: dict[str, Any] = field(default_factory=dict)
    #: Raw replacement of the header or footer JSON text.
    header_text: bytes | None = None
    footer_text: bytes | None = None
    trailer_reserved: int = 0
    zstd_level: int = 3
    #: Store ``header_text`` / ``footer_text`` as they are even under ``FLAG_JSON_ZSTD``.
    json_verbatim: bool = False


def _json_dict() -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(
        JSON_DICTIONARY.read_bytes(), dict_type=zstandard.DICT_TYPE_RAWCONTENT
    )


def compress_json(raw: bytes, **kw: Any) -> bytes:
    """``raw`` as the zstd frame a 1.5 writer stores (content size, no dictionary id or checksum)."""
    opts = {"write_checksum": False, "write_content_size": True, "write_dict_id": False, **kw}
    return zstandard.ZstdCompressor(level=19, dict_data=_json_dict(), **opts).compress(raw)


def _json_text(stored: bytes, flags: int) -> bytes:
    if not flags & FLAG_JSON_ZSTD:
        return stored
    return zstandard.ZstdDecompressor(dict_data=_json_dict()).decompress(stored)


def parse(data: bytes) -> CinrFile:
    """The parts of a well-formed file (ValueError when it is not one)."""
    if data[:8] != MAGIC or data[-8:] != END_MAGIC or len(data) < 96:
        raise ValueError("not a .cinr file")
    _, major, minor, flags, hlen, _, reserved = struct.unpack_from("<8sHHIIII", data, 0)
    header = json.loads(_json_text(data[32 : 32 + hlen], flags))
    t = len(data) - 64
    index_offset, index_length, footer_offset, footer_length, _, _, _, record_size, tres = struct.unpack_from(
        "<QQQQQIIHH", data, t
    )
    footer = json.loads(_json_text(data[footer_offset : footer_offset + footer_length], flags))
    container = header.pop("container")
    fc = footer.pop("container")
    blocks = []
    for i in range(index_length // record_size):
        off, stored, _, _, kind, r, g, b = struct.unpack_from(
            "<QIIIBBBB", data, index_offset + i * record_size
        )
        if kind == KIND_BACKGROUND:
            blocks.append(Block(kind, (r, g, b)))
        elif kind == KIND_MODEL:
            raw = zstandard.ZstdDecompressor().decompress(data[off : off + stored])
            blocks.append(Block(kind, payload=raw))
        else:
            blocks.append(Block(kind, payload=data[off : off + stored]))
    images = [
        Assoc(e["name"], e["media_type"], data[e["offset"] : e["offset"] + e["length"]])
        for e in fc.get("associated_images", [])
    ]
    extra = {k: v for k, v in container.items() if k not in ("n_blocks", "max_block_bytes")}
    return CinrFile(
        header=header,
        footer=footer,
        blocks=blocks,
        images=images,
        major=major,
        minor=minor,
        flags=flags,
        reserved=reserved,
        record_size=record_size,
        container=extra,
        trailer_reserved=tres,
    )


def _compress(payload: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(payload)


def assemble(f: CinrFile) -> bytes:
    """The file's bytes: sections laid out as §2 says, every length, offset and CRC recomputed
    (after the overrides, so that only what the overrides mean is wrong)."""
    stored: list[bytes | None] = []
    raw_len: list[int] = []
    for b in f.blocks:
        if b.payload is None and b.stored is None:
            stored.append(None)
            raw_len.append(0)
        elif b.kind == KIND_MODEL or (b.stored is not None):
            s = b.stored if b.stored is not None else _compress(b.payload or b"", f.zstd_level)
            stored.append(s)
            raw_len.append(len(b.payload) if b.payload is not None else len(s))
        else:
            stored.append(b.payload)
            raw_len.append(len(b.payload or b""))
    container = {
        "n_blocks": len(f.blocks),
        "max_block_bytes": max(
            [r for r, b in zip(raw_len, f.blocks, strict=True) if b.kind == KIND_MODEL] + [0]
        ),
        **f.container,
    }
    header = f.header_text if f.header_text is not None else dumps({**f.header, "container": container})
    if f.flags & FLAG_JSON_ZSTD and not f.json_verbatim:
        header = compress_json(header)
    data_start = 32 + len(header)
    region = bytearray()
    offsets: list[int] = []
    for s in stored:
        offsets.append(data_start + len(region) if s is not None else 0)
        region += s or b""
    entries = []
    for im in f.images:
        entries.append(
            {
                "name": im.name,
                "media_type": im.media_type,
                "offset": data_start + len(region),
                "length": len(im.data),
                "crc32": crc(im.data),
                **im.entry,
            }
        )
        region += im.data
    footer_offset = data_start + len(region)
    footer = (
        f.footer_text
        if f.footer_text is not None
        else dumps({**f.footer, "container": {"associated_images": entries, **f.footer_container}})
    )
    if f.flags & FLAG_JSON_ZSTD and not f.json_verbatim:
        footer = compress_json(footer)
    index_offset = footer_offset + len(footer)
    before_index = header + bytes(region) + footer  # bytes [32, index_offset) of the file
    index = bytearray()
    for i, b in enumerate(f.blocks):
        src = b.share if b.share is not None and 0 <= b.share < len(f.blocks) else i
        rec = {
            "offset": offsets[src],
            "stored": len(stored[src] or b""),
            "raw": raw_len[src],
            "crc": crc(stored[src]) if stored[src] is not None else 0,
            "kind": b.kind,
        }
        if b.kind == KIND_BACKGROUND and src == i:
            rec.update(offset=0, stored=0, raw=0, crc=0)
        rec.update(b.fields)
        if b.fields and b.reseal and ("offset" in b.fields or "stored" in b.fields):
            lo, n = rec["offset"], rec["stored"]
            if 32 <= lo and lo + n <= index_offset:
                rec["crc"] = crc(before_index[lo - 32 : lo - 32 + n])
        rgb = b.rgb if b.kind == KIND_BACKGROUND or "rgb" in b.fields else (0, 0, 0)
        index += struct.pack(
            "<QIIIB3B",
            rec["offset"] % (1 << 64),
            rec["stored"] % (1 << 32),
            rec["raw"] % (1 << 32),
            rec["crc"] % (1 << 32),
            rec["kind"] % 256,
            *(v % 256 for v in rgb),
        )
        index += bytes(max(0, f.record_size - 24))
    file_length = index_offset + len(index) + 64
    pre = struct.pack(
        "<8sHHIIII",
        MAGIC,
        f.major % 65536,
        f.minor % 65536,
        f.flags % (1 << 32),
        len(header),
        crc(header),
        f.reserved,
    )
    tr = struct.pack(
        "<QQQQQIIHH",
        index_offset,
        len(index),
        footer_offset,
        len(footer),
        file_length,
        crc(bytes(index)),
        crc(footer),
        f.record_size % 65536,
        f.trailer_reserved % 65536,
    )
    return b"".join(
        [
            pre,
            struct.pack("<I", crc(pre)),
            before_index,
            bytes(index),
            tr,
            struct.pack("<I", crc(tr)),
            END_MAGIC,
        ]
    )


def background_slide(
    width: int,
    height: int,
    block_size: int,
    model: dict[str, Any],
    colour: tuple[int, int, int] = (240, 240, 240),
) -> bytes:
    """A slide of background blocks only (the index built with numpy: 2^22 blocks in about a second)."""
    cols, rows = -(-width // block_size), -(-height // block_size)
    n = cols * rows
    header = dumps(
        {
            "container": {"max_block_bytes": 0, "n_blocks": n},
            "grid": {"block_size": block_size, "cols": cols, "halo": 0, "rows": rows},
            "model": model,
            "slide": {"height": height, "width": width},
        }
    )
    footer = dumps({"container": {"associated_images": []}})
    rec = np.zeros((n, 24), dtype=np.uint8)
    rec[:, 20] = KIND_BACKGROUND
    rec[:, 21:24] = colour
    index = rec.tobytes()
    footer_offset = 32 + len(header)
    index_offset = footer_offset + len(footer)
    pre = struct.pack("<8sHHIIII", MAGIC, 1, 0, 0, len(header), crc(header), 0)
    tr = struct.pack(
        "<QQQQQIIHH",
        index_offset,
        len(index),
        footer_offset,
        len(footer),
        index_offset + len(index) + 64,
        crc(index),
        crc(footer),
        24,
        0,
    )
    return b"".join(
        [pre, struct.pack("<I", crc(pre)), header, footer, index, tr, struct.pack("<I", crc(tr)), END_MAGIC]
    )


# -- values ---------------------------------------------------------------------------------------

#: Numbers where readers go wrong: boundaries of the format's fields and of C types, huge and
#: tiny floats, negative zero.
NUMBERS: list[Any] = [
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    24,
    25,
    63,
    64,
    65,
    255,
    256,
    1023,
    1024,
    4096,
    4097,
    65535,
    65536,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    1 << 22,
    1 << 24,
    1 << 26,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 40,
    (1 << 53) + 1,
    (1 << 63) - 1,
    1 << 63,
    1 << 64,
    10**400,
    -1,
    -2,
    -(1 << 31),
    -(10**400),
    0.5,
    -0.0,
    1.5,
    1e-320,
    5e-324,
    1e-9,
    1e308,
    -1e308,
    3.4e38,
    1e39,
]
OTHERS: list[Any] = [
    True,
    False,
    None,
    "",
    "0",
    "1e308",
    "nan",
    "x" * 300,
    "\u00e9\u4e2d",
    [],
    {},
    [0],
    [1, 2, 3],
    {"a": 1},
]


def interesting(rng: random.Random, like: Any = None) -> Any:
    """A value that breaks readers, often of the same type as ``like``."""
    if isinstance(like, bool) or rng.random() < 0.25:
        return rng.choice(NUMBERS + OTHERS)
    if isinstance(like, int):
        r = rng.random()
        if r < 0.5:
            return rng.choice(NUMBERS)
        if r < 0.8:
            return like + rng.choice([-2, -1, 1, 2, like, -like])
        return float(like) if r < 0.9 else str(like)
    if isinstance(like, float):
        return rng.choice([like * 2, -like, like * 1e300, like / 1e300, int(like), str(like)] + NUMBERS)
    if isinstance(like, str):
        return rng.choice(
            ["", like * 50, like.upper(), like + "x", "ngp", "cinr", "ccinr", "engp", "int8", "raw"]
            + NUMBERS[:5]
        )
    if isinstance(like, list):
        return rng.choice(
            [[], like[:-1], like + like[-1:], like[::-1], [interesting(rng, v) for v in like], {}]
        )
    return rng.choice(NUMBERS + OTHERS)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def mutate_json(rng: random.Random, obj: Any, under: tuple[Any, ...] = ()) -> tuple[Any, str]:
    """One change somewhere in ``obj`` (below ``under`` when it exists): a value replaced by an
    interesting one, a key deleted or added, a list shortened or grown. Returns (new object, what)."""
    obj = copy.deepcopy(obj)
    try:
        base = _get(obj, under)
    except (KeyError, IndexError, TypeError):
        base, under = obj, ()
    paths = [under + p for p in _paths(base)]
    path = rng.choice(paths)
    parent_path, key = path[:-1], path[-1] if path else None
    target = _get(obj, path)
    op = rng.random()
    if isinstance(target, dict) and op < 0.3:
        if target and rng.random() < 0.6:
            k = rng.choice(list(target))
            del target[k]
            return obj, f"delete {'/'.join(map(str, path + (k,)))}"
        target[rng.choice(["x", "kind", "version", "width", "__metadata__", "halo"])] = interesting(rng)
        return obj, f"add key under {'/'.join(map(str, path))}"
    new = interesting(rng, target)
    if not path:
        return new, f"replace the whole object with {str(new)[:30]}"
    _get(obj, parent_path)[key] = new
    return obj, f"{'/'.join(map(str, path))} = {str(new)[:40]}"


# -- images ---------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc(kind + body))


def forged_png(
    w: int, h: int, extra: tuple[tuple[bytes, bytes], ...] = (), depth: int = 8, colour: int = 2
) -> bytes:
    """A PNG whose IHDR says ``w`` x ``h`` (pixels real only when small), with ``extra`` chunks."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 3)
    small = w * h <= 1 << 16
    rows = (b"\0" + bytes([128]) * (channels * w * depth // 8)) * h if small else b"\0"
    return b"".join(
        [
            PNG_SIG,
            _png_chunk(
                b"IHDR", struct.pack(">IIBBBBB", w % (1 << 32), h % (1 << 32), depth, colour, 0, 0, 0)
            ),
            *(_png_chunk(k, v) for k, v in extra),
            _png_chunk(b"IDAT", zlib.compress(rows)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _pil_image(w: int, h: int, mode: str, fmt: str, rng: random.Random, **save: Any) -> bytes:
    from PIL import Image

    arr = np.asarray(
        np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (max(1, h), max(1, w), 4)),
        dtype=np.uint8,
    )
    im = Image.fromarray(arr, "RGBA").convert(mode) if mode != "RGBA" else Image.fromarray(arr, "RGBA")
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def image_size(data: bytes) -> tuple[int, int] | None:
    """(w, h) from a PNG's IHDR or a JPEG's SOF marker, None when absent."""
    if data.startswith(PNG_SIG) and len(data) >= 24:
        w, h = struct.unpack_from(">II", data, 16)
        return w, h
    if data.startswith(JPEG_SIG):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker, length = data[i + 1], struct.unpack_from(">H", data, i + 2)[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack_from(">HH", data, i + 5)
                return w, h
            i += 2 + length
    return None


def mutate_image(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A PNG or JPEG changed in structure: another size or mode, truncated, garbage after the
    signature, a header claiming huge dimensions, a decompression bomb in a chunk."""
    size = image_size(data) or (16, 16)
    w, h = size
    if w * h > 1 << 22:  # an earlier mutation forged the header: real pixels of that size would not fit
        w, h = min(w, 2048), min(h, 2048)
    ops: list[tuple[str, Callable[[], bytes]]] = [
        ("truncated", lambda: data[: rng.randrange(1, max(2, len(data)))]),
        ("png signature + garbage", lambda: PNG_SIG + rng.randbytes(rng.randrange(0, 200))),
        ("jpeg signature + garbage", lambda: JPEG_SIG + rng.randbytes(rng.randrange(0, 200))),
        ("one pixel wider", lambda: _pil_image(w + 1, h, "RGB", "PNG", rng)),
        ("one pixel shorter", lambda: _pil_image(w, max(1, h - 1), "RGB", "PNG", rng)),
        ("1x1", lambda: _pil_image(1, 1, "RGB", "PNG", rng)),
        ("grey", lambda: _pil_image(w, h, "L", "PNG", rng)),
        ("palette", lambda: _pil_image(w, h, "P", "PNG", rng)),
        ("rgba", lambda: _pil_image(w, h, "RGBA", "PNG", rng)),
        ("16-bit", lambda: _pil_image(w, h, "I;16", "PNG", rng)),
        ("1-bit", lambda: _pil_image(w, h, "1", "PNG", rng)),
        ("cmyk jpeg", lambda: _pil_image(w, h, "CMYK", "JPEG", rng)),
        ("grey jpeg", lambda: _pil_image(w, h, "L", "JPEG", rng)),
        ("progressive jpeg", lambda: _pil_image(w, h, "RGB", "JPEG", rng, progressive=True)),
        ("another png", lambda: _pil_image(w, h, "RGB", "PNG", rng)),
        ("IHDR 65535x65535", lambda: forged_png(65535, 65535)),
        ("IHDR 2^31-1 square", lambda: forged_png((1 << 31) - 1, (1 << 31) - 1)),
        ("IHDR 0x0", lambda: forged_png(0, 0)),
        ("IHDR bad depth", lambda: forged_png(w, h, depth=7)),
        ("iCCP bomb", lambda: forged_png(w, h, ((b"iCCP", b"icc\0\0" + zlib.compress(bytes(16 << 20), 9)),))),
        ("zTXt bomb", lambda: forged_png(w, h, ((b"zTXt", b"k\0\0" + zlib.compress(bytes(16 << 20), 9)),))),
        ("byte flips", lambda: _flip(rng, data)),
    ]
    name, make = rng.choice(ops)
    return make(), f"image: {name}"


def _flip(rng: random.Random, data: bytes, n: int | None = None) -> bytes:
    b = bytearray(data)
    if not b:
        return bytes(rng.randbytes(8))
    for _ in range(n or rng.randrange(1, 8)):
        i = rng.randrange(len(b))
        b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    return bytes(b)


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Byte flips, truncation, insertion or duplication of a range."""
    r = rng.random()
    if r < 0.4 or len(data) < 2:
        return _flip(rng, data), "bytes: flips"
    if r < 0.6:
        return data[: rng.randrange(len(data))], "bytes: truncated"
    i = rng.randrange(len(data))
    if r < 0.8:
        return data[:i] + rng.randbytes(rng.randrange(1, 64)) + data[i:], "bytes: inserted"
    j = rng.randrange(i, len(data))
    return data[:j] + data[i:j] * rng.randrange(1, 4) + data[j:], "bytes: range repeated"


# -- payloads ---------------------------------------------------------------------------------------


def split_safetensors(p: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(header JSON, data) of a safetensors payload (§5.1), None when it is not one."""
    if len(p) < 8:
        return None
    (n,) = struct.unpack_from("<Q", p, 0)
    if n > len(p) - 8:
        return None
    try:
        head = json.loads(p[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        return None
    return (head, p[8 + n :]) if isinstance(head, dict) else None


def join_safetensors(head: dict[str, Any], data: bytes) -> bytes:
    text = dumps(head)
    return struct.pack("<Q", len(text)) + text + data


ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def _relayout(head: dict[str, Any], data: bytes, rng: random.Random) -> bytes:
    """Tensor data laid out again after shapes or dtypes changed, so that the offsets are consistent
    (new bytes random) and only the meaning is wrong."""
    out = bytearray()

    def begin(k: str) -> int:
        offsets = head[k].get("data_offsets") if isinstance(head[k], dict) else None
        first = offsets[0] if isinstance(offsets, list) and offsets else 0
        return first if isinstance(first, int) and not isinstance(first, bool) else 0

    for name in sorted((k for k in head if k != "__metadata__"), key=begin):
        e = head[name]
        if not isinstance(e, dict):
            continue
        try:
            n = ITEMSIZE.get(e.get("dtype"), 1) * int(
                np.prod([int(s) for s in e.get("shape", [])], dtype=np.float64)
            )
        except (TypeError, ValueError, OverflowError):
            continue
        if n > 1 << 26:
            continue  # leave an absurd shape to the reader, with the old offsets
        lo, hi = (e.get("data_offsets") or [0, 0])[:2] if isinstance(e.get("data_offsets"), list) else (0, 0)
        old = data[lo:hi] if isinstance(lo, int) and isinstance(hi, int) else b""
        piece = (old + rng.randbytes(max(0, n - len(old))))[:n]
        e["data_offsets"] = [len(out), len(out) + n]
        out += piece
    return bytes(out)


def mutate_safetensors(rng: random.Random, payload: bytes) -> tuple[bytes, str]:
    """The safetensors header (a JSON change, possibly re-laid-out), the quantization metadata,
    an int8 tensor's range, or raw tensor bytes."""
    parts = split_safetensors(payload)
    if parts is None:
        return mutate_bytes(rng, payload)
    head, data = parts
    r = rng.random()
    quant_key = "cinr.quant"
    meta = head.get("__metadata__") if isinstance(head.get("__metadata__"), dict) else None
    if r < 0.3 and meta and isinstance(meta.get(quant_key), str):
        try:
            q = json.loads(meta[quant_key])
        except ValueError:
            q = {}
        q2, what = mutate_json(rng, q, ("tensors",) if rng.random() < 0.8 else ())
        meta[quant_key] = dumps(q2).decode("utf-8", "surrogatepass")
        return join_safetensors(head, data), f"cinr.quant: {what}"
    if r < 0.5:
        ranges = [k for k in head if k.endswith(("::min", "::scale"))]
        if ranges:
            name = rng.choice(ranges)
            lo, hi = head[name]["data_offsets"]
            vals = np.frombuffer(data[lo:hi], dtype="<f4").copy()
            if vals.size:
                vals[rng.randrange(vals.size)] = rng.choice(
                    [np.nan, np.inf, -np.inf, -1.0, 0.0, 3.4e38, 1e-45, -3.4e38]
                )
                data = data[:lo] + vals.astype("<f4").tobytes() + data[hi:]
                return join_safetensors(head, data), f"int8 range {name}"
    if r < 0.85:
        tensors = [k for k in head if k != "__metadata__"]
        under = (rng.choice(tensors),) if tensors and rng.random() < 0.8 else ()
        head2, what = mutate_json(rng, head, under)
        if isinstance(head2, dict) and rng.random() < 0.6:
            data = _relayout(head2, data, rng)
            what += " (re-laid out)"
        return (
            join_safetensors(head2, data) if isinstance(head2, dict) else dumps(head2)
        ), f"safetensors: {what}"
    return join_safetensors(head, _flip(rng, data) if data else data), "tensor bytes"


CCB1 = struct.Struct("<4sHHHHI")


def mutate_ccinr(rng: random.Random, payload: bytes) -> tuple[bytes, str]:
    """A compressive payload (§5.4) changed section by section: domain fields, the weight section
    (exponents, orders, bits), the latent stream (a tiled first grid's stream lengths among its
    first words), or the section lengths."""
    if len(payload) < CCB1.size + 4 or payload[:4] != b"CCB1":
        return mutate_bytes(rng, payload)
    magic, w, h, x0, y0, n_w = CCB1.unpack_from(payload, 0)
    if CCB1.size + n_w + 4 > len(payload):  # an earlier mutation broke the sections
        return mutate_bytes(rng, payload)
    weights = payload[CCB1.size : CCB1.size + n_w]
    (n_l,) = struct.unpack_from("<I", payload, CCB1.size + n_w)
    latents = payload[CCB1.size + n_w + 4 :]
    u16 = [0, 1, 2, 16, 47, 48, 49, 63, 64, 65, 255, 1024, 16384, 32768, 65535]
    r = rng.random()
    what = ""
    if r < 0.3:
        fieldname = rng.choice(["w", "h", "x0", "y0"])
        v = rng.choice(u16)
        w, h, x0, y0 = (
            v if n == fieldname else o for n, o in zip(("w", "h", "x0", "y0"), (w, h, x0, y0), strict=True)
        )
        what = f"ccinr {fieldname} = {v}"
    elif r < 0.5:
        b = bytearray(weights)
        if b:
            i = rng.randrange(len(b))
            b[i] = rng.choice([0, 24, 25, 15, 16, 255, rng.randrange(256)])
        weights, what = bytes(b), "ccinr weight byte"
    elif r < 0.6:
        weights, what = mutate_bytes(rng, weights)[0], "ccinr weight section resized"
    elif r < 0.85:
        choice = rng.random()
        if choice < 0.3:
            latents, what = latents[: 4 * rng.randrange(0, len(latents) // 4 + 1)], "ccinr latents truncated"
        elif choice < 0.6:
            latents, what = rng.randbytes(4 * rng.randrange(0, 64)), "ccinr random latents"
        elif choice < 0.8 and len(latents) >= 4:
            # A tiled first grid's stream lengths lead the section (1.8); else its first words.
            k = rng.randrange(min(4, len(latents) // 4))
            v = rng.choice([0, 1, 3, 4, 8, len(latents), len(latents) + 4, 1 << 31, (1 << 32) - 4])
            latents = latents[: 4 * k] + struct.pack("<I", v) + latents[4 * k + 4 :]
            what = f"ccinr latent word {k} = {v}"
        else:
            latents, what = _flip(rng, latents), "ccinr latent bytes"
    else:
        delta = rng.choice([-4, -1, 1, 4, 1 << 20, -(1 << 20)])
        head = CCB1.pack(magic, w, h, x0, y0, (n_w + delta) % (1 << 32))
        return head + weights + struct.pack("<I", n_l) + latents, f"ccinr W {delta:+d}"
    return CCB1.pack(magic, w, h, x0, y0, len(weights)) + weights + struct.pack(
        "<I", len(latents)
    ) + latents, what


def forged_frame(rng: random.Random, payload: bytes) -> tuple[bytes, str]:
    """Stored bytes that are not one plain zstd frame with its content size (§5.1)."""
    r = rng.random()
    if r < 0.25:
        return zstandard.ZstdCompressor(write_content_size=False).compress(payload), "zstd: no content size"
    if r < 0.45:
        one = _compress(payload, 1)
        return one + one, "zstd: two frames"
    if r < 0.6:
        skippable = struct.pack("<II", 0x184D2A50, 4) + b"skip"
        return skippable + _compress(payload, 1), "zstd: skippable frame first"
    if r < 0.75:
        return _compress(payload, 1) + rng.randbytes(rng.randrange(1, 16)), "zstd: trailing bytes"
    return _flip(rng, _compress(payload, 1)), "zstd: flipped frame bytes"


# -- mutations of a whole file ----------------------------------------------------------------------

Mutation = Callable[[random.Random, CinrFile, int], str]


def _level_blocks(f: CinrFile) -> int:
    g = f.header.get("grid", {})
    try:
        return int(g["cols"]) * int(g["rows"])
    except (KeyError, TypeError, ValueError):
        return len(f.blocks)


def m_header_json(rng: random.Random, f: CinrFile, cap: int) -> str:
    under = rng.choice(
        [(), ("slide",), ("grid",), ("model",), ("mips",), ("quantization",), ("encoder",), ("tissue",)]
    )
    f.header, what = mutate_json(rng, f.header, under)
    if not isinstance(f.header, dict):
        f.header_text = dumps(f.header)
        f.header = {}
    return f"header: {what}"


def m_footer_json(rng: random.Random, f: CinrFile, cap: int) -> str:
    f.footer, what = mutate_json(rng, f.footer, rng.choice([(), ("quality",), ("fit",), ("blocks",)]))
    if not isinstance(f.footer, dict):
        f.footer_text = dumps(f.footer)
        f.footer = {}
    return f"footer: {what}"


def m_container(rng: random.Random, f: CinrFile, cap: int) -> str:
    r = rng.random()
    if r < 0.4:
        key = rng.choice(["n_blocks", "max_block_bytes"])
        f.container[key] = interesting(rng, 1)
        return f"container.{key} = {str(f.container[key])[:30]}"
    if r < 0.6:
        f.footer_container[rng.choice(["associated_images", "x"])] = interesting(rng)
        return "footer container"
    if r < 0.8:
        f.minor = rng.choice([0, 1, 2, 3, 4, 9, 65535])
        return f"minor = {f.minor}"
    f.flags = rng.choice([1, 2, 1 << 15, 1 << 16, 1 << 31])
    return f"flags = {f.flags:#x}"


def m_geometry(rng: random.Random, f: CinrFile, cap: int) -> str:
    """The slide's size and block grid changed together (the grid stays consistent), blocks added as
    background, copies sharing a model payload, or dropped; mips re-laid out to match."""
    slide, grid = f.header.get("slide"), f.header.get("grid")
    if not isinstance(slide, dict) or not isinstance(grid, dict):
        return m_header_json(rng, f, cap)
    old_b = grid.get("block_size") if isinstance(grid.get("block_size"), int) else 64
    b = rng.choice(
        [
            old_b,
            old_b,
            1,
            2,
            7,
            16,
            64,
            256,
            512,
            1000,
            20000,
            1 << 19,
            1 << 20,
            old_b * 2,
            max(1, old_b // 2),
        ]
    )
    side = [1, 2, b - 1, b, b + 1, 3 * b, 20000, 65536, (1 << 20) - 1, 1 << 20, (1 << 20) + 1]
    W, H = rng.choice(side), rng.choice(side)
    W, H = max(1, W), max(1, H)
    cols, rows = -(-W // b), -(-H // b)
    if cols * rows > cap:  # keep the file small: fewer, larger blocks
        b = max(b, int(np.ceil(np.sqrt(W * H / cap))) + 1)
        cols, rows = -(-W // b), -(-H // b)
    mips = f.header.get("mips")
    ds = (
        mips.get("downsamples", [])
        if isinstance(mips, dict) and isinstance(mips.get("downsamples"), list)
        else []
    )
    ds = [d for d in ds if isinstance(d, int) and d >= 2 and b % d == 0]
    old_n = _level_blocks(f)
    old_level = f.blocks[: min(old_n, len(f.blocks))]
    model_ids = [i for i, blk in enumerate(old_level) if blk.kind == KIND_MODEL]
    spread = rng.random() < 0.4 and model_ids
    n = cols * rows
    level: list[Block] = []
    for i in range(n):
        if i < len(old_level) and rng.random() < 0.9:
            level.append(old_level[i])
        elif spread and rng.random() < 0.05:
            level.append(Block(KIND_MODEL, share=model_ids[0]))
        else:
            level.append(Block(KIND_BACKGROUND, (250, 250, 250)))
    blocks = list(level)
    for k in range(len(ds)):
        for i in range(n):
            old_id = old_n * (1 + k) + i
            src = (
                f.blocks[old_id]
                if i < old_n and old_id < len(f.blocks)
                else Block(KIND_BACKGROUND, (250, 250, 250))
            )
            blocks.append(src if src.kind != KIND_MODEL else Block(KIND_BACKGROUND, (1, 2, 3)))
    f.blocks = blocks
    slide.update(width=W, height=H)
    grid.update(block_size=b, cols=cols, rows=rows)
    if isinstance(mips, dict):
        mips.update(downsamples=ds, first_block=n)
    return (
        f"geometry: {W}x{H}, blocks of {b} ({n} level blocks, mips {ds}{', model shared' if spread else ''})"
    )


def m_model_config(rng: random.Random, f: CinrFile, cap: int) -> str:
    model = f.header.get("model")
    if not isinstance(model, dict):
        return m_header_json(rng, f, cap)
    keys = [k for k in model if k != "kind"] + (["hash"] if "hash" in model else [])
    if rng.random() < 0.15 or not keys:
        model["kind"] = rng.choice(["ngp", "engp", "cinr", "ccinr", "siren", "", 1])
        return f"model.kind = {model['kind']}"
    key = rng.choice(keys)
    if key == "hash" and isinstance(model.get("hash"), dict):
        sub = rng.choice(list(model["hash"]) or ["n_levels"])
        model["hash"][sub] = interesting(rng, model["hash"].get(sub, 1))
        return f"model.hash.{sub} = {str(model['hash'][sub])[:30]}"
    model[key] = interesting(rng, model[key])
    return f"model.{key} = {str(model[key])[:30]}"


def m_slide_fields(rng: random.Random, f: CinrFile, cap: int) -> str:
    slide = f.header.setdefault("slide", {})
    if not isinstance(slide, dict):
        return m_header_json(rng, f, cap)
    key = rng.choice(
        [
            "mpp_x",
            "mpp_y",
            "objective_power",
            "level",
            "level_downsample",
            "background",
            "vendor",
            "properties",
        ]
    )
    if key == "properties":
        props = slide.get("properties") if isinstance(slide.get("properties"), dict) else {}
        name = rng.choice(
            [
                "openslide.bounds-x",
                "openslide.bounds-y",
                "openslide.bounds-width",
                "openslide.bounds-height",
                "openslide.mpp-x",
                "openslide.objective-power",
                "openslide.associated.label.width",
                "aperio.MPP",
            ]
        )
        props[name] = rng.choice(["0", "-1", "1e308", "-1e308", "nan", "inf", "10", "1" * 400, "x", ""])
        if rng.random() < 0.5:
            for n in ("x", "y", "width", "height"):
                props.setdefault(f"openslide.bounds-{n}", rng.choice(["0", "1e308", "5", "-7"]))
        slide["properties"] = props
        return f"slide.properties[{name}] = {props[name][:20]}"
    slide[key] = interesting(rng, slide.get(key, 1.0))
    return f"slide.{key} = {str(slide[key])[:30]}"


def m_mips(rng: random.Random, f: CinrFile, cap: int) -> str:
    mips = f.header.get("mips")
    if not isinstance(mips, dict):
        f.header["mips"] = {
            "downsamples": rng.choice([[2], [1], [3], [2, 4], []]),
            "first_block": _level_blocks(f),
            "filter": "box",
        }
        return f"mips added: {f.header['mips']['downsamples']}"
    key = rng.choice(["downsamples", "first_block", "filter"])
    mips[key] = interesting(rng, mips.get(key))
    return f"mips.{key} = {str(mips[key])[:30]}"


def m_record(rng: random.Random, f: CinrFile, cap: int) -> str:
    if not f.blocks:
        return m_container(rng, f, cap)
    i = rng.randrange(len(f.blocks))
    b = f.blocks[i]
    r = rng.random()
    if r < 0.15 and len(f.blocks) > 1:
        j = rng.randrange(len(f.blocks))
        f.blocks[i], f.blocks[j] = f.blocks[j], f.blocks[i]
        return f"records {i} and {j} swapped"
    if r < 0.3:
        b.kind = rng.choice([0, 1, 2, 3, 4, 255])
        return f"record {i} kind = {b.kind}"
    if r < 0.4:
        b.rgb = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        b.fields["rgb"] = 1
        return f"record {i} rgb"
    if r < 0.55:
        others = [j for j, o in enumerate(f.blocks) if o.payload is not None and j != i]
        if others:
            b.share = rng.choice(others)
            b.kind = f.blocks[b.share].kind
            return f"record {i} shares block {b.share}'s payload"
    if r < 0.65:
        f.record_size = rng.choice([25, 32, 64, 256, 23, 257])
        return f"record size {f.record_size}"
    name = rng.choice(["offset", "stored", "raw"])
    b.fields[name] = rng.choice(
        [0, 1, 8, 31, 32, 33, 100, 1 << 20, 1 << 30, (1 << 30) + 1, (1 << 32) - 1, (1 << 63)]
    )
    b.reseal = rng.random() < 0.8
    return f"record {i} {name} = {b.fields[name]}"


def m_payload(rng: random.Random, f: CinrFile, cap: int) -> str:
    models = [i for i, b in enumerate(f.blocks) if b.kind == KIND_MODEL and b.payload is not None]
    if not models:
        return m_record(rng, f, cap)
    i = rng.choice(models)
    b = f.blocks[i]
    p = b.payload or b""
    r = rng.random()
    if r < 0.1:
        b.stored, what = forged_frame(rng, p)
    elif r < 0.2:
        b.payload, what = mutate_bytes(rng, p)
    elif p[:4] == b"CCB1":
        b.payload, what = mutate_ccinr(rng, p)
    else:
        b.payload, what = mutate_safetensors(rng, p)
    return f"block {i}: {what}"


def m_image_block(rng: random.Random, f: CinrFile, cap: int) -> str:
    images = [i for i, b in enumerate(f.blocks) if b.kind == KIND_IMAGE and b.payload is not None]
    if not images:
        return m_payload(rng, f, cap)
    i = rng.choice(images)
    f.blocks[i].payload, what = mutate_image(rng, f.blocks[i].payload or b"")
    return f"mip block {i}: {what}"


def m_associated(rng: random.Random, f: CinrFile, cap: int) -> str:
    if not f.images or rng.random() < 0.15:
        data = _pil_image(
            rng.choice([1, 20, 300]), rng.choice([1, 10, 200]), "RGB", rng.choice(["PNG", "JPEG"]), rng
        )
        media = "image/png" if data.startswith(PNG_SIG) else "image/jpeg"
        f.images.append(Assoc(rng.choice(["label", "macro", "thumbnail", "x" * 64]), media, data))
        return "associated image added"
    im = rng.choice(f.images)
    r = rng.random()
    if r < 0.6:
        im.data, what = mutate_image(rng, im.data)
        im.media_type = (
            "image/png"
            if im.data.startswith(PNG_SIG)
            else "image/jpeg"
            if im.data.startswith(JPEG_SIG)
            else im.media_type
        )
        return f"associated {im.name!r}: {what}"
    if r < 0.75:
        im.media_type = rng.choice(["image/png", "image/jpeg", "image/gif", "", 3])
        return f"associated media type {im.media_type}"
    if r < 0.85:
        im.name = rng.choice(["", "x" * 65, f.images[0].name, 7, "label"])
        return f"associated name {str(im.name)[:20]}"
    key = rng.choice(["offset", "length", "crc32"])
    im.entry[key] = interesting(rng, 1)
    return f"associated entry {key} = {str(im.entry[key])[:20]}"


def m_json_frame(rng: random.Random, f: CinrFile, cap: int) -> str:
    """The stored JSON of format 1.5 (§4.3): the flag set or cleared, frames cut, padded,
    without a content size, inflating past 16 MiB, or holding what is not a JSON object."""
    header = dumps({**f.header, "container": {"n_blocks": len(f.blocks), "max_block_bytes": 1 << 20}})
    footer = dumps({**f.footer, "container": {"associated_images": []}})
    f.images = []
    f.flags |= FLAG_JSON_ZSTD
    f.json_verbatim = True
    r = rng.random()
    frame = compress_json(header)
    if r < 0.15:
        f.header_text, what = header, "plain JSON under the flag"
    elif r < 0.3:
        f.flags &= ~FLAG_JSON_ZSTD
        f.header_text, what = frame, "compressed JSON without the flag"
    elif r < 0.45:
        cut = rng.randrange(0, len(frame))
        f.header_text, what = frame[:cut], f"frame cut at {cut}"
    elif r < 0.55:
        f.header_text, what = frame + bytes(rng.randrange(1, 9)), "bytes after the frame"
    elif r < 0.65:
        f.header_text, what = compress_json(header, write_content_size=False), "no content size"
    elif r < 0.75:
        f.header_text, what = compress_json(b" " * ((16 << 20) + 1)), "frame of 16 MiB + 1"
    elif r < 0.85:
        f.header_text, what = (
            compress_json(rng.choice([b"[]", b"1", b"{", b'{"a":1,"a":2}'])),
            "not an object",
        )
    else:
        buf = bytearray(frame)
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        f.header_text, what = bytes(buf), "bits flipped in the frame"
    f.footer_text = compress_json(footer) if f.flags & FLAG_JSON_ZSTD else footer
    return f"json frame: {what}"


#: (weight, mutation): how often each kind of change is drawn.
MUTATIONS: list[tuple[float, Mutation]] = [
    (3, m_header_json),
    (1, m_footer_json),
    (1, m_container),
    (2, m_geometry),
    (3, m_model_config),
    (1.5, m_slide_fields),
    (1, m_mips),
    (2, m_record),
    (4, m_payload),
    (2, m_image_block),
    (1.5, m_associated),
    (1, m_json_frame),
]


def mutate(data: bytes, seed: int | str, *, max_blocks: int = DEFAULT_MAX_BLOCKS) -> tuple[bytes, list[str]]:
    """A mutant of the well-formed file ``data``: one to three structure-aware changes, then every
    length, offset and CRC recomputed. Deterministic for a given ``seed``. Returns (bytes, what changed)."""
    rng = random.Random(seed)
    f = parse(data)
    weights = [w for w, _ in MUTATIONS]
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        (m,) = rng.choices([m for _, m in MUTATIONS], weights)
        try:
            done.append(m(rng, f, max_blocks))
        except (
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
            struct.error,
            OverflowError,
        ) as exc:
            # An earlier change left a part the mutation cannot read: change the header instead.
            done.append(f"{m.__name__} skipped ({type(exc).__name__}); " + m_header_json(rng, f, max_blocks))
    return assemble(f), done
