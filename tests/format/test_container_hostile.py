"""Hand-crafted hostile files with *valid* checksums: lengths claiming gigabytes, overflowing
offsets, random headers, footers and indexes, decompression bombs. Only CinrErrors may come
out, and no more memory may be allocated than the file justifies."""

from __future__ import annotations

import io
import json
import tracemalloc
from typing import Any

import pytest
import torch
import zstandard
from cinr_container_helpers import assemble, decode_all, jdump, parts_of
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cinr_codec.coding.quant import quantize_tensors
from cinr_codec.errors import CinrError, CinrFormatError, CinrTruncatedError, CinrVersionError
from cinr_codec.format.container import CinrReader, CinrWriter

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _base() -> bytes:
    """A small valid file: model block 0 (int8), background block 1, a JPEG label."""
    buf = io.BytesIO()
    with CinrWriter(buf, {"slide": {"width": 10}}, 2) as w:
        w.add_tensors(0, {"t": torch.linspace(-1, 1, 40).reshape(20, 2), "b": torch.ones(3)}, "int8")
        w.add_background_block(1, (250, 250, 250))
        w.add_associated_image("label", b"\xff\xd8\xff\xe0fake-jpeg")
        w.commit({"quality": {"psnr_db": 41.5}})
    return buf.getvalue()


BASE = _base()
PARTS = parts_of(BASE)
REFERENCE = decode_all(BASE)


def _outcome(data: bytes, same: bool = True) -> str:
    """The CinrError's class name, or 'decoded'; any other exception fails the test. With
    ``same``, a file that decodes must decode as the base file (the forgery changed nothing
    that a reader uses)."""
    try:
        out = decode_all(data)
    except CinrError as exc:
        assert str(exc) and "\n" not in str(exc)
        return type(exc).__name__
    if not same:
        return "decoded"
    # A forged minor version (accepted) changes only the first line.
    assert out.split(b"\n", 1)[1] == REFERENCE.split(b"\n", 1)[1]
    return "decoded"


def _forge(**kw: Any) -> bytes:
    args: dict[str, Any] = {
        "header": PARTS["header"],
        "payloads": [PARTS["region"]],
        "records": PARTS["records"],
        "footer": PARTS["footer"],
    }
    args.update(kw)
    return assemble(args.pop("header"), args.pop("payloads"), args.pop("records"), args.pop("footer"), **args)


def test_assembler_reproduces_the_writer() -> None:
    assert _forge() == BASE


hostile_u64 = (
    st.sampled_from(
        [0, 1, 7, 8, 31, 32, 64, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1]
    )
    | st.integers(0, 2**64 - 1)
    | st.integers(0, len(BASE) + 64)
)
hostile_u32 = st.sampled_from([0, 1, 2, 8, 2**16, 2**24, 2**30, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
hostile_u16 = st.sampled_from([0, 1, 2, 23, 24, 25, 32, 255, 256, 2**16 - 1]) | st.integers(0, 2**16 - 1)

TRAILER_FIELDS = {
    "index_offset": hostile_u64,
    "index_length": hostile_u64,
    "footer_offset": hostile_u64,
    "footer_length": hostile_u64,
    "file_length": hostile_u64,
    "record_size": hostile_u16,
    "reserved": hostile_u16,
}


@given(st.data())
@SETTINGS
def test_forged_trailer_fields(data: st.DataObject) -> None:
    fields = data.draw(st.lists(st.sampled_from(sorted(TRAILER_FIELDS)), min_size=1, max_size=3, unique=True))
    override = {f: data.draw(TRAILER_FIELDS[f]) for f in fields}
    _outcome(_forge(trailer=override))


PREAMBLE_FIELDS = {
    "major": hostile_u16,
    "minor": hostile_u16,
    "flags": hostile_u32,
    "header_length": hostile_u32,
    "reserved": hostile_u32,
}


@given(st.data())
@SETTINGS
def test_forged_preamble_fields(data: st.DataObject) -> None:
    fields = data.draw(
        st.lists(st.sampled_from(sorted(PREAMBLE_FIELDS)), min_size=1, max_size=3, unique=True)
    )
    override = {f: data.draw(PREAMBLE_FIELDS[f]) for f in fields}
    outcome = _outcome(_forge(pre=override))
    if override.get("major", 1) > 1:
        assert outcome == "CinrVersionError"


records = st.fixed_dictionaries(
    {
        "offset": hostile_u64,
        "stored": hostile_u32,
        "raw": hostile_u32,
        "crc": hostile_u32,
        "kind": st.sampled_from([0, 1, 2, 3, 255]),
        "rgb": st.binary(min_size=3, max_size=3),
    }
)


@given(st.lists(records, min_size=2, max_size=2), st.booleans())
@SETTINGS
def test_forged_index_records(recs: list[dict[str, Any]], keep_payload: bool) -> None:
    if keep_payload:  # a valid payload with forged lengths and kinds around it
        recs[0] = dict(recs[0], offset=PARTS["records"][0]["offset"], crc=PARTS["records"][0]["crc"])
    _outcome(_forge(records=recs), same=False)


@given(st.binary(max_size=200), st.sampled_from([0, 1, 47]), st.integers(0, 300))
@SETTINGS
def test_random_index_bytes(raw: bytes, extra: int, record_size: int) -> None:
    _outcome(_forge(raw_index=raw, record_size=max(24, record_size) if extra else 24), same=False)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=16,
)
container_values = st.fixed_dictionaries(
    {},
    optional={
        "n_blocks": hostile_u64 | json_values,
        "max_block_bytes": hostile_u64 | json_values,
        "associated_images": json_values
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.text(max_size=70) | json_values,
                    "media_type": st.sampled_from(["image/png", "image/jpeg", "image/gif"]) | json_values,
                    "offset": hostile_u64 | json_values,
                    "length": hostile_u64 | json_values,
                    "crc32": hostile_u64 | json_values,
                },
            ),
            max_size=3,
        ),
    },
)


def _shifted(header: bytes, footer_obj: Any) -> dict[str, Any]:
    """Forge arguments with a new header, fixing the model block's offset so only the JSON is hostile."""
    shift = len(header) - len(PARTS["header"])
    recs = [dict(r, offset=r["offset"] + shift) if r["kind"] == 1 else r for r in PARTS["records"]]
    return {"header": header, "records": recs, "footer": jdump(footer_obj)}


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5), container_values | json_values)
@example({}, {"n_blocks": "\n"})  # found by the search: the value went into the error's message raw
@example({}, {"n_blocks": 1, "max_block_bytes": "a\nb"})
@SETTINGS
def test_random_header_json(header: dict[str, Any], container: Any) -> None:
    header = dict(header, container=container)
    footer = json.loads(PARTS["footer"])
    _outcome(_forge(**_shifted(jdump(header), footer)), same=False)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5), container_values | json_values)
@SETTINGS
def test_random_footer_json(footer: dict[str, Any], container: Any) -> None:
    footer = dict(footer, container=container)
    _outcome(_forge(footer=jdump(footer)), same=False)


@given(st.binary(max_size=300))
@SETTINGS
def test_random_header_and_footer_bytes(raw: bytes) -> None:
    footer = json.loads(PARTS["footer"])
    args = _shifted(raw, footer)
    _outcome(_forge(**args), same=False)
    _outcome(_forge(footer=raw), same=False)


@given(st.binary(max_size=120))
@SETTINGS
def test_random_files(raw: bytes) -> None:
    for data in (raw, b"CINR\r\n\x1a\n" + raw, raw + BASE[-64:], BASE[:32] + raw + BASE[-64:]):
        with pytest.raises(CinrError):
            decode_all(data)


# --- explicit hostile values --------------------------------------------------------------------


def _payload_file(stored: bytes, raw: int, max_block_bytes: int = 1 << 20) -> bytes:
    header = jdump({"container": {"n_blocks": 1, "max_block_bytes": max_block_bytes}})
    footer = jdump({"container": {"associated_images": []}})
    return assemble(header, [stored], [{"payload": 0, "kind": 1, "raw": raw}], footer)


def _peak_bytes(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("header_length", 2**32 - 1, CinrFormatError),
        ("header_length", 2**24 + 1, CinrFormatError),
        ("header_length", 5000, CinrTruncatedError),
        ("major", 2, CinrVersionError),
        ("major", 0, CinrFormatError),
        ("flags", 2, CinrVersionError),  # bit 0 is FLAG_JSON_ZSTD (1.5); bit 1 is unknown
    ],
)
def test_preamble_lengths_claiming_gigabytes(field: str, value: int, error: type[CinrError]) -> None:
    data = _forge(pre={field: value})
    with pytest.raises(error, match="offset|truncated"):
        assert _peak_bytes(lambda: decode_all(data)) < 1 << 20


@pytest.mark.parametrize(
    "override",
    [
        {"index_length": 2**63},
        {"index_length": 24 * 2**40, "index_offset": 2**64 - 24 * 2**40},
        {"footer_length": 2**33, "footer_offset": 5},
        {"footer_offset": 2**64 - 1},
        {"file_length": 2**40},
        {"record_size": 0},
        {"record_size": 2**16 - 1},
    ],
)
def test_trailer_lengths_claiming_gigabytes(override: dict[str, int]) -> None:
    data = _forge(trailer=override)

    def run() -> None:
        with pytest.raises(CinrError):
            decode_all(data)

    assert _peak_bytes(run) < 1 << 20


@pytest.mark.parametrize(
    "record",
    [
        {"kind": 1, "offset": 2**64 - 1, "stored": 2**32 - 1, "raw": 2**30},
        {"kind": 1, "offset": 40, "stored": 2**32 - 1, "raw": 1000},
        {"kind": 1, "offset": 40, "stored": 10, "raw": 2**32 - 1},
        {"kind": 1, "offset": 0, "stored": 10, "raw": 100},
        {"kind": 2, "offset": 40, "stored": 10},
        {"kind": 0},
        {"kind": 9},
    ],
)
def test_index_records_claiming_gigabytes(record: dict[str, int]) -> None:
    recs = [record, PARTS["records"][1]]
    data = _forge(records=recs)

    def run() -> None:
        with pytest.raises(CinrError, match="block 0"):
            decode_all(data)

    assert _peak_bytes(run) < 1 << 20


def test_n_blocks_claiming_millions() -> None:
    header = json.loads(PARTS["header"])
    header["container"]["n_blocks"] = 2**22
    with pytest.raises(CinrFormatError, match="declares 4194304 blocks"):
        decode_all(_forge(**_shifted(jdump(header), json.loads(PARTS["footer"]))))


def _zero_frame(n: int, with_size: bool) -> bytes:
    """A zstd frame of n zero bytes, built in chunks (no n-byte buffer)."""
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=with_size).compressobj(
        size=n if with_size else -1
    )
    chunk = bytes(1 << 20)
    out = [cobj.compress(chunk[: min(len(chunk), n - i)]) for i in range(0, n, len(chunk))]
    out.append(cobj.flush())
    return b"".join(out)


def test_decompression_bombs_are_refused_before_allocating() -> None:
    bomb = _zero_frame(256 << 20, with_size=True)  # 256 MiB of zeros in ~8 KB
    assert len(bomb) < 100_000
    # The index records 1000 bytes, the frame declares 256 MiB.
    data = _payload_file(bomb, 1000)
    with pytest.raises(CinrFormatError, match="declares 268435456 decompressed bytes"):
        assert _peak_bytes(lambda: decode_all(data)) < 4 << 20
    # No content size in the frame: refused (v1 frames always declare it).
    data = _payload_file(_zero_frame(4 << 20, with_size=False), 1000)
    with pytest.raises(CinrFormatError, match="declares unknown"):
        decode_all(data)
    # The index claims 256 MiB, over the header's 1 MiB cap.
    with pytest.raises(CinrFormatError, match="decompressed length outside"):
        decode_all(_payload_file(bomb, 256 << 20))
    # Within the file's cap but over the reader's own limit.
    with pytest.raises(CinrFormatError, match="reader 1048576"):
        CinrReader(
            io.BytesIO(_payload_file(bomb, 256 << 20, max_block_bytes=1 << 30)), max_block_bytes=1 << 20
        )


def test_trailing_frames_and_foreign_frames_are_refused() -> None:
    payload = quantize_tensors({"a": torch.ones(3)})
    frame = zstandard.ZstdCompressor().compress(payload)
    with pytest.raises(CinrFormatError, match="unused data|zstd"):
        decode_all(_payload_file(frame + frame, len(payload)))
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd"
    with pytest.raises(CinrFormatError):
        decode_all(_payload_file(skippable + frame, len(payload)))
    with pytest.raises(CinrFormatError):
        decode_all(_payload_file(b"\x28\xb5\x2f\xfd", len(payload)))
    assert decode_all(_payload_file(frame, len(payload)))  # the honest version decodes


@given(st.binary(min_size=8, max_size=300), st.integers(8, 4096))
@SETTINGS
def test_random_payloads_with_valid_checksums(payload: bytes, raw: int) -> None:
    for stored in (payload, zstandard.ZstdCompressor().compress(payload)):
        try:
            decode_all(_payload_file(stored, raw if stored is payload else len(payload)))
        except CinrError:
            pass


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 70 + b"1" + b"}" * 70,
        b'{"container": {"n_blocks": 2, "max_block_bytes": 1000}, "x": NaN}',
        b'{"container": {"n_blocks": 2, "max_block_bytes": 1000}, "x": 1e999}',
        b'{"container": {"n_blocks": 2, "max_block_bytes": 1000}, "x": "\\ud800"}',
        b'{"container": {"n_blocks": 2, "max_block_bytes": 1000}, "x": ' + b"9" * 5000 + b"}",
        b'{"container": {"n_blocks": 2, "max_block_bytes": 1000}, "container": {}}',
        b'\xef\xbb\xbf{"container": {"n_blocks": 2, "max_block_bytes": 1000}}',
        b'{"container": {"n_blocks": true, "max_block_bytes": 1000}}',
        b'{"container": {"n_blocks": 2.0, "max_block_bytes": 1000}}',
        b'{"container": {"n_blocks": -1, "max_block_bytes": 1000}}',
        b'{"container": {"n_blocks": 2, "max_block_bytes": 1073741825}}',
        b'{"container": [2, 1000]}',
        b"\xff\xfe",
        b"[]",
    ],
)
def test_hostile_header_json(body: bytes) -> None:
    args = _shifted(body, json.loads(PARTS["footer"]))
    with pytest.raises(CinrFormatError, match=r"header"):
        decode_all(_forge(**args))
