"""Tissue detection: Otsu on saturation with safety guards, mask cleaning, per-block tissue fractions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_paths import SAMPLE, SHARED, shared

from cinr_codec.encode.source import SlideSource
from cinr_codec.encode.tissue import (
    MAX_SAT,
    MIN_SAT,
    TissueMap,
    block_tissue,
    clean_mask,
    detect_tissue,
    hsv_saturation_value,
    otsu_threshold,
)

PINK = (200, 120, 170)  # H&E eosin-like
GLASS = (244, 241, 242)


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


def thumb_and_map(path: Path, max_side: int = 256, level: int = 0) -> tuple[np.ndarray, TissueMap]:
    with SlideSource(path, level) as s:
        thumb = s.thumbnail(max_side)
        return thumb, detect_tissue(thumb, s.width, s.height)


# -- Otsu and saturation -------------------------------------------------------------------------


def test_otsu_on_a_bimodal_histogram() -> None:
    bins = np.arange(256)
    hist = 1000 * np.exp(-0.5 * ((bins - 30) / 8) ** 2) + 400 * np.exp(-0.5 * ((bins - 170) / 15) ** 2)
    t = otsu_threshold(hist)
    assert 60 < t < 140
    gap = np.zeros(256)
    gap[[10, 11, 12]] = 5
    gap[[200, 201]] = 3
    assert otsu_threshold(gap) == pytest.approx((12 + 199) / 2)  # middle of the flat optimum


def test_otsu_degenerate_histograms() -> None:
    assert otsu_threshold(np.zeros(256)) == 0.0
    one = np.zeros(256)
    one[102] = 50
    assert otsu_threshold(one) == 102.0


def test_hsv_saturation_value() -> None:
    img = np.array([[[255, 255, 255], [200, 120, 170], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8)
    sat, val = hsv_saturation_value(img)
    assert sat[0].tolist() == pytest.approx([0.0, 102.0, 0.0, 255.0])
    assert val[0].tolist() == [255, 200, 0, 255]
    with pytest.raises(ValueError):
        hsv_saturation_value(img[..., :2])


# -- synthetic images ----------------------------------------------------------------------------


def test_all_white_is_all_background() -> None:
    tmap = detect_tissue(solid(64, 48, (255, 255, 255)), 4800, 6400)
    assert tmap.tissue_fraction == 0.0 and not tmap.mask.any()
    assert tmap.threshold == MIN_SAT
    assert tmap.background == (255, 255, 255)
    assert (tmap.scale_x, tmap.scale_y) == (48 / 4800, 64 / 6400)
    assert (block_tissue(tmap, 512, 10, 13) == 0).all()


def test_noisy_glass_stays_background() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(solid(100, 100, GLASS).astype(int) + rng.integers(-4, 5, (100, 100, 3)), 0, 255)
    tmap = detect_tissue(glass.astype(np.uint8), 1000, 1000)
    assert tmap.tissue_fraction == 0.0
    assert np.abs(np.array(tmap.background) - GLASS).max() <= 2


def test_solid_pink_is_all_tissue() -> None:
    tmap = detect_tissue(solid(40, 30, PINK), 3000, 4000)
    assert tmap.mask.all() and tmap.tissue_fraction == 1.0
    assert tmap.background == (255, 255, 255)  # no background pixels
    assert (block_tissue(tmap, 256, 12, 16) == 1.0).all()


def test_half_tissue_half_glass() -> None:
    img = solid(50, 100, GLASS)
    img[:, 50:] = PINK
    tmap = detect_tissue(img, 100, 50)
    assert tmap.tissue_fraction == pytest.approx(0.5)
    assert tmap.mask[:, 50:].all() and not tmap.mask[:, :50].any()
    assert tmap.background == GLASS
    assert MIN_SAT <= tmap.threshold <= MAX_SAT


def test_dark_pixels_count_as_tissue() -> None:
    img = solid(40, 40, (255, 255, 255))
    img[10:20, 10:20] = (20, 20, 22)  # dense pigment or ink: grey, dark
    tmap = detect_tissue(img, 40, 40)
    assert tmap.mask[10:20, 10:20].all() and tmap.mask.sum() == 100


def test_isolated_specks_are_dropped_small_groups_kept() -> None:
    img = solid(40, 40, (255, 255, 255))
    img[5, 5] = PINK  # one isolated pixel: dust
    img[20:22, 20:22] = PINK  # a 2x2 fragment
    tmap = detect_tissue(img, 40, 40)
    assert not tmap.mask[5, 5]
    assert tmap.mask[20:22, 20:22].all()


def test_clean_mask_fills_pinholes() -> None:
    mask = np.ones((9, 9), dtype=bool)
    mask[4, 4] = False
    mask[0, 0] = False  # the image corner does not erode
    assert clean_mask(mask).all()


def test_faint_tissue_below_otsu_is_kept() -> None:
    """Otsu alone would split faint from strong tissue; the ceiling keeps faint tissue."""
    img = solid(60, 60, GLASS)
    img[:, 30:45] = (230, 185, 210)  # faint eosin, saturation ~50
    img[:, 45:] = (180, 60, 140)  # strong stain, saturation 170
    sat, _ = hsv_saturation_value(img)
    assert otsu_threshold(np.bincount(sat.round().astype(int).ravel(), minlength=256)) > 60
    tmap = detect_tissue(img, 60, 60)
    assert tmap.threshold == MAX_SAT
    assert tmap.mask[:, 30:].all() and not tmap.mask[:, :30].any()


def test_all_tissue_of_two_stains_is_all_tissue() -> None:
    img = solid(60, 60, (225, 170, 200))  # light pink, saturation ~62
    img[:, 30:] = (120, 60, 150)  # haematoxylin-like, saturation 153
    tmap = detect_tissue(img, 60, 60)
    assert tmap.threshold == MIN_SAT and tmap.mask.all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        detect_tissue(solid(4, 4, PINK), 0, 10)
    with pytest.raises(ValueError):
        detect_tissue(solid(4, 4, PINK).astype(np.float32), 10, 10)
    tmap = detect_tissue(solid(4, 4, PINK), 10, 10)
    with pytest.raises(ValueError):
        block_tissue(tmap, 0, 1, 1)


# -- blocks --------------------------------------------------------------------------------------


def glass_map(th: int, tw: int, level_w: int, level_h: int) -> TissueMap:
    mask = np.zeros((th, tw), dtype=bool)
    return TissueMap(mask=mask, scale_x=tw / level_w, scale_y=th / level_h, threshold=20.0, background=GLASS)


def test_block_touching_tissue_at_its_edge_is_tissue() -> None:
    # Level 1000x1000, thumbnail 100x100 (10 level pixels per thumbnail pixel), blocks of 100.
    tmap = glass_map(100, 100, 1000, 1000)
    tmap.mask[:, 20] = True  # level columns 200..209: inside block column 2 only
    frac = block_tissue(tmap, 100, 10, 10)
    assert frac.shape == (10, 10)
    assert (frac[:, 2] > 0.05).all()
    assert (frac[:, 1] > 0).all()  # block column 1 ends where the tissue starts: it touches it
    assert (frac[:, 3] == 0).all() and (frac[:, 0] == 0).all()
    assert (frac[:, 4:] == 0).all()
    # A margin of 150 level pixels: block 3, [150, 550), now reaches the tissue; block 4 does not.
    wide = block_tissue(tmap, 100, 10, 10, margin_px=150)
    assert (wide[:, :4] > 0).all() and (wide[:, 4:] == 0).all()


def test_block_fractions_and_clipping() -> None:
    tmap = glass_map(50, 80, 800, 500)  # 10 level pixels per thumbnail pixel
    tmap.mask[:25, :40] = True  # the top-left quarter of the level
    frac = block_tissue(tmap, 200, 5, 3)  # the last row and column are clipped to the level
    assert frac.shape == (3, 5)
    assert frac[0, 0] == 1.0 and frac[0, 1] > 0.9  # grown by a thumbnail pixel into the glass
    assert frac[2, 4] == 0.0 and frac[2, 3] == 0.0
    assert 0 < frac[1, 1] < 1  # straddles the quarter's corner
    outside = block_tissue(tmap, 200, 8, 5)  # blocks wholly outside the level are 0
    assert (outside[:, 4:] == 0).all() and (outside[3:] == 0).all()
    assert block_tissue(tmap, 200, 0, 0).shape == (0, 0)


# -- real slides ---------------------------------------------------------------------------------


def test_cmu_small_region_has_glass_and_tissue() -> None:
    path = SHARED / "CMU-1-Small-Region.svs"
    thumb, tmap = thumb_and_map(path if path.exists() else SAMPLE)
    assert tmap.mask.shape == thumb.shape[:2]
    assert 0.25 < tmap.tissue_fraction < 0.5  # measured 0.36; the left third is glass
    assert MIN_SAT <= tmap.threshold <= MAX_SAT
    assert min(tmap.background) > 230 and max(tmap.background) < 255  # glass, not the white fill
    frac = block_tissue(tmap, 512, 5, 6)
    assert 3 <= int((frac == 0).sum()) <= 15  # some whole blocks are glass...
    assert int((frac > 0.5).sum()) >= 6  # ...and many are tissue (the middle column)
    assert frac[:, 0].max() < 0.2 and frac[:, -1].max() < 0.2 and frac[:, 2].min() > 0.3


def test_tcga_frozen_section() -> None:
    why = "tissue fractions measured on this frozen section"
    thumb, tmap = thumb_and_map(shared("TCGA-CR-7395-01A-01-TS1.svs", why), level=1)
    assert 0.5 < tmap.tissue_fraction < 0.8  # measured 0.63
    with SlideSource(SHARED / "TCGA-CR-7395-01A-01-TS1.svs") as s:
        crop = s.read(1200, 1000, 1024, 768)  # all tissue
    small = crop.reshape(192, 4, 256, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    assert detect_tissue(small, 1024, 768).tissue_fraction > 0.9  # measured 0.97


def test_prostate_biopsy_has_glass_around_it() -> None:
    _, tmap = thumb_and_map(shared("he-prostate-2500.jpeg", "tissue fractions measured on this biopsy image"))
    assert 0.55 < tmap.tissue_fraction < 0.85  # measured 0.72; lumens and glass are background
    assert min(tmap.background) > 230
    frac = block_tissue(tmap, 500, 5, 5)
    assert (frac > 0).all()  # every 500-pixel block holds some tissue
