"""SlideSource: streaming region reads from OpenSlide slides and plain images, thumbnails, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import openslide
import pytest
import pyvips
from data_paths import SAMPLE, SHARED, shared
from PIL import Image

from cinr_codec.encode.source import SlideSource, read_crop, sample_slide_path
from cinr_codec.errors import CinrInputError

CMU = SHARED / "CMU-1-Small-Region.svs"
TCGA = SHARED / "TCGA-CR-7395-01A-01-TS1.svs"
PROSTATE = SHARED / "he-prostate-2500.jpeg"


def on_white(rgba: Image.Image) -> np.ndarray:
    """Reference compositing of a non-premultiplied RGBA image over white, rounded."""
    arr = np.asarray(rgba, dtype=np.float64)
    alpha = arr[..., 3:4] / 255.0
    return np.round(arr[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def box_downsample(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BOX))


def expect_one_line_error(path: Path, *args: object, match: str = "") -> CinrInputError:
    with pytest.raises(CinrInputError) as info:
        SlideSource(path, *args)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and str(path) in message and match in message
    return info.value


@pytest.fixture(scope="module")
def real_crop() -> np.ndarray:
    """A 1024x768 crop of real H&E (the shared prostate image, or the bundled sample)."""
    if PROSTATE.exists():
        with SlideSource(PROSTATE) as s:
            return s.read(800, 900, 1024, 768)
    with SlideSource(SAMPLE) as s:
        return s.read(400, 1200, 1024, 768)


# -- opening and metadata -----------------------------------------------------------------------


def test_bundled_sample() -> None:
    assert sample_slide_path() == SAMPLE and SAMPLE.exists()
    with SlideSource(sample_slide_path()) as s:
        assert (s.width, s.height, s.level_count, s.level, s.downsample) == (2220, 2967, 1, 0, 1.0)
        assert s.format == "aperio" and s.properties["openslide.vendor"] == "aperio"
        assert s.properties["openslide.mpp-x"] == "0.499"
        assert s.source_bytes == SAMPLE.stat().st_size
    crop = read_crop(SAMPLE, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    if CMU.exists():  # the shared copy is the same file
        assert CMU.read_bytes() == SAMPLE.read_bytes()


def test_tcga_levels() -> None:
    why = "a two-level Aperio JPEG 2000 slide whose level 1 is downsampled by 2.0005"
    with SlideSource(shared(TCGA.name, why)) as s:
        assert (s.width, s.height, s.level_count, s.downsample) == (4443, 3567, 2, 1.0)
        assert s.properties["openslide.level[1].width"] == "2221"
        assert s.source_bytes == TCGA.stat().st_size
    with SlideSource(TCGA, level=1) as s:
        assert (s.width, s.height, s.level) == (2221, 1783, 1)
        assert s.downsample == pytest.approx(2.0005, abs=1e-4)


def test_plain_jpeg_metadata(he_jpeg: Path) -> None:
    with Image.open(he_jpeg) as im:
        size = im.size
    with SlideSource(he_jpeg) as s:
        assert (s.width, s.height, s.level_count, s.format) == (*size, 1, "image/jpeg")
        assert s.associated_images() == {}
        assert s.properties["openslide.level[0].width"] == str(size[0])
        assert not any(k.startswith(("openslide.mpp", "openslide.vendor")) for k in s.properties)
        assert s.source_bytes == he_jpeg.stat().st_size


# -- region reads -------------------------------------------------------------------------------


def test_read_equals_openslide_composited_on_white() -> None:
    slide = openslide.OpenSlide(str(SAMPLE))
    with SlideSource(SAMPLE) as s:
        got = s.read(300, 1000, 257, 131)
    assert got.shape == (131, 257, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    assert np.array_equal(got, on_white(slide.read_region((300, 1000), 0, (257, 131))))


def test_read_level1_of_tcga() -> None:
    slide = openslide.OpenSlide(str(shared(TCGA.name, "level 1 of a real multi-level JPEG 2000 slide")))
    with SlideSource(TCGA, level=1) as s:
        got = s.read(700, 600, 200, 150)
        x0, y0 = round(700 * s.downsample), round(600 * s.downsample)
        assert np.array_equal(got, on_white(slide.read_region((x0, y0), 1, (200, 150))))
        assert got.std() > 10  # real tissue, not blank
        edge = s.read(s.width - 50, s.height - 30, 100, 60)
        assert (edge[30:] == 255).all() and (edge[:, 50:] == 255).all()


def test_reads_outside_the_level_are_white() -> None:
    with SlideSource(SAMPLE) as s:
        inner = s.read(0, 0, 30, 30)
        part = s.read(-10, -20, 40, 50)
        assert (part[:20] == 255).all() and (part[:, :10] == 255).all()
        assert np.array_equal(part[20:, 10:], inner)
        corner = s.read(s.width - 5, s.height - 5, 20, 20)
        assert np.array_equal(corner[:5, :5], s.read(s.width - 5, s.height - 5, 5, 5))
        assert (corner[5:] == 255).all() and (corner[:, 5:] == 255).all()
        assert (s.read(s.width + 100, 0, 8, 8) == 255).all()


def test_bad_region_sizes_are_value_errors() -> None:
    with SlideSource(SAMPLE) as s:
        for w, h in ((0, 5), (5, 0), (-1, 3)):
            with pytest.raises(ValueError):
                s.read(0, 0, w, h)
        with pytest.raises(ValueError):
            s.read(0, 0, 1 << 15, 1 << 15)


def test_read_level1_of_a_pyramid_with_odd_sizes(tmp_path: Path, real_crop: np.ndarray) -> None:
    """As test_read_level1_of_tcga on a pyramid written here: 1023x767, so level 1's downsample is
    not 2 and level-0 coordinates are rounded."""
    path = tmp_path / "odd.tif"
    pyvips.Image.new_from_array(np.ascontiguousarray(real_crop[:767, :1023])).copy(
        interpretation="srgb"
    ).tiffsave(str(path), tile=True, pyramid=True, compression="jpeg", Q=90, tile_width=256, tile_height=256)
    slide = openslide.OpenSlide(str(path))
    with SlideSource(path, level=1) as s:
        assert s.level == 1 and s.downsample != 2.0
        got = s.read(300, 200, 150, 100)
        x0, y0 = round(300 * s.downsample), round(200 * s.downsample)
        assert (x0, y0) != (600, 400)
        assert np.array_equal(got, on_white(slide.read_region((x0, y0), 1, (150, 100))))
        assert got.std() > 10  # real tissue, not blank
        x, y = s.width - 50, s.height - 30
        edge = s.read(x, y, 100, 60)
        x0, y0 = round(x * s.downsample), round(y * s.downsample)
        assert np.array_equal(edge, on_white(slide.read_region((x0, y0), 1, (100, 60))))
        # OpenSlide places a fractional level-1 origin with subpixel blending: the first pixel
        # past the edge may be partly covered, the rest is white.
        assert (edge[31:] == 255).all() and (edge[:, 51:] == 255).all()
        assert edge[:29, :49].std() > 10


def test_plain_jpeg_reads_like_pil(he_jpeg: Path) -> None:
    ref = np.asarray(Image.open(he_jpeg).convert("RGB"))
    h, w = ref.shape[:2]
    with SlideSource(he_jpeg) as s:
        assert np.array_equal(s.read(1000, 1200, 300, 200), ref[1200:1400, 1000:1300])
        part = s.read(w - 50, -10, 100, 40)
        assert (part[:10] == 255).all() and (part[:, 50:] == 255).all()
        assert np.array_equal(part[10:, :50], ref[:30, w - 50 :])


def test_plain_png_grey_rgba_and_16bit(tmp_path: Path, real_crop: np.ndarray) -> None:
    rgb = real_crop[:60, :80]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = np.tile(np.linspace(0, 255, 80).round().astype(np.uint8), (60, 1))

    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(tmp_path / "grey_alpha.png")
    Image.fromarray(rgb).save(tmp_path / "strips.tif")  # a plain (not tiled) TIFF: not OpenSlide's
    pyvips.Image.new_from_array(rgb.astype(np.uint16) * 257).copy(interpretation="rgb16").tiffsave(
        str(tmp_path / "rgb16.tif")
    )
    pyvips.Image.new_from_array(grey.astype(np.uint16) * 257).copy(interpretation="grey16").pngsave(
        str(tmp_path / "grey16.png")
    )

    expected_rgba = on_white(Image.fromarray(np.dstack([rgb, alpha])))
    grey3 = np.repeat(grey[..., None], 3, axis=2)
    expected_la = on_white(Image.fromarray(np.dstack([grey3, alpha])))
    cases = {
        "rgb.png": (rgb, "image/png"),
        "grey.png": (grey3, "image/png"),
        "rgba.png": (expected_rgba, "image/png"),
        "grey_alpha.png": (expected_la, "image/png"),
        "strips.tif": (rgb, "image/tiff"),
        "rgb16.tif": (rgb, "image/tiff"),
        "grey16.png": (grey3, "image/png"),
    }
    for name, (expected, fmt) in cases.items():
        with SlideSource(tmp_path / name) as s:
            assert (s.width, s.height, s.level_count, s.format) == (80, 60, 1, fmt), name
            got = s.read(0, 0, 80, 60)
            assert got.dtype == np.uint8 and got.shape == (60, 80, 3), name
            assert np.abs(got.astype(int) - expected).max() <= 1, name
            assert np.array_equal(s.read(70, 50, 20, 20)[:10, :10], got[50:, 70:]), name
            assert s.source_bytes == (tmp_path / name).stat().st_size
            assert s.thumbnail(20).shape[:2] == (15, 20)
    assert np.array_equal(read_crop(tmp_path / "rgb.png", 100), rgb)  # clamped to the image
    assert np.array_equal(read_crop(tmp_path / "rgb.png", 20), rgb[20:40, 30:50])


# -- thumbnails ---------------------------------------------------------------------------------


def test_thumbnail_is_an_area_average_of_the_level() -> None:
    with SlideSource(SAMPLE) as s:
        full = s.read(0, 0, s.width, s.height)
        th = s.thumbnail(300)
        assert th.dtype == np.uint8 and th.shape == (300, round(s.width * 300 / s.height), 3)
        ref = box_downsample(full, th.shape[1], th.shape[0]).astype(int)
        assert np.abs(th.astype(int) - ref).mean() < 1.5  # measured 0.6 (exact area vs PIL's box)
        with pytest.raises(ValueError):
            s.thumbnail(0)


def test_thumbnail_of_a_plain_image(he_jpeg: Path) -> None:
    ref = np.asarray(Image.open(he_jpeg).convert("RGB"))
    h, w = ref.shape[:2]
    with SlideSource(he_jpeg) as s:
        th = s.thumbnail(250)
    th_h, th_w = th.shape[:2]
    assert max(th_h, th_w) == 250 and th_w == round(w * 250 / max(h, w)) and th.shape[2] == 3
    # libvips: shrink-on-load then an anti-aliased reduce; close to a box filter, not point sampling.
    assert np.abs(th.astype(int) - box_downsample(ref, th_w, th_h)).mean() < 5
    points = ref[((np.arange(th_h) + 0.5) * h / th_h).astype(int)][
        :, ((np.arange(th_w) + 0.5) * w / th_w).astype(int)
    ]
    assert np.abs(th.astype(int) - points).mean() > 5


def test_pyramidal_tiff_goes_through_openslide_and_thumbnail_uses_a_lower_level(
    tmp_path: Path, real_crop: np.ndarray
) -> None:
    path = tmp_path / "pyramid.tif"
    pyvips.Image.new_from_array(real_crop).copy(interpretation="srgb").tiffsave(
        str(path), tile=True, pyramid=True, compression="jpeg", Q=90, tile_width=256, tile_height=256
    )
    with SlideSource(path) as s:
        assert s.format == "generic-tiff" and s.level_count >= 3
        assert (s.width, s.height) == (1024, 768)
        assert s.source_bytes == path.stat().st_size
        full = s.read(0, 0, s.width, s.height)
        assert np.abs(full.astype(int) - real_crop).mean() < 3  # JPEG Q90
        levels: list[int] = []
        original = s._slide.read_region

        def spy(location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
            levels.append(level)
            return original(location, level, size)

        s._slide.read_region = spy
        th = s.thumbnail(200)
        assert th.shape == (150, 200, 3)
        assert levels and min(levels) >= 2  # level 2 (downsample 4), never the full level
        assert np.abs(th.astype(int) - box_downsample(full, 200, 150)).mean() < 5
        assert np.array_equal(s.thumbnail(2000), full)  # never enlarged
    with SlideSource(path, level=1) as s:
        assert (s.width, s.height, s.downsample) == (512, 384, 2.0)
        assert s.read(0, 0, 512, 384).std() > 10


def test_associated_images_are_png() -> None:
    with SlideSource(SAMPLE) as s:
        images = s.associated_images()
        props = s.properties
    assert set(images) == {"label", "macro", "thumbnail"}
    for name, data in images.items():
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        img = Image.open(io.BytesIO(data))
        assert img.mode == "RGB"
        assert img.size == (
            int(props[f"openslide.associated.{name}.width"]),
            int(props[f"openslide.associated.{name}.height"]),
        )


def test_associated_images_over_the_cap_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cinr_codec.encode.source.MAX_ASSOCIATED_PIXELS", 200_000)
    with SlideSource(SAMPLE) as s:
        assert set(s.associated_images()) == {"label"}  # 387x463; macro and thumbnail are bigger


# -- errors -------------------------------------------------------------------------------------


def test_input_errors_are_one_line(tmp_path: Path) -> None:
    expect_one_line_error(tmp_path / "missing.svs", match="no such file")
    expect_one_line_error(tmp_path, match="directory")
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    expect_one_line_error(empty, match="empty")
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"this is not a slide\n" * 10)
    expect_one_line_error(junk, match="not a readable slide or image")
    csv = tmp_path / "numbers.csv"
    csv.write_text("1,2,3\n4,5,6\n")
    expect_one_line_error(csv, match="not a readable slide or image")
    expect_one_line_error(SAMPLE, 1, match="level 1 does not exist")
    expect_one_line_error(SAMPLE, -1, match="level -1 does not exist")
    png = tmp_path / "small.png"
    Image.new("RGB", (1, 1)).save(png)
    expect_one_line_error(png, 1, match="level 1 does not exist")
    with SlideSource(png) as s:  # too small to encode is the encoder's business, not an error here
        assert s.read(0, 0, 2, 2)[0, 0].tolist() == [0, 0, 0]
        assert (s.read(0, 0, 2, 2)[1] == 255).all()


def test_truncated_slide_is_one_line(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 2])
    expect_one_line_error(cut, match="not a readable slide or image")


def test_read_error_in_the_middle_of_a_slide(tmp_path: Path) -> None:
    data = bytearray(SAMPLE.read_bytes())
    data[800_000:900_000] = b"\xff" * 100_000  # destroy some JPEG tiles
    bad = tmp_path / "bad.svs"
    bad.write_bytes(bytes(data))
    with SlideSource(bad) as s:
        with pytest.raises(CinrInputError) as info:
            for y in range(0, s.height, 240):
                s.read(0, y, s.width, 240)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{bad}: read error at (0, ")
        with pytest.raises(CinrInputError):  # OpenSlide errors latch
            s.read(0, 0, 8, 8)


def test_truncated_jpeg_read_is_an_error(tmp_path: Path, he_jpeg: Path) -> None:
    data = he_jpeg.read_bytes()
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(data[: len(data) // 2])
    with Image.open(he_jpeg) as im:
        w, h = im.size
    with SlideSource(cut) as s:
        assert (s.width, s.height) == (w, h)
        with pytest.raises(CinrInputError) as info:
            s.read(0, h - 100, 64, 64)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{cut}: read error at (0, {h - 100})")


def test_closed_source(tmp_path: Path) -> None:
    s = SlideSource(SAMPLE)
    s.close()
    s.close()  # idempotent
    with pytest.raises(CinrInputError):
        s.read(0, 0, 4, 4)
