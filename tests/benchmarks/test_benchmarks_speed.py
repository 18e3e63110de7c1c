"""Smoke tests of the speed and memory benchmarks: each starts, measures, writes its table, prints JSON.

Timings are never asserted (they depend on the machine and its load); each run uses the
benchmark's ``--smoke`` mode, a few seconds of work on tiny inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_paths import ROOT, SAMPLE, SHARED


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def _he_image() -> Path:
    """Real H&E pixels: the shared JPEG, or the bundled sample slide when shared data is absent."""
    path = SHARED / "he-prostate-2500.jpeg"
    return path if path.exists() else SAMPLE


def _slide() -> Path:
    path = SHARED / "CMU-1-Small-Region.svs"
    return path if path.exists() else SAMPLE


def test_encode_speed_smoke(tmp_path: Path) -> None:
    p = _run(
        "benchmarks.encode_speed",
        "--smoke",
        "--image",
        str(_he_image()),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--json",
        "--quiet",
        "--results",
        str(tmp_path),
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [r["steps"] for r in out["curve"]] == [2, 4]
    for r in out["curve"]:
        assert r["preset"] == "fast" and r["device"] == "cpu"
        assert r["seconds"] > 0 and r["mp_per_min"] > 0 and r["bpp"] > 0 and r["psnr"] > 5
    (row,) = out["throughput"]
    assert row["steps"] == 4 and row["width"] == row["height"] == 128
    md = (tmp_path / "encode_speed_smoke.md").read_text()
    assert "PSNR reached against time" in md and "- command: `python -m benchmarks.encode_speed" in md
    assert "- cpu:" in md and "- gpu:" in md and "- cinr_codec:" in md
    assert (tmp_path / "encode_speed_smoke.png").stat().st_size > 0
    assert json.loads((tmp_path / "encode_speed_smoke.json").read_text())["curve"] == out["curve"]


@pytest.mark.parametrize("processes", [None, 2])
def test_encode_speed_of_the_compressive_quality_levels(tmp_path: Path, processes: int | None) -> None:
    args = ["benchmarks.encode_speed", "--smoke", "--image", str(_he_image()), "--device", "cpu"]
    args += [
        "--threads",
        "1",
        "--presets",
        "q4",
        "--steps",
        "3",
        "--json",
        "--quiet",
        "--results",
        str(tmp_path),
    ]
    if processes:  # as `cinr encode` on two free cores: four 128^2 blocks, fitted in two processes
        args += ["--size", "256", "--processes", str(processes)]
    p = _run(*args)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    (row,) = out["curve"]
    assert row["preset"] == "q4" and row["model"] == "ccinr" and row["mp_per_min"] > 0
    assert row["steps"] == 3 * row["tissue_blocks"] and row["tissue_blocks"] >= (2 if processes else 1)
    assert out["settings"]["processes"] == processes
    md = (tmp_path / "encode_speed_smoke.md").read_text()
    assert ("fits in 2 worker processes" in md) == bool(processes)


def test_encode_speed_bad_input() -> None:
    p = _run("benchmarks.encode_speed", "--image", "/nonexistent.png", "--smoke", "--json")
    assert p.returncode == 2 and "no such file" in p.stderr
    # An image that exists (the bundled sample): the default lies in ../shared, absent on a fresh clone.
    p = _run("benchmarks.encode_speed", "--image", str(SAMPLE), "--presets", "q9", "--smoke", "--json")
    assert p.returncode == 2 and "unknown preset 'q9'" in p.stderr
    p = _run("benchmarks.encode_speed", "--image", str(SAMPLE), "--processes", "0", "--smoke", "--json")
    assert p.returncode == 2 and "--processes must be >= 1" in p.stderr


def test_decode_speed_smoke(tmp_path: Path) -> None:
    p = _run(
        "benchmarks.decode_speed",
        "--smoke",
        "--slide",
        str(_slide()),
        "--device",
        "cpu",
        "--torch-threads",
        "1",
        "--json",
        "--quiet",
        "--results",
        str(tmp_path),
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["methods"][0] == "cinr"
    assert [(c["size"], c["scale"]) for c in out["cells"]] == [
        (64, "1"),
        (64, "1/4"),
        (128, "1"),
        (128, "1/4"),
    ]
    for c in out["cells"]:
        for m in out["methods"]:
            for kind in ("cold", "warm"):
                assert c[m][kind]["n"] == 2 and c[m][kind]["median"] > 0
    assert [t["scale"] for t in out["target"]] == ["1", "1/4"]
    assert out["target"][0]["cold_ratio"] == 1.0
    assert out["methods"][1] == "cinr lattice"
    assert {r["method"] for r in out["threads"]} == set(out["methods"]) - {"cinr lattice"}
    assert all(v > 0 for r in out["threads"] for v in r["rps"].values())
    md = (tmp_path / "decode_speed_smoke.md").read_text()
    assert "The 3x target" in md and "Viewer pattern" in md and "- command:" in md


def test_decode_speed_bad_scale() -> None:
    p = _run("benchmarks.decode_speed", "--smoke", "--scales", "1,3", "--json")
    assert p.returncode == 2 and "--scales" in p.stderr


def test_encode_memory_smoke(tmp_path: Path) -> None:
    p = _run(
        "benchmarks.encode_memory",
        "--smoke",
        "--image",
        str(_he_image()),
        "--device",
        "cpu",
        "--json",
        "--quiet",
        "--results",
        str(tmp_path),
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    (row,) = out["rows"]
    assert not out["failed"] and not out["pending"]
    assert row["block_size"] == 128 and row["blocks"] == 4 and row["tissue_blocks"] >= 1
    assert row["side"] == 256 and row["width"] == row["height"] == 256
    assert row["peak_rss_mb"] > out["baseline_rss_mb"] > 10 and row["seconds"] > 0
    md = (tmp_path / "encode_memory_smoke.md").read_text()
    assert "| 256 x 256 | tiled | 128 |" in md and "peak RSS" in md
    assert json.loads((tmp_path / "encode_memory_smoke.json").read_text())["rows"] == out["rows"]


def test_encode_memory_plan_and_layout(tmp_path: Path) -> None:
    import pyvips

    from benchmarks.encode_memory import _tissue_cells, build_tiff, journal_blocks, parse_runs

    assert parse_runs("2500:1024, 20000s:1024") == [(2500, False, 1024), (20000, True, 1024)]
    assert _tissue_cells(8, 2) == {0, 63} and _tissue_cells(3, 1) == {4}
    src = tmp_path / "cell.png"
    (pyvips.Image.black(100, 100, bands=3) + [200, 100, 150]).cast("uchar").write_to_file(str(src))
    info = build_tiff(src, 250, tmp_path / "sparse.tif", sparse=True, tissue_cells=2)
    assert info["layout"] == "sparse" and info["copies"] == 2
    img = pyvips.Image.new_from_file(str(tmp_path / "sparse.tif"))
    assert (img.width, img.height) == (250, 250)
    assert img.crop(0, 0, 90, 90).avg() < 200 and img.crop(110, 0, 80, 80).min() > 240  # tissue / glass
    assert journal_blocks(tmp_path / "missing.journal") == 0


def test_decode_allocator_smoke(tmp_path: Path) -> None:
    p = _run(
        "benchmarks.decode_allocator",
        *("--presets", "fast", "--steps", "1", "--rounds", "1", "--reads", "2", "--size", "64"),
        *("--json", "--results", str(tmp_path)),
    )
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout.strip().splitlines()[-1])["rows"]
    assert row["preset"] == "fast" and row["default_ms"] > 0 and row["tuned_ms"] > 0
    assert row["ratio"] == round(row["default_ms"] / row["tuned_ms"], 2)
    assert "| fast |" in (tmp_path / "decode_allocator.md").read_text()


def test_decode_allocator_bad_input() -> None:
    p = _run("benchmarks.decode_allocator", "--image", "/nonexistent.svs")
    assert p.returncode == 2 and "no such file" in p.stderr
    p = _run("benchmarks.decode_allocator", "--reads", "0")
    assert p.returncode == 2 and "--reads" in p.stderr
