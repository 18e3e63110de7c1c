"""core/resample.py: the integer box means equal the float32 means they replace, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from cinr_codec.core.resample import MAX_BOX_MEAN, box_mean_uint8, to_uint8


def _float_means(pixels: np.ndarray, f: int) -> np.ndarray:
    """What the decoder's aligned path computed before: numpy's float32 mean over each box."""
    h, w = pixels.shape[:2]
    return to_uint8(pixels.reshape(h // f, f, w // f, f, 3).astype(np.float32).mean(axis=(1, 3)))


@pytest.mark.parametrize("f", range(1, MAX_BOX_MEAN + 1))
def test_box_means_equal_the_float_means(f: int) -> None:
    rng = np.random.default_rng(f)
    # Random pixels, and boxes built to sum to every tie (n * k + n / 2) and to the extremes.
    pixels = rng.integers(0, 256, size=(12 * f, 20 * f, 3), dtype=np.uint8)
    pixels[: 2 * f] = rng.integers(0, 2, size=(2 * f, 20 * f, 3), dtype=np.uint8) * 255
    pixels[2 * f : 3 * f, :f] = 255
    pixels[3 * f : 4 * f, :f] = 0
    got = box_mean_uint8(pixels, f)
    assert got.dtype == np.uint8 and got.shape == (12, 20, 3)
    np.testing.assert_array_equal(got, _float_means(pixels, f))


def test_every_sum_of_a_two_by_two_box_rounds_as_the_float_mean() -> None:
    """All 1021 sums of four 8-bit values (ties at every k + 1/2 among them), half to even."""
    sums = np.arange(0, 4 * 255 + 1)
    pixels = np.zeros((2, 2 * sums.size, 3), dtype=np.uint8)
    for i, s in enumerate(sums):
        vals = [min(255, max(0, s - 255 * k)) for k in range(4)]  # four values summing to s
        assert sum(vals) == s
        pixels[:, 2 * i : 2 * i + 2] = np.array(vals, dtype=np.uint8).reshape(2, 2)[..., None]
    np.testing.assert_array_equal(box_mean_uint8(pixels, 2), _float_means(pixels, 2))


@pytest.mark.parametrize("f, shape", [(0, (4, 4, 3)), (MAX_BOX_MEAN + 1, (17, 17, 3)), (3, (6, 7, 3))])
def test_box_means_refuse_what_they_cannot_sum(f: int, shape: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        box_mean_uint8(np.zeros(shape, dtype=np.uint8), f)
