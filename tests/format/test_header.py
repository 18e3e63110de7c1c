"""``format.header``: the one schema of the header, built by the encoder and read by everyone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cinr_codec.coding.hashgrid import HashGridCodec
from cinr_codec.errors import CinrFormatError
from cinr_codec.format import header as H
from cinr_codec.format.container import CinrReader, CinrWriter
from cinr_codec.format.grid import BlockGrid

ROOT = Path(__file__).resolve().parents[2]
VECTORS = sorted((ROOT / "formats" / "vectors").glob("*.cinr"))


def test_vectors_parse_to_a_layout() -> None:
    for path in VECTORS:
        with CinrReader(path) as r:
            layout = H.parse_layout(r)
            kind = r.header["model"]["kind"]
            assert kind in layout.codec.kinds and layout.config.kind == kind
            assert isinstance(layout.codec, HashGridCodec) == (kind in ("cinr", "ngp", "engp"))
            assert layout.margin == r.header["grid"][H.MARGIN_KEY]
            assert layout.n_blocks == layout.cols * layout.rows
            assert layout.grid.width == layout.width == r.header["slide"]["width"]


def test_build_header_writes_the_v1_names() -> None:
    grid = BlockGrid(300, 200, 128, 16, (2, 4))
    slide = H.slide_fields(300, 200, {"openslide.mpp-x": "0.25", "openslide.vendor": "aperio"})
    H.scale_slide_fields(slide, 1, 4.0)
    header = H.build_header(
        slide=slide,
        grid=grid,
        representation={"model": {"kind": "toy"}},
        preset="fast",
        tissue={"fraction": 0.5},
    )
    assert list(header) == ["slide", "grid", "model", "encoder", "tissue", "mips"]
    assert header["grid"] == {"block_size": 128, "halo": 16, "cols": 3, "rows": 2}
    assert header["mips"] == {"downsamples": [2, 4], "first_block": 6, "filter": "box"}
    assert header["slide"]["mpp_x"] == 1.0 and header["slide"]["level"] == 1
    assert header["encoder"]["model"] == "toy" and header["encoder"]["software"].startswith("cinr_codec ")
    with pytest.raises(ValueError, match="strings to strings"):
        H.slide_fields(1, 1, {"a": 1})  # type: ignore[dict-item]


def _file(tmp_path: Path, header: dict[str, Any], n_blocks: int) -> Path:
    path = tmp_path / "h.cinr"
    with CinrWriter(path, header, n_blocks) as w:
        for i in range(n_blocks):
            w.add_background_block(i, (200, 200, 200))
        w.commit()
    return path


def _header(**over: Any) -> dict[str, Any]:
    with CinrReader(VECTORS[0]) as r:
        h = dict(r.header)
    h.pop("container", None)
    h.update(over)
    return h


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": {"block_size": 32, "halo": 0, "cols": 1, "rows": 1}}, "does not cover"),
        ({"grid": {"block_size": 256, "halo": 300, "cols": 1, "rows": 1}}, "halo"),
        ({"model": {"kind": "nope"}}, "kind 'nope' is not one of"),
        ({"model": []}, "'model' is missing or not an object"),
        ({"mips": {"downsamples": [3], "first_block": 1}}, "grid has"),
    ],
)
def test_strict_parse_names_the_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    h = _header(**change)
    h["slide"] = {**h["slide"], "width": 64, "height": 40} if "grid" not in change else h["slide"]
    if "grid" not in change:
        h["grid"] = {"block_size": 64, "halo": 0, "cols": 1, "rows": 1}
    path = _file(tmp_path, h, 1)
    with CinrReader(path) as r, pytest.raises(CinrFormatError, match=message):
        H.parse_layout(r)


def test_mips_must_divide_the_block(tmp_path: Path) -> None:
    h = _header()
    h["slide"] = {**h["slide"], "width": 64, "height": 40}
    h["grid"] = {"block_size": 64, "halo": 0, "cols": 1, "rows": 1}
    h["mips"] = {"downsamples": [3], "first_block": 1}
    path = _file(tmp_path, h, 2)
    with CinrReader(path) as r, pytest.raises(CinrFormatError, match="increasing divisors"):
        H.parse_layout(r)


def test_lenient_description_never_raises_on_odd_numbers() -> None:
    huge = 10**400
    d = H.describe(
        {
            "slide": {
                "mpp_x": huge,
                "mpp_y": -1,
                "objective_power": "20",
                "vendor": 7,
                "level_downsample": huge,
            },
            "model": {"kind": "cinr"},
            "encoder": {"preset": "fast", "software": "x"},
            "quantization": {"setting": "int8"},
        },
        {"quality": {"psnr_db": 30.0}},
    )
    assert d.mpp == (None, None) and d.objective_power is None and d.vendor is None
    assert d.level_downsample == 1.0 and d.model == "cinr" and d.storage == "int8"
    assert d.quality == {"psnr_db": 30.0}
    assert H.describe({}).properties == {} and H.header_mpp({"slide": []}) == (None, None)


def test_derived_images_keep_only_sane_entries() -> None:
    """``slide.derived_images``: a known derivable name with two integer sides within the limits;
    anything else (another name, a bool, a float, a zero or huge side, too many pixels, not a
    list) is ignored, never raised on."""
    ok = {"thumbnail": [574, 768]}
    assert H.describe({"slide": {"derived_images": ok}}).derived_images == {"thumbnail": (574, 768)}
    for bad in (
        {"label": [10, 10]},
        {"thumbnail": [True, 10]},
        {"thumbnail": [10.0, 10]},
        {"thumbnail": [0, 10]},
        {"thumbnail": [10**400, 10]},
        {"thumbnail": [8192, 8192]},  # 2^26 pixels: over an associated image's 2^25
        {"thumbnail": [10, 10, 10]},
        {"thumbnail": "574x768"},
        [574, 768],
        None,
    ):
        assert H.describe({"slide": {"derived_images": bad}}).derived_images == {}, bad
    assert H.describe({}).derived_images == {}


def test_psnr_and_totals() -> None:
    assert H.psnr_of(0.0, 3) == float("inf") and H.psnr_of(1.0, 0) is None
    t = H.SlideTotals(sse=3 * 65025.0, n=3, t_sse=0.0, t_n=3)
    q = t.quality()
    assert q["psnr_all"] == pytest.approx(0.0) and q["psnr"] == float("inf") and q["ssim"] == 0.0
    footer = H.slide_footer(t, BlockGrid(10, 10, 64), 16)
    assert footer["quality"]["psnr_db"] is None  # JSON has no infinity
