"""Background (glass) detection on a low-resolution thumbnail: Otsu on HSV saturation, tuned for safety.

The method is the usual one (histolab, TIAToolbox): glass is bright and unsaturated, stained tissue
is saturated, so an Otsu threshold on the saturation histogram of a thumbnail separates them. The
codec uses the mask to skip blocks of empty glass, where an error is asymmetric: a block wrongly called
background loses tissue, one wrongly called tissue only costs bytes. Every choice below leans to
"tissue":

- the threshold is Otsu's clipped to [MIN_SAT, MAX_SAT]. The floor keeps JPEG noise on an all-glass
  slide from being called tissue; the ceiling keeps faintly stained tissue on the tissue side (Otsu
  lands between the glass mode and the tissue mode: 42 to 69 on 1024-pixel thumbnails of the shared
  slides, where tissue pixels at saturation 20 to 60 are common and glass is mostly below 20);
- when the class below Otsu's threshold is not glass-like (median saturation above GLASS_MAX_SAT), the
  slide has no glass mode (all tissue: Otsu split two stains) and the floor MIN_SAT is used;
- very dark pixels (HSV value < DARK_VALUE: dense pigment, thick folds, pen ink, black scanner borders)
  have unreliable saturation and are counted as tissue; they are left out of the histogram;
- the mask is closed (3x3) to fill pinholes, and single isolated tissue pixels (dust) are dropped;
- `block_tissue` grows every block by at least one thumbnail pixel, so a block that only touches
  tissue counts as tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Saturation floor (0..255): Otsu's threshold is never lower (JPEG noise on glass stays background).
MIN_SAT = 20.0
#: Saturation ceiling (0..255): Otsu's threshold is never higher (faint tissue stays tissue).
MAX_SAT = 40.0
#: If the pixels below Otsu's threshold have a median saturation above this, they are not glass.
GLASS_MAX_SAT = 25.0
#: Pixels darker than this HSV value (0..255) are tissue whatever their saturation.
DARK_VALUE = 40


@dataclass(frozen=True)
class TissueMap:
    """Tissue mask on a thumbnail of one slide level, with its scale and the background colour."""

    mask: np.ndarray  # bool (th, tw): True = tissue, on the thumbnail
    scale_x: float  # thumbnail pixels per level pixel, x (tw / level width)
    scale_y: float  # thumbnail pixels per level pixel, y (th / level height)
    threshold: float  # saturation threshold used (0..255): tissue is saturation > threshold
    background: tuple[int, int, int]  # median RGB of the non-tissue thumbnail pixels

    @property
    def tissue_fraction(self) -> float:
        """Fraction of thumbnail pixels that are tissue (0 for an empty mask)."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def hsv_saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation (0..255, float32) and value (0..255, uint8) of an (h, w, 3) uint8 RGB image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {rgb.shape}")
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    sat = np.zeros(mx.shape, dtype=np.float32)
    nz = mx > 0
    sat[nz] = (mx[nz].astype(np.float32) - mn[nz]) * 255.0 / mx[nz]
    return sat, mx.astype(np.uint8)


def otsu_threshold(hist: np.ndarray) -> float:
    """Otsu's threshold t of a histogram (classes: bins <= t and bins > t), middle of a flat optimum.

    A histogram with fewer than two occupied bins has no split: its lowest occupied bin (0 if empty)
    is returned, so everything is in the lower class.
    """
    h = np.asarray(hist, dtype=np.float64).ravel()
    occupied = np.flatnonzero(h > 0)
    if occupied.size < 2:
        return float(occupied[0]) if occupied.size else 0.0
    p = h / h.sum()
    bins = np.arange(h.size, dtype=np.float64)
    w0 = np.cumsum(p)  # weight of the class <= t
    m0 = np.cumsum(p * bins)  # first moment of the class <= t
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1.0 - w0))  # between-class variance (times a constant)
    between[~np.isfinite(between)] = 0.0
    best = np.flatnonzero(between >= between.max() * (1.0 - 1e-9))
    return float(best[0] + best[-1]) / 2.0


def _shift_or(mask: np.ndarray) -> np.ndarray:
    """3x3 dilation (outside counts as False)."""
    p = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def _shift_and(mask: np.ndarray) -> np.ndarray:
    """3x3 erosion (outside counts as True, so the image edge does not erode)."""
    p = np.pad(mask, 1, constant_values=True)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= p[dy : dy + h, dx : dx + w]
    return out


def _neighbour_count(mask: np.ndarray) -> np.ndarray:
    """Number of True pixels among each pixel's 8 neighbours."""
    p = np.pad(mask, 1, constant_values=False).astype(np.uint8)
    h, w = mask.shape
    count = np.zeros(mask.shape, dtype=np.uint8)
    for dy in range(3):
        for dx in range(3):
            if dy != 1 or dx != 1:
                count += p[dy : dy + h, dx : dx + w]
    return count


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Fill pinholes (3x3 closing), then drop isolated single pixels (no tissue among the 8 neighbours)."""
    closed = _shift_and(_shift_or(mask))
    return closed & (_neighbour_count(closed) > 0)


def detect_tissue(thumb: np.ndarray, level_width: int, level_height: int) -> TissueMap:
    """Tissue mask of a level from its RGB uint8 thumbnail (Otsu on saturation, see the module notes)."""
    if level_width <= 0 or level_height <= 0:
        raise ValueError(f"level size must be positive, got {level_width}x{level_height}")
    thumb = np.asarray(thumb)
    if thumb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 thumbnail, got {thumb.dtype}")
    sat, val = hsv_saturation_value(thumb)
    dark = val < DARK_VALUE
    hist = np.bincount(np.clip(np.rint(sat[~dark]), 0, 255).astype(np.int64), minlength=256)
    t = otsu_threshold(hist)
    below = sat[(~dark) & (sat <= t)]
    if below.size and float(np.median(below)) > GLASS_MAX_SAT:
        t = MIN_SAT  # no glass mode: Otsu split tissue from tissue
    t = float(min(max(t, MIN_SAT), MAX_SAT))
    mask = clean_mask((sat > t) | dark)
    rest = thumb[~mask]
    if rest.size:
        med = np.median(rest.reshape(-1, 3), axis=0)
        background = (int(round(med[0])), int(round(med[1])), int(round(med[2])))
    else:
        background = (255, 255, 255)
    th, tw = mask.shape
    return TissueMap(
        mask=mask,
        scale_x=tw / level_width,
        scale_y=th / level_height,
        threshold=t,
        background=background,
    )


def block_tissue(tmap: TissueMap, block_size: int, cols: int, rows: int, margin_px: int = 0) -> np.ndarray:
    """(rows, cols) fraction of tissue thumbnail pixels in each block, the block grown for safety.

    Block (r, c) covers level pixels [c*bs, (c+1)*bs) x [r*bs, (r+1)*bs) clipped to the level; its
    rectangle is grown by margin_px level pixels and by at least one thumbnail pixel on every side, so
    a block that merely touches tissue gets a fraction > 0. Blocks wholly outside the level get 0.
    """
    if block_size <= 0 or cols < 0 or rows < 0 or margin_px < 0:
        raise ValueError("block_size must be positive and cols, rows, margin_px non-negative")
    th, tw = tmap.mask.shape
    level_w = float(round(tw / tmap.scale_x))
    level_h = float(round(th / tmap.scale_y))

    def spans(n: int, level: float, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.arange(n, dtype=np.float64) * block_size
        stop = np.minimum(start + block_size, level)
        lo = np.floor((start - margin_px) * scale).astype(np.int64) - 1
        hi = np.ceil((stop + margin_px) * scale).astype(np.int64) + 1
        empty = start >= level
        lo = np.clip(lo, 0, size)
        hi = np.where(empty, lo, np.clip(hi, 0, size))
        return lo, hi

    x0, x1 = spans(cols, level_w, tmap.scale_x, tw)
    y0, y1 = spans(rows, level_h, tmap.scale_y, th)
    integral = np.zeros((th + 1, tw + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(tmap.mask, axis=0, dtype=np.int64), axis=1)
    count = (
        integral[np.ix_(y1, x1)]
        - integral[np.ix_(y0, x1)]
        - integral[np.ix_(y1, x0)]
        + integral[np.ix_(y0, x0)]
    )
    area = np.outer(y1 - y0, x1 - x0)
    return np.where(area > 0, count / np.maximum(area, 1), 0.0)


#: At full resolution (4x4 means) a background block has at most this fraction of saturated pixels.
GLASS_MAX_TISSUE = 0.0005


def is_glass(pixels: np.ndarray, threshold: float) -> bool:
    """Whether a block's own pixels show no tissue: few 4x4-averaged pixels above the saturation threshold.

    The thumbnail pre-selects candidates; this full-resolution check keeps small fragments that
    the thumbnail blurred away (a false "background" destroys tissue, a false "tissue" costs bytes).
    """
    from ..core.resample import box_downsample, to_uint8

    sat, val = hsv_saturation_value(to_uint8(box_downsample(pixels, 4)))
    tissue = (sat > threshold) | (val < DARK_VALUE)
    return bool(tissue.sum() <= GLASS_MAX_TISSUE * tissue.size)
