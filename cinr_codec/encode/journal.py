"""The encode journal: finished blocks appended to a file beside the output, so encodes resume.

``cinr encode`` fits blocks one by one and appends each finished block to ``OUT.cinr.journal``
(fsynced) before starting the next. Killing the process (Ctrl-C, kill -9, power loss) loses at
most the block being fitted; ``--resume`` reads the valid records back, skips those blocks and
goes on. The final ``.cinr`` file is assembled from the journal at the end (written atomically),
and the journal is deleted once the file is in place.

Layout (little-endian)::

    b"CINRJNL1" | u32 length | fingerprint JSON | u32 crc32(fingerprint)
    record*:  u64 body_length | u32 crc32(body) | body
    body:     u32 meta_length | meta JSON | part bytes (lengths listed in meta["parts"])

A torn last record (short, or a CRC mismatch) is cut off on resume. The fingerprint (settings
and source identity) must match exactly, otherwise resuming is refused: blocks fitted with other
settings must never be mixed into one file.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from ..errors import CinrInputError, CinrIOError

log = logging.getLogger(__name__)

MAGIC = b"CINRJNL1"
_U32 = struct.Struct("<I")
_REC = struct.Struct("<QI")
#: Largest record body accepted when reading a journal back.
MAX_RECORD = 1 << 31


class BlockSink(Protocol):
    """Where finished blocks go as they arrive: a ``Journal``, or ``encode.slide``'s list of a
    race's candidates."""

    def append(self, meta: dict[str, Any], parts: list[bytes]) -> None:
        """Take one finished block: its journal metadata and its stored parts."""


@dataclass
class JournalRecord:
    """One finished block: its metadata (JSON object) and its parts (payload, mip images)."""

    meta: dict[str, Any]
    parts: list[bytes]


def journal_path(dst: str | os.PathLike[str]) -> Path:
    """The journal file that belongs to output ``dst``."""
    p = Path(dst)
    return p.with_name(p.name + ".journal")


def _fsync(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())


class Journal:
    """An append-only journal of finished blocks (open with :func:`Journal.create` or :func:`Journal.resume`)."""

    def __init__(self, path: Path, fh: IO[bytes], done: dict[int, tuple[int, list[int]]]) -> None:
        self.path = path
        self._fh = fh
        self._done = done  # block id -> (offset of its record, sizes of its parts)

    @classmethod
    def create(cls, path: Path, fingerprint: dict[str, Any]) -> Journal:
        """Start a new journal (an existing one is an error: resume it or delete it)."""
        if path.exists():
            raise CinrInputError(
                f"{path}: an interrupted encode's journal exists; add --resume to continue it, or delete it"
            )
        fp = json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()
        try:
            fh = open(path, "x+b")
            fh.write(MAGIC + _U32.pack(len(fp)) + fp + _U32.pack(zlib.crc32(fp)))
            _fsync(fh)
        except OSError as exc:
            raise CinrIOError(f"{path}: cannot write the journal: {exc.strerror or exc}") from None
        return cls(path, fh, {})

    @classmethod
    def resume(cls, path: Path, fingerprint: dict[str, Any]) -> Journal:
        """Reopen a journal written with the same fingerprint; a torn last record is cut off."""
        if not path.exists():
            return cls.create(path, fingerprint)
        try:
            fh = open(path, "r+b")
        except OSError as exc:
            raise CinrIOError(f"{path}: cannot open the journal: {exc.strerror or exc}") from None
        try:
            head = fh.read(len(MAGIC) + 4)
            if len(head) < len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
                raise CinrInputError(f"{path}: not a cinr journal; delete it to start again")
            (n,) = _U32.unpack(head[len(MAGIC) :])
            fp = fh.read(n)
            crc = fh.read(4)
            if len(fp) != n or len(crc) != 4 or _U32.unpack(crc)[0] != zlib.crc32(fp):
                raise CinrInputError(f"{path}: the journal's header is damaged; delete it to start again")
            want = json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()
            if fp != want:
                old = json.loads(fp)
                diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise CinrInputError(
                    f"{path}: the journal was written with other settings or another source "
                    f"({', '.join(diff[:4])} differ); use the same options, or delete it to start again"
                )
            done: dict[int, tuple[int, list[int]]] = {}
            good_end = fh.tell()
            size = os.fstat(fh.fileno()).st_size
            while True:
                pos = fh.tell()
                rec = fh.read(_REC.size)
                if len(rec) < _REC.size:
                    break
                length, crc32 = _REC.unpack(rec)
                if length > min(MAX_RECORD, size - pos - _REC.size):
                    break
                body = fh.read(length)
                if len(body) != length or zlib.crc32(body) != crc32:
                    break
                meta = _parse_meta(body)
                if meta is None:
                    break
                done[int(meta["block_id"])] = (pos, list(meta["parts"]))
                good_end = fh.tell()
            if good_end < size:
                log.warning("%s: cutting off a torn record (%d bytes)", path, size - good_end)
                fh.truncate(good_end)
            fh.seek(good_end)
        except BaseException:
            fh.close()
            raise
        log.info("%s: resuming with %d finished blocks", path, len(done))
        return cls(path, fh, done)

    @property
    def done(self) -> set[int]:
        """Ids of the blocks already in the journal."""
        return set(self._done)

    def append(self, meta: dict[str, Any], parts: list[bytes]) -> None:
        """Append one finished block durably (fsync) and remember it."""
        meta = {**meta, "parts": [len(p) for p in parts]}
        mj = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        body = b"".join([_U32.pack(len(mj)), mj, *parts])
        try:
            self._fh.seek(0, os.SEEK_END)
            pos = self._fh.tell()
            self._fh.write(_REC.pack(len(body), zlib.crc32(body)) + body)
            _fsync(self._fh)
        except OSError as exc:
            raise CinrIOError(f"{self.path}: cannot write the journal: {exc.strerror or exc}") from None
        self._done[int(meta["block_id"])] = (pos, list(meta["parts"]))

    def read(self, block_id: int) -> JournalRecord:
        """Read one block's record back (checked)."""
        pos = self._done[block_id][0]
        self._fh.seek(pos)
        length, crc32 = _REC.unpack(self._fh.read(_REC.size))
        body = self._fh.read(length)
        if len(body) != length or zlib.crc32(body) != crc32:
            raise CinrIOError(f"{self.path}: record of block {block_id} changed on disk")
        meta = _parse_meta(body)
        if meta is None:
            raise CinrIOError(f"{self.path}: record of block {block_id} is damaged")
        (n,) = _U32.unpack(body[:4])
        parts = []
        at = 4 + n
        for size in meta["parts"]:
            parts.append(body[at : at + size])
            at += size
        return JournalRecord(meta, parts)

    def part_sizes(self) -> dict[int, list[int]]:
        """Block id -> byte sizes of its stored parts (no I/O: kept since the record was written or read)."""
        return {b: list(sizes) for b, (_, sizes) in self._done.items()}

    def records(self) -> Iterator[JournalRecord]:
        """Every record, in block id order."""
        for block_id in sorted(self._done):
            yield self.read(block_id)

    def close(self) -> None:
        """Close the file (the journal stays on disk)."""
        self._fh.close()

    def delete(self) -> None:
        """Close and remove the journal (after the output file is complete)."""
        self._fh.close()
        try:
            self.path.unlink()
        except OSError as exc:
            log.warning("%s: could not delete the journal: %s", self.path, exc)


def _parse_meta(body: bytes) -> dict[str, Any] | None:
    if len(body) < 4:
        return None
    (n,) = _U32.unpack(body[:4])
    if n > len(body) - 4:
        return None
    try:
        meta = json.loads(body[4 : 4 + n])
    except ValueError:
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("block_id"), int):
        return None
    parts = meta.get("parts")
    if not isinstance(parts, list) or sum(parts) != len(body) - 4 - n:
        return None
    return meta
