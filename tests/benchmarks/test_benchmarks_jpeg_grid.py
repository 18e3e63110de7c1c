"""``benchmarks.jpeg_grid`` on a small JPEG made here: the grid position changes the block codecs' cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def test_on_grid_regions_are_cheaper_for_jpeg(
    tmp_path: Path,
    tissue_crop: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    from benchmarks import jpeg_grid

    src = tmp_path / "src.jpg"
    Image.fromarray(np.ascontiguousarray(tissue_crop[:80, :80])).save(src, quality=80)
    monkeypatch.setattr(jpeg_grid, "IMAGE", src)
    monkeypatch.setattr(jpeg_grid, "RESULTS", tmp_path)
    monkeypatch.setattr(jpeg_grid, "REGIONS", ((8, 8, 64), (12, 12, 64)))
    monkeypatch.setattr(jpeg_grid, "SETTINGS", {"jpeg": range(50, 100, 4)})
    monkeypatch.setattr(jpeg_grid, "PSNR", 36.0)
    jpeg_grid.main(["--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["on_grid"] for r in rows] == [True, False]
    on, off = rows[0]["jpeg"], rows[1]["jpeg"]
    assert on is not None and off is not None and on < off  # re-hitting the source's quantisation
    assert "| (8, 8, 64) | yes |" in (tmp_path / "jpeg_grid.md").read_text()


def test_rd_report_says_where_a_region_lies_on_a_jpeg_grid() -> None:
    from benchmarks.rd_report import grid_note

    def im(x: int, y: int, compression: str) -> dict[str, object]:
        return {"region": {"x": x, "y": y}, "source_tiles": {"compression": compression}}

    assert "(6, 0) px off the source JPEG's 8x8 grid" in grid_note(im(46, 1272, "JPEG"))
    assert "lies on the source JPEG's 8x8 grid" in grid_note(im(48, 1272, "JPEG"))
    assert grid_note(im(46, 1272, "JPEG 2000 (Aperio YCbCr)")) == ""
    assert grid_note(im(46, 1272, "PNG")) == ""
