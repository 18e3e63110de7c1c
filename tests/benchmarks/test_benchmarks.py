"""Smoke tests: each benchmark starts, measures and reports (never timed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def _crop_png(tmp_path: Path, size: int) -> Path:
    """A size x size crop of the bundled real slide saved as PNG."""
    from PIL import Image

    from cinr_codec.encode.source import read_crop, sample_slide_path

    img = tmp_path / "crop.png"
    Image.fromarray(read_crop(sample_slide_path(), size)).save(img)
    return img


def test_models_json(tmp_path: Path) -> None:
    img = _crop_png(tmp_path, 64)
    p = _run(
        "benchmarks.models",
        "--image",
        str(img),
        "--crop",
        "48",
        "--budget",
        "1",
        "--models",
        "ngp,cinr",
        "--preset",
        "fast",
        "--json",
        "--no-write",
        "--device",
        "cpu",
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
    p = _run(
        "benchmarks.hashgrid_speed",
        "--points",
        "4096",
        "--repeat",
        "1",
        "--config",
        "default",
        "--json",
        "--no-write",
    )
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    # naive, then scattered points and pixel grid for each path (native when built, pure PyTorch).
    from cinr_codec.core import native

    assert len(rows) == (5 if native.available() else 3)
    assert all(r["fwd_mpts"] > 0 and r["fwd_bwd_mpts"] > 0 for r in rows)
    assert rows[-1]["method"].endswith("pure PyTorch")


def test_quant_json(tmp_path: Path) -> None:
    img = _crop_png(tmp_path, 32)
    p = _run(
        "benchmarks.quant",
        "--image",
        str(img),
        "--crop",
        "32",
        "--preset",
        "fast",
        "--steps",
        "5",
        "--settings",
        "float32,int8+float16",
        "--json",
        "--no-write",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    (image,) = out["images"]
    rows = {r["setting"]: r for r in image["rows"]}
    assert set(rows) == {"float32", "int8+float16"}
    assert rows["float32"]["psnr_loss"] == 0 and rows["float32"]["psnr"] == image["fit_psnr"]
    assert rows["int8+float16"]["payload_bytes"] < rows["float32"]["payload_bytes"]
    assert out["chosen"] in rows and image["steps"] == 5


def test_quant_bad_setting() -> None:
    p = _run("benchmarks.quant", "--settings", "int4", "--json")
    assert p.returncode == 2 and "unknown storage settings" in p.stderr


def test_tissue_mask() -> None:
    import numpy as np

    from benchmarks.quant import otsu_threshold, saturation_histogram, tissue_mask

    values = np.concatenate([np.full(100, 10.0), np.full(100, 200.0)])
    assert 10 <= otsu_threshold(saturation_histogram(values)) < 200
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2] = (245, 245, 245)  # glass
    img[2:] = (200, 80, 150)  # stained tissue
    mask, _ = tissue_mask(img)
    assert mask[2:].all() and not mask[:2].any()
    all_tissue = np.tile(np.array([[[220, 150, 190]], [[120, 40, 110]]], np.uint8), (2, 4, 1))
    assert tissue_mask(all_tissue)[0].all()  # Otsu alone would split pale from dark tissue


def test_latent_encode_json() -> None:
    """The per-phase encode cost of one ccinr block: both search directions lower the loss."""
    p = _run(
        "benchmarks.latent_encode",
        "--size",
        "32",
        "--steps",
        "3",
        "--x",
        "0",
        "--y",
        "0",
        "--json",
        "--no-write",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["steps"] == 3 and out["payload_bytes"] > 0 and out["psnr"] > 5
    assert [s["sign"] for s in out["searches"]] == ["both", "predicted"]
    assert all(s["loss_after"] <= s["loss_before"] for s in out["searches"])


def test_latent_encode_bad_input() -> None:
    p = _run("benchmarks.latent_encode", "--sign", "sideways", "--no-write")
    assert p.returncode == 2 and "--sign wants both and/or predicted" in p.stderr
