"""``encode.reference``: the JPEG-tiled pyramid every encode's summary compares with."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from cinr_codec.encode.reference import MIN_SIDE, QUALITIES, TILE, PyramidTotals, block_reference
from cinr_codec.encode.source import SlideSource, sample_slide_path


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    with SlideSource(sample_slide_path()) as s:
        return s.read(1600, 2000, 300, 280)  # not a multiple of the tile: partial tiles counted


def test_bytes_grow_and_error_falls_with_quality(tissue: np.ndarray) -> None:
    ref = block_reference(tissue, error=True)
    assert len(ref["bytes"]) == len(ref["sse"]) == len(QUALITIES)
    assert all(a < b for a, b in zip(ref["bytes"], ref["bytes"][1:], strict=False))
    # The error falls with quality overall; not between every two: on this JPEG-sourced sample
    # q70 errs a little more than q65 (one of them lies nearer the source's own tables).
    assert ref["sse"][-1] < ref["sse"][0]
    high = QUALITIES.index(75)
    assert all(a > b for a, b in zip(ref["sse"][high:], ref["sse"][high + 1 :], strict=False))
    # The error is the level tiles' own: q80 of each tile, decoded, against the pixels.
    q80 = QUALITIES.index(80)
    sse = 0.0
    level_bytes = 0
    for y in range(0, tissue.shape[0], TILE):
        for x in range(0, tissue.shape[1], TILE):
            tile = np.ascontiguousarray(tissue[y : y + TILE, x : x + TILE])
            data = imagecodecs.jpeg8_encode(tile, level=80)
            sse += float(((imagecodecs.jpeg8_decode(data).astype(np.float64) - tile) ** 2).sum())
            level_bytes += len(data) - data.find(b"\xff\xda")  # from the start of scan: tables are shared
    assert ref["sse"][q80] == pytest.approx(sse)
    # ... and the lower levels (1/2, 1/4, ... down to MIN_SIDE) add to the level's bytes.
    assert level_bytes < ref["bytes"][q80] < 1.6 * level_bytes
    assert 300 // 16 >= MIN_SIDE  # so the 1/16 level was counted too
    assert block_reference(tissue, error=False)["sse"] == [0.0] * len(QUALITIES)


def test_pyramid_interpolates_bytes_at_the_files_psnr(tissue: np.ndarray) -> None:
    ref = block_reference(tissue, error=True)
    glass = block_reference(np.full((64, 64, 3), 240, dtype=np.uint8), error=False)
    totals = PyramidTotals()
    totals.add({"kind": "model", "n": tissue.size, "jpeg_reference": ref})
    totals.add({"kind": "background", "n": 64 * 64 * 3, "jpeg_reference": glass})
    i = QUALITIES.index(80)
    at = totals.summary(None)
    assert at is not None and at["jpeg_equal_psnr_bytes"] is None
    both = np.array(ref["bytes"]) + np.array(glass["bytes"])
    assert at["jpeg_q80_bytes"] == int(both[i])  # the background's tiles count in bytes, not in PSNR
    p = at["jpeg_psnr"]
    assert p[i] == pytest.approx(10 * np.log10(255**2 / (ref["sse"][i] / tissue.size)))
    # At a quality's own PSNR the bytes are that quality's; between two, between theirs.
    assert totals.summary(p[i])["jpeg_equal_psnr_bytes"] == pytest.approx(both[i], rel=1e-9)
    mid = totals.summary((p[i] + p[i + 1]) / 2)["jpeg_equal_psnr_bytes"]
    assert both[i] < mid < both[i + 1]
    assert totals.summary(p[-1] + 1)["jpeg_equal_psnr_bytes"] is None  # past q95: not extrapolated
    totals.add({"kind": "model", "n": 3})  # a block journaled before the reference existed
    assert totals.summary(p[i]) is None
    other = PyramidTotals()  # or measured at other qualities (an older encoder's journal)
    other.add({"kind": "model", "n": tissue.size, "jpeg_reference": {"bytes": [1.0] * 8, "sse": [1.0] * 8}})
    assert other.summary(p[i]) is None


def test_bytes_at_a_psnr_come_from_the_cheapest_pyramids_reaching_it() -> None:
    """A JPEG-sourced level re-encodes almost losslessly at its own quality (the prostate image
    at q75: 58.8 dB for fewer bytes than q80 … q95): qualities that cost more for less PSNR are
    left out of the interpolation."""
    totals = PyramidTotals()
    n = 1000
    # q20 … q95 of he-prostate-2500.jpeg (kB)
    psnr = [29.6, 32.5, 36.4, 38.8, 42.1, 58.8, 43.2, 43.7, 45.7, 48.6]
    size = [703, 1040, 1547, 1630, 1743, 1840, 2002, 2380, 2784, 3746]
    totals.size = np.array(size, dtype=np.float64)
    totals.sse = np.array([n * 255.0**2 / 10 ** (v / 10) for v in psnr])
    totals.n = n
    at = totals.summary(37.45)
    assert at is not None
    want = np.exp(np.interp(37.45, [36.4, 38.8], np.log([1547, 1630])))  # q60 to q65
    assert at["jpeg_equal_psnr_bytes"] == round(want)
    want = np.exp(np.interp(45.0, [42.1, 58.8], np.log([1743, 1840])))  # q70 to q75, not to q80
    assert totals.summary(45.0)["jpeg_equal_psnr_bytes"] == round(want)
    assert totals.summary(50.0)["jpeg_equal_psnr_bytes"] < 1840  # below q75's bytes, past q95's PSNR
    assert totals.summary(psnr[2])["jpeg_equal_psnr_bytes"] == 1547
