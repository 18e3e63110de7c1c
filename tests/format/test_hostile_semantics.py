"""Hostile files whose container is valid (checksums, lengths) but whose content is not: huge
header numbers, bad mip images, swapped index records, blocks that declare far more tensor
data than their model holds, associated images of too many pixels. Only ``CinrError`` may come
out of the API, in bounded memory (issue 14)."""

from __future__ import annotations

import io
import json
import resource
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cinr_container_helpers import assemble, parts_of
from PIL import Image

from cinr_codec.api import open_cinr
from cinr_codec.coding.quant import QUANT_METADATA_KEY
from cinr_codec.coding.tensors import load_safetensors, save_safetensors
from cinr_codec.errors import CinrError, CinrFormatError
from cinr_codec.format.container import CinrReader, CinrWriter
from cinr_codec.format.container.binary import MAX_ASSOCIATED_PIXELS, loads_json

ROOT = Path(__file__).resolve().parents[2]
VECTOR = ROOT / "formats" / "vectors" / "ngp-fast-64x40-int8.cinr"
#: The slide: 5 blocks of 64 px in a row (block 0 the vector's model, 1-4 background), mips at 2
#: (block 5 a 32x20 PNG, 6-9 background). 300 px wide: the virtual pyramid has a level 1.
W, H, B = 300, 40, 64
MIP = 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png(w: int, h: int, chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PNG of ``w`` x ``h`` RGB whose IHDR says so, with ``chunks`` after IHDR; its pixels
    (a grey row repeated) are real only when small."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + bytes([128]) * (3 * w) for _ in range(h)) if w * h <= 1 << 16 else b"\0"
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),
            *(chunk(k, v) for k, v in chunks),
            chunk(b"IDAT", zlib.compress(rows)),
            chunk(b"IEND", b""),
        ]
    )


def _vector() -> tuple[dict[str, Any], bytes]:
    with CinrReader(VECTOR) as r:
        return dict(r.header), r.read_payload(0)


def _slide(
    path: Path,
    *,
    slide: dict[str, Any] | None = None,
    footer: dict[str, Any] | None = None,
    mip: bytes | None = None,
    associated: dict[str, bytes] | None = None,
    payload: bytes | None = None,
    model: dict[str, Any] | None = None,
) -> Path:
    """Write the test slide (see ``W``, ``H``) with the given edits; returns ``path``."""
    header, good_payload = _vector()
    header["slide"] = {**header["slide"], "width": W, "height": H, **(slide or {})}
    header["grid"] = {"block_size": B, "halo": 0, "cols": 5, "rows": 1}
    header["mips"] = {"downsamples": [2], "first_block": 5, "filter": "box"}
    if model is not None:
        header["model"] = {**header["model"], **model}
    with CinrWriter(path, header, 10, minor_version=1, max_block_bytes=256 << 20, zstd_level=1) as w:
        w.add_model_block(0, payload if payload is not None else good_payload, check=lambda p, w: None)
        for i in range(1, 5):
            w.add_background_block(i, (250, 250, 250))
        w.add_image_block(MIP, mip if mip is not None else _png(32, 20))
        for i in range(6, 10):
            w.add_background_block(i, (250, 250, 250))
        for name, data in (associated or {}).items():
            w.add_associated_image(name, data)
        w.commit(footer or {"quality": {"psnr_db": 30.0}})
    return path


def test_the_test_slide_decodes(tmp_path: Path) -> None:
    with open_cinr(_slide(tmp_path / "ok.cinr", associated={"label": _png(20, 10)})) as s:
        assert s.level_count == 2
        assert s.read_region((0, 0), 1, (150, 20)).size == (150, 20)
        assert s.read(0, 0, 64, 40).shape == (40, 64, 3)
        assert s.associated_images["label"].size == (20, 10)


# -- 1. header and footer numbers that no float holds ----------------------------------------

BOUNDS = {"openslide.bounds-x": "10", "openslide.bounds-y": "5", "openslide.bounds-width": "100"}


@pytest.mark.parametrize(
    ("slide", "footer", "absent"),
    [
        ({}, {"quality": {"psnr_db": 10**400, "ssim": -(10**400)}}, ["cinr.psnr", "cinr.ssim"]),
        (
            {"mpp_x": 10**400, "objective_power": 10**400},
            None,
            ["openslide.mpp-x", "openslide.objective-power"],
        ),
        ({"level": 10**400}, None, ["cinr.level"]),
        ({"level": -1}, None, ["cinr.level"]),
        (
            {"level_downsample": 1e-320, "properties": {**BOUNDS, "openslide.bounds-height": "20"}},
            None,
            [],
        ),
        (
            {"level_downsample": 10**400, "properties": {**BOUNDS, "openslide.bounds-height": "20"}},
            None,
            [],
        ),
        (
            {
                "properties": {
                    "openslide.bounds-x": "1e308",
                    "openslide.bounds-y": "1e308",
                    "openslide.bounds-width": "1e308",
                    "openslide.bounds-height": "1e308",
                }
            },
            None,
            [],
        ),
    ],
)
def test_huge_numbers_read_as_absent(
    tmp_path: Path, slide: dict[str, Any], footer: dict[str, Any] | None, absent: list[str]
) -> None:
    path = _slide(tmp_path / "n.cinr", slide=slide, footer=footer)
    with open_cinr(path) as s:
        props = dict(s.properties)
    for key in absent:
        assert key not in props
    assert "cinr.level-downsample" not in props or props["cinr.level-downsample"] == "1"
    if "openslide.bounds-x" in props:
        x, y, w, h = (int(props[f"openslide.bounds-{n}"]) for n in ("x", "y", "width", "height"))
        assert 0 <= x <= x + w <= W and 0 <= y <= y + h <= H
    if slide.get("level_downsample") == 1e-320:  # read as 1: the bounds unchanged
        assert (props["openslide.bounds-x"], props["openslide.bounds-width"]) == ("10", "100")


# -- 2. mip images that cannot be decoded ------------------------------------------------------


def _good_mip() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 32, 3), 128, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


BAD_MIPS: dict[str, Callable[[], bytes]] = {
    "truncated PNG": lambda: _good_mip()[: len(_good_mip()) // 2],
    "JPEG signature then garbage": lambda: b"\xff\xd8\xff" + b"garbage!" * 16,
    "PNG signature then garbage": lambda: b"\x89PNG\r\n\x1a\n" + b"garbage!" * 16,
    "4097x4096 PNG": lambda: _png(4097, 4096),
    "32x21 PNG": lambda: _png(32, 21),
    "iCCP inflating to 8 MiB": lambda: _png(
        32, 20, ((b"iCCP", b"icc\0\0" + zlib.compress(bytes(8 << 20), 9)),)
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_MIPS))
def test_bad_mip_image_is_a_format_error(tmp_path: Path, kind: str) -> None:
    path = _slide(tmp_path / "m.cinr", mip=BAD_MIPS[kind]())
    with open_cinr(path) as s:
        with pytest.raises(CinrFormatError, match=f"block {MIP}"):
            s.read_region((0, 0), 1, (150, 20))
        with pytest.raises(CinrFormatError, match=f"block {MIP}"):
            s.get_thumbnail((64, 64))
        with pytest.raises(CinrFormatError, match=f"block {MIP}"):
            s.read(0, 0, 64, 40, scale=0.5)


# -- 3. index records of the wrong kind --------------------------------------------------------


def test_swapped_index_records_are_a_format_error(tmp_path: Path) -> None:
    good = _slide(tmp_path / "ok.cinr").read_bytes()
    parts = parts_of(good)
    records = list(parts["records"])
    records[0], records[MIP] = records[MIP], records[0]
    path = tmp_path / "swapped.cinr"
    path.write_bytes(assemble(parts["header"], [parts["region"]], records, parts["footer"], pre={"minor": 1}))
    with pytest.raises(CinrFormatError, match="block 0 is a level block but its index record says image"):
        open_cinr(path)
    with CinrReader(path) as r:
        with pytest.raises(CinrFormatError, match="block 0 is a image block, not a model block"):
            r.read_payload(0)
        with pytest.raises(CinrFormatError, match=f"block {MIP} is a model block, not an image block"):
            r.read_image_block(MIP)


# -- 5. a block declaring far more tensor data than its model holds ---------------------------


def _inflated_payload(rows: int) -> bytes:
    """The vector's payload with its hash table replaced by ``rows`` x 2 int8 zeros (one group)."""
    _, payload = _vector()
    stored, metadata = load_safetensors(payload, "vector")
    info = loads_json(metadata[QUANT_METADATA_KEY].encode(), "quant")
    table = next(k for k in info["tensors"] if "table" in k)
    stored[table] = torch.zeros((rows, 2), dtype=torch.int8)
    stored[table + "::min"] = torch.zeros(1)
    stored[table + "::scale"] = torch.ones(1)
    info["tensors"][table]["groups"] = [rows]
    return save_safetensors(stored, {**metadata, QUANT_METADATA_KEY: json.dumps(info)})


def test_inflated_tensor_block_is_refused_before_dequantization(tmp_path: Path) -> None:
    raw = 64 << 20
    path = _slide(tmp_path / "big.cinr", payload=_inflated_payload(raw // 2))
    assert path.stat().st_size < 64 << 10  # a small file ...
    with CinrReader(path) as r:
        assert r.block_info(0).raw_length > raw  # ... that declares 64 MiB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open_cinr(path) as s:
        with pytest.raises(CinrFormatError, match="block 0 .*tensors do not match the model"):
            s.read(0, 0, 40, 40)
    grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    # The payload itself (64 MiB) may be decompressed; no float copy of it (256 MiB) is made.
    assert grew_kib < 128 << 10


# -- 9. associated images of too many pixels --------------------------------------------------


@pytest.mark.parametrize("size", [(8193, 4096), (13000, 13000)])
def test_associated_image_pixel_limit(tmp_path: Path, size: tuple[int, int]) -> None:
    assert size[0] * size[1] > MAX_ASSOCIATED_PIXELS
    path = _slide(tmp_path / "a.cinr", associated={"macro": _png(*size), "label": _png(20, 10)})
    with open_cinr(path) as s:
        assert s.associated_images["label"].size == (20, 10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with pytest.raises(CinrFormatError, match="associated image 'macro'.*over the limit"):
                s.associated_images["macro"]


def test_bad_associated_image_is_a_format_error(tmp_path: Path) -> None:
    path = _slide(tmp_path / "a.cinr", associated={"label": b"\x89PNG\r\n\x1a\n" + b"garbage!" * 8})
    with open_cinr(path) as s:
        with pytest.raises(CinrError, match="associated image 'label'"):
            s.associated_images["label"]


# -- 10. models that validate but cost hours to decode (issue 14) -----------------------------


def _costly_payload(model: dict[str, Any]) -> bytes:
    """A real payload for the vector's model with ``model``'s edits (weights zero: it compresses
    to a few KiB), so that only the decoding budget stands between the file and its cost."""
    from cinr_codec.coding.hashgrid import quantize_model
    from cinr_codec.core.config import ModelConfig
    from cinr_codec.core.models import build_model

    header, _ = _vector()
    net = build_model(ModelConfig.from_dict({**header["model"], **model}))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    return quantize_model(net, header["quantization"]["setting"])


def test_a_model_over_the_decoding_budget_is_refused_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import cinr_codec.coding.base
    from cinr_codec.core.config import MAX_MACS_PER_PIXEL

    wide = {"mlp_width": 1024, "mlp_depth": 8}  # 7.4 M multiply-adds a pixel: 23 s for 40 x 40
    path = _slide(tmp_path / "wide.cinr", model=wide, payload=_costly_payload(wide))
    assert path.stat().st_size < 64 << 10
    t0 = time.perf_counter()
    limit = f"{MAX_MACS_PER_PIXEL:,}"
    with pytest.raises(
        CinrFormatError, match=rf"wide\.cinr: model: .* 7,\d{{3}},\d{{3}} multiply-adds .*{limit}"
    ):
        open_cinr(path)  # refused from the header, before any block is read
    assert time.perf_counter() - t0 < 2.0
    # Nothing else is wrong with the file: without the budget it opens.
    monkeypatch.setattr(cinr_codec.coding.base, "MAX_MACS_PER_PIXEL", 1 << 40)
    with open_cinr(path) as s:
        assert s.dimensions == (W, H)


@pytest.mark.parametrize(
    "model",
    [
        {"mlp_width": 4096, "mlp_depth": 64},
        {"kind": "cinr", "conv_width": 4096, "mlp_width": 64, "conv_a_depth": 2, "conv_c_depth": 2},
        {"kind": "engp", "mlp_width": 800, "mlp_depth": 8},
    ],
)
def test_every_costly_configuration_within_the_ranges_is_refused(
    tmp_path: Path, model: dict[str, Any]
) -> None:
    path = _slide(tmp_path / "costly.cinr", model=model)  # the header alone: no tensor is looked at
    with pytest.raises(CinrFormatError, match=r"costly\.cinr.*multiply-adds per pixel, over the limit"):
        open_cinr(path)
