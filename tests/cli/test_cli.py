"""The command line: the README's main job, JSON output, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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


VECTORS = Path(__file__).resolve().parents[2] / "formats" / "vectors"


def test_info_and_decode_vector(tmp_path: Path) -> None:
    vec = sorted(VECTORS.glob("*.cinr"))[0]
    p = _run("info", str(vec), "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["blocks"] >= 1 and info["bytes"] == vec.stat().st_size
    out = tmp_path / "out.png"
    p = _run("decode", str(vec), "-o", str(out))
    assert p.returncode == 0, p.stderr
    from PIL import Image

    from cinr_codec import decode_image

    assert (np.asarray(Image.open(out)) == decode_image(vec)).all()
    assert [f.name for f in tmp_path.iterdir()] == ["out.png"]  # no temporary files left


def test_corrupt_and_truncated_files_are_one_line_errors(tmp_path: Path) -> None:
    data = sorted(VECTORS.glob("*.cinr"))[0].read_bytes()
    cases = {
        "truncated.cinr": data[: len(data) // 2],
        "empty.cinr": b"",
        "flipped.cinr": data[:40] + bytes([data[40] ^ 0xFF]) + data[41:],  # inside the header
        "magic.cinr": b"XXXX" + data[4:],
    }
    for name, blob in cases.items():
        f = tmp_path / name
        f.write_bytes(blob)
        for cmd in (("info", str(f)), ("decode", str(f), "-o", str(tmp_path / "x.png"))):
            p = _run(*cmd)
            assert p.returncode == 2, (name, cmd, p.stderr)
            assert p.stderr.startswith("cinr: error:") and p.stderr.count("\n") == 1, p.stderr
            assert "Traceback" not in p.stderr
        assert not (tmp_path / "x.png").exists()


def test_encode_quality_selects_the_ccinr_level(tmp_path: Path, tissue_crop: np.ndarray) -> None:
    from PIL import Image

    src = tmp_path / "crop.png"
    Image.fromarray(np.ascontiguousarray(tissue_crop[:32, :64])).save(src)
    out = tmp_path / "q.cinr"
    args = ["encode", str(src), "-o", str(out), "--model", "ccinr", "--quality", "3", "--steps", "5"]
    res = CliRunner().invoke(main, [*args, "--block-size", "64", "--no-tissue-mask", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["model"] == "ccinr" and summary["preset"] == "q3"
    res = CliRunner().invoke(
        main, ["encode", str(src), "-o", str(tmp_path / "h.cinr"), "--model", "cinr", "--quality", "q3"]
    )
    assert res.exit_code == 2 and "--quality is for --model ccinr" in res.output
    res = CliRunner().invoke(
        main, ["encode", str(src), "-o", str(tmp_path / "h.cinr"), "--quality", "3", "--preset", "q5"]
    )
    assert res.exit_code == 2 and "not both" in res.output
    assert not (tmp_path / "h.cinr").exists()


def test_the_default_encode_is_ccinr_at_q4(tmp_path: Path, tissue_crop: np.ndarray) -> None:
    """Without --model, --preset or --quality: the compressive codec at quality 4 (the hash-grid
    models' preset names are refused for it)."""
    from PIL import Image

    src = tmp_path / "crop.png"
    Image.fromarray(np.ascontiguousarray(tissue_crop[:32, :64])).save(src)
    out = tmp_path / "d.cinr"
    res = CliRunner().invoke(main, ["encode", str(src), "-o", str(out), "--steps", "3", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["model"] == "ccinr" and summary["preset"] == "q4"
    res = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "f.cinr"), "--preset", "fast"])
    assert (
        res.exit_code == 2
        and "unknown preset 'fast' for ccinr" in res.output
        and "--model cinr" in res.output
    )


def test_a_closed_pipe_stops_quietly() -> None:
    """``cinr info x.cinr | head``: the reader going away is not an internal error."""
    vector = Path(__file__).parents[2] / "formats" / "vectors" / "ccinr-q6-64x48-entropy.cinr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cinr_codec", "info", str(vector)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: the first write raises BrokenPipeError
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "internal error" not in err and "Traceback" not in err and "BrokenPipe" not in err


def test_encode_refuses_to_clobber(tmp_path: Path, tissue_crop: np.ndarray) -> None:
    from PIL import Image

    src = tmp_path / "crop.png"
    Image.fromarray(np.ascontiguousarray(tissue_crop[:32, :64])).save(src)
    base = ["encode", str(src), "--steps", "2", "--block-size", "64", "--no-tissue-mask", "--quiet"]
    other = tmp_path / "x.png"
    other.write_bytes(b"a picture")
    res = CliRunner().invoke(main, [*base, "-o", str(other)])
    assert res.exit_code == 2 and "must end in .cinr" in res.output
    assert other.read_bytes() == b"a picture"
    out = tmp_path / "x.cinr"
    out.write_bytes(b"an older encode")
    res = CliRunner().invoke(main, [*base, "-o", str(out)])
    assert res.exit_code == 2 and "exists; pass --overwrite (-f)" in res.output
    assert out.read_bytes() == b"an older encode"
    res = CliRunner().invoke(main, [*base, "-o", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"CINR"


def test_info_summary_rounds_only_usable_figures() -> None:
    from cinr_codec.cli.info import _num

    assert _num(31.234, 2) == "31.23" and _num(7, 1) == "7.0"
    for bad in (10**400, float("nan"), float("inf"), True, "31", None):  # hostile footers
        assert _num(bad, 2) == "unknown"


def test_the_jpeg_line_compares_a_file_above_every_jpeg_quality_with_the_best() -> None:
    """A file whose PSNR no JPEG quality reaches (a JPEG-sourced slide) is set against the best one."""
    from cinr_codec.cli.encode import _jpeg_line

    s = {
        "jpeg_q80_bytes": 1000,
        "jpeg_q80_psnr": 31.5,
        "jpeg_equal_psnr_bytes": None,
        "jpeg_qualities": [80, 95],
        "jpeg_psnr": [31.5, 33.3],
        "jpeg_bytes": [1000, 2000],
        "psnr": 33.5,
        "bytes": 1000,
    }
    assert "above JPEG q95's (33.30 dB, 2,000 bytes): this file is 0.50x of it" in _jpeg_line(s)
    assert "outside JPEG q20-q95's" in _jpeg_line({**s, "psnr": 20.0})
