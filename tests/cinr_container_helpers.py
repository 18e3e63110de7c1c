"""Shared helpers for the container tests: a small real-tissue file, an independent file
assembler (a second implementation of formats/cinr-v1.md, used to forge hostile files with
valid checksums), and a canonical full decode."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import struct
import zlib
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from cinr_codec.format.container import CinrReader, CinrWriter
from cinr_codec.format.container.binary import MAGIC, TRAILER_MAGIC


@lru_cache(maxsize=1)
def fitted_state() -> tuple[dict[str, torch.Tensor], list[int], np.ndarray]:
    """A tiny NGP fitted (5 steps) to a 32x32 crop of the bundled real slide: (state dict, level sizes, crop)."""
    from cinr_codec import HashGridConfig, fit_image
    from cinr_codec.encode.source import read_crop, sample_slide_path

    torch.manual_seed(0)
    crop = read_crop(sample_slide_path(), 32)
    # Pinned grid and widths, so that preset changes do not change the test file's size.
    result = fit_image(
        crop,
        model="ngp",
        preset="fast",
        steps=5,
        device="cpu",
        hash_config=HashGridConfig(8, 2, 12, 8, 1.0),
        overrides={"mlp_width": 32, "mlp_depth": 2},
    )
    state = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
    levels = list(result.model.grid.config.table_sizes())  # type: ignore[union-attr]
    return state, levels, crop


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", optimize=True)
    return out.getvalue()


def slide_header(n_blocks: int) -> dict[str, Any]:
    """A realistic header: what `cinr encode` will put there (the container does not interpret it)."""
    return {
        "slide": {
            "width": 64,
            "height": 32,
            "mpp_x": 0.499,
            "mpp_y": 0.499,
            "objective_power": 20,
            "vendor": "aperio",
            "properties": {"aperio.AppMag": "20", "aperio.MPP": "0.4990", "openslide.vendor": "aperio"},
        },
        "grid": {"block_size": 32, "halo": 0, "cols": n_blocks, "rows": 1},
        "model": {"kind": "ngp", "preset": "fast"},
        "quantization": {"default": "int8", "hash_tables": "int8 per level"},
    }


@lru_cache(maxsize=1)
def real_file() -> bytes:
    """A ~5 KB file from real tissue: an int8 fitted model, a background block, a float16 block, a PNG."""
    state, levels, crop = fitted_state()
    buf = io.BytesIO()
    w = CinrWriter(buf, slide_header(3), 3)
    w.add_tensors(0, state, "int8", groups={"grid.table": levels})
    w.add_background_block(1, (242, 241, 243))
    w.add_tensors(2, {k: v for k, v in state.items() if k.startswith("mlp.4")}, "float16")
    w.add_associated_image("thumbnail", png_bytes(crop[::4, ::4]))
    w.commit({"quality": {"psnr_db": 12.3, "ssim": 0.5}})
    return buf.getvalue()


def decode_all(data: bytes | io.BytesIO) -> bytes:
    """Everything a reader can get out of a file, as canonical bytes (raises what the reader raises)."""
    src = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    parts: list[bytes] = []
    with CinrReader(src) as r:
        parts.append(repr(r.version).encode())  # first line: the version, alone
        parts.append(json.dumps([r.header, r.footer, r.container_header], sort_keys=True).encode())
        for info in r.blocks():
            parts.append(repr(info).encode())
            if info.kind == "model":
                for name, t in sorted(r.read_tensors(info.block_id).items()):
                    parts.append(f"{name} {t.dtype} {tuple(t.shape)}".encode())
                    parts.append(t.contiguous().view(torch.uint8).numpy().tobytes())
        for name in sorted(r.associated_images):
            parts.append(name.encode() + r.read_associated_image(name))
    return b"\n".join(parts)


# --- an independent assembler -------------------------------------------------------------------


def crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def assemble(
    header: bytes,
    payloads: list[bytes],
    records: list[dict[str, Any]],
    footer: bytes,
    *,
    pre: dict[str, Any] | None = None,
    trailer: dict[str, Any] | None = None,
    record_size: int = 24,
    raw_index: bytes | None = None,
) -> bytes:
    """Build a file from parts; every CRC is recomputed after the overrides, so that a reader
    must reject forged values by its range checks, not by a checksum.

    ``payloads`` are laid out after the header in order; a record's ``payload`` key (an index
    into ``payloads``) fills in its offset (unless the record gives ``offset``), stored length
    and CRC.
    """
    data_start = 32 + len(header)
    offsets = []
    pos = data_start
    for p in payloads:
        offsets.append(pos)
        pos += len(p)
    footer_offset = pos
    index = bytearray()
    for r in records:
        r = dict(r)
        if "payload" in r:
            i = r.pop("payload")
            r.setdefault("offset", offsets[i])
            r.setdefault("stored", len(payloads[i]))
            r.setdefault("crc", crc(payloads[i]))
        rec = struct.pack(
            "<QIIIB3s",
            r.get("offset", 0),
            r.get("stored", 0),
            r.get("raw", 0),
            r.get("crc", 0),
            r.get("kind", 2),
            bytes(r.get("rgb", b"\0\0\0")),
        )
        index += rec + bytes(record_size - 24)
    if raw_index is not None:
        index = bytearray(raw_index)
    index_offset = footer_offset + len(footer)
    file_length = index_offset + len(index) + 64
    p = {
        "major": 1,
        "minor": 0,
        "flags": 0,
        "header_length": len(header),
        "header_crc": crc(header),
        "reserved": 0,
    }
    p.update(pre or {})
    pre_body = struct.pack(
        "<8sHHIIII",
        MAGIC,
        p["major"],
        p["minor"],
        p["flags"],
        p["header_length"],
        p["header_crc"],
        p["reserved"],
    )
    t = {
        "index_offset": index_offset,
        "index_length": len(index),
        "footer_offset": footer_offset,
        "footer_length": len(footer),
        "file_length": file_length,
        "index_crc": crc(bytes(index)),
        "footer_crc": crc(footer),
        "record_size": record_size,
        "reserved": 0,
    }
    t.update(trailer or {})
    tr_body = struct.pack(
        "<QQQQQIIHH",
        t["index_offset"],
        t["index_length"],
        t["footer_offset"],
        t["footer_length"],
        t["file_length"],
        t["index_crc"],
        t["footer_crc"],
        t["record_size"],
        t["reserved"],
    )
    return b"".join(
        [
            pre_body,
            struct.pack("<I", crc(pre_body)),
            header,
            *payloads,
            footer,
            bytes(index),
            tr_body,
            struct.pack("<I", crc(tr_body)),
            TRAILER_MAGIC,
        ]
    )


def jdump(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parts_of(data: bytes) -> dict[str, Any]:
    """Split a well-formed file (written by CinrWriter) into assemble() arguments."""
    (hlen,) = struct.unpack_from("<I", data, 16)
    header = data[32 : 32 + hlen]
    t = data[-64:]
    index_offset, index_length, footer_offset, footer_length = struct.unpack_from("<QQQQ", t, 0)
    footer = data[footer_offset : footer_offset + footer_length]
    index = data[index_offset : index_offset + index_length]
    records = []
    for i in range(index_length // 24):
        off, stored, raw, c, kind, rgb = struct.unpack_from("<QIIIB3s", index, 24 * i)
        records.append({"offset": off, "stored": stored, "raw": raw, "crc": c, "kind": kind, "rgb": rgb})
    return {"header": header, "region": data[32 + hlen : footer_offset], "records": records, "footer": footer}


def reseal(buf: bytearray, original: bytes) -> None:
    """Recompute, in place, every CRC of ``buf`` over the section ranges of the well-formed
    ``original`` (same length), so that a mutation must be caught by structure, not checksum.
    Associated images are left alone (their CRCs live in the footer's JSON text)."""
    (hlen,) = struct.unpack_from("<I", original, 16)
    t0 = len(original) - 64
    index_offset, index_length, footer_offset, footer_length = struct.unpack_from("<QQQQ", original, t0)
    for i in range(index_length // 24):
        rec = index_offset + 24 * i
        off, stored, _, _, kind = struct.unpack_from("<QIIIB", original, rec)
        if kind == 1:
            struct.pack_into("<I", buf, rec + 16, crc(bytes(buf[off : off + stored])))
    struct.pack_into("<I", buf, t0 + 40, crc(bytes(buf[index_offset : index_offset + index_length])))
    struct.pack_into("<I", buf, t0 + 44, crc(bytes(buf[footer_offset : footer_offset + footer_length])))
    struct.pack_into("<I", buf, t0 + 52, crc(bytes(buf[t0 : t0 + 52])))
    struct.pack_into("<I", buf, 20, crc(bytes(buf[32 : 32 + hlen])))
    struct.pack_into("<I", buf, 28, crc(bytes(buf[:28])))


def rewrite(r: CinrReader, dst: Any, header: dict[str, Any], associated: dict[str, bytes]) -> None:
    """Write ``r``'s blocks and footer to ``dst`` under a new ``header``, with ``associated`` images."""
    with CinrWriter(
        dst, header, r.n_blocks, max_block_bytes=r.max_block_bytes, minor_version=r.version[1]
    ) as w:
        for info in r.blocks():
            if info.kind == "model":
                w.add_model_block(info.block_id, r.read_payload(info.block_id))
            elif info.kind == "image":
                w.add_image_block(info.block_id, r.read_image_block(info.block_id))
            else:
                assert info.colour is not None
                w.add_background_block(info.block_id, info.colour)
        for name, data in associated.items():
            w.add_associated_image(name, data)
        w.commit(r.footer)


def stored_blocks(path: Any) -> list[tuple[str, Any]]:
    """Every block's kind and stored bytes (image blocks: their image; background: its colour),
    to compare the blocks of two encodes byte for byte."""
    with CinrReader(path) as r:
        out: list[tuple[str, Any]] = []
        for b in r.blocks():
            if b.kind == "model":
                out.append((b.kind, r.read_stored(b.block_id)))
            elif b.kind == "image":
                out.append((b.kind, r.read_image_block(b.block_id)))
            else:
                out.append((b.kind, b.colour))
        return out


#: A small hash-grid encode (12 blocks of 64 px, 12 steps): the settings with which the tests of
#: encodes run elsewhere (a Dask cluster, local worker processes) compare against a serial one.
SMALL_ENCODE: dict[str, Any] = {"model": "cinr", "preset": "fast", "steps": 12, "block_size": 64}


@contextlib.contextmanager
def ctrl_c_as_in_a_terminal() -> Iterator[None]:
    """While it lasts, SIGINT raises KeyboardInterrupt in this process, and a child started meanwhile
    gets SIGINT's default disposition (Python's KeyboardInterrupt), as under a terminal. A suite
    started in the background (``cmd &`` from a script) has SIGINT ignored, which children inherit
    through exec; a caught signal is reset to the default there (a thread-safe ``preexec_fn``)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def wait_for_a_journaled_block(proc: Any, journal: Any, timeout: float, poll: float) -> None:
    """Wait until ``journal`` (a path) grows past the size it had when first looked at (a block
    appended) while ``proc`` (a ``subprocess.Popen``) runs; fails, with its stderr, if it ended."""
    import time

    deadline = time.monotonic() + timeout
    first = None  # the journal's size when first seen; larger once a block is appended
    while time.monotonic() < deadline and proc.poll() is None:
        size = journal.stat().st_size if journal.exists() else None
        if first is None:
            first = size
        elif size is not None and size > first:
            break
        time.sleep(poll)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""


def stop_after_fitted_blocks(n: int) -> Any:
    """A progress callback for ``encode_slide`` that interrupts it (KeyboardInterrupt) once ``n``
    blocks have been fitted (model blocks)."""
    fitted: list[int] = []

    def stop(ev: dict[str, Any]) -> None:
        if ev["stage"] == "block" and ev["kind"] == "model":
            fitted.append(ev["block_id"])
            if len(fitted) == n:
                raise KeyboardInterrupt

    return stop
