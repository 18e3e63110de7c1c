"""The benchmarks' shared helpers, the source-tile counts of a real slide and the decoder tile drop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"


def test_md_table() -> None:
    from benchmarks.common import md_table

    assert md_table(("a", "b"), "lr", [(1, "x"), (None, 2.5)]) == [
        "| a | b |",
        "|---|---:|",
        "| 1 | x |",
        "| None | 2.5 |",
    ]
    with pytest.raises(ValueError):
        md_table(("a", "b"), "l")


def test_publish_writes_and_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.common import num, publish

    md = tmp_path / "out" / "r.md"
    publish(md, "# r\n", {"k": 1}, True, data={"rows": [1]})
    assert md.read_text() == "# r\n"
    assert json.loads(md.with_suffix(".json").read_text()) == {"rows": [1]}
    assert json.loads(capsys.readouterr().out) == {"k": 1}
    publish(None, "# text\n", {"k": 1}, False)
    assert capsys.readouterr().out == "# text\n\n"
    publish(None, "# text\n", {"k": 1}, False, show=False)
    assert capsys.readouterr().out == ""
    assert num(None) == "–" and num(1.23456) == "1.235" and num(None, ".2f", "inf") == "inf"


def test_source_tiles_of_the_sample_slide() -> None:
    """The numbers of the hand-written TIFF parser this replaced (level-0 JPEG tiles of an Aperio slide)."""
    pytest.importorskip("tifffile")
    from benchmarks.rd_sources import source_tiles

    where = {"x": 610, "y": 983, "width": 1000, "height": 1000, "image_width": 2220, "image_height": 2967}
    st = source_tiles(SAMPLE, where)
    assert st["exact"] and st["tiles"] == 25 and st["tile_size"] == [240, 240]
    assert st["bytes"] == 430202 and st["jpeg_tables_bytes"] == 289 and st["covered_pixels"] == 1440000
    assert st["compression"] == "JPEG" and st["quality"] == 30
