"""``open_cinr()``/``CinrSlide``: OpenSlide's interface over a real block-grid encode, any-scale reads.

The files are made once per session (``make_files``, shared with ``test_decode_cli.py``): a
280x200 crop of real H&E tissue (from ``../shared/data/he-prostate-2500.jpeg``, or from the bundled
sample slide when the shared data are absent), encoded with ``encode_slide`` in 128-px blocks (a 3x2
grid whose last column is 24 px wide and last row 72 px high; the top-left block is glass, stored as
a colour; mips at 2, 4, 8), and a copy of it re-labelled as level 1 of an Aperio slide with two
associated images.
"""

from __future__ import annotations

import functools
import io
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
import torch
from cinr_container_helpers import rewrite
from data_paths import ROOT, SAMPLE, SHARED
from hypothesis import given, settings
from hypothesis import strategies as st
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from cinr_codec.api import CinrSlide, SlideRequestError, open_cinr, virtual_pyramid
from cinr_codec.coding.images import avif_available
from cinr_codec.core.metrics import psnr
from cinr_codec.core.resample import box_downsample, to_uint8
from cinr_codec.decode import SlideDecoder, decode_image
from cinr_codec.format.container import CinrReader

VECTORS = ROOT / "formats" / "vectors"
#: Crop of he-prostate-2500.jpeg: (top, left, height, width). Its top-left 128-px block is glass.
CROP = (16, 1040, 200, 280)
#: The same-size crop of the bundled sample, used without ../shared/data: glass at the top left
#: (with the 16-px margin), some tissue in each of the other five blocks.
SAMPLE_CROP = (864, 656, 200, 280)
W, H = CROP[3], CROP[2]


def _source_image() -> np.ndarray:
    y, x, h, w = CROP
    path = SHARED / "he-prostate-2500.jpeg"
    if path.exists():
        with Image.open(path) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB"))[y : y + h, x : x + w])
    from cinr_codec.encode.source import SlideSource

    y, x, h, w = SAMPLE_CROP
    with SlideSource(SAMPLE) as s:
        return s.read(x, y, w, h)


def _relabel(src: Path, dst: Path, associated: dict[str, bytes]) -> None:
    """Copy a .cinr file as if it were level 1 (downsample 2) of an Aperio slide, with associated images."""
    with CinrReader(src) as r:
        header = dict(r.header)
        slide = dict(header["slide"])
        slide.update(
            mpp_x=0.5,
            mpp_y=0.5,
            objective_power=20.0,
            vendor="aperio",
            level=1,
            level_downsample=2.0,
            properties={
                "aperio.MPP": "0.25",
                "aperio.AppMag": "40",
                "openslide.vendor": "aperio",
                "openslide.mpp-x": "0.25",
                "openslide.mpp-y": "0.25",
                "openslide.objective-power": "40",
                "openslide.level-count": "3",
                "openslide.level[0].width": str(2 * W),
                "openslide.level[1].downsample": "2.0001",
                "openslide.bounds-x": "21",
                "openslide.bounds-y": "10",
                "openslide.bounds-width": "300",
                "openslide.bounds-height": "101",
                "openslide.quickhash-1": "abc",
                "openslide.associated.label.width": "40",
                "openslide.associated.macro.width": "50",
                "openslide.associated.thumbnail.width": "64",
            },
        )
        header["slide"] = slide
        rewrite(r, dst, header, dict(associated))


def _image_bytes(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, quality=95)
    return buf.getvalue()


@functools.cache
def make_files(root: str) -> dict[str, Any]:
    """Encode the session's test files under ``root`` (once per process)."""
    from cinr_codec.encode.slide import encode_slide

    folder = Path(root) / "cinr-api-files"
    folder.mkdir(exist_ok=True)
    original = _source_image()
    png = folder / "crop.png"
    Image.fromarray(original).save(png)
    # One thread: several orders of magnitude less sensitive to a loaded machine, and these are tiny fits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = encode_slide(
            png, folder / "slide.cinr", model="cinr", block_size=128, margin=16, steps=30, device="cpu"
        )
    finally:
        torch.set_num_threads(threads)
    label = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    macro = np.full((20, 50, 3), (200, 40, 90), dtype=np.uint8)
    _relabel(
        folder / "slide.cinr",
        folder / "relabelled.cinr",
        {"label": _image_bytes(label, "PNG"), "macro": _image_bytes(macro, "JPEG")},
    )
    return {
        "slide": folder / "slide.cinr",
        "relabelled": folder / "relabelled.cinr",
        "png": png,
        "original": original,
        "summary": summary,
        "label": label,
        "macro": macro,
    }


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Decode with one intra-op thread: on a loaded 2-core machine two threads are ~6x slower here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_files(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def slide(files: dict[str, Any]) -> Iterator[CinrSlide]:
    s = open_cinr(files["slide"])
    yield s
    s.close()


# -- the OpenSlide surface --------------------------------------------------------------------------


def test_detect_format(files: dict[str, Any], tmp_path: Path) -> None:
    assert CinrSlide.detect_format(files["slide"]) == "cinr"
    assert CinrSlide.detect_format(str(files["slide"])) == "cinr"
    assert CinrSlide.detect_format(files["png"]) is None
    assert CinrSlide.detect_format(tmp_path / "missing.cinr") is None
    assert CinrSlide.detect_format(tmp_path) is None


def test_file_layout_is_what_the_tests_need(files: dict[str, Any], slide: CinrSlide) -> None:
    dec = slide.decoder
    assert (dec.grid.cols, dec.grid.rows, dec.grid.mip_downsamples) == (3, 2, (2, 4, 8))
    kinds = [dec.reader.block_info(i).kind for i in range(6)]
    assert kinds[0] == "background" and kinds.count("model") >= 4, kinds


def test_virtual_pyramid(slide: CinrSlide) -> None:
    assert slide.dimensions == (W, H)
    assert slide.level_count == 2
    assert slide.level_dimensions == ((280, 200), (140, 100))
    assert slide.level_downsamples == (1.0, 2.0)


@pytest.mark.parametrize(
    ("w", "h", "expected"),
    [
        (256, 100, [(256, 100)]),
        (1, 1, [(1, 1)]),
        (257, 3, [(257, 3), (129, 2)]),
        (1000, 600, [(1000, 600), (500, 300), (250, 150)]),
        (2049, 513, [(2049, 513), (1025, 257), (513, 129), (257, 65), (129, 33)]),
    ],
)
def test_pyramid_sizes(w: int, h: int, expected: list[tuple[int, int]]) -> None:
    """Level k is ceil(size / 2**k), down to the first level that fits 256 px."""
    dims, ds = virtual_pyramid(w, h)
    assert dims == tuple(expected)
    assert ds == tuple(float(2**k) for k in range(len(expected)))


def test_properties(files: dict[str, Any], slide: CinrSlide) -> None:
    p = slide.properties
    with CinrReader(files["slide"]) as r:
        bg = r.header["slide"]["background"]
        quality = r.footer["quality"]
    assert p["openslide.level-count"] == "2"
    assert [p[f"openslide.level[1].{k}"] for k in ("width", "height", "downsample")] == ["140", "100", "2"]
    assert p["openslide.level[0].tile-width"] == p["openslide.level[1].tile-height"] == "256"
    assert p[openslide.PROPERTY_NAME_BACKGROUND_COLOR] == "{:02X}{:02X}{:02X}".format(*bg)
    assert tuple(bg) == slide.background
    assert p[openslide.PROPERTY_NAME_VENDOR] == "cinr"  # a PNG source has no vendor
    assert float(p["cinr.psnr"]) == pytest.approx(quality["psnr_db"])
    assert float(p["cinr.psnr-all"]) == pytest.approx(quality["psnr_all_db"])
    assert float(p["cinr.ssim"]) == pytest.approx(quality["ssim"])
    assert (p["cinr.model"], p["cinr.preset"], p["cinr.quantization"]) == ("cinr", "fast", "int8+float16")
    assert (p["cinr.block-size"], p["cinr.margin"], p["cinr.mip-downsamples"]) == ("128", "16", "2,4,8")
    assert (p["cinr.blocks"], p["cinr.background-blocks"], p["cinr.level"]) == ("6", "1", "0")
    assert p["cinr.bytes"] == str(files["slide"].stat().st_size)
    assert p["cinr.format-version"] == ("1.11" if avif_available() else "1.1")  # AVIF mips, stored short
    # The PNG source's own (one-level) geometry moved out of openslide.*.
    assert p["cinr.source.openslide.level-count"] == "1"
    assert "openslide.mpp-x" not in p
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in p.items())
    with pytest.raises(TypeError):
        p["x"] = "y"  # type: ignore[index]


def test_properties_of_a_relabelled_level_1_encode(files: dict[str, Any]) -> None:
    with open_cinr(files["relabelled"]) as s:
        p = s.properties
        assert s.mpp == (0.5, 0.5)
        dz = DeepZoomGenerator(s, limit_bounds=True)  # reads the rescaled bounds
        assert dz.level_dimensions[-1] == (151, 51)
        assert dz.get_tile(dz.level_count - 1, (0, 0)).size == (151, 51)
    # Vendor properties verbatim (they describe the source's level 0) ...
    assert (p["aperio.MPP"], p["aperio.AppMag"], p["openslide.vendor"]) == ("0.25", "40", "aperio")
    # ... openslide.* describe this slide: the encoded level's resolution, the virtual pyramid.
    assert (p["openslide.mpp-x"], p["openslide.mpp-y"], p["openslide.objective-power"]) == (
        "0.5",
        "0.5",
        "20",
    )
    assert p["openslide.level-count"] == "2" and p["openslide.level[0].width"] == "280"
    assert p["openslide.level[1].downsample"] == "2"
    # Bounds halved (x0 floor, x1 ceil) and clipped to the slide.
    assert [p[f"openslide.bounds-{k}"] for k in ("x", "y", "width", "height")] == ["10", "5", "151", "51"]
    # The source's originals are kept, out of the way.
    assert p["cinr.source.openslide.mpp-x"] == "0.25"
    assert p["cinr.source.openslide.level-count"] == "3"
    assert p["cinr.source.openslide.quickhash-1"] == "abc" and "openslide.quickhash-1" not in p
    assert (p["cinr.level"], p["cinr.level-downsample"], p["cinr.source-vendor"]) == ("1", "2", "aperio")
    # Properties of associated images that were not stored are dropped.
    assert "openslide.associated.label.width" in p and "openslide.associated.thumbnail.width" not in p


def test_associated_images(files: dict[str, Any], slide: CinrSlide) -> None:
    assert dict(slide.associated_images) == {}
    with open_cinr(files["relabelled"]) as s:
        imgs = s.associated_images
        assert sorted(imgs) == ["label", "macro"] and len(imgs) == 2 and "label" in imgs
        label = imgs["label"]
        assert label.mode == "RGB" and label.size == (40, 30)
        assert (np.asarray(label) == files["label"]).all()  # PNG: lossless
        macro = imgs["macro"]
        assert macro.mode == "RGB" and macro.size == (50, 20)
        assert np.abs(np.asarray(macro).astype(int) - files["macro"]).max() <= 3  # JPEG
        with pytest.raises(KeyError):
            imgs["thumbnail"]


def test_read_region(files: dict[str, Any], slide: CinrSlide) -> None:
    full = slide.read(0, 0, W, H)
    im = slide.read_region((100, 60), 0, (50, 40))
    assert im.mode == "RGBA" and im.size == (50, 40)
    a = np.asarray(im)
    assert (a[..., 3] == 255).all() and (a[..., :3] == full[60:100, 100:150]).all()
    # Partly outside: transparent (0, 0, 0, 0) outside, opaque inside.
    a = np.asarray(slide.read_region((W - 10, -5), 0, (30, 20)))
    assert (a[:5] == 0).all() and (a[:, 10:] == 0).all()
    assert (a[5:, :10, 3] == 255).all() and (a[5:, :10, :3] == full[:15, W - 10 :]).all()
    # Wholly outside.
    assert (np.asarray(slide.read_region((-500, 10), 1, (20, 20))) == 0).all()
    # Level 1: box means of level 0, exactly read(..., scale=1/2).
    a = np.asarray(slide.read_region((32, 16), 1, (60, 40)))
    assert a.shape == (40, 60, 4) and (a[..., 3] == 255).all()
    assert (a[..., :3] == slide.read(32, 16, 120, 80, 0.5)).all()
    # Fractional locations are accepted (an extension); zero sizes give empty images, as OpenSlide.
    assert slide.read_region((10.5, 3.25), 0, (4, 4)).size == (4, 4)
    assert slide.read_region((0, 0), 0, (0, 5)).size == (0, 5)


def test_read_region_alpha_is_coverage(slide: CinrSlide) -> None:
    """A pixel straddling the slide's edge is partly transparent: alpha = the part inside, and
    compositing on the background colour (as DeepZoomGenerator and get_thumbnail do) gives read()."""
    a = np.asarray(slide.read_region((W - 1, H - 3), 1, (2, 2)))  # level-1 pixels: 2 x 2 level-0 pixels
    assert a[0, 0, 3] == 128 and a[1, 0, 3] == 64  # a half, a quarter inside (127.5 rounds to 128)
    assert (a[:, 1] == 0).all()
    alpha = a[..., 3:].astype(np.float64) / 255.0
    composite = a[..., :3] * alpha + np.array(slide.background) * (1.0 - alpha)
    assert np.abs(composite - slide.read(W - 1, H - 3, 4, 4, 0.5)).max() <= 2


@pytest.mark.parametrize(
    "args",
    [
        ((0, 0), 0, (-1, 5)),
        ((0, 0), 0, (5, -1)),
        ((0, 0), 2, (5, 5)),
        ((0, 0), -1, (5, 5)),
        ((0, 0), 0.5, (5, 5)),
        ((0, 0), 0, (5.5, 5)),
        ((math.nan, 0), 0, (5, 5)),
        ((0, math.inf), 0, (5, 5)),
        ((0, 0), 0, (1 << 20, 1 << 20)),
        ((0,), 0, (5, 5)),
        ((0, 0), True, (5, 5)),
    ],
)
def test_read_region_bad_arguments(slide: CinrSlide, args: Any) -> None:
    with pytest.raises(SlideRequestError) as info:
        slide.read_region(*args)
    assert isinstance(info.value, ValueError) and isinstance(info.value, openslide.OpenSlideError)


def test_best_level_for_downsample(slide: CinrSlide) -> None:
    cases = {0.1: 0, 1.0: 0, 1.5: 0, 1.999999: 0, 2.0: 1, 3.9: 1, 1000.0: 1}
    for d, level in cases.items():
        assert slide.get_best_level_for_downsample(d) == level, d


def test_thumbnail(files: dict[str, Any], slide: CinrSlide) -> None:
    t = slide.get_thumbnail((64, 64))
    assert t.mode == "RGB" and t.size == (64, 46)
    ref = Image.fromarray(files["original"]).resize(t.size, Image.Resampling.BOX)
    assert np.abs(np.asarray(t).astype(int) - np.asarray(ref)).mean() < 12


def test_set_cache_and_profile(slide: CinrSlide) -> None:
    slide.set_cache(openslide.OpenSlideCache(8 << 20))
    assert slide.decoder.cache_capacity == 8 << 20
    with pytest.raises(TypeError):
        slide.set_cache(123)  # type: ignore[arg-type]
    slide.set_cache(openslide.OpenSlideCache(256 << 20))
    assert slide.color_profile is None


def test_closed_slide_and_context_manager(files: dict[str, Any]) -> None:
    with open_cinr(files["slide"]) as s:
        assert s.read(0, 0, 4, 4).shape == (4, 4, 3)
        assert repr(s).startswith("CinrSlide(")
    calls = [
        lambda: s.read(0, 0, 4, 4),
        lambda: s.read_region((0, 0), 0, (4, 4)),
        lambda: s.dimensions,
        lambda: s.level_count,
        lambda: s.properties,
        lambda: s.associated_images,
        lambda: s.get_thumbnail((16, 16)),
        lambda: s.get_best_level_for_downsample(2),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="closed"):
            call()
    s.close()  # idempotent


def test_opening_errors(tmp_path: Path, files: dict[str, Any]) -> None:
    from cinr_codec.errors import CinrError

    with pytest.raises(CinrError, match="no such file|cannot open"):
        open_cinr(tmp_path / "missing.cinr")
    with pytest.raises(CinrError, match="not a .cinr file"):
        open_cinr(files["png"])


def test_single_block_files_read_like_decode_image() -> None:
    for vec in sorted(VECTORS.glob("*.cinr")):
        with open_cinr(vec) as s:
            w, h = s.dimensions
            assert (s.read(0, 0, w, h) == decode_image(vec)).all()
            assert s.properties["openslide.background-color"] == "FFFFFF"
            assert "cinr.mip-downsamples" not in s.properties


# -- Deep Zoom --------------------------------------------------------------------------------------


def test_deepzoom(slide: CinrSlide) -> None:
    dz = DeepZoomGenerator(slide, tile_size=254, overlap=1)
    assert dz.level_count == 10  # 280 -> 140 -> ... -> 1
    assert dz.level_dimensions[-1] == (W, H) and dz.level_dimensions[-2] == (140, 100)
    assert dz.level_tiles[-1] == (2, 1)
    for level in range(dz.level_count):
        cols, rows = dz.level_tiles[level]
        for address in {(0, 0), (cols - 1, rows - 1)}:
            tile = dz.get_tile(level, address)
            want = dz.get_tile_dimensions(level, address)
            assert tile.mode == "RGB"
            (x, y), slide_level, (lw, lh) = dz.get_tile_coordinates(level, address)
            if (lw, lh) == want:  # read at the tile's own size: exact
                assert tile.size == want, (level, address)
            else:  # DeepZoomGenerator shrinks with Image.thumbnail, which keeps the aspect ratio:
                # +-1 px, as with OpenSlide's own slides
                assert abs(tile.size[0] - want[0]) <= 1 and abs(tile.size[1] - want[1]) <= 1
    # A full-resolution tile is the same pixels as read().
    for address in ((0, 0), (1, 0)):
        (x, y), slide_level, (lw, lh) = dz.get_tile_coordinates(dz.level_count - 1, address)
        assert slide_level == 0
        tile = np.asarray(dz.get_tile(dz.level_count - 1, address))
        assert (tile == slide.read(x, y, lw, lh)).all()
    # A level-1 tile: the slide's level 1.
    (x, y), slide_level, (lw, lh) = dz.get_tile_coordinates(dz.level_count - 2, (0, 0))
    assert slide_level == 1
    tile = np.asarray(dz.get_tile(dz.level_count - 2, (0, 0)))
    assert (tile == slide.read(x, y, 2 * lw, 2 * lh, 0.5)).all()
    assert 'Format="jpeg"' in dz.get_dzi("jpeg")


# -- any region, any scale --------------------------------------------------------------------------

#: Origin and size (level-0 pixels) of the reference reads, which overhang the slide on every side.
BIG = (-24.0, -16.0, W + 48.0, H + 32.0)


@functools.cache
def _big_read(path: str, scale: float, dx: float) -> np.ndarray:
    with open_cinr(path) as s:
        x, y, w, h = BIG
        return s.read(x + dx, y + dx, w, h, scale)


@settings(max_examples=30, deadline=None)
@given(
    scale_dx=st.sampled_from([(1.0, 0.0), (1.0, 0.375), (0.5, 0.0), (0.25, 0.0), (0.125, 0.0), (2.0, 0.0)]),
    i=st.integers(0, 10_000),
    j=st.integers(0, 10_000),
    ow=st.integers(1, 400),
    oh=st.integers(1, 300),
)
def test_region_is_the_crop_of_a_larger_read(
    files: dict[str, Any], slide: CinrSlide, scale_dx: tuple[float, float], i: int, j: int, ow: int, oh: int
) -> None:
    """read(x, y, w, h, s) equals the same pixels of any larger read on the same lattice (within 1/255)."""
    scale, dx = scale_dx
    big = _big_read(str(files["slide"]), scale, dx)
    bh, bw = big.shape[:2]
    i, j = i % bw, j % bh
    ow, oh = min(ow, bw - i), min(oh, bh - j)
    x0, y0 = BIG[0] + dx, BIG[1] + dx
    x, y = x0 + i / scale, y0 + j / scale
    if float(x).is_integer() and float(y).is_integer() and scale == 1.0:
        x, y = int(x), int(y)  # the decoder's integer fast path
    small = slide.read(x, y, ow / scale, oh / scale, scale)
    assert small.shape == (oh, ow, 3)
    diff = np.abs(small.astype(np.int16) - big[j : j + oh, i : i + ow]).max()
    assert diff <= 1, (scale, dx, i, j, ow, oh, diff)


def test_integer_fast_path_equals_float_path(slide: CinrSlide) -> None:
    a = slide.read(100, 50, 120, 90)  # integers inside the slide: decoded tiles, no filtering
    b = slide.read(100.0, 50.0, 120.0, 90.0)
    assert (a == b).all()


def test_quality_at_every_scale(files: dict[str, Any], slide: CinrSlide) -> None:
    """Coarser reads are never worse than full resolution (against the box-filtered original)."""
    original = files["original"]
    at_1 = psnr(slide.read(0, 0, W, H), original)
    for d in (2, 4, 8):
        got = slide.read(0, 0, W, H, 1.0 / d)
        ref = to_uint8(box_downsample(original, d))
        h, w = H // d, W // d  # pixels wholly inside the slide
        assert got.shape[0] >= h and got.shape[1] >= w
        value = psnr(got[:h, :w], ref[:h, :w])
        assert value >= at_1, f"scale 1/{d}: {value:.2f} dB < {at_1:.2f} dB at scale 1"


def test_outside_the_slide(slide: CinrSlide) -> None:
    bg = np.array(slide.background, dtype=np.uint8)
    for args in ((-100, -100, 50, 50), (W, 0, 10, H), (0, H + 0.5, 20, 3), (1e9, 1e9, 7, 7)):
        out = slide.read(*args)
        assert (out == bg).all(), args
    # numpy integers whose sum wraps around once took the in-slide fast path (uninitialised pixels)
    assert (slide.read(np.int64(2**63 - 5), 0, 10, 4) == bg).all()
    out = slide.read(W - 8, H - 8, 16, 16, 0.5)
    assert (out[:4, :4] != bg).any() and (out[4:, :] == bg).all() and (out[:, 4:] == bg).all()


@pytest.mark.parametrize(
    "args",
    [
        (math.nan, 0, 10, 10),
        (0, math.inf, 10, 10),
        (0, 0, -math.inf, 10),
        (0, 0, 10, math.nan),
        (0, 0, -5, 10),
        (0, 0, 10, 0),
        (0, 0, 0.1, 0.1),
        (0, 0, 10, 10, 0),
        (0, 0, 10, 10, -1),
        (0, 0, 10, 10, 4.5),
        (0, 0, 10, 10, math.nan),
        (0, 0, 1 << 20, 1 << 20),
        (0, 0, 1e308, 10, 4),
        (10**400, 0, 10, 10),
        ("0", 0, 10, 10),
        (0, 0, True, 10),
    ],
)
def test_bad_reads(slide: CinrSlide, args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        slide.read(*args)


def test_concurrent_reads_are_identical(files: dict[str, Any]) -> None:
    regions = [
        (0, 0, 200, 150, 1.0),
        (60.5, 40.25, 160, 140, 1.0),
        (100, 80, 180, 120, 1.0),
        (-10, -10, 300, 220, 0.5),
        (0, 0, W, H, 0.25),
        (120, 110, 50, 40, 2.0),
    ]
    with open_cinr(files["slide"]) as ref:
        expected = [ref.read(*r) for r in regions]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []
    with open_cinr(files["slide"]) as s:  # cold caches: the threads decode the same tiles at once
        barrier = threading.Barrier(8)

        def work(t: int) -> None:
            try:
                barrier.wait()
                for k in range(len(regions)):
                    idx = (k + t) % len(regions)
                    results[(t, idx)] = s.read(*regions[idx])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors, errors
    assert len(results) == 8 * len(regions)
    for (_, idx), got in results.items():
        assert (got == expected[idx]).all()


def test_reads_over_several_cold_blocks_load_their_models_in_parallel(files: dict[str, Any]) -> None:
    """With two threads, a read that needs several blocks' models loads them from a pool (one
    per block, each once); the pixels are those of a one-thread read. With one, nothing changes."""
    with SlideDecoder(files["slide"], threads=1) as one:
        want = one.read(0, 0, W, H)
    for threads, pooled in ((2, True), (1, False)):
        with SlideDecoder(files["slide"], threads=threads) as dec:
            loads: list[str] = []
            load = dec.codec.load

            def spy(*args: Any, load: Any = load, loads: list[str] = loads, **kw: Any) -> Any:
                loads.append(threading.current_thread().name)
                return load(*args, **kw)

            dec.codec = type("C", (), {"load": staticmethod(spy)})()  # type: ignore[assignment]
            got = dec.read(0, 0, W, H)
            assert (got == want).all()
            assert len(loads) == dec.block_counts()["model"] >= 2  # each model once
            assert any(name != threading.main_thread().name for name in loads) is pooled


def test_slide_decoder_and_cinr_slide_agree(files: dict[str, Any], slide: CinrSlide) -> None:
    with SlideDecoder(files["slide"]) as dec:
        assert (dec.read(3.5, 7, 100, 90, 0.75) == slide.read(3.5, 7, 100, 90, 0.75)).all()


def test_tune_allocator_applies_on_linux() -> None:
    import sys

    from cinr_codec.decode import tune_allocator

    assert tune_allocator() is sys.platform.startswith("linux")
