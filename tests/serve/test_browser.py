"""``cinr serve`` as a user meets it: the page in headless Chromium (Debian's ``chromium``;
``.ci/run`` installs it) draws the tissue of the slide, in the shape a decode of the slide has."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt install chromium)")


def _tissue_mask(rgb: np.ndarray) -> np.ndarray:
    f = rgb.astype(np.float64) / 255
    return (f.max(-1) - f.min(-1)) / np.maximum(f.max(-1), 1e-6) > 0.15


def _tissue_pixels(rgb: np.ndarray) -> int:
    return int(_tissue_mask(rgb).sum())


def _tissue_profile(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Column and row profiles of the tissue (saturation > 0.15) inside its bounding box, resampled
    to 32 values each, and the box's aspect ratio."""
    mask = _tissue_mask(rgb)
    ys, xs = np.nonzero(mask)
    assert len(ys) > 500, "no tissue drawn"
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    cols = np.interp(np.linspace(0, box.shape[1] - 1, 32), np.arange(box.shape[1]), box.mean(0))
    rows = np.interp(np.linspace(0, box.shape[0] - 1, 32), np.arange(box.shape[0]), box.mean(1))
    return cols, rows, box.shape[1] / box.shape[0]


def test_the_page_draws_the_slides_tissue(tmp_path: Path) -> None:
    from cinr_codec.api import open_cinr
    from cinr_codec.encode.slide import encode_slide

    # The bundled sample, 5 steps a block: the viewer opens on the whole slide, drawn from the
    # mips (the box-filtered tissue), which the test compares with the decoder's thumbnail.
    cinr = tmp_path / "sample.cinr"
    encode_slide(SAMPLE, cinr, model="ngp", preset="fast", steps=5, block_size=1024, threads=1, device="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cinr_codec", "serve", str(cinr), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        url = line.split(" at ", 1)[1].split()[0]
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "api/slides", timeout=10).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        # A screenshot is taken when Chromium's virtual-time budget runs out, which may come
        # before the tiles have arrived: up to four page loads (the server keeps what it
        # decoded), the first that shows tissue is compared.
        for attempt in range(4):
            shot = tmp_path / f"shot{attempt}.png"
            subprocess.run(
                [
                    CHROMIUM,
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--window-size=1000,700",
                    "--virtual-time-budget=60000",
                    f"--screenshot={shot}",
                    url + "?navigator=0",  # the navigator would overlap the view compared
                ],
                capture_output=True,
                timeout=180,
                check=True,
            )
            view = np.asarray(Image.open(shot).convert("RGB"))[30:-30, 265:-5]  # clear of panel and scale bar
            if _tissue_pixels(view) > 500:
                break
    finally:
        proc.terminate()  # SIGTERM: a suite started in the background gives its children SIGINT ignored
        proc.wait(timeout=20)
    with open_cinr(cinr) as slide:
        want = np.asarray(slide.get_thumbnail((512, 512)).convert("RGB"))
    got_c, got_r, got_aspect = _tissue_profile(view)
    want_c, want_r, want_aspect = _tissue_profile(want)
    # The viewer opens on the whole slide: the tissue it draws has the decoded slide's shape.
    assert np.corrcoef(got_c, want_c)[0, 1] > 0.8 and np.corrcoef(got_r, want_r)[0, 1] > 0.8
    assert abs(np.log(got_aspect / want_aspect)) < 0.15
