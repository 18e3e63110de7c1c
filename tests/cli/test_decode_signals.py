"""``cinr decode`` killed mid-export (SIGTERM) or interrupted (SIGINT) leaves no ``.cinr-export-*``
temporary file and no partial output (issue 14, class 8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cinr_container_helpers import ctrl_c_as_in_a_terminal

from cinr_codec.format.container import CinrReader, CinrWriter

ROOT = Path(__file__).resolve().parents[2]
NGP = ROOT / "formats" / "vectors" / "ngp-fast-64x40-int8.cinr"


def _slow_slide(path: Path) -> Path:
    """One 16000^2 model block without mips: exporting it at 1/4 samples 16 M points (many seconds)."""
    with CinrReader(NGP) as r:
        header, payload = dict(r.header), r.read_payload(0)
    header["slide"] = {**header["slide"], "width": 16000, "height": 16000}
    header["grid"] = {"block_size": 16000, "halo": 0, "cols": 1, "rows": 1}
    with CinrWriter(path, header, 1, max_block_bytes=1 << 20) as w:
        w.add_model_block(0, payload)
        w.commit({})
    return path


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".cinr-export-"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_killed_export_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    src = _slow_slide(tmp_path / "slow.cinr")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with ctrl_c_as_in_a_terminal():  # the child takes SIGINT even when this suite runs in the background
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cinr_codec",
                "decode",
                str(src),
                "-o",
                str(out_dir / "x.png"),
                "--scale",
                "0.25",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
    try:
        deadline = time.monotonic() + 120
        while not any(n.endswith(".raw") for n in _temporaries(out_dir)):  # decoding into the raw file
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the export never started"
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, "the export finished before the signal"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _temporaries(out_dir) == []
    assert not (out_dir / "x.png").exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM  # ended by the signal, as without the cleanup
    else:
        assert proc.returncode == 130 and err.decode().strip().splitlines()[-1] == "cinr: interrupted"


@pytest.mark.parametrize(
    ("args", "ok"),
    [
        (["--scale", "1e-9"], True),  # the whole slide: 1 x 1
        (["--region", "0,0,1e12,1e12", "--scale", "1e-9"], True),  # 1000 x 1000 from a huge region
        (["--region", "0,0,1e12,1e12", "--scale", "1"], False),  # too large for PNG
        (["--region", "0,0,2e9,2e9", "--scale", "0.001"], False),  # 2e6 x 2e6: more disk than there is
    ],
)
def test_absurd_requests_finish_or_fail_in_one_line(tmp_path: Path, args: list[str], ok: bool) -> None:
    from click.testing import CliRunner

    from cinr_codec.cli import main

    src = _slow_slide(tmp_path / "slow.cinr")
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["decode", str(src), "-o", str(tmp_path / "x.png"), "--quiet", *args])
    assert time.monotonic() - t0 < 20
    if ok:
        assert res.exit_code == 0, res.output
    else:
        assert res.exit_code == 2 and res.stderr.startswith("cinr: error: ") and res.stderr.count("\n") == 1
    assert _temporaries(tmp_path) == []
