"""Format 1.5: header and footer JSON stored as zstd frames made with the built-in dictionary."""

from __future__ import annotations

import hashlib
import io
import struct
import tracemalloc
from importlib import resources

import pytest
import zstandard
from cinr_container_helpers import assemble, jdump
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cinr_codec.errors import CinrFormatError, CinrVersionError
from cinr_codec.format.container import CinrReader, CinrWriter
from cinr_codec.format.container.binary import (
    FLAG_JSON_ZSTD,
    JSON_DICTIONARY_SHA256,
    MAX_JSON_BYTES,
    MINOR_JSON_ZSTD,
    compress_json,
)

HEADER = {
    "container": {"max_block_bytes": 64, "n_blocks": 1},
    "model": {"kind": "ccinr", "levels": 7, "side": 256},
    "slide": {"width": 256, "height": 256, "properties": {}},
}
FOOTER = {"container": {"associated_images": []}, "quality": {"psnr_db": 37.5123, "ssim": 0.961234}}
BACKGROUND = [{"kind": 2, "rgb": b"\x01\x02\x03"}]


def _write(compress: bool) -> bytes:
    buf = io.BytesIO()
    header = {k: v for k, v in HEADER.items() if k != "container"}
    minor = MINOR_JSON_ZSTD if compress else 0
    with CinrWriter(buf, header, 1, minor_version=minor, compress_json=compress) as w:
        w.add_background_block(0, (1, 2, 3))
        w.commit({k: v for k, v in FOOTER.items() if k != "container"})
    return buf.getvalue()


def _with_dict_id(frame: bytes, dict_id: int) -> bytes:
    """``frame`` with a one-byte dictionary id inserted in its header (single-segment frames)."""
    fhd = frame[4]
    assert fhd & 0x20 and not fhd & 0x03  # single segment (no window byte), no dictionary id yet
    return frame[:4] + bytes([fhd | 0x01, dict_id]) + frame[5:]


def _file(header: bytes, footer: bytes, flags: int = FLAG_JSON_ZSTD) -> bytes:
    return assemble(header, [], BACKGROUND, footer, pre={"minor": MINOR_JSON_ZSTD, "flags": flags})


def test_dictionary_is_the_pinned_one() -> None:
    data = resources.files("cinr_codec.format.container").joinpath("json_dictionary_v1.txt").read_bytes()
    assert hashlib.sha256(data).hexdigest() == JSON_DICTIONARY_SHA256


def test_round_trip_is_smaller_and_reads_the_same() -> None:
    plain, packed = _write(False), _write(True)
    assert len(packed) < len(plain) - 100
    r0, r1 = CinrReader(io.BytesIO(plain)), CinrReader(io.BytesIO(packed))
    assert r1.version == (1, MINOR_JSON_ZSTD) and r1.json_compressed and not r0.json_compressed
    assert r1.header == r0.header and r1.footer == r0.footer
    assert r1.background_colours() == r0.background_colours() == {0: (1, 2, 3)}
    (flags,) = struct.unpack_from("<I", packed, 12)
    assert flags == FLAG_JSON_ZSTD


def test_writer_needs_the_minor_version() -> None:
    with pytest.raises(ValueError, match="1.5"):
        CinrWriter(io.BytesIO(), {}, 0, minor_version=4, compress_json=True)


def test_a_reader_without_the_flag_refuses_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from cinr_codec.format.container import reader

    monkeypatch.setattr(reader, "KNOWN_REQUIRED_FLAGS", 0)
    with pytest.raises(CinrVersionError, match="newer reader"):
        CinrReader(io.BytesIO(_write(True)))


def test_plain_json_under_the_flag_is_refused() -> None:
    data = _file(jdump(HEADER), compress_json(jdump(FOOTER)))
    with pytest.raises(CinrFormatError, match="header .*not a zstd frame"):
        CinrReader(io.BytesIO(data))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        # content size not declared
        (zstandard.ZstdCompressor(write_content_size=False).compress(jdump(HEADER)), "declares no"),
        # a frame that would inflate beyond the JSON limit
        (zstandard.ZstdCompressor().compress(b" " * (MAX_JSON_BYTES + 1)), "declares 16777217"),
        # a dictionary id the format does not have
        (_with_dict_id(compress_json(jdump(HEADER)), 7), "names dictionary"),
        # trailing bytes after the frame
        (compress_json(jdump(HEADER)) + b"\0", "decompression failed"),
        # a truncated frame
        (compress_json(jdump(HEADER))[:-3], "decompression failed"),
    ],
)
def test_hostile_frames_are_format_errors(frame: bytes, message: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CinrFormatError, match=message):
            CinrReader(io.BytesIO(_file(frame, compress_json(jdump(FOOTER)))))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_hostile_footer_frame_is_a_format_error() -> None:
    bad = compress_json(b'{"container":{"associated_images":[]},"x":1,"x":2}')
    with pytest.raises(CinrFormatError, match="footer.*duplicate key"):
        CinrReader(io.BytesIO(_file(compress_json(jdump(HEADER)), bad)))


@given(st.binary(min_size=0, max_size=300), st.integers(0, 200))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_stored_json_is_a_format_error(raw: bytes, cut: int) -> None:
    """Garbage (or a valid frame with garbage spliced in) under a valid CRC: CinrFormatError only."""
    good = compress_json(jdump(HEADER))
    header = good[: min(cut, len(good))] + raw
    try:
        CinrReader(io.BytesIO(_file(header, compress_json(jdump(FOOTER)))))
    except CinrFormatError:
        pass


def test_the_spec_reproduces_the_dictionary() -> None:
    from pathlib import Path

    spec = (Path(__file__).resolve().parents[2] / "formats" / "cinr-v1.md").read_text(encoding="utf-8")
    appendix = spec[spec.index("## Appendix A. The JSON dictionary") :]
    text = appendix[appendix.index("```text\n") + 8 : appendix.rindex("```")]
    data = resources.files("cinr_codec.format.container").joinpath("json_dictionary_v1.txt").read_bytes()
    assert text.encode("utf-8") == data and JSON_DICTIONARY_SHA256 in spec
