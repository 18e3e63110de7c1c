"""The rate-distortion benchmark's ccinr parts: options, the BD-rate PSNR window, bpp at a PSNR, a tiny run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.bdrate import bd_rate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png(tmp_path: Path, size: int) -> Path:
    from PIL import Image

    from cinr_codec.encode.source import read_crop, sample_slide_path

    img = tmp_path / "crop.png"
    Image.fromarray(read_crop(sample_slide_path(), size)).save(img)
    return img


def test_quality_and_step_options() -> None:
    from benchmarks.rd import QUALITIES, QUICK_QUALITIES, ccinr_steps, parse_qualities
    from cinr_codec.encode.train.latent import QUALITY_LAMBDAS, RECIPE

    assert parse_qualities(None, False) == list(QUALITIES) and 4 <= len(QUALITIES) <= 6
    assert parse_qualities(None, True) == list(QUICK_QUALITIES) and 3 <= len(QUICK_QUALITIES) <= 4
    assert set(QUALITIES) | set(QUICK_QUALITIES) <= set(QUALITY_LAMBDAS)
    assert parse_qualities("q2, q4,q2", False) == ["q2", "q4"]
    for bad in ("q9", "", "q2,fast"):
        with pytest.raises(ValueError, match="--qualities"):
            parse_qualities(bad, False)
    assert ccinr_steps(None, False) == int(RECIPE["steps"])
    assert 1 <= ccinr_steps(None, True) <= int(RECIPE["steps"])
    assert ccinr_steps(20, True) == 20
    with pytest.raises(ValueError, match="--ccinr-steps"):
        ccinr_steps(0, False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-cinr", "--no-ccinr"], "nothing to measure"),
        (["--qualities", "q0"], "--qualities"),
        (["--ccinr-steps", "0"], "--ccinr-steps"),
    ],
)
def test_rd_bad_ccinr_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    from benchmarks.rd import main

    img = tmp_path / "x.png"
    img.write_bytes(b"not read: the options fail first")
    with pytest.raises(SystemExit) as exc:
        main(["--image", str(img), "--results", str(tmp_path / "out"), "--quiet", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bd_rate_window() -> None:
    # log10(rate) linear in PSNR: PCHIP is exact, so the BD integral is a mean of a linear function.
    p = np.array([30.0, 34.0, 38.0, 42.0, 44.0])
    anchor = 10 ** (p / 10)
    test = 10 ** (p / 10 + (p - 37.0) / 20)  # cheaper below 37 dB, dearer above
    assert bd_rate(anchor, p, anchor / 2, p, (34.0, 40.0)) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(anchor, p, test, p, (34.0, 40.0)) == pytest.approx(100 * (10 ** ((37 - 37) / 20) - 1))
    assert bd_rate(anchor, p, test, p, (38.0, 40.0)) == pytest.approx(100 * (10**0.1 - 1))
    assert bd_rate(anchor, p, test, p, (30.0, 34.0)) == pytest.approx(100 * (10**-0.25 - 1))
    # The window is clipped to the curves' overlap; a window covering it changes nothing.
    assert bd_rate(anchor, p, test, p, (20.0, 60.0)) == bd_rate(anchor, p, test, p)
    assert bd_rate(anchor, p, test[:3], p[:3], (36.0, 40.0)) == pytest.approx(
        bd_rate(anchor, p, test[:3], p[:3], (36.0, 38.0))
    )
    # No overlap inside the window: None.
    assert bd_rate(anchor, p, test, p, (45.0, 50.0)) is None
    assert bd_rate(anchor, p, test[:2], p[:2], (34.0, 40.0)) is None  # test curve ends at 34 dB


def test_bpp_at_and_targets() -> None:
    from benchmarks.rd_run import bd_rates, bpp_at, cinr_target

    def row(codec: str, bpp: float, psnr: float | None) -> dict[str, Any]:
        return {"codec": codec, "preset": "q4", "bpp": bpp, "psnr": psnr}

    line = [30.0, 34.0, 38.0, 42.0]
    rows = [row("jpeg", 2 ** (q / 4), q) for q in line]
    rows += [row("jpeg", 2 ** (36 / 4), 33.0), row("jpeg", 200.0, None)]  # dominated, lossless
    rows += [row("ccinr", 2 ** (q / 4) / 4, q) for q in (33.0, 36.0, 39.0, 41.0)]
    rows += [row("webp", 1.0, 30.0), row("webp", 2.0, 33.5)]  # overlaps ccinr below 34 dB only
    got = bpp_at(rows, ["ccinr", "jpeg", "webp", "avif"], 37.5)
    assert got["jpeg"] == pytest.approx(2 ** (37.5 / 4))
    assert got["ccinr"] == pytest.approx(2 ** (37.5 / 4) / 4)
    assert got["webp"] is None and got["avif"] is None  # out of range, no points
    assert bpp_at(rows, ["jpeg"], 38.0)["jpeg"] == pytest.approx(2**9.5)
    bd = bd_rates(rows, ["jpeg", "webp"], model="ccinr", window=(34.0, 40.0))
    assert bd["jpeg"] == pytest.approx(-75.0) and bd["webp"] is None
    assert bd_rates(rows, ["jpeg"])["jpeg"] is None  # no hash-grid cinr rows
    target = cinr_target(rows)
    assert target == {"bpp_min": 2**8.25 / 4, "bpp_max": 2**10.25 / 4, "psnr_min": 33.0, "psnr_max": 41.0}


def test_rd_ccinr_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.rd import main

    img = _png(tmp_path, 48)
    main(
        [
            "--json",
            "--image",
            str(img),
            "--size",
            "48",
            "--no-cinr",
            "--qualities",
            "q4",
            "--ccinr-steps",
            "20",
            "--codecs",
            "jpeg",
            "--no-pyramid",  # --device auto (the default): the ccinr trainer needs it resolved
            "--threads",
            "1",
            "--results",
            str(tmp_path),
            "--out",
            "tiny",
        ]
    )
    out = json.loads(capsys.readouterr().out)  # nothing else on stdout
    assert {r["codec"] for r in out["rows"]} == {"ccinr", "jpeg"}
    (cc,) = [r for r in out["rows"] if r["codec"] == "ccinr"]
    assert cc["setting"] == "q4" and cc["steps"] == 20 and cc["image"] == "crop.png"
    assert cc["bytes"] > cc["payload_bytes"] > 0 and cc["bpp"] == pytest.approx(8 * cc["bytes"] / 48**2)
    assert cc["psnr"] > 5 and 0 < cc["ssim"] <= 1 and cc["seconds"] > 0
    assert set(out["bd_rate_ccinr"]) == {"jpeg"} and set(out["bd_rate_ccinr_per_image"]) == {"crop.png"}
    assert set(out["bpp_at_37_5"]["crop.png"]) == {"ccinr", "jpeg"}
    s = out["settings"]
    assert s["qualities"] == ["q4"] and s["ccinr_steps"] == 20 and s["presets"] == [] and s["size"] == 48
    assert s["bd_window_db"] == [34.0, 40.0] and s["bpp_at_psnr_db"] == 37.5
    text = (tmp_path / "rd_tiny.md").read_text()
    assert "BD-rate of ccinr against each codec, 34–40 dB" in text and "Bits per pixel at 37.5 dB" in text
    assert "20 steps, qualities q4; network bits counted in the file bytes at this region size" in text
    assert "| ccinr | q4 |" in text and "## BD-rate of cinr against" not in text


def test_rd_ccinr_worker_processes_give_the_sequential_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.rd import main

    img = _png(tmp_path, 32)
    got = {}
    for jobs in ("1", "2"):
        main(
            [
                "--json",
                "--image",
                str(img),
                "--size",
                "32",
                "--no-cinr",
                "--qualities",
                "q2,q6",
                "--ccinr-steps",
                "10",
                "--codecs",
                "jpeg",
                "--no-pyramid",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--jobs",
                jobs,
                "--results",
                str(tmp_path),
                "--out",
                f"jobs{jobs}",
            ]
        )
        out = json.loads(capsys.readouterr().out)
        assert out["settings"]["ccinr_jobs"] == int(jobs)
        # The payload, not the file: the footer records the fit's seconds, whose digits vary.
        got[jobs] = [
            (r["setting"], r["payload_bytes"], r["psnr"]) for r in out["rows"] if r["codec"] == "ccinr"
        ]
    assert [g[0] for g in got["1"]] == ["q2", "q6"]
    assert got["1"] == got["2"]
    assert "(2 at a time, in worker processes" in (tmp_path / "rd_jobs2.md").read_text()
