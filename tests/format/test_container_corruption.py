"""Exhaustive corruption and truncation of a small real-tissue .cinr file.

Every single-byte change either decodes identically (a byte nobody reads) or raises a
CinrError whose message names the file and an offset; every truncation raises a CinrError.
"""

from __future__ import annotations

import collections
import io

import pytest
from cinr_container_helpers import decode_all, real_file

from cinr_codec.errors import CinrError, CinrTruncatedError
from cinr_codec.format.container import CinrReader


def _check(data: bytes, reference: bytes, counts: collections.Counter[str]) -> None:
    try:
        out = decode_all(io.BytesIO(data))
    except CinrError as exc:
        msg = str(exc)
        assert msg.startswith("<stream>: ") and "\n" not in msg, msg
        assert "offset" in msg, msg
        counts[type(exc).__name__] += 1
        return
    assert out == reference
    counts["identical"] += 1


@pytest.mark.parametrize("mask", [0xFF, 0x01])
def test_every_single_byte_corruption(mask: int) -> None:
    data = real_file()
    reference = decode_all(data)
    counts: collections.Counter[str] = collections.Counter()
    buf = bytearray(data)
    for i in range(len(data)):
        buf[i] ^= mask
        _check(bytes(buf), reference, counts)
        buf[i] ^= mask
    assert sum(counts.values()) == len(data)
    # CRC-32 catches every single-byte change, so nothing decodes identically in v1.
    assert counts["identical"] == 0, counts
    assert counts["CinrChecksumError"] > 0.9 * len(data), counts


def test_every_truncation() -> None:
    data = real_file()
    for n in range(len(data)):
        with pytest.raises(CinrError) as info:
            decode_all(io.BytesIO(data[:n]))
        assert isinstance(info.value, CinrTruncatedError) or n < 8, (n, info.value)


def test_extension_and_prefixing_are_detected() -> None:
    data = real_file()
    for bad in (data + b"\0", data + data, b"\0" + data, data[:-1] + b"\0"):
        with pytest.raises(CinrError):
            decode_all(bad)


def test_corruption_on_disk_through_the_pread_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(real_file())
    path = tmp_path / "c.cinr"
    with CinrReader(io.BytesIO(bytes(data))) as r:
        offsets = [r.block_info(0).offset, r.associated_images["thumbnail"].offset]
    for off in offsets:
        bad = bytearray(data)
        bad[off + 3] ^= 0x10
        path.write_bytes(bytes(bad))
        with CinrReader(path) as r, pytest.raises(CinrError, match=str(path)):
            r.verify()


@pytest.mark.parametrize("seed", [0])
def test_every_single_byte_corruption_with_checksums_recomputed(seed: int) -> None:
    """A forger who fixes every CRC after changing one byte: the structural checks, strict JSON,
    zstd, safetensors and quantization parsers must still answer only with CinrErrors."""
    import random

    from cinr_container_helpers import reseal

    data = real_file()
    rng = random.Random(seed)
    counts: collections.Counter[str] = collections.Counter()
    for i in range(len(data)):
        buf = bytearray(data)
        buf[i] ^= rng.randrange(1, 256)
        reseal(buf, data)
        try:
            decode_all(io.BytesIO(bytes(buf)))
            counts["decoded"] += 1
        except CinrError as exc:
            assert "\n" not in str(exc), str(exc)
            counts[type(exc).__name__] += 1
    assert sum(counts.values()) == len(data)
    assert counts["CinrFormatError"] > 0, counts
