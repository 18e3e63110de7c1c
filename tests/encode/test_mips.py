"""Mips: exact box means (partial boxes at edges) and the smallest stored form that keeps a PSNR."""

from __future__ import annotations

import numpy as np
import pytest

from cinr_codec.coding.images import avif_available, decode_image_bytes
from cinr_codec.core.metrics import psnr
from cinr_codec.core.resample import box_downsample
from cinr_codec.encode.mips import _smallest_avif, _smallest_jpeg, encode_mip
from cinr_codec.errors import CinrFormatError
from cinr_codec.format.container.short_avif import stored_form


def test_box_downsample_means_what_each_box_covers() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    out = box_downsample(img, 2)
    assert out.shape == (4, 3, 3)
    assert np.allclose(out[0, 0], img[0:2, 0:2].reshape(-1, 3).mean(axis=0))
    assert np.allclose(out[3, 2], img[6:7, 4:5].reshape(-1, 3).mean(axis=0))  # a 1x1 corner box
    assert np.allclose(out[1, 2], img[2:4, 4:5].reshape(-1, 3).mean(axis=0))
    assert np.allclose(box_downsample(img, 8)[0, 0], img.reshape(-1, 3).mean(axis=0))


def test_box_downsample_of_a_box_far_larger_than_the_image_costs_the_image() -> None:
    """A 2 x 16 tile at d = 4096 is one mean, not a 4096^2 padded array (fuzz mutant: 3,295 such
    tiles of a 1048575 x 2 slide took minutes at its last level)."""
    import tracemalloc

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (2, 16, 3), dtype=np.uint8)
    tracemalloc.start()
    out = box_downsample(img, 4096)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (1, 1, 3) and out.dtype == np.float32
    assert np.allclose(out[0, 0], img.reshape(-1, 3).mean(axis=0))
    assert peak < 1 << 20
    # Both ways of summing give the same means (exact sums of uint8 values) on ragged edges.
    big = rng.integers(0, 256, (37, 300, 3), dtype=np.uint8)
    for d in (3, 64, 256):
        ref = np.stack(
            [
                np.stack([big[i : i + d, j : j + d].reshape(-1, 3).mean(axis=0) for j in range(0, 300, d)])
                for i in range(0, 37, d)
            ]
        )
        assert np.allclose(box_downsample(big, d), ref, atol=1e-4)


needs_avif = pytest.mark.skipif(
    not avif_available(), reason="this Pillow has no AVIF (Pillow >= 11.3 wheels do)"
)


@pytest.mark.parametrize("avif", [False, pytest.param(True, marks=needs_avif)])
@pytest.mark.parametrize("target", [28.0, 36.0, 44.0])
def test_encode_mip_reaches_its_target(tissue_crop: np.ndarray, target: float, avif: bool) -> None:
    exact = box_downsample(tissue_crop, 2)
    data, got, quality = encode_mip(exact, target, avif=avif)
    assert got >= target
    pixels = decode_image_bytes(data, "test")
    assert pixels.shape == exact.shape
    assert psnr(pixels, exact) == pytest.approx(got)
    if quality:
        assert data[:3] == b"\xff\xd8\xff" or (avif and data[4:12] == b"ftypavif")
    if not avif:
        assert data[4:12] != b"ftypavif"


@needs_avif
@pytest.mark.parametrize("target", [34.0, 38.0])
def test_avif_mips_are_smaller_than_jpeg_ones(tissue_crop: np.ndarray, target: float) -> None:
    """On tissue, the smallest of AVIF and JPEG is AVIF, and markedly smaller (H&E mips: about
    28 % fewer bytes at equal PSNR, docs/architecture.md)."""
    exact = box_downsample(tissue_crop, 2)
    jpeg = encode_mip(exact, target, avif=False)
    best = encode_mip(exact, target, avif=True)
    assert best[0][4:12] == b"ftypavif" and best[1] >= target
    assert len(best[0]) < 0.9 * len(jpeg[0])


@needs_avif
def test_hostile_avif_bytes_are_format_errors(tissue_crop: np.ndarray) -> None:
    data = encode_mip(box_downsample(tissue_crop, 2), 36.0, avif=True)[0]
    h, w = box_downsample(tissue_crop, 2).shape[:2]
    assert decode_image_bytes(data, "b", (w, h)).shape == (h, w, 3)
    with pytest.raises(CinrFormatError, match="b: image is"):
        decode_image_bytes(data, "b", (w + 1, h))  # the size is checked from the header first
    with pytest.raises(CinrFormatError, match="over the limit"):
        decode_image_bytes(data, "b", None, max_pixels=w * h - 1)
    for bad in (data[: len(data) // 2], data[:40], data[:12] + bytes(len(data) - 12)):
        with pytest.raises(CinrFormatError, match="^b: "):
            decode_image_bytes(bad, "b", (w, h))


def test_lower_targets_store_fewer_bytes(tissue_crop: np.ndarray) -> None:
    exact = box_downsample(tissue_crop, 2)
    sizes = [len(encode_mip(exact, t)[0]) for t in (26.0, 34.0, 42.0)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_unreachable_target_falls_back_to_png(tissue_crop: np.ndarray) -> None:
    exact = np.rint(box_downsample(tissue_crop, 2))
    data, got, quality = encode_mip(exact, 200.0)
    assert quality == 0 and data.startswith(b"\x89PNG") and got == float("inf")


def test_decode_rejects_garbage() -> None:
    with pytest.raises(CinrFormatError, match="block 3: cannot decode"):
        decode_image_bytes(b"\xff\xd8\xff\x00garbage", "block 3")


@needs_avif
def test_refined_avif_mips_keep_the_target_in_fewer_or_equal_bytes(tissue_crop: np.ndarray) -> None:
    exact = box_downsample(tissue_crop, 2)
    fast = encode_mip(exact, 36.0, avif=True)
    refined = encode_mip(exact, 36.0, avif=True, refine=True)
    assert refined[1] >= 36.0 and len(refined[0]) <= len(fast[0])
    assert psnr(decode_image_bytes(refined[0], "t"), exact) == pytest.approx(refined[1])


@needs_avif
def test_mips_are_chosen_by_the_bytes_a_file_stores() -> None:
    """An 8x8 noisy mip: JPEG 4:4:4 and whole AVIF take about as many bytes (mostly headers), but
    the file stores the AVIF short (format 1.11), so the AVIF is chosen."""
    exact = np.random.default_rng(0).uniform(100, 200, (8, 8, 3))
    target = np.rint(exact).astype(np.uint8)
    jpeg = _smallest_jpeg(target, exact, 30.0, 0)
    avif = _smallest_avif(target, exact, 30.0, 0)
    assert jpeg is not None and avif is not None
    assert stored_form(jpeg[0]) == jpeg[0] and len(stored_form(avif[0])) < len(avif[0]) - 250
    assert len(stored_form(avif[0])) < len(jpeg[0]) <= len(avif[0]) + 50
    assert encode_mip(exact, 30.0, avif=True)[0] == avif[0]


def test_compressive_files_read_scales_finer_than_their_first_mip_from_the_level(
    he_image: np.ndarray, tmp_path
) -> None:
    """ccinr files store mips from d = 8 (``LatentCodec.first_mip``); reads at 1/2 and 1/4 are the
    decoded level box-filtered, and every scale is at least as good as the level against the
    box-filtered original (the mips rule)."""
    from PIL import Image

    from cinr_codec import open_cinr
    from cinr_codec.encode.slide import encode_slide
    from cinr_codec.format.container import CinrReader

    image = np.ascontiguousarray(he_image[1000:1128, 1000:1256])  # two blocks of 128
    src = tmp_path / "crop.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "c.cinr"
    encode_slide(src, out, model="ccinr", preset="q8", steps=20, block_size=128, tissue_mask=False)
    with CinrReader(out) as r:
        assert r.header["mips"]["downsamples"] == [8]
    with open_cinr(out) as slide:
        level = slide.read(0, 0, 256, 128)
        floor = psnr(level, image)
        for d in (2, 4, 8, 16):
            got = slide.read(0, 0, 256, 128, scale=1 / d)
            exact = box_downsample(image, d)
            if d < 8:  # from the level: its box means, to rounding
                from_level = box_downsample(level, d)
                assert np.abs(got.astype(np.float64) - from_level).max() <= 0.5 + 1e-6
            assert psnr(got, exact) >= floor, d


def test_compressive_files_read_scales_between_their_mips_from_the_finer_mip(
    he_image: np.ndarray, tmp_path
) -> None:
    """ccinr files store every fourth downsample (``LatentCodec.mip_step``: 8 and 32 for 512-px
    blocks); a read at 1/16 is the 1/8 mip box-filtered, one at 1/64 the 1/32 mip, and both are at
    least as good as the level against the box-filtered original."""
    from PIL import Image

    from cinr_codec import open_cinr
    from cinr_codec.encode.slide import encode_slide
    from cinr_codec.format.container import CinrReader

    image = np.ascontiguousarray(he_image[1000:1064, 1000:1512])  # one 512-px block, 64 rows
    src = tmp_path / "strip.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "s.cinr"
    encode_slide(src, out, model="ccinr", preset="q8", steps=20, block_size=512, tissue_mask=False)
    with CinrReader(out) as r:
        assert r.header["mips"]["downsamples"] == [8, 32]
    with open_cinr(out) as slide:
        floor = psnr(slide.read(0, 0, 512, 64), image)
        for fine, coarse in ((8, 16), (32, 64)):
            stored = slide.read(0, 0, 512, 64, scale=1 / fine)
            got = slide.read(0, 0, 512, 64, scale=1 / coarse)
            want = box_downsample(stored, coarse // fine)
            assert got.shape == want.shape
            assert np.abs(got.astype(np.float64) - want).max() <= 0.5 + 1e-6
            assert psnr(got, box_downsample(image, coarse)) >= floor, coarse
