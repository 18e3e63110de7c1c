"""The rate-distortion benchmark: a smoke run, BD-rate on synthetic curves, bad input, TIFF tile tables."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bdrate import bd_rate, pchip_integral, rate_at, rd_front

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def _crop(size: int) -> np.ndarray:
    from cinr_codec.encode.source import read_crop, sample_slide_path

    return read_crop(sample_slide_path(), size)


def test_rd_quick_json(tmp_path: Path) -> None:
    from PIL import Image

    img = tmp_path / "crop.png"
    Image.fromarray(_crop(64)).save(img)
    p = _run(
        "benchmarks.rd",
        "--quick",
        "--json",
        "--image",
        str(img),
        "--results",
        str(tmp_path),
        "--steps",
        "20",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-ccinr",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)  # nothing else on stdout
    assert {"rows", "bd_rate", "bd_rate_per_image"} <= set(out)
    codecs = {r["codec"] for r in out["rows"]}
    assert {"cinr", "jpeg"} <= codecs <= {"cinr", "jpeg", "jpeg2000", "jpegxl", "avif", "webp"}
    assert set(out["bd_rate"]) == codecs - {"cinr"}
    assert set(out["bd_rate_per_image"]) == {"crop.png"}
    for r in out["rows"]:
        assert {"image", "codec", "setting", "bpp", "psnr", "ssim"} <= set(r)
        assert r["image"] == "crop.png" and r["bpp"] > 0
    cinr = [r for r in out["rows"] if r["codec"] == "cinr"]
    assert {r["setting"] for r in cinr} == {
        f"{p}/{q}" for p in ("fast", "default") for q in ("int8+float16", "int8", "float16")
    }
    assert all(r["steps"] == 20 for r in cinr)
    jpeg = sorted((r for r in out["rows"] if r["codec"] == "jpeg"), key=lambda r: r["bpp"])
    assert len(jpeg) >= 5 and jpeg[-1]["psnr"] > jpeg[0]["psnr"]
    (image,) = out["images"]
    assert image["region"]["width"] == 64 and not image["source_tiles"]["exact"]
    text = (tmp_path / "rd_quick.md").read_text()
    assert "- command: `python -m benchmarks.rd --quick" in text and "- imagecodecs:" in text
    assert "| cinr | default/int8+float16 |" in text and "BD-rate" in text
    assert (tmp_path / "rd_quick.png").stat().st_size > 0
    assert json.loads((tmp_path / "rd_quick.json").read_text())["rows"] == out["rows"]


def test_rd_missing_image(tmp_path: Path) -> None:
    p = _run("benchmarks.rd", "--quick", "--image", str(tmp_path / "nope.svs"), "--results", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "no such file" in p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert not list(tmp_path.iterdir())


def test_bd_rate_synthetic_curves() -> None:
    rates = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    psnrs = np.array([30.0, 33.5, 37.0, 40.0, 42.5])
    assert bd_rate(rates, psnrs, rates, psnrs) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(rates, psnrs, rates / 2, psnrs) == pytest.approx(-50.0, abs=1.0)
    assert bd_rate(rates, psnrs, rates * 2, psnrs) == pytest.approx(100.0, abs=1.0)
    # Half the rate at every PSNR, sampled at other PSNRs of a log-linear curve.
    line_p = np.array([30.0, 34.0, 38.0, 42.0])
    other_p = np.linspace(31.0, 43.0, 7)
    assert bd_rate(2 ** (line_p / 4), line_p, 2 ** (other_p / 4) / 2, other_p) == pytest.approx(
        -50.0, abs=1e-6
    )
    # No overlap, or fewer than two points: None.
    assert bd_rate(rates, psnrs, [1.0, 2.0], [50.0, 52.0]) is None
    assert bd_rate(rates, psnrs, [1.0], [35.0]) is None
    assert bd_rate(rates, psnrs, [1.0, 2.0], [35.0, None]) is None  # lossless points are dropped


def test_bd_rate_matches_scipy() -> None:
    """pchip_integral against an independent implementation, SciPy's PchipInterpolator."""
    interpolate = pytest.importorskip("scipy.interpolate", reason="needs scipy: pip install -e '.[test]'")
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(25, 45, 6))
    y = np.sort(rng.uniform(-1, 1, 6))
    assert pchip_integral(x, y, x[0] + 0.7, x[-1] - 0.3) == pytest.approx(
        interpolate.PchipInterpolator(x, y).integrate(x[0] + 0.7, x[-1] - 0.3), rel=1e-12
    )


def test_rd_front_and_rate_at() -> None:
    r, p = rd_front([4.0, 1.0, 2.0, 3.0, 2.0, 5.0], [40.0, 30.0, 35.0, 34.0, 33.0, float("inf")])
    assert r.tolist() == [1.0, 2.0, 4.0] and p.tolist() == [30.0, 35.0, 40.0]
    assert rate_at([1.0, 2.0, 4.0], [30.0, 35.0, 40.0], 35.0) == pytest.approx(2.0)
    assert rate_at([1.0, 2.0, 4.0], [30.0, 35.0, 40.0], 41.0) is None


def test_tiff_tile_tables() -> None:
    pyvips = pytest.importorskip("pyvips")
    from benchmarks.rd_sources import jpeg_pyramid, tile_bytes, tile_tables

    region = _crop(600)
    im = pyvips.Image.new_from_memory(region.tobytes(), 600, 600, 3, "uchar")
    buf = im.tiffsave_buffer(tile=True, compression="jpeg", Q=85, tile_width=256, tile_height=256)
    (table,) = tile_tables(io.BytesIO(buf))
    assert table.width == 600 and table.tile_width == 256 and len(table.byte_counts) == 9
    one = tile_bytes(table, 0, 0, 10, 10)
    assert one["tiles"] == 1 and one["tile_bytes"] == table.byte_counts[0]
    all_ = tile_bytes(table, 0, 0, 600, 600)
    assert all_["tiles"] == 9 and all_["tile_bytes"] == sum(table.byte_counts)
    assert all_["covered_pixels"] == 600 * 600
    assert tile_bytes(table, 250, 250, 10, 10)["tiles"] == 4
    pyr = jpeg_pyramid(region, 80)
    assert [lv["width"] for lv in pyr["levels"]] == [600, 300, 150]
    assert pyr["level0_bytes"] > pyr["lower_levels_bytes"] > 0 and pyr["level0_psnr"] > 25


def test_encode_cinr_equals_fit_then_store(tmp_path: Path) -> None:
    from benchmarks.rd_cinr import encode_cinr, fit_cinr, store_cinr

    region = _crop(32)
    one = encode_cinr(region, tmp_path / "a.cinr", "fast", "int8+float16", 5)
    two = store_cinr(fit_cinr(region, "fast", 5), region, tmp_path / "b.cinr", "int8+float16")
    assert one["bytes"] == (tmp_path / "a.cinr").stat().st_size
    assert one["psnr"] == two["psnr"] and one["ssim"] == two["ssim"]
