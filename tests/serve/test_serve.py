"""``cinr serve`` (``cinr_codec/serve``): routes, DeepZoom tiles equal to the library's, 404 for
everything it was not given, caching headers, folder discovery, the command on loopback."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cinr_codec.errors import CinrInputError
from cinr_codec.serve import close_slides, create_app, find_slides

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "formats" / "vectors"
SAMPLE = ROOT / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """slide.cinr (a grid slide with associated images) beside slide.svs (the bundled sample)."""
    from benchmarks.fuzz import grid_seed

    d = tmp_path_factory.mktemp("served")
    (d / "slide.cinr").write_bytes(grid_seed(VECTORS / "ngp-fast-64x40-int8.cinr"))
    shutil.copy(SAMPLE, d / "slide.svs")
    (d / "notes.txt").write_text("not a slide")
    return d


@pytest.fixture(scope="module")
def client(folder: Path):
    slides, pairs = find_slides([str(folder)])
    app = create_app(slides, compare=pairs, tile_format="png")
    yield app.test_client()
    close_slides(app)


def test_folder_discovery_pairs_a_cinr_with_its_original(folder: Path, tmp_path: Path) -> None:
    slides, pairs = find_slides([str(folder)])
    assert sorted(slides) == ["slide.cinr", "slide.svs"] and pairs == {"slide.cinr": "slide.svs"}
    outside = tmp_path / "outside.svs"
    shutil.copy(SAMPLE, outside)
    linked = tmp_path / "f"
    linked.mkdir()
    os.symlink(outside, linked / "escape.svs")
    assert find_slides([str(linked)]) == ({}, {})
    with pytest.raises(CinrInputError, match="no such file"):
        find_slides([str(tmp_path / "missing.cinr")])
    with pytest.raises(CinrInputError, match="exactly one"):
        find_slides([str(folder)], compare=str(SAMPLE))


def test_slide_list_and_properties(client) -> None:
    r = client.get("/api/slides")
    assert r.status_code == 200
    got = {s["name"]: s for s in r.get_json()}
    assert got["slide.cinr"]["dimensions"] == [300, 104] and got["slide.cinr"]["compare"] == "slide.svs"
    assert got["slide.cinr"]["mpp"] == [0.25, 0.25] and got["slide.cinr"]["dzi"] == "/slides/slide.cinr.dzi"
    assert got["slide.svs"]["dimensions"] == [2220, 2967]
    info = client.get("/api/slides/slide.cinr").get_json()
    assert info["associated_images"] == ["label", "macro"] and info["properties"]["openslide.mpp-x"] == "0.25"


def test_tiles_are_the_librarys_deepzoom_tiles(client, folder: Path) -> None:
    from openslide.deepzoom import DeepZoomGenerator

    from cinr_codec.api import open_cinr

    dzi = client.get("/slides/slide.cinr.dzi")
    assert dzi.status_code == 200 and b'Format="png"' in dzi.data and b'Width="300"' in dzi.data
    with open_cinr(folder / "slide.cinr") as slide:
        dz = DeepZoomGenerator(slide, tile_size=254, overlap=1)
        top = dz.level_count - 1
        for col, row in [(0, 0), (1, 0)]:
            r = client.get(f"/slides/slide.cinr_files/{top}/{col}_{row}.png")
            assert r.status_code == 200 and r.mimetype == "image/png"
            want = np.asarray(dz.get_tile(top, (col, row)).convert("RGB"))
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB")), want)
    r = client.get("/slides/slide.svs_files/8/0_0.jpeg")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    label = client.get("/slides/slide.cinr/associated/label.png")
    assert label.status_code == 200 and Image.open(io.BytesIO(label.data)).size == (40, 30)


def test_etags_answer_304(client) -> None:
    r = client.get("/slides/slide.cinr_files/0/0_0.png")
    assert r.status_code == 200 and "max-age" in r.headers["Cache-Control"]
    again = client.get("/slides/slide.cinr_files/0/0_0.png", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and not again.data


@pytest.mark.parametrize(
    "url",
    [
        "/slides/nope.dzi",
        "/slides/slide.cinr_files/99/0_0.png",
        "/slides/slide.cinr_files/0/5_0.png",
        "/slides/slide.cinr_files/0/0_0.gif",
        "/slides/slide.cinr_files/-1/0_0.png",
        "/slides/slide.cinr/associated/thumbnail.png",
        "/slides/..%2F..%2Fetc%2Fpasswd.dzi",
        "/slides/%2Fetc%2Fpasswd.dzi",
        "/slides/../slide.svs.dzi",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%252Fapp.py",
        "/static/%2e%2e%2f%2e%2e%2fcli%2fserve.py",
        "//etc/passwd",
        "/etc/passwd",
        "/api/slides/..",
        "/api/slides/notes.txt",
    ],
)
def test_anything_not_given_is_a_short_404(client, url: str) -> None:
    r = client.get(url)
    assert r.status_code == 404, (url, r.status_code)
    assert r.mimetype == "text/plain" and len(r.data) < 200 and b"Traceback" not in r.data


def test_the_page_and_the_vendored_viewer(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and b"openseadragon.min.js" in page.data
    js = client.get("/static/openseadragon/openseadragon.min.js")
    assert js.status_code == 200 and len(js.data) > 100_000
    assert client.get("/static/openseadragon/LICENSE.txt").status_code == 200
    assert client.get("/static/openseadragon/images/home_rest.png").status_code == 200


def test_the_command_binds_loopback_and_serves(folder: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cinr_codec", "serve", str(folder / "slide.cinr"), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        assert "http://127.0.0.1:" in line and "this machine only" in line, line
        url = line.split(" at ", 1)[1].split()[0]
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "api/slides", timeout=10) as r:
                    assert r.status == 200 and b"slide.cinr" in r.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()  # SIGTERM: a suite started in the background gives its children SIGINT ignored
        proc.wait(timeout=20)


def test_the_command_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "cinr_codec", "serve", str(tmp_path / "none.cinr")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such file" in r.stderr


def test_a_url_is_served_like_a_file(folder: Path) -> None:
    """A ``.cinr`` URL (here ``file://``; http is tested in tests/format/test_remote.py) is opened
    through fsspec and served like a local file."""
    url = (folder / "slide.cinr").as_uri()
    slides, pairs = find_slides([url])
    assert slides == {"slide.cinr": url} and pairs == {}
    app = create_app(slides, tile_format="png")
    try:
        c = app.test_client()
        local = create_app({"slide.cinr": str(folder / "slide.cinr")}, tile_format="png").test_client()
        a, b = c.get("/slides/slide.cinr_files/8/0_0.png"), local.get("/slides/slide.cinr_files/8/0_0.png")
        assert a.status_code == b.status_code == 200 and a.data == b.data
    finally:
        close_slides(app)


def test_difference_tiles_of_a_cinr_and_its_original(folder: Path, tmp_path: Path) -> None:
    """Beside an original of the same size, ``_diff`` tiles are 255 - 4 |cinr - original| per channel."""
    import tifffile
    from openslide.deepzoom import DeepZoomGenerator

    from cinr_codec.api import open_cinr

    with open_cinr(folder / "slide.cinr") as slide:
        pixels = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        want_a = np.asarray(DeepZoomGenerator(slide).get_tile(9, (0, 0)).convert("RGB"), dtype=np.int16)
    changed = pixels.copy()
    changed[10:40, 20:90] = (changed[10:40, 20:90] // 2) + 20  # a patch the difference must show
    original = tmp_path / "original.tif"
    tifffile.imwrite(original, changed, tile=(256, 256), photometric="rgb")
    slides = {"a.cinr": str(folder / "slide.cinr"), "o.tif": str(original), "c.svs": str(SAMPLE)}
    app = create_app(slides, compare={"a.cinr": "o.tif", "o.tif": "c.svs"}, tile_format="png")
    try:
        c = app.test_client()
        r = c.get("/slides/a.cinr_diff_files/9/0_0.png")
        assert r.status_code == 200 and c.get("/slides/a.cinr_diff.dzi").status_code == 200
        got = np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB"))
        import openslide

        with openslide.open_slide(str(original)) as o:
            want_b = np.asarray(DeepZoomGenerator(o).get_tile(9, (0, 0)).convert("RGB"), dtype=np.int16)
        assert np.array_equal(got, np.clip(255 - 4 * np.abs(want_a - want_b), 0, 255))
        assert got.shape == (104, 255, 3)  # level 9 is full resolution: the tile's pixels are the slide's
        assert got[10:40, 20:90].mean() < 250 and (got[60:, 150:] == 255).all()
        assert c.get("/api/slides/a.cinr").get_json()["diff"] == "/slides/a.cinr_diff.dzi"
        assert c.get("/slides/o.tif_diff_files/9/0_0.png").status_code == 404  # sizes differ
        assert c.get("/slides/c.svs_diff.dzi").status_code == 404  # no original beside it
    finally:
        close_slides(app)


def test_connections_beyond_the_limit_wait_their_turn(folder: Path) -> None:
    """``make_server`` serves at most ``max_connections`` connections at once: an idle client holds
    its slot (until ``IDLE_TIMEOUT``) and the next waits in the listen queue, served when it leaves."""
    import socket
    import threading

    from cinr_codec.serve import make_server

    app = create_app({"slide.cinr": str(folder / "slide.cinr")})
    server = make_server("127.0.0.1", 0, app, max_connections=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api/slides"
    try:
        idle = socket.create_connection(("127.0.0.1", server.server_port))
        time.sleep(0.3)
        with pytest.raises(OSError):  # a timeout: the one slot is taken
            urllib.request.urlopen(url, timeout=1.5)
        idle.close()
        with urllib.request.urlopen(url, timeout=20) as r:
            assert r.status == 200
    finally:
        server.shutdown()
        server.server_close()
        close_slides(app)


def test_a_broken_slide_is_listed_as_such_and_its_tiles_are_404(folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.cinr"
    broken.write_bytes(b"CINR not really")
    good = folder / "slide.cinr"
    damaged = tmp_path / "damaged.cinr"
    data = bytearray(good.read_bytes())
    from cinr_codec.format.container import CinrReader

    with CinrReader(good) as r:
        b0 = r.block_info(0)
    data[b0.offset + b0.stored_length // 2] ^= 0xFF  # block 0's bytes: its CRC fails when read
    damaged.write_bytes(bytes(data))
    app = create_app({"broken.cinr": str(broken), "damaged.cinr": str(damaged), "slide.cinr": str(good)})
    try:
        c = app.test_client()
        listed = {s["name"]: s for s in c.get("/api/slides").get_json()}
        assert listed["broken.cinr"] == {"name": "broken.cinr", "error": "cannot be opened"}
        assert listed["slide.cinr"]["dimensions"] == [300, 104]
        r = c.get("/slides/broken.cinr.dzi")
        assert r.status_code == 404 and b"cannot be opened" in r.data
        r = c.get("/slides/damaged.cinr_files/9/0_0.jpeg")
        assert r.status_code == 404 and b"cannot be decoded" in r.data and b"Traceback" not in r.data
        assert c.get("/slides/damaged.cinr_files/9/1_0.jpeg").status_code == 200  # other blocks still serve
    finally:
        close_slides(app)
