"""benchmarks.ccinr_variants: variants parse, and one level trains, stores and decodes."""

from __future__ import annotations

import pytest

from benchmarks import ccinr_variants as V
from cinr_codec.encode.train import latent as L


def test_variants_override_the_recipe_or_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "PRESET_ARCH", dict(L.PRESET_ARCH))
    monkeypatch.setattr(L, "RECIPE", dict(L.RECIPE))
    V.apply('upsampling="bilinear"+mlp=[16,16]+latent_lr_mult=10')
    assert L.PRESET_ARCH["upsampling"] == "bilinear" and L.PRESET_ARCH["mlp"] == (16, 16)
    assert L.RECIPE["latent_lr_mult"] == 10
    with pytest.raises(ValueError, match="neither"):
        V.apply("nonsense=1")


def test_one_level_of_the_bundled_sample() -> None:
    (row,) = V.run("base", "sample", 3, ["q5"])
    assert row["crop"] == "sample" and row["steps"] == 3
    assert row["bytes"] > 100 and 0 < row["bpp"] == pytest.approx(row["bytes"] * 8 / 256**2)
    assert 10 < row["psnr"] < 60
