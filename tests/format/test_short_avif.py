"""Short AVIF image blocks (format 1.11): shortened only when the rebuild is exact, read back as the
AVIF file, refused where they must be."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from cinr_codec.coding.images import avif_available, decode_image_bytes, encode_avif
from cinr_codec.errors import CinrFormatError
from cinr_codec.format.container import CinrReader, CinrWriter, short_avif
from cinr_codec.format.container.binary import AVIF_BRAND

pytestmark = pytest.mark.skipif(not avif_available(), reason="this Pillow has no AVIF")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return np.clip(ramp + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("h", "w", "quality"), [(64, 64, 50), (16, 16, 90), (64, 1, 40), (3, 70, 100)])
def test_the_encoders_avif_shortens_and_rebuilds_exactly(h: int, w: int, quality: int) -> None:
    avif = encode_avif(_image(h, w), quality)
    short = short_avif.shorten(avif)
    assert short is not None and short.startswith(short_avif.SHORT_AVIF_MAGIC)
    assert short_avif.short_size(short) == (w, h)
    assert len(avif) - len(short) > 250  # the boxes (about 290 bytes) less 12
    assert short_avif.expand(short) == avif


def test_an_avif_the_rebuild_would_change_stays_whole() -> None:
    avif = encode_avif(_image(16, 16), 60)
    renamed = avif.replace(b"av01Color\0", b"av01Colr\0\0")  # same length, another item name
    assert renamed != avif and renamed[4:12] == AVIF_BRAND
    assert short_avif.shorten(renamed) is None
    assert short_avif.shorten(avif[:-1]) is None  # truncated: mdat runs past the end
    assert short_avif.shorten(b"\x89PNG\r\n\x1a\n" + bytes(40)) is None


def test_writer_stores_short_from_1_11_and_reader_gives_the_avif_back(tmp_path: Path) -> None:
    img = _image(64, 48, 1)
    avif = encode_avif(img, 50)
    sizes = {}
    for minor in (10, 11):
        path = tmp_path / f"m{minor}.cinr"
        with CinrWriter(path, {}, 1, minor_version=minor) as w:
            sizes[minor] = w.add_image_block(0, avif)
            w.commit()
        with CinrReader(path) as r:
            assert r.read_image_block(0) == avif
            r.verify()
            assert r.block_info(0).stored_length == sizes[minor]
    assert sizes[10] == len(avif) and sizes[11] == len(short_avif.shorten(avif) or b"")
    data = bytearray((tmp_path / "m11.cinr").read_bytes())
    data[10:12] = struct.pack("<H", 10)  # the file now says 1.10: a short block is not AVIF there
    data[28:32] = struct.pack("<I", zlib.crc32(bytes(data[:28])))
    (tmp_path / "m11.cinr").write_bytes(bytes(data))
    with CinrReader(tmp_path / "m11.cinr") as r:
        with pytest.raises(CinrFormatError, match="not PNG, JPEG or AVIF data"):
            r.read_image_block(0)


def _stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: bytes) -> Path:
    """A 1.11 file whose image block 0 is ``block`` as stored (checksums right)."""
    monkeypatch.setattr(short_avif, "shorten", lambda data: block)
    path = tmp_path / "hostile.cinr"
    with CinrWriter(path, {}, 1, minor_version=11) as w:
        w.add_image_block(0, encode_avif(_image(8, 8), 50))
        w.commit()
    monkeypatch.undo()
    return path


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (short_avif.SHORT_AVIF_MAGIC, "not a short AVIF"),
        (struct.pack("<4sHH4s", short_avif.SHORT_AVIF_MAGIC, 0, 8, b"\x81\x20\0\0") + b"x", "0x8"),
        (struct.pack("<4sHH4s", short_avif.SHORT_AVIF_MAGIC, 8, 8, b"\x00\x20\0\0") + b"x", "marker"),
    ],
)
def test_malformed_short_blocks_are_format_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: bytes, match: str
) -> None:
    with CinrReader(_stored(tmp_path, monkeypatch, block)) as r:
        with pytest.raises(CinrFormatError, match=f"block 0: .*{match}"):
            r.read_image_block(0)


def test_short_blocks_are_decoded_with_the_size_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = short_avif.shorten(encode_avif(_image(16, 16), 70))
    assert short is not None
    wide = struct.pack("<4sHH", short_avif.SHORT_AVIF_MAGIC, 32, 16) + short[8:]  # says 32x16
    garbage = short[:12] + bytes(range(256)) * 4
    huge = struct.pack("<4sHH", short_avif.SHORT_AVIF_MAGIC, 65535, 1) + short[8:]
    cases = [
        (wide, (16, 16), 1 << 24, "image is 32x16, expected 16x16"),
        (wide, None, 100, "over the limit of 100 pixels"),
        (garbage, (16, 16), 1 << 24, "cannot decode"),
        (huge, None, 1 << 24, "cannot decode"),
    ]
    for block, size, limit, match in cases:
        with CinrReader(_stored(tmp_path, monkeypatch, block)) as r:
            with pytest.raises(CinrFormatError, match=match):
                decode_image_bytes(r.read_image_block(0), "block 0", size, limit)
    with CinrReader(_stored(tmp_path, monkeypatch, short)) as r:
        pixels = decode_image_bytes(r.read_image_block(0), "block 0", (16, 16))
    assert pixels.shape == (16, 16, 3)
