"""Streaming, atomic ``.cinr`` writer.

The preamble and header are written when the writer opens; each block (and associated
image) is compressed and appended as soon as it is added, in any order; ``commit()``
writes the footer JSON, the block index and the trailer, fsyncs, and renames the
temporary file onto the destination. Memory holds only the index (24 bytes per block).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import zstandard

from ...errors import CinrError, CinrIOError
from . import short_avif
from .binary import (
    CONTAINER_KEY,
    DEFAULT_MAX_BLOCK_BYTES,
    FLAG_JSON_ZSTD,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    HARD_MAX_BLOCK_BYTES,
    IMAGE_SIGNATURES,
    KIND_BACKGROUND,
    KIND_IMAGE,
    KIND_MODEL,
    MAX_BLOCKS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_NAME,
    MAX_IMAGES,
    MAX_JSON_BYTES,
    MINOR_AVIF,
    MINOR_IMAGE_BLOCKS,
    MINOR_JSON_ZSTD,
    MINOR_SHORT_AVIF,
    PREAMBLE_SIZE,
    RECORD_SIZE,
    TRAILER_SIZE,
    Preamble,
    Trailer,
    crc32,
    dumps_json,
    image_media_type,
    one_line,
    pack_preamble,
    pack_record,
    pack_trailer,
)
from .binary import (
    compress_json as compress_json_bytes,
)

if TYPE_CHECKING:
    from ...coding.quant import TensorLike

log = logging.getLogger(__name__)

#: zstd level: measured on a fitted NGP (float32, float16, int8), levels 3-19 differ by < 1% in size.
DEFAULT_ZSTD_LEVEL = 9


def _umask() -> int:
    """The process umask, read without changing it where possible (Linux), else 0o022."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _cleanup(fh: IO[bytes] | None, tmp: str | None) -> None:
    """Finalizer: close and delete an uncommitted temporary file."""
    if fh is not None:
        with contextlib.suppress(OSError):
            fh.close()
    if tmp is not None:
        with contextlib.suppress(OSError):
            _remove_quietly(tmp)


def sniff_media_type(data: bytes) -> str | None:
    """``image/png`` or ``image/jpeg`` from the leading bytes, else None."""
    return image_media_type(data)


class CinrWriter:
    """Write a ``.cinr`` file block by block.

    ``dest`` is a path (written atomically through ``.{name}.{random}.part`` in the same
    folder) or a writable binary file object positioned at 0 (written in place, not atomic,
    not closed). ``header`` is the caller's JSON object (slide metadata, block grid, model
    configuration, quantization...); the key ``container`` is reserved. ``n_blocks`` fixes
    the block ids ``0 .. n_blocks - 1``, each of which must be added exactly once.
    ``compress_json`` (format 1.5, ``minor_version`` >= 5) stores the header and footer JSON as
    zstd frames made with the format's built-in dictionary (spec §4.3).

    Use as a context manager and call ``commit()`` inside it; leaving the block without
    ``commit()`` (or with an exception) removes the temporary file and leaves the
    destination untouched. Methods may be called from several threads.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str] | IO[bytes],
        header: Mapping[str, Any],
        n_blocks: int,
        *,
        max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
        overwrite: bool = True,
        minor_version: int = 0,
        compress_json: bool = False,
    ) -> None:
        if minor_version not in range(FORMAT_MINOR + 1):
            raise ValueError(f"minor_version must be in [0, {FORMAT_MINOR}]")
        if compress_json and minor_version < MINOR_JSON_ZSTD:
            raise ValueError(
                f"compressed JSON needs format 1.{MINOR_JSON_ZSTD} (minor_version={MINOR_JSON_ZSTD})"
            )
        self.minor_version = minor_version
        self.compress_json = compress_json
        if not isinstance(n_blocks, int) or not 0 <= n_blocks <= MAX_BLOCKS:
            raise ValueError(f"n_blocks must be an int in [0, {MAX_BLOCKS}]")
        if not isinstance(max_block_bytes, int) or not 8 <= max_block_bytes <= HARD_MAX_BLOCK_BYTES:
            raise ValueError(f"max_block_bytes must be in [8, {HARD_MAX_BLOCK_BYTES}]")
        if not isinstance(header, Mapping) or CONTAINER_KEY in header:
            raise ValueError(f"header must be a mapping without the reserved key {CONTAINER_KEY!r}")
        full = {**header, CONTAINER_KEY: {"n_blocks": n_blocks, "max_block_bytes": max_block_bytes}}
        header_bytes = dumps_json(full, "header")
        if len(header_bytes) > MAX_JSON_BYTES:
            raise ValueError(
                f"header JSON is {len(header_bytes)} bytes, over the {MAX_JSON_BYTES}-byte limit"
            )
        if compress_json:
            header_bytes = compress_json_bytes(header_bytes)
        self._header_keys = set(full)
        self.n_blocks = n_blocks
        self.max_block_bytes = max_block_bytes
        self.zstd_level = zstd_level
        self.overwrite = overwrite
        self._lock = threading.Lock()
        self._index = bytearray(n_blocks * RECORD_SIZE)
        self._written = bytearray(n_blocks)
        self._n_written = 0
        self._images: list[dict[str, Any]] = []
        self._state = "open"
        self._tmp: str | None = None
        self._fh: IO[bytes]
        self.path: Path | None = None
        if isinstance(dest, (str, os.PathLike)):
            self.path = Path(dest)
            if self.path.is_dir():
                raise CinrIOError(f"{self.path}: is a directory")
            if not overwrite and self.path.exists():
                raise CinrIOError(f"{self.path}: already exists (overwrite=False)")
            folder = self.path.parent
            self._tmp = str(folder / f".{self.path.name}.{secrets.token_hex(6)}.part")
            try:
                fd = os.open(
                    self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
                )
            except OSError as exc:
                raise CinrIOError(
                    f"{self.path}: cannot create a temporary file in {folder}: {exc.strerror}"
                ) from None
            self._fh = os.fdopen(fd, "wb")
            self.name = str(self.path)
        else:
            self._fh = dest
            self.name = str(getattr(dest, "name", "<stream>"))
            if dest.tell() != 0:
                raise ValueError("a file object destination must be positioned at offset 0")
        self._finalizer = weakref.finalize(self, _cleanup, self._fh if self._tmp else None, self._tmp)
        self._pos = 0
        try:
            flags = FLAG_JSON_ZSTD if compress_json else 0
            pre = Preamble(FORMAT_MAJOR, minor_version, flags, len(header_bytes), crc32(header_bytes))
            self._write(pack_preamble(pre))
            self._write(header_bytes)
        except BaseException:
            self.abort()
            raise
        self.data_start = PREAMBLE_SIZE + len(header_bytes)
        log.debug("%s: writing %d blocks, header %d bytes", self.name, n_blocks, len(header_bytes))

    # -- low level -------------------------------------------------------------------------

    def _write(self, data: bytes) -> int:
        """Append ``data`` (caller holds the lock or is single-threaded); return its offset."""
        offset = self._pos
        try:
            self._fh.write(data)
        except OSError as exc:
            self._state = "failed"  # the file's layout is unknown now; only abort() remains
            raise CinrIOError(f"{self.name}: write failed at offset {offset}: {one_line(exc)}") from None
        self._pos += len(data)
        return offset

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"{self.name}: writer is {self._state}")

    def _check_id(self, block_id: int) -> None:
        if not isinstance(block_id, int) or isinstance(block_id, bool) or not 0 <= block_id < self.n_blocks:
            raise ValueError(f"block id {block_id!r} is not in [0, {self.n_blocks})")

    def _record(self, block_id: int, record: bytes) -> None:
        if self._written[block_id]:
            raise ValueError(f"block {block_id} was already added")
        self._index[block_id * RECORD_SIZE : (block_id + 1) * RECORD_SIZE] = record
        self._written[block_id] = 1
        self._n_written += 1

    # -- blocks ------------------------------------------------------------------------------

    def add_model_block(
        self, block_id: int, payload: bytes, *, check: Callable[[bytes, str], None] | None = None
    ) -> int:
        """Append model block ``block_id``, stored zstd-compressed; returns the stored (compressed) length.

        ``check(payload, where)`` raises ``CinrError`` for a payload a reader would refuse (the block
        representation's ``BlockCodec.check_payload``); without it the payload must be format v1's
        quantized tensors (``coding.quant.quantize_tensors`` output). Either way a block a reader
        would refuse is never written (ValueError).
        """
        self._check_open()
        self._check_id(block_id)
        payload = bytes(payload)
        if not 8 <= len(payload) <= self.max_block_bytes:
            raise ValueError(
                f"block {block_id}: payload of {len(payload)} bytes is not in [8, {self.max_block_bytes}]"
            )
        if check is None:
            from ...coding.quant import check_tensors

            check, what = check_tensors, "quantize_tensors() output"
        else:
            what = "a valid payload"
        try:  # never write a block that a reader would refuse
            check(payload, f"block {block_id} payload")
        except CinrError as exc:
            raise ValueError(f"block {block_id}: payload is not {what}: {one_line(exc)}") from None
        cctx = zstandard.ZstdCompressor(level=self.zstd_level, write_content_size=True, write_checksum=False)
        stored = cctx.compress(payload)
        crc = crc32(stored)
        with self._lock:
            self._check_open()
            if self._written[block_id]:
                raise ValueError(f"block {block_id} was already added")
            offset = self._write(stored)
            self._record(block_id, pack_record(offset, len(stored), len(payload), crc, KIND_MODEL, b"\0\0\0"))
        return len(stored)

    def add_tensors(
        self,
        block_id: int,
        tensors: Mapping[str, TensorLike],
        dtype: str = "float32",
        *,
        dtypes: Mapping[str, str] | None = None,
        groups: Mapping[str, Sequence[int]] | None = None,
    ) -> int:
        """Quantize ``tensors`` (see ``coding.quant.quantize_tensors``) and append them as block
        ``block_id``; returns the stored (compressed) length."""
        from ...coding.quant import quantize_tensors

        return self.add_model_block(block_id, quantize_tensors(tensors, dtype, dtypes=dtypes, groups=groups))

    def add_background_block(self, block_id: int, colour: Sequence[int]) -> None:
        """Record block ``block_id`` as uniform background of RGB ``colour`` (no payload)."""
        self._check_open()
        self._check_id(block_id)
        rgb = tuple(colour)
        if len(rgb) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb):
            raise ValueError(f"colour {colour!r} is not three ints in [0, 255]")
        with self._lock:
            self._check_open()
            self._record(block_id, pack_record(0, 0, 0, 0, KIND_BACKGROUND, bytes(rgb)))

    def add_image_block(self, block_id: int, data: bytes) -> int:
        """Append block ``block_id`` as a complete PNG or JPEG file (kind 3, format 1.1), or AVIF
        (format 1.6; from 1.11 stored short, without its boxes, where ``short_avif.shorten`` can);
        returns the length stored."""
        self._check_open()
        self._check_id(block_id)
        if self.minor_version < MINOR_IMAGE_BLOCKS:
            raise ValueError(f"image blocks need format 1.{MINOR_IMAGE_BLOCKS} (CinrWriter(minor_version=1))")
        data = bytes(data)
        media = image_media_type(data, avif=True)
        if media == "image/avif" and self.minor_version < MINOR_AVIF:
            raise ValueError(f"block {block_id}: AVIF image blocks need format 1.{MINOR_AVIF}")
        if media is None or not 1 <= len(data) <= MAX_IMAGE_BYTES:
            raise ValueError(
                f"block {block_id}: image data is not a PNG, JPEG or AVIF file of at most "
                f"{MAX_IMAGE_BYTES} bytes"
            )
        if self.minor_version >= MINOR_SHORT_AVIF:
            data = short_avif.stored_form(data)
        crc = crc32(data)
        with self._lock:
            self._check_open()
            if self._written[block_id]:
                raise ValueError(f"block {block_id} was already added")
            offset = self._write(data)
            self._record(block_id, pack_record(offset, len(data), len(data), crc, KIND_IMAGE, b"\0\0\0"))
        return len(data)

    def add_associated_image(self, name: str, data: bytes, media_type: str | None = None) -> None:
        """Append an associated image (``label``, ``macro``, ``thumbnail``...) as PNG or JPEG bytes."""
        self._check_open()
        data = bytes(data)
        sniffed = sniff_media_type(data)
        media_type = media_type or sniffed
        if media_type not in IMAGE_SIGNATURES or sniffed != media_type:
            raise ValueError(f"associated image {name!r} is not PNG or JPEG data (or not {media_type})")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_IMAGE_NAME or not name.isprintable():
            raise ValueError(
                f"associated image name {name!r} must be 1-{MAX_IMAGE_NAME} printable characters"
            )
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"associated image {name!r} is over {MAX_IMAGE_BYTES} bytes")
        crc = crc32(data)
        with self._lock:
            self._check_open()
            if any(im["name"] == name for im in self._images):
                raise ValueError(f"associated image {name!r} was already added")
            if len(self._images) >= MAX_IMAGES:
                raise ValueError(f"at most {MAX_IMAGES} associated images")
            offset = self._write(data)
            self._images.append(
                {"name": name, "media_type": media_type, "offset": offset, "length": len(data), "crc32": crc}
            )

    def commit(self, footer: Mapping[str, Any] | None = None) -> Path | None:
        """Finish the file: footer JSON (``footer``: values known only at the end, e.g. quality
        figures; keys must not repeat header keys), index, trailer; fsync and rename.

        Returns the destination path (None for a file object). On failure the temporary file
        is removed and the destination is untouched.
        """
        footer = dict(footer or {})
        clash = (set(footer) & self._header_keys) | ({CONTAINER_KEY} & set(footer))
        if clash:
            raise ValueError(
                f"footer keys {sorted(clash)} repeat header keys or the reserved {CONTAINER_KEY!r}"
            )
        with self._lock:
            self._check_open()
            if self._n_written != self.n_blocks:
                missing = [i for i in range(self.n_blocks) if not self._written[i]][:10]
                raise ValueError(f"{self.n_blocks - self._n_written} blocks were never added, e.g. {missing}")
            footer[CONTAINER_KEY] = {"associated_images": list(self._images)}
            footer_bytes = dumps_json(footer, "footer")
            if len(footer_bytes) > MAX_JSON_BYTES:
                raise ValueError(f"footer JSON is {len(footer_bytes)} bytes, over {MAX_JSON_BYTES}")
            if self.compress_json:
                footer_bytes = compress_json_bytes(footer_bytes)
            self._state = "committing"
        try:
            footer_offset = self._write(footer_bytes)
            index = bytes(self._index)
            index_offset = self._write(index)
            trailer = Trailer(
                index_offset=index_offset,
                index_length=len(index),
                footer_offset=footer_offset,
                footer_length=len(footer_bytes),
                file_length=self._pos + TRAILER_SIZE,
                index_crc32=crc32(index),
                footer_crc32=crc32(footer_bytes),
            )
            self._write(pack_trailer(trailer))
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        log.debug("%s: committed %d bytes", self.name, self._pos)
        return self.path

    def _finish(self) -> None:
        try:
            self._fh.flush()
            if self._tmp is None:
                return
            os.fsync(self._fh.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(self._fh.fileno(), 0o666 & ~_umask())
            self._fh.close()
            assert self.path is not None
            if self.overwrite:
                os.replace(self._tmp, self.path)
            else:
                os.link(self._tmp, self.path)  # fails if the destination appeared meanwhile
                _remove_quietly(self._tmp)
            self._tmp = None
            self._finalizer.detach()
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise CinrIOError(f"{self.name}: cannot finish writing: {one_line(exc)}") from None

    def abort(self) -> None:
        """Discard the file: close and delete the temporary file (idempotent)."""
        if self._state == "committed":
            return
        self._state = "aborted"
        if self._tmp is not None:
            self._finalizer()
            self._tmp = None

    def close(self) -> None:
        """Abort unless committed."""
        if self._state not in ("committed", "aborted"):
            log.warning("%s: closed without commit(); the partial file was discarded", self.name)
        self.abort()

    def __enter__(self) -> CinrWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
