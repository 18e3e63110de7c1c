"""The .cinr container: round trips, the reader's API, the atomic streaming writer, threads."""

from __future__ import annotations

import gc
import io
import logging
import os
import random
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from cinr_container_helpers import decode_all, fitted_state, png_bytes, real_file, slide_header

from cinr_codec.coding.quant import STORAGE_DTYPES, dequantize_tensors, quantize_tensors
from cinr_codec.errors import (
    CinrChecksumError,
    CinrError,
    CinrFormatError,
    CinrIOError,
    CinrTruncatedError,
    CinrVersionError,
)
from cinr_codec.format.container import CinrReader, CinrWriter


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "grid.table": torch.randn(300, 2, generator=g) * 1e-2,
        "mlp.0.weight": torch.randn(16, 8, generator=g),
        "mlp.0.bias": torch.randn(16, generator=g),
        "steps": torch.tensor([7, 8], dtype=torch.int64),
    }


def _no_part_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".part")]


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", STORAGE_DTYPES)
def test_round_trip_every_storage_dtype_through_a_file(tmp_path: Path, dtype: str) -> None:
    state, levels, _ = fitted_state()
    path = tmp_path / "slide.cinr"
    groups = {"grid.table": levels} if dtype == "int8" else None
    with CinrWriter(path, slide_header(2), 2) as w:
        w.add_tensors(1, state, dtype, groups=groups)
        w.add_background_block(0, (255, 255, 255))
        w.commit({"quality": {"psnr_db": 40.0}})
    expected = dequantize_tensors(quantize_tensors(state, dtype, groups=groups))
    with CinrReader(path) as r:
        assert r.version == (1, 0)
        assert r.header == slide_header(2)
        assert r.footer == {"quality": {"psnr_db": 40.0}}
        assert r.metadata["quality"]["psnr_db"] == 40.0 and r.metadata["grid"]["block_size"] == 32
        assert r.block_info(0).kind == "background" and r.block_info(0).colour == (255, 255, 255)
        assert r.background_colours() == {0: (255, 255, 255)}
        got = r.read_tensors(1)
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert torch.equal(got[k], expected[k])
        if dtype == "float32":
            assert torch.equal(got[k], v)


def test_storage_sizes_shrink_with_dtype() -> None:
    state, levels, _ = fitted_state()
    sizes = {d: len(quantize_tensors(state, d)) for d in STORAGE_DTYPES}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    assert abs(sizes["float16"] - sizes["bfloat16"]) < 64  # only the metadata's scheme names differ


def test_real_file_decodes_and_verifies(tmp_path: Path) -> None:
    data = real_file()
    assert 3000 < len(data) < 8000
    path = tmp_path / "real.cinr"
    path.write_bytes(data)
    with CinrReader(path) as r:
        r.verify()
        assert r.n_blocks == 3 and r.associated_images["thumbnail"].media_type == "image/png"
        assert r.read_associated_image("thumbnail").startswith(b"\x89PNG")
        assert [b.kind for b in r.blocks()] == ["model", "background", "model"]
        with pytest.raises(CinrFormatError, match="background block"):
            r.read_payload(1)
        with pytest.raises(IndexError):
            r.block_info(3)
        with pytest.raises(KeyError):
            r.read_associated_image("label")
    assert decode_all(path.read_bytes()) == decode_all(data)


def test_reader_on_file_object_path_and_buffered_file_agree(tmp_path: Path) -> None:
    data = real_file()
    path = tmp_path / "real.cinr"
    path.write_bytes(data)
    with (
        open(path, "rb") as fh,
        CinrReader(fh) as r1,
        CinrReader(path) as r2,
        CinrReader(io.BytesIO(data)) as r3,
    ):
        for i in (0, 2):
            assert r1.read_payload(i) == r2.read_payload(i) == r3.read_payload(i)
        assert r1.name == str(path) and r3.name == "<stream>"
    assert fh.closed  # closed by its own `with`, not by the reader


def test_blocks_may_arrive_in_any_order_and_zero_blocks_is_valid() -> None:
    buf = io.BytesIO()
    with CinrWriter(buf, {}, 4) as w:
        for i in (3, 1, 0, 2):
            w.add_tensors(i, _tensors(i), "float16")
        w.commit()
    with CinrReader(io.BytesIO(buf.getvalue())) as r:
        offsets = [r.block_info(i).offset for i in range(4)]
        assert offsets[3] < offsets[1] < offsets[0] < offsets[2]
        assert torch.equal(r.read_tensors(2)["mlp.0.weight"], _tensors(2)["mlp.0.weight"].half().float())
    empty = io.BytesIO()
    with CinrWriter(empty, {"note": "nothing"}, 0) as w:
        w.commit()
    with CinrReader(io.BytesIO(empty.getvalue())) as r:
        assert r.n_blocks == 0 and list(r.blocks()) == [] and r.header == {"note": "nothing"}


def test_writer_argument_errors() -> None:
    buf = io.BytesIO()
    with pytest.raises(ValueError, match="reserved"):
        CinrWriter(buf, {"container": 1}, 1)
    with pytest.raises(ValueError, match="not JSON"):
        CinrWriter(buf, {"x": float("nan")}, 1)
    with pytest.raises(ValueError, match="not JSON"):
        CinrWriter(buf, {"x": object()}, 1)
    with pytest.raises(ValueError, match="n_blocks"):
        CinrWriter(buf, {}, -1)
    with CinrWriter(io.BytesIO(), {"a": 1}, 2, max_block_bytes=4096) as w:
        with pytest.raises(ValueError, match="not in"):
            w.add_tensors(2, _tensors())
        with pytest.raises(ValueError, match="not in"):
            w.add_tensors(0, {"big": torch.zeros(2048)})  # 8 KiB > max_block_bytes
        with pytest.raises(ValueError, match="quantize_tensors"):
            w.add_model_block(0, b"\x10" + bytes(40))
        from cinr_codec.coding.tensors import save_safetensors

        with pytest.raises(ValueError, match="cinr.quant"):
            w.add_model_block(0, save_safetensors({"a": torch.ones(2)}))
        w.add_background_block(0, (1, 2, 3))
        with pytest.raises(ValueError, match="already"):
            w.add_background_block(0, (1, 2, 3))
        with pytest.raises(ValueError, match="colour"):
            w.add_background_block(1, (1, 2, 300))
        with pytest.raises(ValueError, match="PNG or JPEG"):
            w.add_associated_image("label", b"GIF89a...")
        w.add_associated_image("label", b"\xff\xd8\xff\xe0 jpeg bytes")
        with pytest.raises(ValueError, match="already"):
            w.add_associated_image("label", b"\xff\xd8\xff\xe0 jpeg bytes")
        with pytest.raises(ValueError, match="never added"):
            w.commit()  # block 1 is missing; the writer stays usable
        w.add_background_block(1, (0, 0, 0))
        with pytest.raises(ValueError, match="repeat header keys"):
            w.commit({"a": 2})
        w.commit({"b": 2})
        with pytest.raises(ValueError, match="committed"):
            w.add_background_block(1, (0, 0, 0))


# --- atomic writer ----------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_exception_mid_write_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.cinr"
    with pytest.raises(Boom):
        with CinrWriter(dest, {}, 3) as w:
            w.add_tensors(0, _tensors())
            assert any(p.name.endswith(".part") for p in tmp_path.iterdir())
            raise Boom
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_exception_mid_write_leaves_existing_destination_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "out.cinr"
    dest.write_bytes(b"precious old file")
    with pytest.raises(Boom):
        with CinrWriter(dest, {}, 2) as w:
            w.add_tensors(0, _tensors())
            raise Boom
    assert dest.read_bytes() == b"precious old file"
    assert _no_part_files(tmp_path)


def test_close_without_commit_discards(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dest = tmp_path / "out.cinr"
    with caplog.at_level(logging.WARNING), CinrWriter(dest, {}, 1) as w:
        w.add_background_block(0, (1, 1, 1))
    assert "without commit" in caplog.text
    assert not dest.exists() and _no_part_files(tmp_path)


def test_garbage_collected_writer_removes_its_temp_file(tmp_path: Path) -> None:
    w = CinrWriter(tmp_path / "out.cinr", {}, 1)
    w.add_tensors(0, _tensors())
    del w
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_failure_during_commit_rename_keeps_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "out.cinr"
    dest.write_bytes(b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    w = CinrWriter(dest, {}, 1)
    w.add_background_block(0, (9, 9, 9))
    with pytest.raises(CinrIOError, match="No space left"):
        w.commit()
    assert dest.read_bytes() == b"old" and _no_part_files(tmp_path)


def test_write_error_is_a_cinr_io_error_and_cleans_up(tmp_path: Path) -> None:
    dest = tmp_path / "out.cinr"
    w = CinrWriter(dest, {}, 2)

    def broken_write(data: bytes) -> int:
        raise OSError(28, "No space left on device")

    w._fh.write = broken_write  # type: ignore[method-assign]
    with pytest.raises(CinrIOError, match="write failed at offset"):
        w.add_tensors(0, _tensors())
    with pytest.raises(ValueError, match="failed"):
        w.add_background_block(1, (0, 0, 0))
    w.close()
    assert list(tmp_path.iterdir()) == []


def test_commit_replaces_existing_file_atomically_with_normal_permissions(tmp_path: Path) -> None:
    dest = tmp_path / "out.cinr"
    dest.write_bytes(b"old")
    with CinrWriter(dest, {"v": 2}, 1) as w:
        w.add_tensors(0, _tensors())
        assert dest.read_bytes() == b"old"  # untouched until commit
        assert w.commit() == dest
    assert _no_part_files(tmp_path)
    with CinrReader(dest) as r:
        assert r.header == {"v": 2}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask


def test_overwrite_false_refuses_existing_destination(tmp_path: Path) -> None:
    dest = tmp_path / "out.cinr"
    dest.write_bytes(b"old")
    with pytest.raises(CinrIOError, match="already exists"):
        CinrWriter(dest, {}, 0, overwrite=False)
    other = tmp_path / "new.cinr"
    with CinrWriter(other, {}, 0, overwrite=False) as w:
        other.write_bytes(b"raced")  # appears while writing: commit must not clobber it
        with pytest.raises(CinrIOError):
            w.commit()
    assert other.read_bytes() == b"raced" and dest.read_bytes() == b"old" and _no_part_files(tmp_path)


def test_writer_memory_holds_only_the_index() -> None:
    w = CinrWriter(io.BytesIO(), {}, 100_000)
    assert len(w._index) == 100_000 * 24
    w.abort()


def test_writer_accepts_blocks_from_several_threads(tmp_path: Path) -> None:
    dest = tmp_path / "mt.cinr"
    n = 48
    with CinrWriter(dest, {}, n) as w:
        with ThreadPoolExecutor(6) as ex:
            list(ex.map(lambda i: w.add_tensors(i, _tensors(i), "int8"), range(n)))
        w.commit()
    with CinrReader(dest) as r:
        for i in range(n):
            assert torch.equal(r.read_tensors(i)["steps"], torch.tensor([7, 8]))


# --- concurrent reads -------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["path", "bytesio"])
def test_concurrent_reads_match_a_single_thread(tmp_path: Path, source: str) -> None:
    n = 40
    dest = tmp_path / "many.cinr"
    with CinrWriter(dest, {}, n) as w:
        for i in range(n):
            if i % 7 == 3:
                w.add_background_block(i, (i, i, i))
            else:
                w.add_tensors(i, _tensors(i), ["float32", "float16", "int8"][i % 3])
        w.commit()
    model_ids = [i for i in range(n) if i % 7 != 3]
    with CinrReader(dest) as r:
        expected = {i: r.read_payload(i) for i in model_ids}
    reader = CinrReader(dest) if source == "path" else CinrReader(io.BytesIO(dest.read_bytes()))
    assert (reader._fd is not None) == (source == "path")
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        order = model_ids * 3
        random.Random(seed).shuffle(order)
        try:
            for i in order:
                assert reader.read_payload(i) == expected[i]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader.close()
    assert errors == []


# --- error family and messages ----------------------------------------------------------------


def test_error_messages_name_file_problem_and_offset(tmp_path: Path) -> None:
    data = bytearray(real_file())
    path = tmp_path / "bad.cinr"
    with CinrReader(io.BytesIO(bytes(data))) as r:
        off = r.block_info(0).offset
    data[off + 5] ^= 0x40
    path.write_bytes(bytes(data))
    with CinrReader(path) as r:
        with pytest.raises(CinrChecksumError) as info:
            r.read_tensors(0)
    msg = str(info.value)
    assert str(path) in msg and "block 0 checksum mismatch" in msg and f"at offset {off}" in msg


def test_empty_missing_wrong_magic_newer_version(tmp_path: Path) -> None:
    empty = tmp_path / "empty.cinr"
    empty.write_bytes(b"")
    with pytest.raises(CinrTruncatedError, match="empty file"):
        CinrReader(empty)
    with pytest.raises(CinrIOError, match="cannot open"):
        CinrReader(tmp_path / "missing.cinr")
    with pytest.raises(CinrIOError):
        CinrReader(tmp_path)  # a directory
    png = tmp_path / "image.cinr"
    png.write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(CinrFormatError, match="bad magic") as info:
        CinrReader(png)
    assert "at offset 0" in str(info.value)
    data = bytearray(real_file())
    data[8] = 2  # major version 2 (the preamble CRC is checked after the version)
    with pytest.raises(CinrVersionError, match=r"version 2\.0 is not supported"):
        CinrReader(io.BytesIO(bytes(data)))
    assert issubclass(CinrVersionError, CinrError)


def test_newer_minor_version_and_unknown_fields_are_accepted() -> None:
    from cinr_container_helpers import assemble, jdump, parts_of

    p = parts_of(real_file())
    header = dict(__import__("json").loads(p["header"]))
    header["container"]["future_field"] = {"x": 1}
    header["unknown_optional"] = [1, 2, 3]
    new_header = jdump(header)
    shift = len(new_header) - len(p["header"])
    records = [dict(r, offset=r["offset"] + shift) if r["kind"] == 1 else r for r in p["records"]]
    footer = __import__("json").loads(p["footer"])
    for im in footer["container"]["associated_images"]:
        im["offset"] += shift
    footer["container"]["future"] = True
    data = assemble(
        new_header,
        [p["region"]],
        records,
        jdump(footer),
        pre={"minor": 7, "flags": 0x00010000},
        record_size=32,
    )
    with CinrReader(io.BytesIO(data)) as r:
        assert r.version == (1, 7)
        assert r.header["unknown_optional"] == [1, 2, 3]
        r.verify()
    # An unknown *required* flag is refused.
    data = assemble(new_header, [p["region"]], records, jdump(footer), pre={"flags": 0x0004})
    with pytest.raises(CinrVersionError, match="unknown features"):
        CinrReader(io.BytesIO(data))


class CountingFile(io.BytesIO):
    """A seekable file object that records every (offset, length) read, like an HTTP range client."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, n: int | None = -1) -> bytes:
        pos = self.tell()
        out = super().read(n)
        self.reads.append((pos, len(out)))
        return out


def test_open_is_lazy_and_blocks_are_read_by_range() -> None:
    n = 30
    buf = io.BytesIO()
    with CinrWriter(buf, {}, n) as w:
        for i in range(n):
            w.add_tensors(i, _tensors(i), "float16")
        w.commit()
    data = buf.getvalue()
    f = CountingFile(data)
    with CinrReader(f) as r:
        opened = sum(length for _, length in f.reads)
        index_bytes = n * 24
        assert len(f.reads) == 5  # preamble, trailer, header, footer, index
        assert opened < 32 + 64 + 200 + index_bytes + 200 and opened < len(data) / 10
        f.reads.clear()
        info = r.block_info(17)
        r.read_tensors(17)
        assert f.reads == [(info.offset, info.stored_length)]
