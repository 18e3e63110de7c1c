"""``export_region`` and the ``cinr decode`` / ``cinr info`` commands on a real block-grid encode."""

from __future__ import annotations

import json
import os
import shutil
import types
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
from click.testing import CliRunner, Result
from PIL import Image
from test_api import (  # the session's encoded files (encoded once per process) and their fixtures
    H,
    W,
    _one_torch_thread,  # noqa: F401  (autouse fixture)
    files,  # noqa: F401
    slide,  # noqa: F401
)

from cinr_codec import export
from cinr_codec.api import CinrSlide, open_cinr
from cinr_codec.cli import main
from cinr_codec.coding.images import avif_available
from cinr_codec.decode import SlideDecoder
from cinr_codec.errors import CinrError, CinrIOError
from cinr_codec.export import export_region


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(res: Result) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert res.stderr.startswith("cinr: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.output


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# -- cinr decode ------------------------------------------------------------------------------------


def test_decode_region_png(files: dict[str, Any], slide: CinrSlide, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    res = _cli("decode", files["slide"], "--region", "10,20,100,80", "--scale", "0.5", "-o", out)
    assert res.exit_code == 0, res.output
    got = _pixels(out)
    assert got.shape == (40, 50, 3)
    assert (got == slide.read(10, 20, 100, 80, 0.5)).all()
    assert "50 x 40" in res.stdout and res.stderr == ""  # no progress bar for a region
    assert [f.name for f in tmp_path.iterdir()] == ["out.png"]  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_decode_threads_option(files: dict[str, Any], slide: CinrSlide, tmp_path: Path) -> None:
    """``--threads N`` fixes the render threads (same pixels); a count below 1 is refused."""
    out = tmp_path / "t.png"
    res = _cli("decode", files["slide"], "--region", "10,20,100,80", "--threads", "1", "-o", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert (_pixels(out) == slide.read(10, 20, 100, 80)).all()
    res = _cli(
        "decode", files["slide"], "--region", "10,20,100,80", "--threads", "0", "-o", tmp_path / "u.png"
    )
    assert res.exit_code == 2 and "--threads" in res.stderr and not (tmp_path / "u.png").exists()


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp", ".tif", ".tiff"])
def test_decode_formats_by_extension(
    files: dict[str, Any], slide: CinrSlide, tmp_path: Path, ext: str
) -> None:
    out = tmp_path / f"out{ext}"
    res = _cli("decode", files["slide"], "--region", "-20,30,200,150", "-o", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert res.output == ""
    with Image.open(out) as im:
        assert im.format == {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(ext, "TIFF")
    got = _pixels(out)
    want = slide.read(-20, 30, 200, 150)
    assert got.shape == want.shape == (150, 200, 3)
    assert np.abs(got.astype(int) - want).mean() < 3  # lossy, quality 90
    if ext.startswith(".tif"):
        with openslide.OpenSlide(out) as o:
            assert o.dimensions == (200, 150) and o.properties["openslide.vendor"] == "generic-tiff"


def test_decode_whole_slide_tif_opens_in_openslide(files: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "whole.tif"
    res = _cli("decode", files["relabelled"], "-o", out)
    assert res.exit_code == 0, res.output
    assert "decoding" in res.stderr  # the progress bar, on stderr
    assert openslide.OpenSlide.detect_format(str(out)) == "aperio"  # see tests/test_export_tiff.py
    with openslide.OpenSlide(out) as o, open_cinr(files["relabelled"]) as s:
        assert o.dimensions == (W, H)
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-4)
        region = np.asarray(o.read_region((0, 0), 0, (W, H)).convert("RGB"))
        assert np.abs(region.astype(int) - s.read(0, 0, W, H)).mean() < 3
    # At scale 1/2: the virtual pyramid's level 1, with twice the microns per pixel.
    half = tmp_path / "half.tiff"
    res = _cli("decode", files["relabelled"], "--scale", "0.5", "-o", half, "--quiet")
    assert res.exit_code == 0 and res.output == ""
    with openslide.OpenSlide(half) as o:
        assert o.dimensions == (W // 2, H // 2)
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(1.0, rel=1e-4)


def test_decode_whole_slide_png_at_a_scale(files: dict[str, Any], slide: CinrSlide, tmp_path: Path) -> None:
    out = tmp_path / "quarter.png"
    res = _cli("decode", files["slide"], "--scale", "0.25", "-o", out, "--quiet")
    assert res.exit_code == 0, res.output
    got = _pixels(out)
    assert got.shape == (50, 70, 3)
    assert (got == slide.read(0, 0, W, H, 0.25)).all()


def test_decode_takes_a_scale_as_a_fraction(files: dict[str, Any], tmp_path: Path) -> None:
    as_number, as_fraction = tmp_path / "a.png", tmp_path / "b.png"
    assert _cli("decode", files["slide"], "--scale", "0.25", "-o", as_number, "--quiet").exit_code == 0
    assert _cli("decode", files["slide"], "--scale", "1/4", "-o", as_fraction, "--quiet").exit_code == 0
    assert (_pixels(as_fraction) == _pixels(as_number)).all()
    for bad in ("1/0", "a/4", "1/4/2"):
        res = _cli("decode", files["slide"], "--scale", bad, "-o", tmp_path / "c.png")
        assert res.exit_code == 2 and "not a number or a fraction" in res.output, (bad, res.output)
    assert not (tmp_path / "c.png").exists()


def test_decode_single_block_file(tmp_path: Path) -> None:
    from cinr_codec import decode_image

    vec = sorted((Path(__file__).resolve().parents[2] / "formats" / "vectors").glob("*.cinr"))[-1]
    out = tmp_path / "v.png"
    assert _cli("decode", vec, "-o", out, "--quiet").exit_code == 0
    assert (_pixels(out) == decode_image(vec)).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "{tmp}/out.bmp"], "unknown output type '.bmp'"),
        (["-o", "{tmp}/out"], "unknown output type"),
        (["-o", "{tmp}/missing/out.png"], "does not exist"),
        (["-o", "{tmp}/out.png", "--region", "1,2,3"], "--region must be four numbers"),
        (["-o", "{tmp}/out.png", "--region", "1,2,x,4"], "--region must be four numbers"),
        (["-o", "{tmp}/out.png", "--region", "0,0,nan,4"], "--region must be four numbers"),
        (["-o", "{tmp}/out.png", "--region", "0,0,-5,4"], "must be positive"),
        (["-o", "{tmp}/out.png", "--scale", "0"], "scale must be in"),
        (["-o", "{tmp}/out.png", "--scale", "5"], "scale must be in"),
        (["-o", "{tmp}/out.png", "--scale", "nan"], "scale must be"),
        (["-o", "{tmp}/out.webp", "--region", "0,0,20000,10"], "too large for WEBP"),
    ],
)
def test_decode_bad_arguments(files: dict[str, Any], tmp_path: Path, args: list[str], message: str) -> None:
    res = _cli("decode", files["slide"], *[a.format(tmp=tmp_path) for a in args])
    _one_line_error(res)
    assert message in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_decode_bad_files_leave_existing_output(files: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    data = files["slide"].read_bytes()
    cases = {
        "truncated.cinr": data[: len(data) // 2],
        "flipped.cinr": data[:100] + bytes([data[100] ^ 0xFF]) + data[101:],
        "empty.cinr": b"",
    }
    for name, blob in cases.items():
        bad = tmp_path / name
        bad.write_bytes(blob)
        _one_line_error(_cli("decode", bad, "-o", out, "--overwrite"))
        _one_line_error(_cli("info", bad))
    _one_line_error(_cli("decode", files["png"], "-o", out, "-f"))
    _one_line_error(_cli("decode", tmp_path / "missing.cinr", "-o", out, "-f"))
    assert out.read_bytes() == b"keep me"
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([*cases, "out.png"])


def test_decode_does_not_replace_a_file_without_overwrite(files: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "keep.png"
    out.write_bytes(b"keep me")
    res = _cli("decode", files["slide"], "-o", out, "--region", "0,0,16,16")
    _one_line_error(res)
    assert "exists; pass --overwrite (-f)" in res.stderr and out.read_bytes() == b"keep me"
    res = _cli("decode", files["slide"], "-o", out, "--region", "0,0,16,16", "-f", "--quiet")
    assert res.exit_code == 0, res.output
    assert _pixels(out).shape == (16, 16, 3)
    _one_line_error(_cli("decode", files["slide"], "-o", tmp_path, "-f"))  # a folder is never replaced


def test_decode_warns_of_a_region_outside_the_slide(files: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "outside.png"
    res = _cli("decode", files["slide"], "-o", out, "--region", f"{W + 10},0,16,16", "--quiet")
    assert res.exit_code == 0, res.output  # as OpenSlide: background, not an error
    assert res.stderr.startswith("cinr: warning: region") and "wholly outside" in res.stderr
    assert out.exists()
    res = _cli("decode", files["slide"], "-o", tmp_path / "inside.png", "--region", "0,0,16,16", "--quiet")
    assert res.exit_code == 0 and res.stderr == ""


# -- cinr info --------------------------------------------------------------------------------------


def test_info_json(files: dict[str, Any]) -> None:
    res = _cli("info", files["slide"], "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    for key in ("path", "bytes", "version", "blocks", "model_blocks", "associated_images", "metadata"):
        assert key in info
    assert info["bytes"] == files["slide"].stat().st_size and info["version"] == [
        1,
        11 if avif_available() else 1,  # AVIF mips, stored short
    ]
    assert info["blocks"] == 6 * 4 and info["model_blocks"] == 5
    assert (info["width"], info["height"], info["model"], info["preset"]) == (W, H, "cinr", "fast")
    assert info["grid"] == {"block_size": 128, "margin": 16, "cols": 3, "rows": 2}
    assert info["level_blocks"] == {"total": 6, "model": 5, "background": 1}
    assert [m["downsample"] for m in info["mips"]] == [2, 4, 8]
    assert all(m["image_blocks"] == 5 and m["bytes"] > 0 for m in info["mips"])
    with open_cinr(files["slide"]) as s:
        reader = s.decoder.reader
        assert info["model_bytes"] == sum(reader.block_info(i).stored_length for i in range(6))
        assert info["quality"] == reader.footer["quality"]
    # The footer stores PSNR to 4 decimals (half a unit of the last: 5e-5 dB).
    assert info["quality"]["psnr_db"] == pytest.approx(files["summary"]["psnr"], abs=5e-5)
    assert info["metadata"]["grid"]["block_size"] == 128

    res = _cli("info", files["relabelled"], "--json")
    info = json.loads(res.stdout)
    assert (
        info["associated_images"] == ["label", "macro"] and info["level"] == 1 and info["mpp"] == [0.5, 0.5]
    )


def test_info_text(files: dict[str, Any]) -> None:
    res = _cli("info", files["slide"])
    assert res.exit_code == 0, res.output
    with CinrSlide(files["slide"]) as s:
        psnr = float(s.properties["cinr.psnr"])
    text = res.stdout
    for word in (
        f"format 1.{11 if avif_available() else 1}",
        "3 x 2 blocks of 128 px",
        "(1/2 ... 1/",
        "bits per pixel",
        f"PSNR {psnr:.2f} dB",
    ):
        assert word in text, (word, text)
    assert len(text.splitlines()) <= 12 and "{" not in text  # a summary, not the header
    verbose = _cli("info", files["slide"], "--verbose").stdout
    assert verbose.startswith(text.splitlines()[0]) and '"grid"' in verbose and len(verbose) > len(text)


# -- export_region ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "scale"),
    [((0, 0, W, H), 1.0), ((3.5, -7, 200, 150), 1.0), ((-8, 8, 240, 180), 0.5), ((16, 0, 200, 160), 0.125)],
)
def test_streamed_strips_join_exactly(
    slide: CinrSlide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, region: Any, scale: float
) -> None:
    monkeypatch.setattr(export, "STREAM_PIXELS", 0)  # stream even small outputs
    monkeypatch.setattr(export, "STRIP_PIXELS", 1)  # one row per strip
    calls: list[tuple[int, int]] = []
    out = tmp_path / "s.png"
    summary = export_region(slide, out, region, scale, progress=lambda d, t: calls.append((d, t)))
    assert summary["streamed"] and len(calls) > 2
    assert calls[-1][0] == calls[-1][1] == summary["height"]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    want = slide.read(*region, scale)
    got = _pixels(out)
    assert got.shape == want.shape == (summary["height"], summary["width"], 3)
    assert np.abs(got.astype(int) - want).max() <= 1
    assert [f.name for f in tmp_path.iterdir()] == ["s.png"]


def test_export_from_a_slide_decoder(files: dict[str, Any], slide: CinrSlide, tmp_path: Path) -> None:
    with SlideDecoder(files["relabelled"]) as dec:
        summary = export_region(dec, tmp_path / "d.png", (5, 6, 70, 50), 2.0)
    assert (summary["width"], summary["height"], summary["format"]) == (140, 100, "png")
    assert summary["mpp"] == [0.25, 0.25] and not summary["streamed"]
    assert (_pixels(tmp_path / "d.png") == slide.read(5, 6, 70, 50, 2.0)).all()
    with pytest.raises(TypeError):
        export_region("not a slide", tmp_path / "x.png")  # type: ignore[arg-type]


def test_export_errors_leave_no_trace(
    slide: CinrSlide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    # A failure in the middle of a streamed export.
    real_read = slide.read
    count = [0]

    def failing_read(*args: Any) -> np.ndarray:
        count[0] += 1
        if count[0] == 3:
            raise CinrIOError("disk on fire")
        return real_read(*args)

    monkeypatch.setattr(export, "STRIP_PIXELS", 280 * 8)
    monkeypatch.setattr(slide, "read", failing_read)
    with pytest.raises(CinrError, match="disk on fire"):
        export_region(slide, out)
    monkeypatch.undo()
    # Not enough disk space for the temporary raw file of a streamed region (whole-slide TIFFs need none).
    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10, used=10, free=0))
    monkeypatch.setattr(export, "STREAM_PIXELS", 0)
    with pytest.raises(CinrIOError, match="temporary disk space"):
        export_region(slide, out, (0, 0, W, H))
    monkeypatch.undo()
    assert out.read_bytes() == b"keep me"
    assert [f.name for f in tmp_path.iterdir()] == ["out.tif"]
    # Bad arguments are refused before anything is decoded or created.
    for kwargs, match in (
        ({"out_path": tmp_path}, "unknown output type|is a directory"),
        ({"out_path": tmp_path / "a.gif"}, "unknown output type"),
        ({"out_path": tmp_path / "no" / "a.png"}, "does not exist"),
        ({"out_path": tmp_path / "a.png", "region": (0, 0, 10)}, "region must be"),
        ({"out_path": tmp_path / "a.png", "region": (0, 0, 10, float("inf"))}, "finite"),
        ({"out_path": tmp_path / "a.png", "region": (0, 0, 0.1, 10)}, "no output pixels"),
        ({"out_path": tmp_path / "a.png", "scale": -1}, "scale"),
        ({"out_path": tmp_path / "a.jpg", "region": (0, 0, 70000, 5)}, "too large for JPEG"),
    ):
        with pytest.raises(ValueError, match=match):
            export_region(slide, **kwargs)
    assert [f.name for f in tmp_path.iterdir()] == ["out.tif"]
