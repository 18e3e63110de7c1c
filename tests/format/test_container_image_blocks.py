"""Format 1.1 image blocks (kind 3): written, read back, verified, refused where they must be."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cinr_codec.errors import CinrChecksumError, CinrFormatError
from cinr_codec.format.container import CinrReader, CinrWriter
from cinr_codec.format.container.binary import KIND_IMAGE, RECORD_SIZE, TRAILER_SIZE


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_image_blocks_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "f.cinr"
    jpg = _jpeg()
    with CinrWriter(path, {"a": 1}, 2, minor_version=1) as w:
        assert w.add_image_block(0, jpg) == len(jpg)
        w.add_background_block(1, (1, 2, 3))
        w.commit()
    with CinrReader(path) as r:
        assert r.version == (1, 1)
        info = r.block_info(0)
        assert info.kind == "image" and info.raw_length == info.stored_length == len(jpg)
        assert r.read_image_block(0) == jpg
        r.verify()
        with pytest.raises(CinrFormatError, match="not a model block"):
            r.read_tensors(0)
        with pytest.raises(CinrFormatError, match="not an image block"):
            r.read_image_block(1)


def test_image_blocks_need_format_1_1(tmp_path: Path) -> None:
    with CinrWriter(tmp_path / "g.cinr", {}, 1) as w:
        with pytest.raises(ValueError, match="1.1"):
            w.add_image_block(0, _jpeg())
    with CinrWriter(tmp_path / "h.cinr", {}, 1, minor_version=1) as w:
        with pytest.raises(ValueError, match="not a PNG, JPEG or AVIF file"):
            w.add_image_block(0, b"not an image")


def test_kind_3_in_a_1_0_file_is_rejected(tmp_path: Path) -> None:
    """A 1.0 reader never saw kind 3: a 1.0 file that has one is malformed."""
    path = tmp_path / "f.cinr"
    with CinrWriter(path, {}, 1, minor_version=1) as w:
        w.add_image_block(0, _jpeg())
        w.commit()
    data = bytearray(path.read_bytes())
    data[10:12] = struct.pack("<H", 0)  # minor 1 -> 0, then fix the preamble CRC
    import zlib

    data[28:32] = struct.pack("<I", zlib.crc32(bytes(data[:28])))
    path.write_bytes(bytes(data))
    with pytest.raises(CinrFormatError, match="unknown block kind"):
        CinrReader(path)


def test_corrupt_image_block_is_a_checksum_error(tmp_path: Path) -> None:
    path = tmp_path / "f.cinr"
    with CinrWriter(path, {}, 1, minor_version=1) as w:
        w.add_image_block(0, _jpeg())
        w.commit()
    data = bytearray(path.read_bytes())
    size = len(data)
    index_offset = size - TRAILER_SIZE - RECORD_SIZE
    (offset,) = struct.unpack_from("<Q", data, index_offset)
    assert data[index_offset + 20] == KIND_IMAGE
    data[offset + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    with CinrReader(path) as r:
        with pytest.raises(CinrChecksumError, match="block 0 checksum"):
            r.read_image_block(0)


def _avif() -> bytes:
    from cinr_codec.coding.images import avif_available, encode_avif

    if not avif_available():
        pytest.skip("this Pillow has no AVIF (Pillow >= 11.3 wheels do)")
    return encode_avif(np.full((8, 8, 3), 200, dtype=np.uint8), 80)


def test_avif_image_blocks_are_format_1_6(tmp_path: Path) -> None:
    """AVIF image blocks (1.6): written only at minor 6, read back; in a file that says 1.5 an
    AVIF block is not PNG or JPEG data."""
    avif = _avif()
    assert avif[4:12] == b"ftypavif"
    with CinrWriter(tmp_path / "old.cinr", {}, 1, minor_version=5) as w:
        with pytest.raises(ValueError, match="1.6"):
            w.add_image_block(0, avif)
    path = tmp_path / "f.cinr"
    with CinrWriter(path, {}, 1, minor_version=6) as w:
        w.add_image_block(0, avif)
        w.commit()
    with CinrReader(path) as r:
        assert r.version == (1, 6) and r.read_image_block(0) == avif
        r.verify()
    data = bytearray(path.read_bytes())
    data[10:12] = struct.pack("<H", 5)  # minor 6 -> 5, then fix the preamble CRC
    import zlib

    data[28:32] = struct.pack("<I", zlib.crc32(bytes(data[:28])))
    path.write_bytes(bytes(data))
    with CinrReader(path) as r:
        with pytest.raises(CinrFormatError, match="not PNG or JPEG data"):
            r.read_image_block(0)


def test_associated_images_stay_png_or_jpeg(tmp_path: Path) -> None:
    with CinrWriter(tmp_path / "f.cinr", {}, 1, minor_version=6) as w:
        with pytest.raises(ValueError, match="not PNG or JPEG"):
            w.add_associated_image("label", _avif())
