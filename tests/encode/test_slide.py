"""Whole-slide encoding: blocks, tissue, quality figures, metadata, resume, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data_paths import SHARED
from PIL import Image

from cinr_codec.api import open_cinr
from cinr_codec.core.metrics import psnr
from cinr_codec.decode import SlideDecoder
from cinr_codec.encode.journal import journal_path
from cinr_codec.encode.slide import LABEL_JPEG_SHARE, encode_slide
from cinr_codec.encode.source import SlideSource, sample_slide_path
from cinr_codec.errors import CinrError, CinrInputError, CinrIOError
from cinr_codec.format.container import CinrReader

STEPS = 40


def _cinr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cinr_codec", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def mixed_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """448x256 of the bundled real slide: tissue on the left, glass on the right."""
    path = tmp_path_factory.mktemp("src") / "mixed.png"
    with SlideSource(sample_slide_path()) as s:
        Image.fromarray(s.read(1700, 2200, 448, 256)).save(path)
    return path


@pytest.fixture(scope="module")
def encoded(mixed_png: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("enc") / "mixed.cinr"
    summary = encode_slide(mixed_png, out, model="cinr", block_size=128, margin=16, steps=STEPS, device="cpu")
    return out, summary


def test_summary_matches_the_decoded_file(mixed_png: Path, encoded: tuple[Path, dict[str, Any]]) -> None:
    out, s = encoded
    original = np.asarray(Image.open(mixed_png).convert("RGB"))
    assert (s["width"], s["height"], s["blocks"]) == (448, 256, 8)
    assert s["tissue_blocks"] + s["background_blocks"] == 8
    assert s["tissue_blocks"] >= 2 and s["background_blocks"] >= 2  # tissue left, glass right
    assert s["bytes"] == out.stat().st_size and s["bpp"] == pytest.approx(8 * s["bytes"] / (448 * 256))
    assert not journal_path(out).exists()
    # The JPEG-tiled pyramid of the same pixels: q80's bytes and PSNR; at the file's PSNR when
    # JPEG's qualities reach it (this 40-step fit lies below q20's), and the file against it.
    assert s["jpeg_q80_bytes"] > 0 and 25 < s["jpeg_q80_psnr"] < 50
    if s["jpeg_equal_psnr_bytes"] is None:
        assert s["vs_jpeg_pyramid"] is None
    else:
        assert s["vs_jpeg_pyramid"] == pytest.approx(s["bytes"] / s["jpeg_equal_psnr_bytes"])
    with SlideDecoder(out) as d:
        decoded = d.read(0, 0, 448, 256)
        kinds = [d.reader.block_info(b).kind for b in range(8)]
        assert kinds.count("model") == s["tissue_blocks"]
        # Recompute PSNR over every pixel and over the tissue blocks from the decoded file.
        assert psnr(decoded, original) == pytest.approx(s["psnr_all"], abs=1e-6)
        tissue = np.zeros((256, 448), dtype=bool)
        for b in range(8):
            x, y, w, h = d.grid.owned(b)
            if kinds[b] == "model":
                tissue[y : y + h, x : x + w] = True
            else:  # background blocks decode to their colour
                assert (decoded[y : y + h, x : x + w] == d.reader.block_info(b).colour).all()
        assert psnr(decoded[tissue], original[tissue]) == pytest.approx(s["psnr"], abs=1e-6)
        meta = d.reader.metadata
    assert meta["grid"] == {"block_size": 128, "halo": 16, "cols": 4, "rows": 2}
    assert meta["mips"]["downsamples"] == [2, 4, 8]
    assert meta["quality"]["psnr_db"] == round(s["psnr"], 4)  # footers keep 4 decimals of dB
    assert meta["blocks"] == {"total": 8, "tissue": s["tissue_blocks"], "background": s["background_blocks"]}
    assert meta["encoder"]["preset"] == "fast" and meta["model"]["kind"] == "cinr"
    assert 0.1 < meta["tissue"]["fraction"] < 0.7


def test_no_tissue_mask_fits_every_block(mixed_png: Path, tmp_path: Path) -> None:
    s = encode_slide(
        mixed_png,
        tmp_path / "all.cinr",
        model="cinr",
        block_size=256,
        margin=8,
        steps=2,
        tissue_mask=False,
        mips=False,
    )
    assert s["tissue_blocks"] == s["blocks"] == 2 and s["background_blocks"] == 0
    with CinrReader(tmp_path / "all.cinr") as r:
        assert r.version == (1, 0)  # no image blocks: the lowest minor version that fits
        assert "mips" not in r.header


def test_blocks_join_without_seams(tmp_path: Path) -> None:
    """Border strips are as good as block interiors (at the default margin).

    16 blocks, so that the strips' content is not one particular patch of tissue: 512x512 of the
    shared prostate image, or of the bundled sample's tissue when the shared data are absent.
    """
    src = SHARED / "he-prostate-2500.jpeg"
    if src.exists():
        crop = np.asarray(Image.open(src).convert("RGB"))[1000:1512, 1000:1512]
    else:
        with SlideSource(sample_slide_path()) as source:
            crop = source.read(736, 2080, 512, 512)  # all tissue (block tissue fractions >= 0.95)
    Image.fromarray(crop).save(tmp_path / "t.png")
    s = encode_slide(
        tmp_path / "t.png", tmp_path / "t.cinr", model="cinr", block_size=128, steps=80, mips=False
    )
    assert s["tissue_blocks"] == 16
    assert abs(s["psnr_border"] - s["psnr_interior"]) < 1.0, s
    assert abs(s["psnr_border"] - s["psnr_adjacent"]) < 1.0, s


def test_labels_stay_png_unless_they_are_photographs() -> None:
    """A label drawn in a few colours (a barcode, printed text) keeps its exact PNG; one whose
    JPEG (q95, 4:4:4) takes at most half the PNG's bytes (a photograph: camera noise) is stored
    so; other associated images as JPEG q90 whenever that is smaller."""
    from PIL import ImageDraw

    from cinr_codec.encode.slide import compact_associated

    def png(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    printed = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(printed)
    for x in range(20, 380, 7):
        draw.rectangle([x, 20, x + x % 3 + 1, 120], fill="black")
    draw.text((20, 150), "S-26-012345 H&E block A3", fill=(200, 0, 0))
    assert compact_associated("label", png(printed)) == png(printed)
    rng = np.random.default_rng(0)
    noisy = np.clip(np.asarray(printed, dtype=np.float64) * 0.8 + rng.normal(20, 12, (300, 400, 3)), 0, 255)
    photo = png(Image.fromarray(noisy.astype(np.uint8)))
    stored = compact_associated("label", photo)
    assert stored.startswith(b"\xff\xd8\xff") and len(stored) <= LABEL_JPEG_SHARE * len(photo)
    assert compact_associated("macro", png(printed)) == png(printed)  # the JPEG would be larger
    assert compact_associated("macro", photo).startswith(b"\xff\xd8\xff")


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs"])
def test_metadata_and_associated_images(name: str, tmp_path: Path) -> None:
    src = sample_slide_path()
    out = tmp_path / "s.cinr"
    s = encode_slide(src, out, model="cinr", block_size=2048, steps=0, mips=False)
    assert (s["width"], s["height"]) == (2220, 2967)
    with SlideSource(src) as source:
        props = source.properties
        source_label = source.associated_images()["label"]
    with CinrReader(out) as r:
        slide = r.header["slide"]
        assert slide["properties"] == props
        assert slide["mpp_x"] == pytest.approx(float(props["openslide.mpp-x"]))
        assert slide["objective_power"] == pytest.approx(float(props["openslide.objective-power"]))
        assert slide["vendor"] == "aperio"
        # The thumbnail (574 x 768, the slide downsampled) is left to readers to render.
        assert set(r.associated_images) == {"label", "macro"}
        assert slide["derived_images"] == {"thumbnail": [574, 768]} and s["derived_images"] == ["thumbnail"]
        label = r.read_associated_image("label")
    # The sample's label is a photograph: JPEG at q95 without chroma subsampling, under half its PNG.
    assert label.startswith(b"\xff\xd8\xff") and len(label) <= LABEL_JPEG_SHARE * len(source_label)
    with Image.open(io.BytesIO(label)) as im:
        assert im.layer[1][1:3] == im.layer[0][1:3]  # chroma sampled as luma: 4:4:4
        stored = np.asarray(im.convert("RGB"))
    with Image.open(io.BytesIO(source_label)) as im:
        assert psnr(np.asarray(im.convert("RGB")), stored) > 38.0
    with open_cinr(out) as opened:
        assert set(opened.associated_images) == {"label", "macro", "thumbnail"}
        thumb = opened.associated_images["thumbnail"]
        p = opened.properties
        assert thumb.size == (574, 768) and thumb.mode == "RGB"
        assert (p["openslide.associated.thumbnail.width"], p["openslide.associated.thumbnail.height"]) == (
            "574",
            "768",
        )
    from click.testing import CliRunner

    from cinr_codec.cli import main

    res = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["derived_images"] == {"thumbnail": [574, 768]}
    assert "thumbnail 574x768 rendered from the slide" in CliRunner().invoke(main, ["info", str(out)]).stdout


def test_only_a_thumbnail_of_the_slides_shape_is_left_to_be_derived() -> None:
    """``derivable``: the thumbnail when smaller than the slide and of its shape; any other
    associated image, or a thumbnail of another shape or larger than the slide, is stored."""
    from cinr_codec.coding.images import encode_png
    from cinr_codec.encode.slide import derivable

    def png(w: int, h: int) -> bytes:
        return encode_png(np.zeros((h, w, 3), np.uint8))

    assert derivable("thumbnail", png(574, 768), 2220, 2967) == (574, 768)
    assert derivable("macro", png(574, 768), 2220, 2967) is None
    assert derivable("label", png(574, 768), 2220, 2967) is None
    assert derivable("thumbnail", png(768, 768), 2220, 2967) is None  # not the slide's shape
    assert derivable("thumbnail", png(600, 800), 300, 400) is None  # larger than the slide


def test_level_choice_scales_the_resolution(tmp_path: Path) -> None:
    """--level 1 of a real-tissue pyramid: its dimensions, and microns per pixel doubled."""
    import pyvips

    with SlideSource(sample_slide_path()) as s:
        crop = s.read(600, 1500, 1024, 768)
    src = tmp_path / "pyramid.tif"
    img = pyvips.Image.new_from_memory(crop.tobytes(), 1024, 768, 3, "uchar")
    # 2000 pixels per mm: 0.5 microns per pixel at level 0.
    img.tiffsave(
        str(src),
        tile=True,
        tile_width=256,
        tile_height=256,
        pyramid=True,
        compression="jpeg",
        Q=90,
        xres=2000.0,
        yres=2000.0,
        resunit="cm",
    )
    with SlideSource(src, level=1) as source:
        assert source.format == "generic-tiff" and source.level_count >= 2
        mpp0 = float(source.properties["openslide.mpp-x"])
    assert mpp0 == pytest.approx(0.5, rel=1e-3)
    s = encode_slide(src, tmp_path / "l1.cinr", model="cinr", level=1, block_size=256, steps=0, mips=False)
    assert (s["width"], s["height"]) == (512, 384)
    with CinrReader(tmp_path / "l1.cinr") as r:
        slide = r.header["slide"]
    assert slide["level"] == 1 and slide["level_downsample"] == pytest.approx(2.0)
    assert slide["mpp_x"] == pytest.approx(1.0, rel=1e-3) and slide["mpp_y"] == pytest.approx(1.0, rel=1e-3)


def test_kill_and_resume_gives_the_same_pixels(mixed_png: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref.cinr"
    out = tmp_path / "out.cinr"
    # One thread fixed: by default each block's thread count follows the free cores, and a fit's
    # floats depend on it (this test failed once when the two encodes saw different loads).
    args = [
        "encode",
        str(mixed_png),
        "--model",
        "cinr",
        "--block-size",
        "64",
        "--margin",
        "8",
        "--steps",
        "25",
    ]
    args += ["--quiet"]
    args += ["--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "cinr_codec", *args, "-o", str(out)], env=env)
    jp = journal_path(out)
    deadline = time.time() + 120
    # Wait until a few blocks are in the journal, then kill -9 mid-encode.
    while time.time() < deadline and p.poll() is None:
        if jp.exists() and jp.stat().st_size > 20000:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the encode finished before it could be interrupted"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not out.exists() and jp.exists()
    done = subprocess.run(
        [sys.executable, "-m", "cinr_codec", *args, "-o", str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "--resume" in done.stderr  # refuses to clobber the journal
    r = subprocess.run(
        [sys.executable, "-m", "cinr_codec", *args, "-o", str(out), "--resume"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert out.exists() and not jp.exists()
    r = subprocess.run(
        [sys.executable, "-m", "cinr_codec", *args, "-o", str(ref)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    with SlideDecoder(out) as a, SlideDecoder(ref) as b:
        assert np.array_equal(a.read(0, 0, 448, 256), b.read(0, 0, 448, 256))
        assert np.array_equal(a.read(0, 0, 448, 256, scale=0.25), b.read(0, 0, 448, 256, scale=0.25))


def test_json_summary_keys(mixed_png: Path, tmp_path: Path) -> None:
    r = _cinr(
        "encode",
        str(mixed_png),
        "-o",
        str(tmp_path / "j.cinr"),
        "--block-size",
        "256",
        "--steps",
        "3",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    for key in ("psnr", "ssim", "psnr_all", "bpp", "bytes", "blocks", "tissue_blocks", "seconds"):
        assert key in s
    assert r.stderr == ""
    q = _cinr(
        "encode",
        str(mixed_png),
        "-o",
        str(tmp_path / "q.cinr"),
        "--block-size",
        "256",
        "--steps",
        "3",
        "--threads",
        "1",
        "--quiet",
    )
    assert q.returncode == 0 and q.stdout == "" and q.stderr == ""
    bad = _cinr("encode", str(mixed_png), "-o", str(tmp_path / "t.cinr"), "--threads", "0")
    _one_line_error_or_usage(bad)


def _one_line_error_or_usage(r: subprocess.CompletedProcess[str]) -> None:
    """click's own usage errors (exit 2) name the bad option; no traceback."""
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--threads" in r.stderr, r.stderr


def _one_line_error(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cinr: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_bad_input_one_line_errors(tmp_path: Path, mixed_png: Path) -> None:
    out = tmp_path / "o.cinr"
    out.write_bytes(b"precious")
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tiny)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    cases = [
        [str(tmp_path / "missing.svs")],
        [str(tmp_path)],
        [str(text)],
        [str(tiny)],
        [str(empty)],
        [str(mixed_png), "--level", "3"],
        [str(mixed_png), "--block-size", "100"],
        [str(mixed_png), "--preset", "nope"],
    ]
    for extra in cases:
        r = _cinr("encode", *extra, "-o", str(out), "--steps", "1")
        _one_line_error(r)
        assert out.read_bytes() == b"precious"
    r = _cinr("encode", str(mixed_png), "-o", str(tmp_path / "no" / "such" / "dir.cinr"), "--steps", "1")
    _one_line_error(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["o.cinr", "notes.txt", "tiny.png", "empty.svs"]
    )


def _corrupt_tiled_tiff(tmp_path: Path) -> Path:
    """A real-tissue pyramidal TIFF whose last level-0 tile is destroyed (a read error mid-slide).

    The thumbnail comes from an intact lower level, so the encode starts and fails at the last block.
    """
    import pyvips

    with SlideSource(sample_slide_path()) as s:
        crop = s.read(100, 1000, 2048, 1024)
    path = tmp_path / "bad.tif"
    img = pyvips.Image.new_from_memory(crop.tobytes(), 2048, 1024, 3, "uchar")
    img.tiffsave(
        str(path), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=90
    )
    with Image.open(path) as im:  # the first directory is level 0
        offsets = im.tag_v2[324]
    data = bytearray(path.read_bytes())
    last = offsets[-1]
    data[last : last + 64] = b"\0" * 64
    path.write_bytes(bytes(data))
    return path


def test_read_error_mid_slide(tmp_path: Path) -> None:
    src = _corrupt_tiled_tiff(tmp_path)
    out = tmp_path / "bad.cinr"
    args = ["--model", "cinr", "--steps", "1", "--no-tissue-mask", "--no-mips", "--quiet"]
    r = _cinr("encode", str(src), "-o", str(out), *args)
    _one_line_error(r)
    assert "read error" in r.stderr and "(1024, 0)" in r.stderr
    assert not out.exists()
    assert journal_path(out).exists()  # the finished block is kept for --resume


def test_full_disk_leaves_nothing(tmp_path: Path, mixed_png: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from cinr_codec.format.container import writer as writer_mod

    out = tmp_path / "full.cinr"
    out.write_bytes(b"keep me")
    real = writer_mod.CinrWriter._write
    calls = {"n": 0}

    def failing(self: Any, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] > 3:
            raise_enospc = OSError(errno.ENOSPC, "No space left on device")
            self._state = "failed"
            raise CinrIOError(f"{self.name}: write failed: {raise_enospc}")
        return real(self, data)

    monkeypatch.setattr(writer_mod.CinrWriter, "_write", failing)
    with pytest.raises(CinrError, match="No space left"):
        encode_slide(mixed_png, out, model="cinr", block_size=256, steps=1)
    assert out.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_bad_arguments_before_fitting(mixed_png: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="storage"):
        encode_slide(mixed_png, tmp_path / "x.cinr", quant="int4")
    with pytest.raises(CinrInputError):
        encode_slide(tmp_path / "nope.png", tmp_path / "x.cinr")
    with pytest.raises(ValueError, match="overwrite the source"):
        encode_slide(mixed_png, mixed_png)


def _two_blocks_auto_threads(src: Path, dst: Path, **kwargs: Any) -> dict[str, Any]:
    """Encode ``src``'s two 256-px blocks for 2 steps with "auto" threads, no mask and no mips."""
    return encode_slide(
        src, dst, block_size=256, steps=2, tissue_mask=False, mips=False, threads="auto", **kwargs
    )


def test_auto_threads_are_measured_before_each_fitted_block(
    mixed_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from cinr_codec.core.threads import CpuMonitor

    answers = iter([1, 2])
    calls: list[int] = []

    def fake(self: CpuMonitor) -> int:
        calls.append(next(answers))
        return calls[-1]

    monkeypatch.setattr(CpuMonitor, "threads", fake)
    from cinr_codec.encode import slide

    during: list[int] = []  # torch's threads as each block is encoded
    real_block = slide.encode_block

    def spy(job: Any, pixels: Any) -> Any:
        during.append(torch.get_num_threads())
        return real_block(job, pixels)

    monkeypatch.setattr(slide, "encode_block", spy)
    before = torch.get_num_threads()
    try:
        s = _two_blocks_auto_threads(mixed_png, tmp_path / "t.cinr", model="cinr")
    finally:
        torch.set_num_threads(before)
    assert s["tissue_blocks"] == 2 and calls == [1, 2]
    assert during == [1, 2]  # each block ran with the answer measured just before it
    with pytest.raises(ValueError, match="threads"):
        encode_slide(mixed_png, tmp_path / "x.cinr", threads=0)


def test_compressive_fits_run_on_one_thread_whatever_the_load(
    mixed_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With "auto" threads a ccinr encode fits every block on ``LatentCodec.fit_threads`` (one)
    torch thread, never the measured free cores: a payload depends on the thread count, so the
    file would change with the machine's load."""
    import torch

    from cinr_codec.coding.latent import LatentCodec
    from cinr_codec.core.threads import CpuMonitor

    monkeypatch.setattr(CpuMonitor, "threads", lambda self: 2)
    during: list[int] = []
    real_fit = LatentCodec.fit

    def fit(self: LatentCodec, *args: Any, **kwargs: Any) -> Any:
        during.append(torch.get_num_threads())
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(LatentCodec, "fit", fit)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = _two_blocks_auto_threads(mixed_png, tmp_path / "c.cinr")
    finally:
        torch.set_num_threads(before)
    # The prior races: one fit per seed, then the other block.
    assert s["tissue_blocks"] == 2 and len(during) >= 2 and set(during) == {1}


def test_an_encode_gives_the_caller_back_its_torch_thread_count(
    mixed_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Torch's thread count is process-wide: an encode that sets it (a fixed count, or "auto",
    which fits ccinr blocks on one thread) restores the caller's afterwards, also when it fails."""
    import torch

    from cinr_codec.coding.latent import LatentCodec

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = encode_slide(mixed_png, tmp_path / "one.cinr", block_size=256, steps=2, mips=False, threads=1)
        assert s["blocks"] == 2 and torch.get_num_threads() == 2
        s = _two_blocks_auto_threads(mixed_png, tmp_path / "auto.cinr")
        assert s["blocks"] == 2 and torch.get_num_threads() == 2

        def fail(*args: Any, **kwargs: Any) -> Any:
            assert torch.get_num_threads() == 1
            raise RuntimeError("fit failed")

        monkeypatch.setattr(LatentCodec, "fit", fail)
        with pytest.raises(RuntimeError, match="fit failed"):
            encode_slide(mixed_png, tmp_path / "fail.cinr", block_size=256, steps=2, mips=False, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_jpeg_tiled_source_is_decoded_on_its_lattice(he_image: np.ndarray, tmp_path: Path) -> None:
    """A JPEG-tiled TIFF's coding goes in the header (``slide.source_jpeg``; format 1.10 for its
    spread per coefficient); readers move each decoded source tile to its lattice, the summary
    measures that, regions stay seamless, and a header whose blocks are not on the source's MCU
    grid is refused."""
    import pyvips
    from cinr_container_helpers import rewrite

    from cinr_codec.core.requant import requantize
    from cinr_codec.encode.jpeg_coding import jpeg_coding
    from cinr_codec.errors import CinrFormatError

    crop = np.ascontiguousarray(he_image[900:1092, 900:1156])
    src = tmp_path / "q50.tif"
    img = pyvips.Image.new_from_memory(crop.tobytes(), 256, 192, 3, "uchar")
    img.tiffsave(str(src), tile=True, tile_width=64, tile_height=64, pyramid=True, compression="jpeg", Q=50)
    out = tmp_path / "q50.cinr"
    s = encode_slide(src, out, model="cinr", preset="fast", steps=12, block_size=128, margin=8, mips=False)
    sj = jpeg_coding(src, 0, 256, 192)
    assert sj is not None and sj.tile == 64
    with SlideSource(src) as source:
        original = source.read(0, 0, 256, 192)
    with CinrReader(out) as r:
        assert r.header["slide"]["source_jpeg"] == sj.to_header() and r.version == (1, 10)
        header = r.header
    with SlideDecoder(out) as d:
        assert d.requant == sj and d.tile == d.codec.decode_tile
        decoded = d.read(0, 0, 256, 192)
        assert np.array_equal(d.read(37, 21, 150, 101), decoded[21:122, 37:187])
        assert psnr(decoded, original) == pytest.approx(s["psnr_all"], abs=1e-6)
        d.requant = None  # the same models, not re-quantized
        d.clear_cache(models=False)
        raw = d.read(0, 0, 256, 192)
    assert not np.array_equal(raw, decoded)
    assert np.array_equal(requantize(raw, 0, 0, sj), decoded)
    info = json.loads(_cinr("info", str(out), "--json").stdout)
    assert info["source_jpeg"] == {
        "tile": 64,
        "transform": "ycbcr",
        "sampling": [[2, 2], [1, 1], [1, 1]],
        "spread": [[round(max(4.0, 0.3 * q), 2) for q in t] for t in sj.tables],
    }
    lo, hi = float(sj.spreads.min()), float(sj.spreads.max())
    assert lo == 4.0 and hi > 10.0
    assert (
        f"on the source's JPEG lattice (64-px tiles, ycbcr 4:2:0, spread {lo:g}-{hi:g} by coefficient)"
        in _cinr("info", str(out)).stdout
    )
    # A grid of 136-px blocks (the same 2 x 2 blocks) is not on the 16-px MCU grid of 4:2:0.
    bad = tmp_path / "bad.cinr"
    with CinrReader(out) as r:
        rewrite(r, bad, {**header, "grid": {**header["grid"], "block_size": 136}}, {})
    with pytest.raises(CinrFormatError, match="not a multiple of the 16x16 MCU"):
        SlideDecoder(bad)


def test_source_tiles_that_do_not_divide_the_blocks_are_re_quantized_in_their_parts(
    he_image: np.ndarray, tmp_path: Path
) -> None:
    """48-px source tiles in 128-px blocks (as Aperio's 240 px in 512): each block's parts of the
    source tiles are re-quantized (format 1.10), by the encoder's measure and by readers alike,
    and regions stay seamless; 96-px blocks hold whole tiles."""
    import pyvips

    from cinr_codec.core.requant import requantize
    from cinr_codec.encode.slide import _source_jpeg_minor

    crop = np.ascontiguousarray(he_image[900:1092, 900:1156])
    src = tmp_path / "t48.tif"
    img = pyvips.Image.new_from_memory(crop.tobytes(), 256, 192, 3, "uchar")
    img.tiffsave(str(src), tile=True, tile_width=48, tile_height=48, compression="jpeg", Q=70)
    encode_slide(src, tmp_path / "a.cinr", model="cinr", preset="fast", steps=2, mips=False, block_size=96)
    out = tmp_path / "b.cinr"
    s = encode_slide(src, out, model="cinr", preset="fast", steps=8, mips=False, block_size=128)
    with CinrReader(tmp_path / "a.cinr") as a, CinrReader(out) as b:
        assert a.header["slide"]["source_jpeg"]["tile"] == 48 and a.version[1] == 10
        assert b.header["slide"]["source_jpeg"]["tile"] == 48 and b.version[1] == 10
    with SlideSource(src) as source:
        original = source.read(0, 0, 256, 192)
    with SlideDecoder(out) as d:
        sj = d.requant
        assert sj is not None
        decoded = d.read(0, 0, 256, 192)
        assert np.array_equal(d.read(37, 21, 150, 101), decoded[21:122, 37:187])
        assert np.array_equal(d.read(120, 90, 20, 50), decoded[90:140, 120:140])  # across block lines
        assert psnr(decoded, original) == pytest.approx(s["psnr_all"], abs=1e-6)
        d.requant = None
        d.clear_cache(models=False)
        raw = d.read(0, 0, 256, 192)
    expected = raw.copy()
    for by in (0, 128):
        for bx in (0, 128):
            expected[by : by + 128, bx : bx + 128] = requantize(raw[by : by + 128, bx : bx + 128], bx, by, sj)
    assert np.array_equal(decoded, expected) and not np.array_equal(decoded, raw)
    # The block line at 128 cuts the tile [96, 144): its two parts are re-quantized apart.
    assert not np.array_equal(expected, requantize(raw, 0, 0, sj))
    # 1.9 knew whole tiles in blocks and one spread for all coefficients; 1.10 either of the others.
    one = replace(sj, spread=6.0)
    assert _source_jpeg_minor(one, 96) == 9 and _source_jpeg_minor(one, 128) == 10
    assert _source_jpeg_minor(sj, 96) == 10 and _source_jpeg_minor(None, 96) == 0


def test_re_quantized_decode_tiles_inside_a_block_equal_the_block_re_quantized_whole(
    he_image: np.ndarray, tmp_path: Path
) -> None:
    """A ccinr reader renders 128-px tiles of a 256-px block, each with one MCU of margin where
    chroma is upsampled: its pixels are the block's, re-quantized whole in its cells (48-px 4:2:0
    source tiles, cut by the block and by the tiles)."""
    import pyvips

    from cinr_codec.core.requant import requantize

    crop = np.ascontiguousarray(he_image[900:1156, 900:1156])
    src = tmp_path / "t48.tif"
    img = pyvips.Image.new_from_memory(crop.tobytes(), 256, 256, 3, "uchar")
    img.tiffsave(str(src), tile=True, tile_width=48, tile_height=48, compression="jpeg", Q=60)
    out = tmp_path / "c.cinr"
    s = encode_slide(src, out, model="ccinr", steps=4, mips=False, block_size=256)
    with SlideSource(src) as source:
        original = source.read(0, 0, 256, 256)
    with SlideDecoder(out) as d:
        sj = d.requant
        assert sj is not None and sj.margin == (16, 16) and d.tile == 128 < d.grid.block_size
        decoded = d.read(0, 0, 256, 256)
        assert np.array_equal(d.read(100, 120, 60, 30), decoded[120:150, 100:160])
        assert psnr(decoded, original) == pytest.approx(s["psnr_all"], abs=1e-6)
        d.requant = None
        d.clear_cache(models=False)
        raw = d.read(0, 0, 256, 256)
    assert np.array_equal(decoded, requantize(raw, 0, 0, sj))


def test_a_cpu_encode_trains_a_slide_with_little_tissue_longer(
    mixed_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default steps follow the tissue the plan found (``train.latent.default_steps``); the
    jobs and the journal's fingerprint record them, so a resume trains the same."""
    import cinr_codec.encode.train.latent as latent
    from cinr_codec.encode.slide import plan_slide

    # The work of the whole 448x256 image at CPU_STEPS: the image without its glass gets more.
    monkeypatch.setattr(latent, "CPU_WORK_PIXELS", 448 * 256)

    def planned(tissue_mask: bool) -> Any:
        with SlideSource(mixed_png) as src:
            return plan_slide(
                src,
                mixed_png,
                level=0,
                model="ccinr",
                preset="q4",
                quant="entropy",
                steps=None,
                time_budget=None,
                total_time_budget=None,
                target_psnr=None,
                device="cpu",
                block_size=128,
                margin=0,
                tissue_mask=tissue_mask,
                mips=False,
                seed=0,
            )

    masked, whole = planned(True), planned(False)
    assert len(whole.tissue_blocks) == whole.grid.n_level_blocks
    assert {j.steps for j in whole.jobs} == {latent.CPU_STEPS}
    tissue = sum(masked.grid.owned(b)[2] * masked.grid.owned(b)[3] for b in masked.tissue_blocks)
    assert 0 < len(masked.tissue_blocks) < masked.grid.n_level_blocks
    assert {j.steps for j in masked.jobs} == {latent.default_steps("cpu", tissue)}
    assert masked.jobs[0].steps > latent.CPU_STEPS
    monkeypatch.setattr(latent, "CPU_WORK_PIXELS", 2 * 448 * 256)  # more steps, another fingerprint
    longer = planned(True)
    assert longer.jobs[0].steps > masked.jobs[0].steps
    assert longer.fingerprint != masked.fingerprint
