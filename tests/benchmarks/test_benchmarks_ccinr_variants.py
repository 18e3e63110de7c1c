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


def test_validating_variants_leaves_the_recipe_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() validates every variant in this process; workers forked from it must see the
    package's recipe, not the last variant's."""
    arch, recipe = dict(L.PRESET_ARCH), dict(L.RECIPE)
    monkeypatch.setattr(V, "ProcessPoolExecutor", _Stop)
    with pytest.raises(_StopError):
        V.main(["--crop", "sample", "--variant", 'upsampling="bilinear"+latent_lr_mult=3'])
    assert L.PRESET_ARCH == arch and L.RECIPE == recipe


def test_a_worker_job_leaves_the_recipe_as_it_found_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process runs several jobs: one variant must not leak into the next job."""
    arch, recipe = dict(L.PRESET_ARCH), dict(L.RECIPE)
    seen: list[tuple[object, object]] = []
    monkeypatch.setattr(
        V, "_levels", lambda *a: seen.append((L.PRESET_ARCH["activation"], L.RECIPE["lr"])) or []
    )
    assert V.run('activation="relu"+lr=0.5', "sample", 1, ["q3"]) == []
    assert seen == [("relu", 0.5)]
    assert L.PRESET_ARCH == arch and L.RECIPE == recipe
    V.run("base", "sample", 1, ["q3"])
    assert seen[-1] == (arch["activation"], recipe["lr"])


class _StopError(Exception):
    pass


class _Stop:
    def __init__(self, *a: object, **k: object) -> None:
        raise _StopError


def test_one_level_of_the_bundled_sample() -> None:
    (row,) = V.run("base", "sample", 3, ["q5"])
    assert row["crop"] == "sample" and row["steps"] == 3 and row["seed"] == 0
    assert row["bytes"] > 100 and 0 < row["bpp"] == pytest.approx(row["bytes"] * 8 / 256**2)
    assert 10 < row["psnr"] < 60
    (other,) = V.run("base", "sample", 3, ["q5"], seed=1)
    assert other["seed"] == 1 and other["psnr"] != row["psnr"]  # the seed reaches the fit


@pytest.mark.parametrize(
    "args",
    [["--variant", "nonsense=1"], ["--variant", "mlp=[16"], ["--qualities", "q99"], ["--seeds", "0,x"]],
)
def test_bad_arguments_are_one_line(args: list[str]) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.ccinr_variants", "--crop", "sample", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("benchmarks.ccinr_variants: error:")
