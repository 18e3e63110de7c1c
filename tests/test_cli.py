"""The command line: the README's main job, JSON output, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from cinr_codec.cli import main


def test_fit_bundled_sample_json() -> None:
    res = CliRunner().invoke(
        main, ["fit", "--crop", "64", "--preset", "fast", "--steps", "20", "--json", "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["crop"] == [64, 64] and out["steps"] == 20 and out["psnr"] > 10
    assert out["image"].endswith("CMU-1-Small-Region.svs")


def test_fit_quiet_prints_nothing(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["fit", "--crop", "32", "--preset", "fast", "--steps", "3", "--quiet"])
    assert res.exit_code == 0
    assert res.output == ""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cinr_codec", *args], capture_output=True, text=True, timeout=120
    )


def test_missing_file_is_one_line_exit_2(tmp_path: Path) -> None:
    p = _run("fit", str(tmp_path / "nope.svs"))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "no such file" in p.stderr
    assert "Traceback" not in p.stderr


def test_not_an_image_and_directory(tmp_path: Path) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"this is not a slide")
    for target in (junk, tmp_path):
        p = _run("fit", str(target))
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("cinr: error:") and "Traceback" not in p.stderr


def test_bad_preset_is_one_line() -> None:
    p = _run("fit", "--preset", "ultra", "--crop", "16")
    assert p.returncode == 2 and "unknown preset" in p.stderr and "Traceback" not in p.stderr
