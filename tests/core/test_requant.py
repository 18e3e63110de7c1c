"""Re-quantization to a JPEG source's lattice (``core.requant``) and reading a TIFF's JPEG coding
(``encode.jpeg_coding``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cinr_codec.core.requant import SourceJpeg, parse_source_jpeg, requantize
from cinr_codec.encode.jpeg_coding import jpeg_coding, parse_jpeg_coding
from cinr_codec.errors import CinrFormatError


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    e = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / e)


def _jpeg_tiff(pixels: np.ndarray, path: Path, q: int, tile: int = 64) -> tuple[np.ndarray, SourceJpeg]:
    """``pixels`` saved as a JPEG-tiled TIFF by libvips at ``q``: its decoded level 0 and coding."""
    import pyvips

    h, w = pixels.shape[:2]
    img = pyvips.Image.new_from_memory(np.ascontiguousarray(pixels).tobytes(), w, h, 3, "uchar")
    img.tiffsave(str(path), tile=True, tile_width=tile, tile_height=tile, compression="jpeg", Q=q)
    back = pyvips.Image.new_from_file(str(path))
    decoded = np.ndarray(buffer=back.write_to_memory(), dtype=np.uint8, shape=(h, w, back.bands))[..., :3]
    sj = jpeg_coding(path, 0, w, h)
    assert sj is not None
    return decoded.copy(), sj


@pytest.fixture(scope="module")
def q60(he_image: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, SourceJpeg]:
    """256x192 of real H&E as a Q 60 JPEG-tiled TIFF (64-px tiles, 4:2:0): decoded pixels, coding."""
    return _jpeg_tiff(he_image[900:1092, 900:1156], tmp_path_factory.mktemp("rq") / "q60.tif", 60)


def test_a_libvips_tiff_s_coding_is_read(
    q60: tuple[np.ndarray, SourceJpeg], he_image: np.ndarray, tmp_path: Path
) -> None:
    _, sj = q60
    assert (sj.tile, sj.transform, sj.sampling) == (64, "ycbcr", ((2, 2), (1, 1), (1, 1)))
    assert sj.mcu == (16, 16)
    # libjpeg's luminance table scaled to Q 60 (x 0.8): 16 -> 13 at DC, 11 -> 9 next along the row.
    assert sj.tables[0][:2] == (13, 9) and sj.tables[1] == sj.tables[2]
    # libvips keeps 4:4:4 from Q 90.
    _, s90 = _jpeg_tiff(he_image[:64, :64], tmp_path / "q90.tif", 90, tile=32)
    assert s90.sampling == ((1, 1), (1, 1), (1, 1)) and s90.tile == 32 and s90.mcu == (8, 8)


def test_tifffile_written_tiffs_are_read_too(he_image: np.ndarray, tmp_path: Path) -> None:
    """tifffile (imagecodecs' libjpeg) stores RGB pixels as YCbCr 4:2:0 JPEG tiles; a pyramid whose
    lower levels are SubIFDs (an OME-TIFF, as QuPath and bfconvert write) has its level 0 read too."""
    import tifffile

    px = np.ascontiguousarray(he_image[900:1028, 900:1028])
    kw = {"tile": (64, 64), "compression": "jpeg", "compressionargs": {"level": 60}, "photometric": "rgb"}
    plain, ome = tmp_path / "plain.tif", tmp_path / "pyramid.ome.tif"
    tifffile.imwrite(plain, px, **kw)
    with tifffile.TiffWriter(ome, ome=True) as tw:
        tw.write(px, subifds=1, **kw)
        tw.write(np.ascontiguousarray(px[::2, ::2]), subfiletype=1, **kw)
    for path in (plain, ome):
        sj = jpeg_coding(path, 0, 128, 128)
        assert sj is not None, path.name
        assert (sj.tile, sj.transform, sj.sampling) == (64, "ycbcr", ((2, 2), (1, 1), (1, 1)))
        decoded = tifffile.imread(path)
        assert decoded.shape == (128, 128, 3)
        assert _psnr(requantize(decoded, 0, 0, sj), decoded) > 45.0
        # The plain file has no level 1; the OME-TIFF's (a SubIFD) is coded the same way.
        assert (jpeg_coding(path, 1, 64, 64) is None) == (path == plain)


def test_the_sample_slide_is_rgb_jpeg() -> None:
    """Aperio's tiles are RGB JPEG (no colour transform), 240 px, one table for all three."""
    from cinr_codec.encode.source import sample_slide_path

    sj = jpeg_coding(sample_slide_path(), 0, 2220, 2967)
    assert sj is not None and (sj.tile, sj.transform) == (240, "rgb")
    assert sj.sampling == ((1, 1), (1, 1), (1, 1)) and sj.tables[0] == sj.tables[1] == sj.tables[2]
    assert jpeg_coding(sample_slide_path(), 0, 2220, 2966) is None  # not the level asked for


def test_other_files_have_no_coding(tmp_path: Path, he_image: np.ndarray) -> None:
    import pyvips

    img = pyvips.Image.new_from_array(np.ascontiguousarray(he_image[:64, :64]))
    img.tiffsave(str(tmp_path / "lzw.tif"), tile=True, tile_width=32, tile_height=32, compression="lzw")
    assert jpeg_coding(tmp_path / "lzw.tif", 0, 64, 64) is None
    img.pngsave(str(tmp_path / "a.png"))
    assert jpeg_coding(tmp_path / "a.png", 0, 64, 64) is None
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 100)
    assert jpeg_coding(tmp_path / "junk.tif", 0, 64, 64) is None
    # A frame header that is progressive, or tables that are missing, is not taken.
    assert (
        parse_jpeg_coding(
            b"", b"\xff\xd8\xff\xc2\x00\x11\x08\x00\x40\x00\x40\x03" + b"\x01\x22\x00" * 3, 6, 64
        )
        is None
    )
    assert (
        parse_jpeg_coding(
            b"", b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x40\x00\x40\x03" + b"\x01\x22\x00" * 3, 6, 64
        )
        is None
    )
    assert parse_jpeg_coding(b"", b"", 6, 64) is None


def test_the_source_s_own_pixels_come_back(q60: tuple[np.ndarray, SourceJpeg]) -> None:
    """The transform mimics the source's decoder: its own pixels change by about a rounding step."""
    src, sj = q60
    assert _psnr(requantize(src, 0, 0, sj), src) > 45.0


def test_pixels_near_the_source_move_to_it(q60: tuple[np.ndarray, SourceJpeg]) -> None:
    src, sj = q60
    rng = np.random.default_rng(0)
    noisy = np.clip(src + rng.normal(0, 4.0, src.shape), 0, 255).astype(np.uint8)
    before, after = _psnr(noisy, src), _psnr(requantize(noisy, 0, 0, sj), src)
    assert after > before + 3.0, (before, after)


def test_only_whole_mcus_of_whole_tiles_change(q60: tuple[np.ndarray, SourceJpeg]) -> None:
    src, sj = q60
    cut = src[:100, :150]  # the level's edge cuts the tiles: MCUs past row 96 / column 144 stay
    rng = np.random.default_rng(1)
    noisy = np.clip(cut + rng.normal(0, 4.0, cut.shape), 0, 255).astype(np.uint8)
    out = requantize(noisy, 0, 0, sj)
    assert np.array_equal(out[96:], noisy[96:]) and np.array_equal(out[:, 144:], noisy[:, 144:])
    assert not np.array_equal(out[:96, :144], noisy[:96, :144])
    # Tile by tile: a region of the second tile column alone gives the same pixels.
    assert np.array_equal(requantize(noisy[:, 64:], 64, 0, sj)[:96, :80], out[:96, 64:144])
    with pytest.raises(ValueError, match="MCU grid"):
        requantize(noisy, 8, 0, sj)


def test_a_region_off_the_tile_grid_is_cut_at_the_tile_lines(q60: tuple[np.ndarray, SourceJpeg]) -> None:
    """A block that does not hold whole source tiles (Aperio's 240-px tiles in 512-px blocks) is
    re-quantized in its parts of the tiles: a region starting on the MCU grid inside a tile gives,
    per cell, what that cell alone gives."""
    src, sj = q60
    rng = np.random.default_rng(2)
    noisy = np.clip(src + rng.normal(0, 4.0, src.shape), 0, 255).astype(np.uint8)
    # The region (32, 16)-(224, 192) meets tile columns [32, 64), [64, 128), [128, 192), [192, 224).
    region = noisy[16:, 32:224]
    out = requantize(region, 32, 16, sj)
    for ya, yb in ((16, 64), (64, 128), (128, 192)):
        for xa, xb in ((32, 64), (64, 128), (128, 192), (192, 224)):
            cell = requantize(noisy[ya:yb, xa:xb], xa, ya, sj)
            assert np.array_equal(out[ya - 16 : yb - 16, xa - 32 : xb - 32], cell), (xa, ya)
    # Whole tiles inside the region are re-quantized as in a whole-tile read.
    assert np.array_equal(out[48:112, 32:96], requantize(noisy, 0, 0, sj)[64:128, 64:128])
    assert _psnr(out, src[16:, 32:224]) > _psnr(region, src[16:, 32:224]) + 2.0


def test_the_header_object_round_trips_and_bad_ones_are_refused(q60: tuple[np.ndarray, SourceJpeg]) -> None:
    _, sj = q60
    obj = sj.to_header()
    assert parse_source_jpeg(obj, "f") == sj
    rgb = replace(sj, transform="rgb", sampling=((1, 1),) * 3, tile=8)
    assert parse_source_jpeg(rgb.to_header(), "f") == rgb
    # The encoder's spread is per coefficient (format 1.10), max(4, 0.3 x the step).
    assert sj.spread_per_coefficient and sj.spreads.shape == (3, 64)
    assert sj.spreads[0, 0] == max(4.0, 0.3 * sj.tables[0][0]) and float(sj.spreads.max()) > 10.0
    one = replace(sj, spread=6.0)
    assert parse_source_jpeg(one.to_header(), "f") == one and not one.spread_per_coefficient
    assert float(one.spreads.min()) == float(one.spreads.max()) == 6.0
    tiny = replace(sj, spread=0.01)  # the smallest spread: finite pixels, the nearest lattice value
    assert parse_source_jpeg(tiny.to_header(), "f") == tiny
    assert requantize(q60[0], 0, 0, tiny).dtype == np.uint8
    bad = [
        [],
        {**obj, "transform": "cmyk"},
        {**obj, "sampling": [[2, 2], [1, 1]]},
        {**obj, "sampling": [[3, 1], [1, 1], [1, 1]]},
        {**obj, "sampling": [[True, 1], [1, 1], [1, 1]]},
        {**obj, "tables": [obj["tables"][0]] * 2},
        {**obj, "tables": [[0] * 64] * 3},
        {**obj, "tables": [[1.5] * 64] * 3},
        {**obj, "spread": 0},
        {**obj, "spread": 1e-300},
        {**obj, "spread": float("nan")},
        {**obj, "spread": "6"},
        {**obj, "spread": [[6.0] * 64] * 2},
        {**obj, "spread": [[6.0] * 64, [6.0] * 64, [6.0] * 63]},
        {**obj, "spread": [[6.0] * 64, [6.0] * 64, [0.0] + [6.0] * 63]},
        {**obj, "spread": [[6.0] * 64, [6.0] * 64, [True] + [6.0] * 63]},
        {**obj, "tile": 24},  # not a multiple of the 16-px MCU
        {**obj, "tile": 1 << 20},
        {**obj, "tile": True},
    ]
    for value in bad:
        with pytest.raises(CinrFormatError, match="slide.source_jpeg"):
            parse_source_jpeg(value, "f")


@pytest.mark.parametrize(
    ("transform", "sampling"),
    [
        ("ycbcr", ((2, 2), (1, 1), (1, 1))),
        ("ycbcr", ((2, 1), (1, 1), (1, 1))),
        ("ycbcr", ((1, 2), (1, 1), (1, 1))),
        ("ycbcr", ((1, 1), (1, 1), (1, 1))),
        ("rgb", ((1, 1), (1, 1), (1, 1))),
    ],
)
def test_the_compiled_kernel_gives_numpy_s_pixels(
    q60: tuple[np.ndarray, SourceJpeg], transform: str, sampling: tuple[tuple[int, int], ...]
) -> None:
    """``_requant.c`` computes the numpy path's formulas in float32: a pixel may differ by one
    rounding step where a sum's order differs, on a few pixels in 10^4 at most."""
    from cinr_codec.core import native
    from cinr_codec.core.requant import _requant_lib

    if _requant_lib() is None:
        pytest.skip("no C compiler: the numpy path alone")
    src, sj = q60
    sj = replace(sj, transform=transform, sampling=sampling)
    rng = np.random.default_rng(3)
    noisy = np.clip(src + rng.normal(0, 5.0, src.shape), 0, 255).astype(np.uint8)
    region = noisy[:, 16:]  # a region off the tile grid: cells cut at the tile lines
    compiled = requantize(region, 16, 0, sj)
    with native.disabled():
        reference = requantize(region, 16, 0, sj)
    diff = np.abs(compiled.astype(np.int16) - reference.astype(np.int16))
    assert diff.max() <= 1 and np.count_nonzero(diff) <= 4e-4 * diff.size
    assert not np.array_equal(compiled, region)


@pytest.mark.parametrize(
    "sampling", [((2, 2), (1, 1), (1, 1)), ((2, 1), (1, 1), (1, 1)), ((1, 1), (1, 1), (1, 1))]
)
def test_a_part_of_a_cell_with_the_margin_gives_the_cell_s_pixels(
    q60: tuple[np.ndarray, SourceJpeg], sampling: tuple[tuple[int, int], ...]
) -> None:
    """A decoder renders a 128-px tile, not the whole cell: re-quantized with ``margin`` around
    it and cropped, its pixels are those of the cell re-quantized whole (without the margin the
    upsampled chroma at its edges would differ)."""
    src, sj = q60
    sj = replace(sj, sampling=sampling, tile=192)  # one cell: [0, 192) x [0, 192)
    rng = np.random.default_rng(4)
    noisy = np.clip(src + rng.normal(0, 5.0, src.shape), 0, 255).astype(np.uint8)[:, :192]
    whole = requantize(noisy, 0, 0, sj)
    mx, my = sj.margin
    assert (mx, my) == (16 if sampling[0][0] == 2 else 0, 16 if sampling[0][1] == 2 else 0)
    x0, y0, x1, y1 = 64, 48, 128, 112  # a part on the MCU grid, inside the cell
    ex0, ey0, ex1, ey1 = x0 - mx, y0 - my, x1 + mx, y1 + my
    part = requantize(noisy[ey0:ey1, ex0:ex1], ex0, ey0, sj)[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]
    assert np.array_equal(part, whole[y0:y1, x0:x1])
    if mx or my:
        bare = requantize(noisy[y0:y1, x0:x1], x0, y0, sj)
        assert not np.array_equal(bare, whole[y0:y1, x0:x1])
