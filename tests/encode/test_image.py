"""encode_image / decode_image: round trip, storage settings, bad inputs, hostile headers, atomicity."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import cinr_codec.encode.image as encoding
from cinr_codec import DEFAULT_QUANT, QUANT_SETTINGS, encode_image, write_fitted
from cinr_codec.coding.hashgrid import HashGridBlock, parse_model_config
from cinr_codec.coding.quant import quantize_tensors
from cinr_codec.core.metrics import psnr, ssim
from cinr_codec.decode import decode_image
from cinr_codec.encode.source import read_crop, sample_slide_path
from cinr_codec.encode.train.fit import FitResult, fit_image
from cinr_codec.errors import CinrError, CinrFormatError, CinrIOError
from cinr_codec.format.container import CinrReader, CinrWriter


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Tiny models gain nothing from threads, and a busy 2-core machine makes OpenMP threads wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 32x32 crop of the bundled real slide."""
    return read_crop(sample_slide_path(), 32)


@pytest.fixture(scope="module")
def fitted(crop: np.ndarray) -> FitResult:
    """CINR (fast preset) fitted for a few steps: enough for a non-trivial model."""
    return fit_image(crop, model="cinr", preset="fast", steps=30, device="cpu", seed=0)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory, crop: np.ndarray) -> tuple[Path, dict[str, Any]]:
    """A file written by encode_image with the default storage setting, and its summary."""
    dst = tmp_path_factory.mktemp("enc") / "crop.cinr"
    props = {"openslide.mpp-x": "0.499", "openslide.vendor": "aperio", "aperio.AppMag": "20"}
    summary = encode_image(crop, dst, model="cinr", preset="fast", steps=30, source_properties=props)
    return dst, summary


def _rewrite(src: Path, dst: Path, edit: Any = None, payload: bytes | None = None) -> Path:
    """Copy a one-block file with its header edited by ``edit(header)`` (and/or another payload)."""
    with CinrReader(src) as r:
        header = copy.deepcopy(r.header)
        payload = payload if payload is not None else r.read_payload(0)
    if edit is not None:
        edit(header)
    with CinrWriter(dst, header, 1) as w:
        w.add_model_block(0, payload)
        w.commit()
    return dst


# --- round trip -------------------------------------------------------------------------------


def test_round_trip(encoded: tuple[Path, dict[str, Any]], crop: np.ndarray) -> None:
    path, s = encoded
    decoded = decode_image(path)
    assert decoded.shape == crop.shape and decoded.dtype == np.uint8
    assert psnr(decoded, crop) == s["psnr"]  # the summary is measured after quantization
    assert ssim(decoded, crop) == s["ssim"]
    assert s["psnr"] > 10 and s["quant"] == DEFAULT_QUANT
    with CinrReader(path) as r:
        assert r.footer["quality"]["psnr_db"] == round(s["psnr"], 4)  # footers keep 4 decimals of dB
        assert r.footer["quality"]["ssim"] == round(s["ssim"], 6)
        assert r.footer["quality"]["payload_bytes"] == s["payload_bytes"] == r.block_info(0).stored_length
        assert r.block_info(0).raw_length == s["raw_bytes"]
        assert r.header["slide"]["width"] == 32 and r.header["slide"]["height"] == 32
        assert r.header["slide"]["mpp_x"] == 0.499 and r.header["slide"]["mpp_y"] is None
        assert r.header["slide"]["vendor"] == "aperio"
        assert r.header["slide"]["properties"]["aperio.AppMag"] == "20"
        assert r.header["grid"] == {"block_size": 32, "halo": 0, "cols": 1, "rows": 1}
        assert r.header["quantization"]["setting"] == DEFAULT_QUANT
        assert r.header["encoder"]["preset"] == "fast"
        assert parse_model_config(r.header["model"], "t").kind == "cinr"
        assert r.max_block_bytes == s["raw_bytes"]
    assert s["bytes"] == path.stat().st_size
    assert s["bpp"] == 8 * s["bytes"] / (32 * 32)
    assert s["payload_bpp"] == 8 * s["payload_bytes"] / (32 * 32)
    assert s["steps"] == 30 and s["model"] == "cinr" and s["preset"] == "fast"
    assert np.array_equal(decode_image(path), decoded)  # deterministic


@pytest.mark.parametrize("quant", list(QUANT_SETTINGS))
def test_every_storage_setting(tmp_path: Path, fitted: FitResult, crop: np.ndarray, quant: str) -> None:
    s = write_fitted(fitted, crop, tmp_path / "x.cinr", quant=quant)
    decoded = decode_image(tmp_path / "x.cinr")
    assert psnr(decoded, crop) == s["psnr"]
    if quant == "float32":  # lossless storage: exactly the fitted model
        assert s["psnr"] == fitted.psnr
        assert np.array_equal(decoded, fitted.decode())
    assert abs(s["psnr"] - fitted.psnr) < 0.5


def test_non_square_ngp(tmp_path: Path, crop: np.ndarray) -> None:
    img = np.ascontiguousarray(crop[:20, :32])
    s = encode_image(img, tmp_path / "n.cinr", model="ngp", preset="fast", steps=20, quant="int8")
    decoded = decode_image(tmp_path / "n.cinr")
    assert decoded.shape == (20, 32, 3)
    assert psnr(decoded, img) == s["psnr"]
    with CinrReader(tmp_path / "n.cinr") as r:
        assert r.header["grid"]["block_size"] == 32


def test_uniform_image_has_null_psnr_in_footer(tmp_path: Path, fitted: FitResult) -> None:
    """A lossless decode has infinite PSNR, which JSON cannot hold: the footer stores null."""
    img = fitted.decode()
    s = write_fitted(fitted, img, tmp_path / "u.cinr", quant="float32")
    assert s["psnr"] == math.inf
    with CinrReader(tmp_path / "u.cinr") as r:
        assert r.footer["quality"]["psnr_db"] is None


# --- bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image, kwargs",
    [
        (np.zeros((16, 16, 3), np.float32), {}),
        (np.zeros((16, 16), np.uint8), {}),
        (np.zeros((16, 16, 4), np.uint8), {}),
        (np.zeros((1, 16, 3), np.uint8), {}),
        (np.zeros((16, 16, 3), np.uint8), {"quant": "int4"}),
        (np.zeros((16, 16, 3), np.uint8), {"model": "vit"}),
        (np.zeros((16, 16, 3), np.uint8), {"preset": "huge"}),
        (np.zeros((16, 16, 3), np.uint8), {"steps": -1}),
        (np.zeros((16, 16, 3), np.uint8), {"time_budget": 0}),
        (np.zeros((16, 16, 3), np.uint8), {"device": "tpu"}),
        (np.zeros((16, 16, 3), np.uint8), {"source_properties": {"a": 1}}),
    ],
)
def test_bad_arguments(tmp_path: Path, image: np.ndarray, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        encode_image(image, tmp_path / "x.cinr", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_destination(tmp_path: Path, crop: np.ndarray) -> None:
    with pytest.raises(CinrIOError, match="directory"):
        encode_image(crop, tmp_path, steps=1)
    with pytest.raises(CinrIOError, match="does not exist"):
        encode_image(crop, tmp_path / "missing" / "x.cinr", steps=1)


def test_write_fitted_checks_its_image(tmp_path: Path, fitted: FitResult, crop: np.ndarray) -> None:
    with pytest.raises(ValueError, match="fitted to"):
        write_fitted(fitted, np.ascontiguousarray(crop[:16]), tmp_path / "x.cinr")


def test_decode_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CinrIOError):
        decode_image(tmp_path / "missing.cinr")
    (tmp_path / "text.cinr").write_bytes(b"hello, world" * 20)
    with pytest.raises(CinrFormatError, match="not a .cinr file"):
        decode_image(tmp_path / "text.cinr")


# --- hand-crafted headers ----------------------------------------------------------------------


def _set(*path: Any) -> Any:
    """An edit that sets header[path[0]]...[path[-2]] = path[-1] (or deletes it for ...)."""

    def edit(h: dict[str, Any]) -> None:
        obj = h
        for k in path[:-2]:
            obj = obj[k]
        if path[-1] is Ellipsis:
            del obj[path[-2]]
        else:
            obj[path[-2]] = path[-1]

    return edit


BAD_HEADERS = {
    "mlp_width changed": (_set("model", "mlp_width", 16), "do not match the model"),
    "conv_width changed": (_set("model", "conv_width", 4), "do not match the model"),
    "kind ngp": (_set("model", "kind", "ngp"), "do not match the model"),
    "unknown model key": (_set("model", "depth", 3), "unknown configuration keys"),
    "unknown hash key": (_set("model", "hash", "levels", 3), "unknown keys"),
    "no hash": (_set("model", "hash", ...), "'hash' is missing"),
    "no kind": (_set("model", "kind", ...), "kind"),
    "unknown kind": (_set("model", "kind", "vit"), "kind"),
    "model is a list": (_set("model", [1, 2]), "'model' is missing or not an object"),
    "no model": (_set("model", ...), "'model' is missing"),
    "string n_levels": (_set("model", "hash", "n_levels", "8"), "n_levels"),
    "bool mlp_depth": (_set("model", "mlp_depth", True), "mlp_depth"),
    "float conv_width": (_set("model", "conv_width", 8.0), "conv_width"),
    "negative mlp_width": (_set("model", "mlp_width", -1), "mlp_width"),
    "huge table": (  # 8 levels of 2**30 entries: built on the meta device only, then refused
        lambda h: h["model"]["hash"].update(log2_table_size=30, base_resolution=2**20),
        "do not match the model",
    ),
    "small table": (_set("model", "hash", "log2_table_size", 4), "do not match the model"),
    "many levels": (_set("model", "hash", "n_levels", 64), "do not match the model"),
    "huge scale": (_set("model", "hash", "per_level_scale", 1000.0), "finest resolution"),
    "small scale": (_set("model", "hash", "per_level_scale", 0.5), "per_level_scale"),
    "bad activation": (_set("model", "activation", "swish"), "activation"),
    "activation not str": (_set("model", "activation", 3), "activation"),
    "bias not bool": (_set("model", "bias", 1), "bias"),
    "w0 string": (_set("model", "w0", "30"), "w0"),
    "tcnn backend": (_set("model", "backend", "tcnn"), "backend"),
    "zero conv depth": (_set("model", "conv_a_depth", 0), "cannot build"),
    "no slide": (_set("slide", ...), "'slide' is missing"),
    "string width": (_set("slide", "width", "32"), "width"),
    "bool height": (_set("slide", "height", True), "height"),
    "zero height": (_set("slide", "height", 0), "height"),
    "huge width": (_set("slide", "width", 2**21), "width"),
    "no grid": (_set("grid", ...), "'grid' is missing"),
    "grid halo": (_set("grid", "halo", 2), "halo"),
    "grid too small": (_set("grid", "block_size", 16), "does not cover"),
    "grid too large": (_set("grid", "block_size", 64), "single-block"),
    "grid cols": (_set("grid", "cols", 2), "does not cover"),
    "grid rows missing": (_set("grid", "rows", ...), "rows"),
    "width larger": (_set("slide", "width", 40), "does not cover"),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_hand_crafted_header(tmp_path: Path, encoded: tuple[Path, dict[str, Any]], case: str) -> None:
    edit, match = BAD_HEADERS[case]
    bad = _rewrite(encoded[0], tmp_path / "bad.cinr", edit)
    with pytest.raises(CinrFormatError, match=match) as info:
        decode_image(bad)
    assert "bad.cinr" in str(info.value)


def test_unchanged_rewrite_decodes(tmp_path: Path, encoded: tuple[Path, dict[str, Any]]) -> None:
    """The helper itself: a copy with the header untouched decodes to the same pixels."""
    copy_path = _rewrite(encoded[0], tmp_path / "copy.cinr")
    assert np.array_equal(decode_image(copy_path), decode_image(encoded[0]))


def test_payload_with_wrong_tensors(
    tmp_path: Path, encoded: tuple[Path, dict[str, Any]], fitted: FitResult
) -> None:
    state = {k: v.detach().clone() for k, v in fitted.model.state_dict().items()}
    nan = dict(state)
    nan["head.bias"] = torch.full_like(state["head.bias"], float("nan"))
    with pytest.raises(CinrFormatError, match="non-finite"):
        decode_image(_rewrite(encoded[0], tmp_path / "nan.cinr", payload=quantize_tensors(nan)))
    missing = {k: v for k, v in state.items() if k != "out.weight"}
    with pytest.raises(CinrFormatError, match=r"missing \['out.weight'\]"):
        decode_image(_rewrite(encoded[0], tmp_path / "missing.cinr", payload=quantize_tensors(missing)))
    extra = {**state, "extra": torch.zeros(2)}
    with pytest.raises(CinrFormatError, match="unexpected"):
        decode_image(_rewrite(encoded[0], tmp_path / "extra.cinr", payload=quantize_tensors(extra)))
    ints = {**state, "head.bias": torch.zeros(3, dtype=torch.int32)}
    with pytest.raises(CinrFormatError, match="floating"):
        decode_image(_rewrite(encoded[0], tmp_path / "int.cinr", payload=quantize_tensors(ints)))


def test_background_block(tmp_path: Path, encoded: tuple[Path, dict[str, Any]]) -> None:
    with CinrReader(encoded[0]) as r:
        header = dict(r.header)
    with CinrWriter(tmp_path / "bg.cinr", header, 1) as w:
        w.add_background_block(0, (243, 242, 245))
        w.commit()
    out = decode_image(tmp_path / "bg.cinr")
    assert out.shape == (32, 32, 3) and (out == np.array([243, 242, 245], np.uint8)).all()


def test_multi_block_file_is_refused(tmp_path: Path, encoded: tuple[Path, dict[str, Any]]) -> None:
    with CinrReader(encoded[0]) as r:
        header = copy.deepcopy(r.header)
        payload = r.read_payload(0)
    header["slide"]["width"] = 64
    header["grid"]["cols"] = 2
    with CinrWriter(tmp_path / "two.cinr", header, 2) as w:
        w.add_model_block(0, payload)
        w.add_background_block(1, (255, 255, 255))
        w.commit()
    with pytest.raises(CinrFormatError, match="single-block"):
        decode_image(tmp_path / "two.cinr")
    with CinrWriter(tmp_path / "n.cinr", header, 1) as w:  # grid says 2 blocks, the file has 1
        w.add_model_block(0, payload)
        w.commit()
    with pytest.raises(CinrFormatError, match="the file 1"):
        decode_image(tmp_path / "n.cinr")


# --- atomic output ----------------------------------------------------------------------------


def test_failed_encode_leaves_no_file(
    tmp_path: Path, fitted: FitResult, crop: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> np.ndarray:
        raise RuntimeError("render failed")

    old = tmp_path / "old.cinr"
    write_fitted(fitted, crop, old, quant="float16")
    before = old.read_bytes()
    monkeypatch.setattr(HashGridBlock, "render", boom)  # fails while the writer is open
    with pytest.raises(RuntimeError, match="render failed"):
        write_fitted(fitted, crop, tmp_path / "new.cinr", quant="int8")
    with pytest.raises(RuntimeError, match="render failed"):
        write_fitted(fitted, crop, old, quant="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.cinr"]  # no new file, no .part left
    assert old.read_bytes() == before


def test_block_size_limit(encoded: tuple[Path, dict[str, Any]]) -> None:
    with pytest.raises(CinrFormatError):
        decode_image(encoded[0], max_block_bytes=100)


def test_encoder_and_decoder_share_limits() -> None:
    import cinr_codec.decode.image as decoding
    from cinr_codec.format import header

    assert (encoding.MAX_SIDE, encoding.MAX_PIXELS) == (header.MAX_SIDE, header.MAX_PIXELS)
    assert decoding.MAX_PIXELS == header.MAX_PIXELS


def test_errors_are_cinr_errors() -> None:
    assert issubclass(CinrFormatError, CinrError) and issubclass(CinrIOError, CinrError)
