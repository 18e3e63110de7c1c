"""Block grid geometry: ownership tiles the level exactly, fit regions, frames, mip ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cinr_codec.format.grid import BlockGrid, default_mip_downsamples


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 700),
    h=st.integers(1, 700),
    bs=st.sampled_from([64, 128, 256]),
    m=st.integers(0, 32),
)
def test_owned_regions_tile_the_level_once(w: int, h: int, bs: int, m: int) -> None:
    g = BlockGrid(w, h, bs, m, default_mip_downsamples(bs))
    covered = [[0] * w for _ in range(h)]
    for b in range(g.n_level_blocks):
        x, y, bw, bh = g.owned(b)
        assert bw >= 1 and bh >= 1
        fx, fy, fw, fh = g.fit_region(b)
        assert fx <= x and fy <= y and fx + fw >= x + bw and fy + fh >= y + bh
        assert 0 <= fx and 0 <= fy and fx + fw <= w and fy + fh <= h
        ox, oy = g.frame_origin(b)
        # The fit region lies inside the frame [origin, origin + side).
        assert ox <= fx and oy <= fy and fx + fw <= ox + g.side and fy + fh <= oy + g.side
        for yy in range(y, y + bh):
            for xx in range(x, x + bw):
                covered[yy][xx] += 1
    assert all(v == 1 for row in covered for v in row)
    ids = {g.mip_id(b, k) for b in range(g.n_level_blocks) for k in range(len(g.mip_downsamples))}
    assert ids == set(range(g.n_level_blocks, g.n_blocks))


def test_overlapping_and_edges() -> None:
    g = BlockGrid(300, 200, 128, 16, (2, 4))
    assert (g.cols, g.rows) == (3, 2)
    assert list(g.overlapping(0, 0, 1, 1)) == [0]
    assert list(g.overlapping(127, 127, 129, 129)) == [0, 1, 3, 4]
    assert list(g.overlapping(-50, -50, 0, 0)) == []
    assert list(g.overlapping(290, 190, 1000, 1000)) == [5]
    assert g.internal_edges(0) == (False, False, True, True)
    assert g.internal_edges(4) == (True, True, True, False)
    assert g.owned(5) == (256, 128, 44, 72)
    assert g.mip_size(5, 0) == (22, 36)


def test_mip_downsamples_and_validation() -> None:
    assert default_mip_downsamples(1024) == (2, 4, 8, 16, 32, 64)
    assert default_mip_downsamples(64) == (2, 4)
    assert default_mip_downsamples(1024, first=8) == (8, 16, 32, 64)
    assert default_mip_downsamples(64, first=8) == ()
    assert default_mip_downsamples(1024, first=8, step=4) == (8, 32)
    assert default_mip_downsamples(512, first=8, step=4) == (8, 32)
    assert default_mip_downsamples(256, first=8, step=4) == (8,)
    with pytest.raises(ValueError, match="step"):
        default_mip_downsamples(1024, step=3)
    for bad in (1, 3, 6):
        with pytest.raises(ValueError, match="power of two"):
            default_mip_downsamples(1024, first=bad)
    with pytest.raises(ValueError):
        BlockGrid(10, 10, 64, 0, (3,))
    with pytest.raises(ValueError):
        BlockGrid(10, 10, 64, 65)
    with pytest.raises(IndexError):
        BlockGrid(10, 10, 64).owned(1)
