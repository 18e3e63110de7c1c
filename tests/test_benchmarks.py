"""Smoke tests: each benchmark starts, measures and reports (never timed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_models_json(tmp_path: Path) -> None:
    from PIL import Image

    from cinr_codec.slide import read_crop, sample_slide_path

    img = tmp_path / "crop.png"
    Image.fromarray(read_crop(sample_slide_path(), 64)).save(img)
    p = _run(
        "benchmarks.models", "--image", str(img), "--crop", "48", "--budget", "1",
        "--models", "ngp,cinr", "--preset", "fast", "--json", "--no-write", "--device", "cpu",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [r["model"] for r in out["results"]] == ["ngp", "cinr"]
    for r in out["results"]:
        assert {"model", "psnr", "ssim", "steps", "seconds"} <= set(r)
        assert r["steps"] > 0 and r["psnr"] > 5 and r["seconds"] >= 1.0
        assert r["hash_params"] == out["results"][0]["hash_params"]  # equal hash grids


def test_models_bad_input() -> None:
    p = _run("benchmarks.models", "--image", "/nonexistent.png", "--budget", "1", "--json")
    assert p.returncode == 2 and "no such file" in p.stderr


def test_hashgrid_speed_json() -> None:
    p = _run("benchmarks.hashgrid_speed", "--points", "4096", "--repeat", "1", "--config", "default", "--json", "--no-write")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    assert len(rows) == 3 and all(r["fwd_mpts"] > 0 and r["fwd_bwd_mpts"] > 0 for r in rows)
