"""Byte layout of a ``.cinr`` file (format 1.x), limits, and strict JSON; see ``formats/cinr-v1.md``.

A file is::

    preamble (32 B) | header JSON | payload region (block payloads, associated images)
    | footer JSON | block index (n_blocks x record_size B) | trailer (64 B)

All integers are little-endian and unsigned; every checksum is CRC-32 (``zlib.crc32``, the
ISO-HDLC / IEEE 802.3 polynomial) of the bytes it covers. This module only packs and
unpacks fixed-size structures; the reader validates them against the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeGuard

import zstandard

from ...errors import CinrFormatError

#: First 8 bytes of every file: "CINR", CR LF (catches newline conversion), ^Z, LF.
MAGIC = b"CINR\r\n\x1a\n"
#: Last 8 bytes of every complete file.
TRAILER_MAGIC = b"CINR-END"

FORMAT_MAJOR = 1
#: Highest minor version this code writes and fully understands (1.1 added image blocks, kind 3;
#: 1.2 compressive CINR payloads, header model.kind "ccinr"; 1.3 their learned upsampling,
#: header model.upsampling "learned"; 1.4 their leaky ReLU, header model.activation "leaky_relu";
#: 1.5 header and footer JSON compressed with the built-in dictionary, flag ``FLAG_JSON_ZSTD``;
#: 1.6 AVIF image blocks; 1.7 the compressive synthesis' stabiliser, header model.stabiliser; 1.8
#: independently coded tiles of the first latent grid, header model.latent_tile; 1.9 the source's
#: JPEG coding, header slide.source_jpeg, which moves decoded level pixels to its lattice; 1.10
#: source tiles that do not divide the block size, re-quantized in each block's parts of them, and
#: a spread per coefficient; 1.11 AVIF image blocks stored short, without their boxes).
FORMAT_MINOR = 11
#: Lowest minor version that knows image blocks.
MINOR_IMAGE_BLOCKS = 1
#: Lowest minor version whose image blocks may be AVIF (``AVIF_BRAND``); associated images stay
#: PNG or JPEG.
MINOR_AVIF = 6
#: Lowest minor version whose header may carry ``slide.source_jpeg`` (older readers ignore it and
#: decode the level without the re-quantization).
MINOR_SOURCE_JPEG = 9
#: Lowest minor version whose ``slide.source_jpeg`` tile may not divide the block size, and whose
#: spread may be per coefficient (a 1.9 reader refuses either with a format error).
MINOR_SOURCE_JPEG_1_10 = 10
#: Lowest minor version whose image blocks may be short AVIF (``short_avif``: the AV1 data without
#: the ISO BMFF boxes, which the reader rebuilds).
MINOR_SHORT_AVIF = 11

PREAMBLE = struct.Struct("<8sHHIIII")  # magic, major, minor, flags, header_len, header_crc, reserved
PREAMBLE_SIZE = PREAMBLE.size + 4  # + preamble_crc32
# index offset/length, footer offset/length, file length, index/footer CRCs, record size, reserved
TRAILER = struct.Struct("<QQQQQIIHH")
TRAILER_SIZE = TRAILER.size + 4 + len(TRAILER_MAGIC)  # + trailer_crc32 + magic
RECORD = struct.Struct("<QIIIB3s")  # offset, stored_length, raw_length, crc32, kind, rgb
RECORD_SIZE = RECORD.size
#: Largest index record a reader accepts (newer minor versions may append fields to records).
MAX_RECORD_SIZE = 256

#: Flags bits 0-15 are "required": a reader that does not know a set bit must refuse the file.
REQUIRED_FLAGS_MASK = 0x0000FFFF
#: Required flag (since 1.5): the header and footer JSON are stored as zstd frames made with the
#: format's raw-content dictionary (``json_dictionary_v1.txt``, §4.3 of the spec).
FLAG_JSON_ZSTD = 0x0001
#: Lowest minor version that may set ``FLAG_JSON_ZSTD``.
MINOR_JSON_ZSTD = 5
#: Required flags this reader understands.
KNOWN_REQUIRED_FLAGS = FLAG_JSON_ZSTD
#: SHA-256 of the JSON dictionary (its bytes are part of the format: they never change).
JSON_DICTIONARY_SHA256 = "34197c915d0732124aca9a1cb8325d11df9968886298fffcc2e348bb1c88a654"
#: zstd level of compressed JSON (a few hundred bytes: the slowest level costs nothing).
JSON_ZSTD_LEVEL = 19

#: Key reserved for the container's own fields in the header and footer JSON.
CONTAINER_KEY = "container"

KIND_MODEL = 1
KIND_BACKGROUND = 2
KIND_IMAGE = 3
KIND_NAMES = {KIND_MODEL: "model", KIND_BACKGROUND: "background", KIND_IMAGE: "image"}

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Largest header or footer JSON.
MAX_JSON_BYTES = 16 * MiB
#: Deepest nesting of JSON arrays/objects accepted in the header, footer and tensor metadata.
MAX_JSON_DEPTH = 64
#: Most blocks in one file (the index is then at most 96 MiB).
MAX_BLOCKS = 1 << 22
#: Hard cap on a block's decompressed size, whatever the header says.
HARD_MAX_BLOCK_BYTES = 1 * GiB
#: Default header-level cap (``container.max_block_bytes``) used by the writer.
DEFAULT_MAX_BLOCK_BYTES = 256 * MiB
#: Largest associated image, and most associated images.
MAX_IMAGE_BYTES = 256 * MiB
MAX_IMAGES = 64
MAX_IMAGE_NAME = 64
#: Largest pixel count of an associated image a decoder accepts (§5.3, §12): checked from the
#: image's own header before decoding (8192 x 4096; a slide's label, macro or thumbnail is far smaller).
MAX_ASSOCIATED_PIXELS = 1 << 25

IMAGE_SIGNATURES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}
#: An AVIF file (ISO/IEC 23000-22) starts with an ISO BMFF ``ftyp`` box of major brand ``avif``:
#: these bytes at offset 4 (after the box's 32-bit size).
AVIF_BRAND = b"ftypavif"
#: First 4 bytes of a short AVIF image block (format 1.11, ``short_avif``): "cAV1", not a PNG or
#: JPEG signature; its byte 8, the ``av1C`` marker 0x81, can never make bytes 4-11 "ftypavif".
SHORT_AVIF_MAGIC = b"cAV1"


#: The media type ``image_media_type`` gives a short AVIF image block (format 1.11).
SHORT_AVIF_MEDIA = "image/x-cinr-short-avif"


def image_media_type(data: bytes, avif: bool = False, short: bool = False) -> str | None:
    """``image/png``, ``image/jpeg`` (or, when ``avif``, ``image/avif``; when ``short``,
    ``SHORT_AVIF_MEDIA``) from the leading bytes, else None."""
    for media, sig in IMAGE_SIGNATURES.items():
        if data.startswith(sig):
            return media
    if avif and data[4:12] == AVIF_BRAND:
        return "image/avif"
    if short and data[:4] == SHORT_AVIF_MAGIC:
        return SHORT_AVIF_MEDIA
    return None


assert PREAMBLE_SIZE == 32 and TRAILER_SIZE == 64 and RECORD_SIZE == 24


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32 (zlib) of ``data``."""
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Preamble:
    """The fixed 32-byte start of a file."""

    major: int
    minor: int
    flags: int
    header_length: int
    header_crc32: int
    reserved: int = 0


def pack_preamble(p: Preamble) -> bytes:
    """32 bytes: the fields followed by the CRC-32 of the first 28 bytes."""
    body = PREAMBLE.pack(MAGIC, p.major, p.minor, p.flags, p.header_length, p.header_crc32, p.reserved)
    return body + struct.pack("<I", crc32(body))


def unpack_preamble(data: bytes) -> tuple[Preamble, int, int]:
    """(preamble, stored preamble CRC, computed CRC) of 32 bytes (magic not checked here)."""
    _, major, minor, flags, hlen, hcrc, reserved = PREAMBLE.unpack_from(data, 0)
    (stored,) = struct.unpack_from("<I", data, PREAMBLE.size)
    return Preamble(major, minor, flags, hlen, hcrc, reserved), stored, crc32(data[: PREAMBLE.size])


@dataclass(frozen=True)
class Trailer:
    """The fixed 64-byte end of a file."""

    index_offset: int
    index_length: int
    footer_offset: int
    footer_length: int
    file_length: int
    index_crc32: int
    footer_crc32: int
    record_size: int = RECORD_SIZE
    reserved: int = 0


def pack_trailer(t: Trailer) -> bytes:
    """64 bytes: the fields, the CRC-32 of the first 52 bytes, then ``CINR-END``."""
    body = TRAILER.pack(
        t.index_offset,
        t.index_length,
        t.footer_offset,
        t.footer_length,
        t.file_length,
        t.index_crc32,
        t.footer_crc32,
        t.record_size,
        t.reserved,
    )
    return body + struct.pack("<I", crc32(body)) + TRAILER_MAGIC


def unpack_trailer(data: bytes) -> tuple[Trailer, int, int]:
    """(trailer, stored trailer CRC, computed CRC) of 64 bytes (magic not checked here)."""
    fields = TRAILER.unpack_from(data, 0)
    (stored,) = struct.unpack_from("<I", data, TRAILER.size)
    return Trailer(*fields), stored, crc32(data[: TRAILER.size])


def pack_record(offset: int, stored_length: int, raw_length: int, crc: int, kind: int, rgb: bytes) -> bytes:
    """One 24-byte block index record."""
    return RECORD.pack(offset, stored_length, raw_length, crc, kind, rgb)


# --- strict JSON -----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def check_json_value(value: Any, what: str) -> None:
    """Raise ValueError unless ``value`` is plain, finite JSON of bounded depth with UTF-8-encodable strings."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
            for k, item in v.items():
                if not isinstance(k, str):
                    raise ValueError(f"{what} has a non-string key {k!r}")
                k.encode("utf-8")
                stack.append((item, depth + 1))
        elif isinstance(v, (list, tuple)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((item, depth + 1) for item in v)
        elif isinstance(v, str):
            v.encode("utf-8")  # lone surrogates raise UnicodeEncodeError (a ValueError)
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"{what} holds a non-finite number")
        elif v is None or isinstance(v, (bool, int)):
            pass
        else:
            raise ValueError(f"{what} holds a {type(v).__name__}, which is not JSON")


def dumps_json(value: Any, what: str) -> bytes:
    """Canonical UTF-8 JSON (sorted keys, no spaces) of a checked value; ValueError if it is not JSON."""
    try:
        check_json_value(value, what)
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None
    return text.encode("utf-8")


def loads_json(raw: bytes, what: str) -> Any:
    """Parse strict JSON (UTF-8, no NaN/Infinity, no duplicate keys, bounded depth).

    Raises ``CinrFormatError`` with ``what`` (which should name the file and offset).
    """
    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
        check_json_value(value, what)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeError are ValueErrors
        raise CinrFormatError(f"{what}: invalid JSON ({exc.__class__.__name__}: {one_line(exc)})") from None
    return value


@functools.cache
def _json_dictionary() -> zstandard.ZstdCompressionDict:
    """The format's raw-content JSON dictionary, checked against its pinned SHA-256."""
    data = resources.files(__package__).joinpath("json_dictionary_v1.txt").read_bytes()
    if hashlib.sha256(data).hexdigest() != JSON_DICTIONARY_SHA256:
        raise RuntimeError(
            "cinr_codec's JSON dictionary is damaged (SHA-256 mismatch); reinstall the package"
        )
    return zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def compress_json(raw: bytes) -> bytes:
    """``raw`` JSON as one zstd frame made with the built-in dictionary: content size declared, no
    dictionary id, no checksum (the container's CRC covers the stored bytes)."""
    cctx = zstandard.ZstdCompressor(
        level=JSON_ZSTD_LEVEL,
        dict_data=_json_dictionary(),
        write_checksum=False,
        write_content_size=True,
        write_dict_id=False,
    )
    return cctx.compress(raw)


def decompress_json(stored: bytes, what: str) -> bytes:
    """The JSON bytes of a stored zstd frame (``FLAG_JSON_ZSTD``): exactly one frame that declares
    its content size, at most ``MAX_JSON_BYTES``; ``CinrFormatError`` naming ``what`` otherwise."""
    try:
        params = zstandard.get_frame_parameters(stored)
    except zstandard.ZstdError as exc:
        raise CinrFormatError(f"{what}: not a zstd frame ({one_line(exc)})") from None
    size = params.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN or not 2 <= size <= MAX_JSON_BYTES:
        declared = "no" if size == zstandard.CONTENTSIZE_UNKNOWN else str(size)
        raise CinrFormatError(
            f"{what}: zstd frame declares {declared} decompressed bytes, not 2 to {MAX_JSON_BYTES}"
        )
    if params.dict_id:
        raise CinrFormatError(f"{what}: zstd frame names dictionary {params.dict_id}; the format's has no id")
    try:
        raw = zstandard.ZstdDecompressor(dict_data=_json_dictionary()).decompress(
            stored, max_output_size=size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise CinrFormatError(f"{what}: zstd decompression failed ({one_line(exc)})") from None
    if len(raw) != size:
        raise CinrFormatError(f"{what}: decompressed to {len(raw)} bytes, the frame declares {size}")
    return raw


def one_line(exc: BaseException, limit: int = 160) -> str:
    """A foreign exception's message on one line, at most ``limit`` characters."""
    s = " ".join(str(exc).split())
    return s if len(s) <= limit else s[:limit] + "..."


def is_uint(v: Any, limit: int) -> TypeGuard[int]:
    """True for a non-bool int in [0, limit]."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit
