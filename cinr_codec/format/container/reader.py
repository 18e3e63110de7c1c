"""Lazy, random-access, thread-safe ``.cinr`` reader.

Opening reads the preamble, header, trailer, footer and block index (and checks all of
them); blocks and associated images are read on demand by offset. Every length and
offset is checked against the file size before anything is allocated or read, every
section against its CRC-32, and block decompression is capped at the size the index
records (itself capped by the header and by ``HARD_MAX_BLOCK_BYTES``).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np
import zstandard

from ...errors import (
    CinrChecksumError,
    CinrError,
    CinrFormatError,
    CinrIOError,
    CinrTruncatedError,
    CinrVersionError,
)
from ..remote import RemoteFile, is_url
from . import short_avif
from .binary import (
    CONTAINER_KEY,
    FLAG_JSON_ZSTD,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    HARD_MAX_BLOCK_BYTES,
    IMAGE_SIGNATURES,
    KIND_BACKGROUND,
    KIND_IMAGE,
    KIND_MODEL,
    KIND_NAMES,
    KNOWN_REQUIRED_FLAGS,
    MAGIC,
    MAX_BLOCKS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_NAME,
    MAX_IMAGES,
    MAX_JSON_BYTES,
    MAX_RECORD_SIZE,
    MINOR_AVIF,
    MINOR_IMAGE_BLOCKS,
    MINOR_SHORT_AVIF,
    PREAMBLE_SIZE,
    RECORD_SIZE,
    REQUIRED_FLAGS_MASK,
    SHORT_AVIF_MEDIA,
    TRAILER_MAGIC,
    TRAILER_SIZE,
    crc32,
    decompress_json,
    image_media_type,
    is_uint,
    loads_json,
    one_line,
    unpack_preamble,
    unpack_trailer,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Most bytes of fetched-ahead blocks a reader of a URL holds (``CinrReader.prefetch``).
PREFETCH_BYTES = 64 << 20

_INDEX_FIELDS = ("offset", "stored_length", "raw_length", "crc32", "kind", "r", "g", "b")


def _index_dtype(record_size: int) -> np.dtype[Any]:
    return np.dtype(
        {
            "names": list(_INDEX_FIELDS),
            "formats": ["<u8", "<u4", "<u4", "<u4", "u1", "u1", "u1", "u1"],
            "offsets": [0, 8, 12, 16, 20, 21, 22, 23],
            "itemsize": record_size,
        }
    )


@dataclass(frozen=True)
class BlockInfo:
    """One block's index record."""

    block_id: int
    kind: str  # "model", "background", "image" (or "unknown:N" for a kind from a newer minor version)
    offset: int
    stored_length: int
    raw_length: int
    crc32: int
    colour: tuple[int, int, int] | None  # background blocks only


@dataclass(frozen=True)
class AssociatedImage:
    """An associated image's entry in the footer."""

    name: str
    media_type: str
    offset: int
    length: int
    crc32: int


class CinrReader:
    """Read a ``.cinr`` file lazily.

    ``source`` is a path, an fsspec URL (``https://``, ``s3://``, ``file://``...: read by ranged
    requests of what is needed, ``format.remote.RemoteFile``, configured by ``remote``: its
    ``timeout``, ``retries`` and ``storage_options``) or a seekable binary file object (not closed
    by ``close()``; reads use ``os.pread`` when it has a real file descriptor, otherwise seek+read
    under a lock).
    ``max_block_bytes`` lowers the decompressed size a block may have (the file's own
    ``container.max_block_bytes`` and ``HARD_MAX_BLOCK_BYTES`` always apply): a server can
    refuse files whose blocks would need more memory than it grants.
    All methods are safe to call from several threads. Any problem with the file raises a
    ``CinrError`` subclass whose message names the file, what is wrong and the offset.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        name: str | None = None,
        max_block_bytes: int | None = None,
        remote: Mapping[str, Any] | None = None,
    ) -> None:
        if max_block_bytes is not None and not is_uint(max_block_bytes, HARD_MAX_BLOCK_BYTES):
            raise ValueError(f"max_block_bytes must be an int in [0, {HARD_MAX_BLOCK_BYTES}]")
        self._limit = HARD_MAX_BLOCK_BYTES if max_block_bytes is None else max_block_bytes
        self._lock = threading.Lock()
        self._owned: IO[bytes] | None = None
        self._fd: int | None = None
        self._closed = False
        self._fh: IO[bytes]
        self._remote: RemoteFile | None = None
        # Blocks fetched ahead of their read (URLs only), by (offset, length); each read once.
        self._ahead: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._ahead_bytes = 0
        if is_url(source):
            self.name = name or str(source)
            try:
                remote_file = RemoteFile(str(source), **dict(remote or {}))
            except OSError as exc:
                raise CinrIOError(f"{self.name}: cannot open: {exc}") from None
            self._remote = remote_file
            self._owned = cast("IO[bytes]", remote_file)
            self._fh = self._owned
        elif isinstance(source, (str, os.PathLike)):
            self.name = name or str(source)
            try:
                fh = open(source, "rb", buffering=0)  # closed by close()
            except OSError as exc:
                raise CinrIOError(f"{self.name}: cannot open: {exc.strerror or exc}") from None
            self._owned = fh
            self._fh = fh
        else:
            self.name = name or str(getattr(source, "name", "<stream>"))
            self._fh = source
        try:
            self._init_io()
            self._open()
        except BaseException:
            self.close()
            raise

    # -- I/O ---------------------------------------------------------------------------------

    def _init_io(self) -> None:
        try:
            fd = self._fh.fileno()
            st = os.fstat(fd)
            if hasattr(os, "pread") and stat.S_ISREG(st.st_mode):
                self._fd = fd
                self.file_size = st.st_size
                return
        except (OSError, AttributeError, io.UnsupportedOperation, ValueError):
            pass
        try:
            seekable = self._fh.seekable()
            size = self._fh.seek(0, os.SEEK_END) if seekable else -1
        except (OSError, ValueError) as exc:
            raise CinrIOError(f"{self.name}: cannot seek: {one_line(exc)}") from None
        if not seekable:
            raise CinrIOError(f"{self.name}: the file object is not seekable")
        self.file_size = size

    def _read_verified(self, offset: int, length: int, crc: int, what: str) -> bytes:
        """Read a range and check its CRC-32 (CinrChecksumError naming ``what`` on mismatch)."""
        data = self._read(offset, length, what)
        computed = crc32(data)
        if computed != crc:
            raise self._err(
                f"{what} checksum mismatch (stored {crc:#010x}, computed {computed:#010x})",
                offset,
                CinrChecksumError,
            )
        return data

    def _read(self, offset: int, length: int, what: str) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (already checked against the file size)."""
        if offset < 0 or length < 0 or offset + length > self.file_size:
            raise CinrTruncatedError(
                f"{self.name}: {what} at offset {offset} ({length} bytes) lies past the end of the "
                f"{self.file_size}-byte file"
            )
        if self._closed:
            raise ValueError(f"{self.name}: reader is closed")
        if length == 0:
            return b""
        if self._ahead:
            with self._lock:
                ahead = self._ahead.pop((offset, length), None)
                if ahead is not None:
                    self._ahead_bytes -= length
            if ahead is not None:
                return ahead
        chunks = []
        got = 0
        try:
            if self._fd is not None:
                while got < length:
                    chunk = os.pread(self._fd, length - got, offset + got)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    got += len(chunk)
            else:
                with self._lock:
                    self._fh.seek(offset)
                    while got < length:
                        chunk = self._fh.read(length - got)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        got += len(chunk)
        except (OSError, ValueError) as exc:
            raise CinrIOError(
                f"{self.name}: read error for {what} at offset {offset}: {one_line(exc)}"
            ) from None
        if got != length:
            raise CinrTruncatedError(
                f"{self.name}: {what} at offset {offset}: only {got} of {length} bytes could be read "
                "(file shrank?)"
            )
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- opening -----------------------------------------------------------------------------

    def _err(self, msg: str, offset: int, cls: type[CinrError] = CinrFormatError) -> CinrError:
        return cls(f"{self.name}: {msg} (at offset {offset})")

    def _open(self) -> None:
        size = self.file_size
        if size == 0:
            raise CinrTruncatedError(f"{self.name}: empty file (0 bytes), not a .cinr file")
        head = self._read(0, min(size, PREAMBLE_SIZE), "preamble")
        if head[:8] != MAGIC[: len(head[:8])]:
            raise self._err(f"not a .cinr file: bad magic {head[:8]!r}, expected {MAGIC!r}", 0)
        if size < PREAMBLE_SIZE + TRAILER_SIZE:
            raise CinrTruncatedError(
                f"{self.name}: truncated: {size} bytes, shorter than a preamble and trailer "
                f"({PREAMBLE_SIZE + TRAILER_SIZE} bytes)"
            )
        pre, stored_crc, computed_crc = unpack_preamble(head)
        if pre.major != FORMAT_MAJOR:
            cls = CinrVersionError if pre.major > FORMAT_MAJOR else CinrFormatError
            raise self._err(
                f"format version {pre.major}.{pre.minor} is not supported (this reader reads "
                f"{FORMAT_MAJOR}.x{'; the file may also be corrupt' if stored_crc != computed_crc else ''})",
                8,
                cls,
            )
        if stored_crc != computed_crc:
            raise self._err(
                f"preamble checksum mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})",
                28,
                CinrChecksumError,
            )
        self.version = (pre.major, pre.minor)
        unknown = pre.flags & REQUIRED_FLAGS_MASK & ~KNOWN_REQUIRED_FLAGS
        if unknown:
            raise self._err(
                f"requires unknown features (flags {unknown:#06x}); a newer reader is needed",
                12,
                CinrVersionError,
            )
        if not 2 <= pre.header_length <= MAX_JSON_BYTES:
            raise self._err(f"header length {pre.header_length} is out of range [2, {MAX_JSON_BYTES}]", 16)
        self.data_start = PREAMBLE_SIZE + pre.header_length
        if self.data_start + TRAILER_SIZE > size:
            raise CinrTruncatedError(
                f"{self.name}: truncated: the header ends at offset {self.data_start} but the file has {size} bytes "
                "(no room for the trailer)"
            )

        # The trailer (truncation and the index are detected here, before reading the header).
        t_off = size - TRAILER_SIZE
        tail = self._read(t_off, TRAILER_SIZE, "trailer")
        if tail[-8:] != TRAILER_MAGIC:
            raise CinrTruncatedError(
                f"{self.name}: no trailer: the last 8 bytes are {tail[-8:]!r}, not {TRAILER_MAGIC!r} "
                f"(file truncated or has trailing data) (at offset {size - 8})"
            )
        tr, stored_crc, computed_crc = unpack_trailer(tail)
        if stored_crc != computed_crc:
            raise self._err(
                f"trailer checksum mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})",
                t_off + 52,
                CinrChecksumError,
            )
        if tr.file_length != size:
            raise self._err(
                f"the trailer records a file length of {tr.file_length} bytes but the file has {size} "
                "(truncated or extended)",
                t_off + 32,
                CinrTruncatedError,
            )
        if not RECORD_SIZE <= tr.record_size <= MAX_RECORD_SIZE:
            raise self._err(
                f"index record size {tr.record_size} is out of range [{RECORD_SIZE}, {MAX_RECORD_SIZE}]",
                t_off + 48,
            )
        if tr.index_offset + tr.index_length != t_off:
            raise self._err(
                f"block index [{tr.index_offset}, +{tr.index_length}) does not end where the trailer starts ({t_off})",
                t_off,
            )
        if tr.footer_offset + tr.footer_length != tr.index_offset:
            raise self._err(
                f"footer [{tr.footer_offset}, +{tr.footer_length}) does not end where the index starts "
                f"({tr.index_offset})",
                t_off + 16,
            )
        if tr.footer_offset < self.data_start:
            raise self._err(
                f"footer offset {tr.footer_offset} lies inside the header (data start {self.data_start})",
                t_off + 16,
            )
        if not 2 <= tr.footer_length <= MAX_JSON_BYTES:
            raise self._err(
                f"footer length {tr.footer_length} is out of range [2, {MAX_JSON_BYTES}]", t_off + 24
            )
        if tr.index_length % tr.record_size or tr.index_length // tr.record_size > MAX_BLOCKS:
            raise self._err(
                f"index length {tr.index_length} is not a multiple of the record size {tr.record_size} "
                f"or holds more than {MAX_BLOCKS} records",
                t_off + 8,
            )
        self.footer_offset = tr.footer_offset

        # Header.
        header_bytes = self._read(PREAMBLE_SIZE, pre.header_length, "header")
        if crc32(header_bytes) != pre.header_crc32:
            raise self._err(
                f"header checksum mismatch (stored {pre.header_crc32:#010x}, computed {crc32(header_bytes):#010x})",
                PREAMBLE_SIZE,
                CinrChecksumError,
            )
        self.json_compressed = bool(pre.flags & FLAG_JSON_ZSTD)
        if self.json_compressed:
            header_bytes = decompress_json(header_bytes, f"{self.name}: header (at offset {PREAMBLE_SIZE})")
        header = loads_json(header_bytes, f"{self.name}: header (at offset {PREAMBLE_SIZE})")
        if not isinstance(header, dict):
            raise self._err("header is not a JSON object", PREAMBLE_SIZE)
        c = header.pop(CONTAINER_KEY, None)
        if not isinstance(c, dict):
            raise self._err(f"header lacks the {CONTAINER_KEY!r} object", PREAMBLE_SIZE)
        n_blocks = c.get("n_blocks")
        max_block = c.get("max_block_bytes")
        if not is_uint(n_blocks, MAX_BLOCKS):
            raise self._err(
                f"header {CONTAINER_KEY}.n_blocks {str(n_blocks)[:30]!r} is not an int in [0, {MAX_BLOCKS}]",
                PREAMBLE_SIZE,
            )
        if not is_uint(max_block, HARD_MAX_BLOCK_BYTES):
            raise self._err(
                f"header {CONTAINER_KEY}.max_block_bytes {str(max_block)[:30]!r} is not an int in [0, {HARD_MAX_BLOCK_BYTES}]",
                PREAMBLE_SIZE,
            )
        if n_blocks * tr.record_size != tr.index_length:
            raise self._err(
                f"the index holds {tr.index_length} bytes but the header declares {n_blocks} blocks of "
                f"{tr.record_size} bytes",
                t_off + 8,
            )
        self.n_blocks: int = n_blocks
        self.max_block_bytes: int = max_block
        self.container_header: dict[str, Any] = c
        self.header: dict[str, Any] = header

        # Footer.
        footer_bytes = self._read(tr.footer_offset, tr.footer_length, "footer")
        if crc32(footer_bytes) != tr.footer_crc32:
            raise self._err(
                f"footer checksum mismatch (stored {tr.footer_crc32:#010x}, computed {crc32(footer_bytes):#010x})",
                tr.footer_offset,
                CinrChecksumError,
            )
        if self.json_compressed:
            footer_bytes = decompress_json(
                footer_bytes, f"{self.name}: footer (at offset {tr.footer_offset})"
            )
        footer = loads_json(footer_bytes, f"{self.name}: footer (at offset {tr.footer_offset})")
        if not isinstance(footer, dict):
            raise self._err("footer is not a JSON object", tr.footer_offset)
        fc = footer.pop(CONTAINER_KEY, None)
        if not isinstance(fc, dict):
            raise self._err(f"footer lacks the {CONTAINER_KEY!r} object", tr.footer_offset)
        clash = set(footer) & (set(header) | {CONTAINER_KEY})
        if clash:
            raise self._err(f"footer keys {sorted(clash)[:5]} repeat header keys", tr.footer_offset)
        self.footer: dict[str, Any] = footer
        self._images = self._parse_images(fc.get("associated_images", []), tr.footer_offset)

        # Index.
        index_bytes = self._read(tr.index_offset, tr.index_length, "block index")
        if crc32(index_bytes) != tr.index_crc32:
            raise self._err(
                f"block index checksum mismatch (stored {tr.index_crc32:#010x}, computed {crc32(index_bytes):#010x})",
                tr.index_offset,
                CinrChecksumError,
            )
        self._index_offset = tr.index_offset
        self._record_size = tr.record_size
        self._index = np.frombuffer(index_bytes, dtype=_index_dtype(tr.record_size), count=n_blocks)
        self._check_index()
        log.debug("%s: opened v%d.%d, %d blocks, %d bytes", self.name, pre.major, pre.minor, n_blocks, size)

    def _parse_images(self, entries: Any, footer_offset: int) -> dict[str, AssociatedImage]:
        if not isinstance(entries, list) or len(entries) > MAX_IMAGES:
            raise self._err(
                f"footer associated_images is not a list of at most {MAX_IMAGES} entries", footer_offset
            )
        images: dict[str, AssociatedImage] = {}
        for i, e in enumerate(entries):
            bad = f"footer associated_images[{i}]"
            if not isinstance(e, dict):
                raise self._err(f"{bad} is not an object", footer_offset)
            name, media = e.get("name"), e.get("media_type")
            off, length, crc = e.get("offset"), e.get("length"), e.get("crc32")
            if not isinstance(name, str) or not 1 <= len(name) <= MAX_IMAGE_NAME or name in images:
                raise self._err(f"{bad} has a missing, over-long or duplicate name", footer_offset)
            if not isinstance(media, str) or media not in IMAGE_SIGNATURES:
                raise self._err(
                    f"{bad} ({name!r}) has unsupported media type {str(media)[:40]!r}", footer_offset
                )
            if not (
                is_uint(off, self.file_size) and is_uint(length, MAX_IMAGE_BYTES) and is_uint(crc, 0xFFFFFFFF)
            ):
                raise self._err(f"{bad} ({name!r}) has an invalid offset, length or crc32", footer_offset)
            if off < self.data_start or off + length > footer_offset:
                raise self._err(
                    f"{bad} ({name!r}) at [{off}, +{length}) lies outside the payload region "
                    f"[{self.data_start}, {footer_offset})",
                    footer_offset,
                )
            images[name] = AssociatedImage(name, media, off, length, crc)
        return images

    def _check_index(self) -> None:
        """Vectorised checks of every record: kinds, zero fields of background blocks, ranges."""
        idx = self._index
        kind = idx["kind"]
        off = idx["offset"].astype(np.uint64)
        stored = idx["stored_length"].astype(np.uint64)
        raw = idx["raw_length"].astype(np.uint64)
        model = kind == KIND_MODEL
        back = kind == KIND_BACKGROUND
        image = (kind == KIND_IMAGE) & (self.version[1] >= MINOR_IMAGE_BLOCKS)
        unknown = ~(model | back | image)
        cap = min(self.max_block_bytes, self._limit)
        start, end = np.uint64(self.data_start), np.uint64(self.footer_offset)
        problems = [
            (unknown & ((kind == 0) | (self.version[1] <= FORMAT_MINOR)), "has an unknown block kind"),
            (
                back & ((off != 0) | (stored != 0) | (raw != 0) | (idx["crc32"] != 0)),
                "is a background block with a non-zero offset, length or crc",
            ),
            (
                model & ((raw < 8) | (raw > np.uint64(cap))),
                f"has a decompressed length outside [8, {cap}] (limits: file {self.max_block_bytes}, reader {self._limit})",
            ),
            (
                model & ((stored < 1) | (stored > np.uint64(HARD_MAX_BLOCK_BYTES))),
                "has an invalid stored length",
            ),
            (
                image & ((stored < 1) | (stored > np.uint64(MAX_IMAGE_BYTES)) | (raw != stored)),
                "is an image block with an invalid length",
            ),
            # off <= end and stored <= end - off avoid any overflow.
            (
                (model | image) & ((off < start) | (off > end) | (stored > end - np.minimum(off, end))),
                "lies outside the payload region",
            ),
        ]
        for mask, what in problems:
            bad = np.flatnonzero(mask)
            if bad.size:
                i = int(bad[0])
                r = self._info(i)
                raise self._err(
                    f"block {i} {what} (kind {int(kind[i])}, offset {r.offset}, stored {r.stored_length}, "
                    f"raw {r.raw_length}; payload region [{self.data_start}, {self.footer_offset}))",
                    self._index_offset + i * self._record_size,
                )

    # -- blocks ------------------------------------------------------------------------------

    def _info(self, block_id: int) -> BlockInfo:
        r = self._index[block_id]
        kind = int(r["kind"])
        colour = (int(r["r"]), int(r["g"]), int(r["b"])) if kind == KIND_BACKGROUND else None
        return BlockInfo(
            block_id=block_id,
            kind=KIND_NAMES.get(kind, f"unknown:{kind}"),
            offset=int(r["offset"]),
            stored_length=int(r["stored_length"]),
            raw_length=int(r["raw_length"]),
            crc32=int(r["crc32"]),
            colour=colour,
        )

    def block_info(self, block_id: int) -> BlockInfo:
        """The index record of block ``block_id`` (IndexError if out of range)."""
        if not isinstance(block_id, (int, np.integer)) or not 0 <= block_id < self.n_blocks:
            raise IndexError(f"{self.name}: block id {block_id!r} is not in [0, {self.n_blocks})")
        return self._info(int(block_id))

    @property
    def is_remote(self) -> bool:
        """Whether the file is read over a URL (each read a network request)."""
        return self._remote is not None

    def prefetch(self, block_ids: Iterator[int] | list[int] | np.ndarray) -> int:
        """Fetch the stored bytes of these blocks together, so that reading them next costs no
        round trip each: for a URL, concurrent ranged requests (neighbouring blocks merged into
        one), held until read once (at most ``PREFETCH_BYTES``; blocks past it are left to be
        read as usual). Local files: nothing. Returns the bytes fetched. Checks stay with the
        reads (a block's CRC is verified when it is read)."""
        if self._remote is None or self._closed:
            return 0
        want: list[tuple[int, int]] = []
        budget = PREFETCH_BYTES - self._ahead_bytes
        for bid in sorted({int(b) for b in block_ids}):
            if not 0 <= bid < self.n_blocks:
                continue
            r = self._index[bid]
            kind, off, length = int(r["kind"]), int(r["offset"]), int(r["stored_length"])
            if kind not in (KIND_MODEL, KIND_IMAGE) or not 0 < length <= min(budget, self._limit):
                continue
            if off + length > self.file_size or (off, length) in self._ahead:
                continue
            want.append((off, length))
            budget -= length
        if not want:
            return 0
        want.sort()
        runs: list[list[tuple[int, int]]] = []  # adjacent blocks, fetched as one range
        for off, length in want:
            if runs and runs[-1][-1][0] + runs[-1][-1][1] == off:
                runs[-1].append((off, length))
            else:
                runs.append([(off, length)])
        try:
            parts = self._remote.read_ranges([(r[0][0], r[-1][0] + r[-1][1]) for r in runs])
        except (OSError, ValueError) as exc:
            raise CinrIOError(
                f"{self.name}: read error while fetching {len(want)} blocks: {one_line(exc)}"
            ) from None
        with self._lock:
            for run, data in zip(runs, parts, strict=True):
                pos = 0
                for off, length in run:
                    if (off, length) not in self._ahead:
                        self._ahead[(off, length)] = data[pos : pos + length]
                        self._ahead_bytes += length
                    pos += length
            while self._ahead_bytes > PREFETCH_BYTES:
                (_, length), _ = self._ahead.popitem(last=False)
                self._ahead_bytes -= length
        return sum(length for _, length in want)

    def blocks(self) -> Iterator[BlockInfo]:
        """Every block's index record, in id order."""
        for i in range(self.n_blocks):
            yield self._info(i)

    def kind_codes(self) -> np.ndarray:
        """Every block's kind as its index byte (1 model, 2 background, 3 image; others unknown),
        a read-only uint8 array of ``n_blocks`` (one copy of the index column: no per-block objects)."""
        codes = np.ascontiguousarray(self._index["kind"], dtype=np.uint8)
        codes.flags.writeable = False
        return codes

    def stored_lengths(self) -> np.ndarray:
        """Every block's stored length in bytes (0 for background blocks), a read-only int64 array."""
        lengths = self._index["stored_length"].astype(np.int64)
        lengths.flags.writeable = False
        return lengths

    def colours(self) -> np.ndarray:
        """Every block's rgb bytes, a read-only uint8 array (n_blocks, 3) (meaningful for background blocks)."""
        rgb = np.stack([self._index[c] for c in ("r", "g", "b")], axis=1).astype(np.uint8)
        rgb.flags.writeable = False
        return rgb

    def background_colours(self) -> dict[int, tuple[int, int, int]]:
        """Block id -> RGB colour of every background block."""
        ids = np.flatnonzero(self._index["kind"] == KIND_BACKGROUND)
        return {int(i): self._info(int(i)).colour for i in ids}  # type: ignore[misc]

    def read_stored(self, block_id: int) -> bytes:
        """The stored (compressed) bytes of model block ``block_id``, checksum verified."""
        info = self._model_info(block_id)
        return self._read_verified(info.offset, info.stored_length, info.crc32, f"block {block_id}")

    def read_image_block(self, block_id: int) -> bytes:
        """The PNG, JPEG or (format 1.6) AVIF file of image block ``block_id``, checksum and
        signature verified (a short AVIF block of format 1.11 comes back as the AVIF file it
        stands for, ``short_avif.expand``)."""
        info = self._model_info(block_id, "image")
        data = self._read_verified(info.offset, info.stored_length, info.crc32, f"block {block_id}")
        avif = self.version[1] >= MINOR_AVIF
        media = image_media_type(data, avif=avif, short=self.version[1] >= MINOR_SHORT_AVIF)
        if media is None:
            kinds = "PNG, JPEG or AVIF" if avif else "PNG or JPEG"
            raise self._err(f"block {block_id} is not {kinds} data", info.offset)
        if media == SHORT_AVIF_MEDIA:
            try:
                return short_avif.expand(data)
            except ValueError as exc:
                raise self._err(f"block {block_id}: {exc}", info.offset) from None
        return data

    def _model_info(self, block_id: int, want: str = "model") -> BlockInfo:
        info = self.block_info(block_id)
        if info.kind != want:
            if info.kind.startswith("unknown"):
                raise self._err(
                    f"block {block_id} has kind {info.kind[8:]}, unknown to this reader (file version "
                    f"{self.version[0]}.{self.version[1]}, reader {FORMAT_MAJOR}.{FORMAT_MINOR})",
                    self._index_offset + block_id * self._record_size,
                    CinrVersionError,
                )
            article = "an" if want[0] in "aeiou" else "a"
            raise self._err(
                f"block {block_id} is a {info.kind} block, not {article} {want} block",
                self._index_offset + block_id * self._record_size,
            )
        return info

    def read_payload(self, block_id: int) -> bytes:
        """The decompressed payload of model block ``block_id`` (what its representation decodes).

        CinrFormatError for a block whose index record says it is not a model block, as for
        anything else wrong in the file.
        """
        info = self._model_info(block_id)
        stored = self.read_stored(block_id)
        where = f"{self.name}: block {block_id} (at offset {info.offset})"
        try:
            params = zstandard.get_frame_parameters(stored)
        except zstandard.ZstdError as exc:
            raise CinrFormatError(f"{where}: not a zstd frame ({one_line(exc)})") from None
        if params.content_size != info.raw_length:
            declared = (
                "unknown" if params.content_size == zstandard.CONTENTSIZE_UNKNOWN else params.content_size
            )
            raise CinrFormatError(
                f"{where}: zstd frame declares {declared} decompressed bytes, the index records {info.raw_length}"
            )
        if params.dict_id:
            raise CinrFormatError(
                f"{where}: zstd frame needs dictionary {params.dict_id}, which v1 does not use"
            )
        try:
            raw = zstandard.ZstdDecompressor().decompress(
                stored, max_output_size=info.raw_length, allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise CinrFormatError(f"{where}: zstd decompression failed ({one_line(exc)})") from None
        if len(raw) != info.raw_length:
            raise CinrFormatError(
                f"{where}: decompressed to {len(raw)} bytes, the index records {info.raw_length}"
            )
        return raw

    def read_tensors(self, block_id: int) -> dict[str, torch.Tensor]:
        """The dequantized tensors of a format-v1 tensor block (see ``coding.quant.dequantize_tensors``)."""
        from ...coding.quant import dequantize_tensors

        info = self._model_info(block_id)
        return dequantize_tensors(
            self.read_payload(block_id), where=f"{self.name}: block {block_id} (at offset {info.offset})"
        )

    # -- associated images ---------------------------------------------------------------------

    @property
    def associated_images(self) -> dict[str, AssociatedImage]:
        """Name -> entry of every associated image."""
        return dict(self._images)

    def read_associated_image(self, name: str) -> bytes:
        """PNG or JPEG bytes of an associated image, checksum and signature verified (KeyError if absent)."""
        e = self._images.get(name)
        if e is None:
            raise KeyError(name)
        data = self._read_verified(e.offset, e.length, e.crc32, f"associated image {name!r}")
        if not data.startswith(IMAGE_SIGNATURES[e.media_type]):
            raise self._err(f"associated image {name!r} is not {e.media_type} data", e.offset)
        return data

    # -- whole file ----------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        """Header and footer fields merged (the footer's keys never repeat the header's)."""
        return {**self.header, **self.footer}

    def verify(self, check: Callable[[bytes, str], None] | None = None) -> None:
        """Read and check every block and associated image (raises the first CinrError).

        Model payloads are checked by ``check(payload, where)``; by default by the block
        representation the header's ``model.kind`` names (``coding.registry``), or as format v1
        tensors when it names none.
        """
        if check is None:
            check = self._default_check()
        for info in self.blocks():
            if info.kind == "image":
                self.read_image_block(info.block_id)
            elif info.kind != "background":
                self._model_info(info.block_id)
                check(
                    self.read_payload(info.block_id),
                    f"{self.name}: block {info.block_id} (at offset {info.offset})",
                )
        for name in self._images:
            self.read_associated_image(name)

    def _default_check(self) -> Callable[[bytes, str], None]:
        from ...coding.registry import CODECS, get_codec

        model = self.header.get("model")
        kind = model.get("kind") if isinstance(model, dict) else None
        if isinstance(kind, str) and kind in CODECS:
            return get_codec(kind).check_payload
        from ...coding.quant import check_tensors

        return check_tensors

    def close(self) -> None:
        """Close the file if this reader opened it."""
        self._closed = True
        with self._lock:
            self._ahead.clear()
            self._ahead_bytes = 0
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> CinrReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CinrReader({self.name!r}, version={self.version}, n_blocks={self.n_blocks})"
