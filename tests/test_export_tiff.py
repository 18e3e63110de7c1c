"""Whole-slide TIFF exports: the Aperio layout, read back by OpenSlide and tiffslide.

The slide: a 701x517 crop of the bundled Aperio sample (tissue), encoded in 256-px blocks, with
the sample's properties, resolution, objective power and associated images (label, macro,
thumbnail) put in its header as ``cinr encode`` does for the whole sample. Its odd sizes make
``ceil`` and ``floor`` halving differ at every level: ``level_dimensions`` are
(701, 517), (351, 259), (176, 130), where a libvips pyramid has (350, 258), (175, 129).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide
import torch
from cinr_container_helpers import rewrite
from click.testing import CliRunner
from PIL import Image

from cinr_codec import export
from cinr_codec.api import CinrSlide, open_cinr
from cinr_codec.cli import main
from cinr_codec.decode import SlideDecoder
from cinr_codec.encode.slide import encode_slide
from cinr_codec.encode.source import SlideSource, sample_slide_path
from cinr_codec.errors import CinrIOError
from cinr_codec.export import export_region
from cinr_codec.format.container import CinrReader

#: (x, y, w, h) of the crop in the sample's level 0.
CROP = (600, 1500, 701, 517)
LEVELS = ((701, 517), (351, 259), (176, 130))


def _graft(src: Path, dst: Path, props: Mapping[str, str], associated: Mapping[str, bytes]) -> None:
    """Copy a .cinr file with a slide's properties, resolution, objective power and associated images."""
    with CinrReader(src) as r:
        header = dict(r.header)
        header["slide"] = {
            **header["slide"],
            "mpp_x": float(props["openslide.mpp-x"]),
            "mpp_y": float(props["openslide.mpp-y"]),
            "objective_power": float(props["openslide.objective-power"]),
            "vendor": props["openslide.vendor"],
            "properties": dict(props),
        }
        rewrite(r, dst, header, dict(associated))


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """``full``: the crop with the sample's metadata and all its associated images; ``no_thumbnail``:
    the same without the thumbnail."""
    folder = tmp_path_factory.mktemp("export-tiff")
    with SlideSource(sample_slide_path()) as src:
        crop = src.read(*CROP)
        props = src.properties
        associated = src.associated_images()
    assert set(associated) == {"label", "macro", "thumbnail"}
    Image.fromarray(crop).save(folder / "crop.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny fits: one thread is far faster on a loaded machine
    try:
        encode_slide(
            folder / "crop.png",
            folder / "crop.cinr",
            model="cinr",
            block_size=256,
            margin=16,
            steps=20,
            device="cpu",
        )
        _graft(folder / "crop.cinr", folder / "full.cinr", props, associated)
        no_thumb = {k: v for k, v in associated.items() if k != "thumbnail"}
        _graft(folder / "crop.cinr", folder / "no-thumbnail.cinr", props, no_thumb)
        yield {"full": folder / "full.cinr", "no_thumbnail": folder / "no-thumbnail.cinr"}
    finally:
        torch.set_num_threads(threads)


def _sizes(images: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    return {name: tuple(images[name].size) for name in images}


def _rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(int)


def _check_levels(got: Any, slide: CinrSlide, scale: float = 1.0) -> None:
    """Every level of an OpenSlide-like ``got`` against the slide read at that level's scale."""
    w0, h0 = got.level_dimensions[0]
    for k, (w, h) in enumerate(got.level_dimensions):
        pixels = _rgb(got.read_region((0, 0), k, (w, h)))
        s = scale / 2**k
        want = slide.read(0, 0, w / s, h / s, s)
        assert pixels.shape == want.shape
        assert np.abs(pixels - want).mean() < 3, k  # JPEG quality 90


def test_whole_slide_tif_is_aperio_with_the_slides_levels_metadata_and_images(
    slides: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "whole.tif"
    res = CliRunner().invoke(main, ["decode", str(slides["full"]), "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert [f.name for f in tmp_path.iterdir()] == ["whole.tif"]  # no temporary files left
    assert openslide.OpenSlide.detect_format(str(out)) == "aperio"
    with open_cinr(slides["full"]) as s, openslide.OpenSlide(out) as o:
        want, got = s.properties, o.properties
        assert s.level_dimensions == LEVELS
        assert o.level_count == s.level_count and o.level_dimensions == s.level_dimensions
        assert got["openslide.vendor"] == "aperio"
        assert got["openslide.objective-power"] == want["openslide.objective-power"] == "20"
        for key in ("openslide.mpp-x", "openslide.mpp-y"):
            assert float(got[key]) == float(want[key]) == 0.499
        # The vendor properties (MPP and AppMag are the slide's, written as numbers) and the encode's.
        vendor = {k: v for k, v in want.items() if k.startswith("aperio.")}
        assert len(vendor) >= 15
        for key, value in vendor.items():
            if key in ("aperio.MPP", "aperio.AppMag"):
                assert float(got[key]) == float(value), key
            else:
                assert got[key] == value, key
        assert got["aperio.cinr.psnr"] == want["cinr.psnr"]
        assert got["openslide.comment"].startswith("Aperio Image Library")
        # Associated images: the same names, sizes and pixels (the label losslessly).
        sizes = {"label": (387, 463), "macro": (1280, 431), "thumbnail": (574, 768)}
        assert _sizes(o.associated_images) == _sizes(s.associated_images) == sizes
        for name in sizes:
            diff = np.abs(_rgb(o.associated_images[name]) - _rgb(s.associated_images[name]))
            assert (diff.max() == 0) if name == "label" else (diff.mean() < 3), name
        _check_levels(o, s)

        with tiffslide.TiffSlide(out) as t:
            tp = t.properties
            assert tp["tiffslide.vendor"] == "aperio"
            assert t.level_count == s.level_count and t.level_dimensions == s.level_dimensions
            assert float(tp["tiffslide.mpp-x"]) == float(tp["tiffslide.mpp-y"]) == 0.499
            assert float(tp["tiffslide.objective-power"]) == 20
            assert str(tp["aperio.Filename"]) == want["aperio.Filename"] == "CMU-1"
            assert _sizes(t.associated_images) == sizes
            assert (_rgb(t.associated_images["label"]) == _rgb(s.associated_images["label"])).all()
            _check_levels(t, s)


def test_whole_slide_tif_without_a_thumbnail_at_half_scale_in_bounded_reads(
    slides: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a SlideDecoder, at scale 1/2, tiny reads: the pyramid from the slide's level 1 on, mpp x2,
    objective power /2, and a thumbnail made from the pyramid (Aperio's second page always is one)."""
    out = tmp_path / "half.tif"
    monkeypatch.setattr(export, "STRIP_PIXELS", 4096)
    reads: list[int] = []
    with SlideDecoder(slides["no_thumbnail"]) as dec:
        real_read = dec.read

        def read(x: float, y: float, w: float, h: float, scale: float = 1.0) -> np.ndarray:
            px = real_read(x, y, w, h, scale)
            reads.append(px.shape[0] * px.shape[1])
            return px

        monkeypatch.setattr(dec, "read", read)
        calls: list[tuple[int, int]] = []
        summary = export_region(dec, out, None, 0.5, progress=lambda d, t: calls.append((d, t)))
    assert (summary["width"], summary["height"], summary["format"]) == (351, 259, "tiff")
    assert summary["mpp"] == pytest.approx([0.998, 0.998])
    assert len(reads) >= 6 and max(reads) <= 4096  # STRIP_PIXELS (no 8x: the scale is not 1)
    assert calls[-1] == (259 + 130, 259 + 130) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    with open_cinr(slides["no_thumbnail"]) as s:
        for o in (openslide.OpenSlide(out), tiffslide.TiffSlide(out)):
            with o:
                vendor = "tiffslide" if isinstance(o, tiffslide.TiffSlide) else "openslide"
                assert o.level_dimensions == s.level_dimensions[1:]
                assert float(o.properties[f"{vendor}.mpp-x"]) == pytest.approx(0.998)
                assert float(o.properties[f"{vendor}.objective-power"]) == 10
                # The made-up thumbnail is the first level at most 1024 px a side: level 0 here.
                assert _sizes(o.associated_images) == {
                    "label": (387, 463),
                    "macro": (1280, 431),
                    "thumbnail": (351, 259),
                }
                _check_levels(o, s, 0.5)
    with tifffile.TiffFile(out) as tf:  # the Aperio page order
        pages = [(p.shape[1::-1], p.is_tiled, p.subfiletype) for p in tf.pages]
    assert pages == [
        ((351, 259), True, 0),
        ((351, 259), False, 0),
        ((176, 130), True, 0),
        ((387, 463), False, 1),
        ((1280, 431), False, 9),
    ]


def test_whole_slide_tif_write_errors_leave_no_trace(
    slides: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile.TiffWriter, "write", full)
    with open_cinr(slides["full"]) as s, pytest.raises(CinrIOError, match="cannot write: No space left"):
        export_region(s, out)
    assert out.read_bytes() == b"keep me"
    assert [f.name for f in tmp_path.iterdir()] == ["out.tif"]
