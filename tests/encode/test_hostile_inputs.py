"""Hostile inputs to ``cinr encode``: each is refused with exit status 2 and exactly one line on
stderr, before any block is fitted (issue 14, item 10)."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from cinr_codec.encode.source import SlideSource, sample_slide_path
from cinr_codec.errors import CinrInputError

ENCODE = [
    "--device",
    "cpu",
    "--model",
    "cinr",
    "--preset",
    "fast",
    "--steps",
    "1",
    "--threads",
    "1",
    "--quiet",
]


def _encode(*args: str | Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "cinr_codec", "encode", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    return p, time.perf_counter() - t0


def _refused(p: subprocess.CompletedProcess[str], out: Path, *needles: str) -> str:
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cinr: error: "), p.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _stripped_tiff(path: Path, width: int, height: int, size: int = 186) -> None:
    """A little-endian TIFF of one uncompressed strip whose header claims width x height (no pixels)."""
    tags = [  # (tag, type, value): type 3 SHORT, 4 LONG
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, (width * height) & 0xFFFFFFFF),
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, value in tags:
        ifd += (
            struct.pack("<HHII", tag, typ, 1, value)
            if typ == 4
            else struct.pack("<HHIHH", tag, typ, 1, value, 0)
        )
    data = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    path.write_bytes(data + b"\x00" * (size - len(data)))


def _white_png_1bit(path: Path, side: int) -> None:
    """A genuine 1-bit PNG of side x side pixels (~0.5 MB for 60000^2: every 1000 rows compress alike)."""
    row = b"\x00" + b"\xff" * ((side + 7) // 8)
    rows = row * 1000
    co = zlib.compressobj(9)
    part = co.compress(rows) + co.flush(zlib.Z_FULL_FLUSH)  # a full flush makes the parts independent
    adler = 1
    for _ in range(side // 1000):
        adler = zlib.adler32(rows, adler)
    idat = b"\x78\xda" + part * (side // 1000) + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def test_tiny_tiff_claiming_a_terapixel_is_refused_quietly(tmp_path: Path) -> None:
    src, out = tmp_path / "huge.tif", tmp_path / "huge.cinr"
    _stripped_tiff(src, 10**6, 10**6)
    assert src.stat().st_size == 186
    p, seconds = _encode(src, "-o", out, *ENCODE)
    _refused(p, out, "1000000x1000000", "--max-pixels")  # no pyvips warnings on stderr
    assert seconds < 60


def test_png_of_60000_squared_in_half_a_megabyte_is_implausible(tmp_path: Path) -> None:
    src, out = tmp_path / "big.png", tmp_path / "big.cinr"
    _white_png_1bit(src, 60000)
    assert src.stat().st_size < 1 << 20
    p, seconds = _encode(src, "-o", out, *ENCODE)
    _refused(p, out, "60000x60000", "implausible", "--max-pixels")
    assert seconds < 60


def test_max_pixels_replaces_the_default_rules(tmp_path: Path) -> None:
    src = tmp_path / "big.png"
    _white_png_1bit(src, 20000)  # 4e8 pixels in ~60 KB: implausible by default
    with pytest.raises(CinrInputError, match="implausible"):
        SlideSource(src)
    with SlideSource(src, max_pixels=20000 * 20000) as s:  # the caller vouches for it
        assert (s.width, s.height) == (20000, 20000)
    with pytest.raises(CinrInputError, match="limit of 1,000"):
        SlideSource(sample_slide_path(), max_pixels=1000)


def test_png_header_claiming_2_31_a_side_is_one_line(tmp_path: Path) -> None:
    src, out = tmp_path / "max.png", tmp_path / "max.cinr"
    ihdr = struct.pack(">IIBBBBB", 2**31 - 1, 2**31 - 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x80" * 30)
    src.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    p, _ = _encode(src, "-o", out, *ENCODE)
    _refused(p, out, "max.png")


def _tiled_jpeg_tiff(path: Path, width: int, height: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A pyramidal tiled JPEG TIFF (OpenSlide: generic-tiff) of noise; level 0's tile offsets and sizes."""
    import pyvips
    import tifffile

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    a[..., 1] //= 2  # coloured, so every block is tissue
    img = pyvips.Image.new_from_array(a).copy(interpretation="srgb")
    img.tiffsave(
        str(path), tile=True, tile_width=256, tile_height=256, compression="jpeg", Q=90, pyramid=True
    )
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        return tuple(page.dataoffsets), tuple(page.databytecounts)


def test_corrupt_tile_names_the_region_and_the_journal(tmp_path: Path) -> None:
    # Level 0 is 2048x256 (8 blocks of 256); the thumbnail comes from level 1, so the bad tile of
    # level 0 is met only when its block is read, after 7 blocks were fitted.
    src, out = tmp_path / "bad.tif", tmp_path / "bad.cinr"
    offsets, counts = _tiled_jpeg_tiff(src, 2048, 256)
    data = bytearray(src.read_bytes())
    data[offsets[-1] : offsets[-1] + 2] = b"\x00\x00"  # the last tile's JPEG start-of-image marker
    src.write_bytes(bytes(data))
    p, _ = _encode(src, "-o", out, "--block-size", "256", *ENCODE, timeout=300)
    line = _refused(p, out, "read error at (1792, 0)", "block 8 of 8", "bad.cinr.journal")
    assert "7 blocks finished are kept" in line
    assert (tmp_path / "bad.cinr.journal").exists()


def test_garbage_inside_a_tile_fails_before_fitting(tmp_path: Path) -> None:
    # Random bytes in a tile's entropy-coded data: OpenSlide 4 turns libjpeg's "corrupt data"
    # warning into an error. (A few bytes without a 0xFF can decode to wrong pixels silently: JPEG
    # has no checksum.) The level is read whole for the thumbnail, so nothing is fitted.
    src, out = tmp_path / "rand.tif", tmp_path / "rand.cinr"
    offsets, counts = _tiled_jpeg_tiff(src, 512, 512)
    data = bytearray(src.read_bytes())
    start = offsets[1] + counts[1] // 3
    data[start : start + 4096] = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    src.write_bytes(bytes(data))
    p, _ = _encode(src, "-o", out, "--block-size", "256", *ENCODE)
    _refused(p, out, "read error at (0, 0)", "Corrupt JPEG data")


def test_symlink_loop_is_named(tmp_path: Path) -> None:
    a, b, out = tmp_path / "a.svs", tmp_path / "b.svs", tmp_path / "a.cinr"
    a.symlink_to(b)
    b.symlink_to(a)
    p, _ = _encode(a, "-o", out, *ENCODE)
    _refused(p, out, "symbolic link loop")


def test_output_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "x.cinr"
    p, _ = _encode(sample_slide_path(), "-o", out, *ENCODE)
    _refused(p, out, "is a file, not a folder")
