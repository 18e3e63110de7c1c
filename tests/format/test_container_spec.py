"""formats/cinr-v1.md agrees with the code: constants, and the worked example's real offsets."""

from __future__ import annotations

import importlib.util
import re
import zlib
from pathlib import Path

import pytest
import zstandard

from cinr_codec.format.container import binary as fmt

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "formats" / "cinr-v1.md"


def _make_example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_example", ROOT / "formats" / "make_example.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_constants_match_the_spec() -> None:
    text = SPEC.read_text()
    assert "`43 49 4E 52 0D 0A 1A 0A`" in text and fmt.MAGIC == bytes.fromhex("43494E520D0A1A0A")
    assert "`43 49 4E 52 2D 45 4E 44`" in text and fmt.TRAILER_MAGIC == bytes.fromhex("43494E522D454E44")
    assert (fmt.PREAMBLE_SIZE, fmt.TRAILER_SIZE, fmt.RECORD_SIZE) == (32, 64, 24)
    assert (fmt.FORMAT_MAJOR, fmt.FORMAT_MINOR) == (1, 11) and "version 1.11" in text
    assert fmt.AVIF_BRAND == bytes.fromhex("6674797061766966") and "66 74 79 70 61 76 69 66" in text
    assert fmt.SHORT_AVIF_MAGIC == bytes.fromhex("63415631") and "`63 41 56 31`" in text
    assert fmt.MAX_JSON_BYTES == 16 * 2**20 and fmt.MAX_JSON_DEPTH == 64 and fmt.MAX_BLOCKS == 2**22
    assert fmt.HARD_MAX_BLOCK_BYTES == 2**30 and fmt.MAX_IMAGES == 64 and fmt.MAX_IMAGE_BYTES == 256 * 2**20
    assert zlib.crc32(b"123456789") == 0xCBF43926 and "0xCBF43926" in text


def test_worked_example_matches_the_writer() -> None:
    mod = _make_example()
    text = SPEC.read_text()
    start = text.index(mod.BEGIN) + len(mod.BEGIN)
    section = text[start : text.index(mod.END)].strip()
    recorded = re.search(r"zstd library version: (\([0-9, ]+\))", section)
    assert recorded, "the example records the zstd version it was made with"
    if recorded.group(1) != str(zstandard.ZSTD_VERSION):
        pytest.skip(f"example made with zstd {recorded.group(1)}, this is {zstandard.ZSTD_VERSION}")
    assert section == mod.describe(mod.example_bytes()).strip(), (
        "run: python formats/make_example.py --update"
    )
