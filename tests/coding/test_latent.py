"""``coding.latent``: compressive CINR blocks fitted, stored to the bit, and decoded back."""

from __future__ import annotations

import struct
import time
from typing import Any

import numpy as np
import pytest

from cinr_codec.coding.base import FitSettings
from cinr_codec.coding.latent import CODEC, pack_weights, unpack_weights
from cinr_codec.core.config import LatentConfig
from cinr_codec.core.metrics import psnr
from cinr_codec.encode.train.latent import render_latents
from cinr_codec.errors import CinrError, CinrFormatError


@pytest.fixture(scope="module")
def fitted(tissue_crop: np.ndarray) -> tuple[np.ndarray, Any, Any, bytes]:
    img = np.ascontiguousarray(tissue_crop[:48, :40])
    cfg = CODEC.config_for("ccinr", "q8", 64, 64)
    fit = CODEC.fit(img, cfg, "ccinr", "q8", FitSettings(steps=150, seed=1, frame=(3, 5, 64.0)))
    return img, cfg, fit, CODEC.serialize(fit, "entropy")


def test_round_trip_gives_the_trained_pixels(fitted: tuple[np.ndarray, Any, Any, bytes]) -> None:
    img, cfg, fit, payload = fitted
    block = CODEC.load(payload, cfg, "t")
    out = block.render(48, 40, 64.0, x0=3, y0=5)
    assert np.array_equal(out, render_latents(fit.model))
    assert psnr(out, img) > 20  # 150 steps learn more than the mean colour (~18 dB)
    part = block.render(10, 7, 64.0, x0=10, y0=20)
    assert np.array_equal(part, out[15:25, 7:14])
    with pytest.raises(CinrFormatError, match="^t: rectangle .* outside"):  # names the file and block
        block.render(10, 10, 64.0, x0=0, y0=0)


def test_small_rectangles_render_alone_with_the_same_pixels(
    fitted: tuple[np.ndarray, Any, Any, bytes],
) -> None:
    # A rectangle up to a quarter of the domain renders from windows of the grids (a cold tile
    # does not pay for its whole block); its pixels are the whole render's, edges included.
    _, cfg, _, payload = fitted
    whole = CODEC.load(payload, cfg, "t").render(48, 40, 64.0, x0=3, y0=5)
    rng = np.random.default_rng(0)
    rects = [(0, 0, 20, 12), (28, 30, 20, 10), (1, 1, 1, 1), (47, 39, 1, 1)]
    rects += [
        (int(rng.integers(0, 40)), int(rng.integers(0, 32)), 8, int(rng.integers(1, 9))) for _ in range(12)
    ]
    block = CODEC.load(payload, cfg, "t")
    for dy, dx, h, w in rects:
        part = block.render(h, w, 64.0, x0=3 + dx, y0=5 + dy)
        assert block._pixels is None  # rendered alone, not the whole block
        diff = np.abs(part.astype(np.int16) - whole[dy : dy + h, dx : dx + w])
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float convolutions of other sizes
    block.render(30, 30, 64.0, x0=3, y0=5)  # past a quarter: the whole domain, kept
    assert block._pixels is not None


def test_a_rendered_block_keeps_one_copy_of_its_latents(fitted: tuple[np.ndarray, Any, Any, bytes]) -> None:
    # A decoded block holds its latents as int64 until it renders, then only as float32 tensors
    # (the decoder caches 16 blocks: 11 MB less each at 1024^2).
    _, cfg, fit, payload = fitted
    block = CODEC.load(payload, cfg, "t")
    assert block.grids is not None
    grids = [g.copy() for g in block.grids]
    first = block.render(8, 8, 64.0, x0=3, y0=5)  # a window
    assert block.grids is None
    assert all(np.array_equal(t[0].numpy(), g) for t, g in zip(block._grid_tensors(), grids, strict=True))
    assert np.array_equal(block.render(8, 8, 64.0, x0=3, y0=5), first)
    assert np.array_equal(block.render(48, 40, 64.0, x0=3, y0=5), render_latents(fit.model))


def test_header_fields_round_trip(fitted: tuple[np.ndarray, Any, Any, bytes]) -> None:
    _, cfg, _, _ = fitted
    fields = CODEC.header_fields(cfg, "entropy")
    assert CODEC.parse_config(fields, "t") == cfg
    assert fields["model"]["upsampling"] == "learned" and fields["model"]["activation"] == "leaky_relu"
    assert fields["model"]["weight_coding"] == "laplace" and fields["model"]["latent_shift"] == 3  # q8's
    assert fields["model"]["stabiliser"] is True
    assert CODEC.minor_version(fields) == 7  # the synthesis' stabiliser came with 1.7
    plain = {k: v for k, v in fields["model"].items() if k != "stabiliser"}
    assert "stabiliser" not in LatentConfig.from_dict(plain).to_dict()  # 1.5 headers unchanged
    assert CODEC.minor_version({"model": plain}) == 5  # Laplace-coded weights and latent steps: 1.5
    assert CODEC.minor_version({"model": {**plain, "weight_coding": "expgolomb"}}) == 5
    eg = {k: v for k, v in plain.items() if k not in ("weight_coding", "latent_shift")}
    assert CODEC.minor_version({"model": eg}) == 4  # leaky ReLU came with format 1.4
    assert "weight_coding" not in LatentConfig.from_dict(eg).to_dict()  # 1.4 headers unchanged
    relu = {k: v for k, v in eg.items() if k != "activation"}
    assert CODEC.minor_version({"model": relu}) == 3  # learned upsampling came with format 1.3
    assert CODEC.minor_version({"model": {k: v for k, v in relu.items() if k != "upsampling"}}) == 2
    assert "activation" not in LatentConfig.from_dict(relu).to_dict()  # 1.3 headers unchanged
    for bad in (
        {"levels": 99},
        {"mlp": "wide"},
        {"nonsense": 1},
        {"kind": "cinr"},
        {"upsampling": "nearest"},
        {"activation": "gelu"},
        {"activation": 1},
        {"weight_coding": "huffman"},
        {"weight_coding": None},
        {"latent_shift": 5},
        {"latent_shift": -1},
        {"latent_shift": 1.5},
        {"stabiliser": 1},
        {"stabiliser": "yes"},
    ):
        with pytest.raises(CinrFormatError):
            CODEC.parse_config({"model": {**fields["model"], **bad}}, "t")
    with pytest.raises(ValueError, match="quality level"):
        CODEC.config_for("ccinr", "q99", 64, 64)


def test_weights_pack_exactly() -> None:
    rng = np.random.default_rng(0)
    tensors = [
        (rng.integers(-900, 900, (4, 3)), 9),
        (np.zeros(5, dtype=np.int64), 0),
        (np.array([32767, -32767]), 14),
    ]
    out = unpack_weights(pack_weights(tensors), [(4, 3), (5,), (2,)], "t")
    for (a, k), (b, kb) in zip(tensors, out, strict=True):
        assert np.array_equal(a, b) and k == kb


def _hostile(payload: bytes) -> list[bytes]:
    head = payload[:16]
    (nw,) = struct.unpack_from("<I", payload, 12)
    return [
        b"",
        payload[:10],
        b"XXXX" + payload[4:],
        payload[:-4],
        payload + b"\0\0\0\0",
        head[:4] + struct.pack("<HHHH", 60000, 60000, 0, 0) + payload[12:],  # domain larger than the block
        head[:4] + struct.pack("<HHHH", 48, 40, 60, 60) + payload[12:],  # origin outside the frame
        payload[:12] + struct.pack("<I", 10**9) + payload[16:],  # weight section past the end
        payload[:16] + b"\0" * nw + payload[16 + nw :],  # weights decode to garbage exponents or lengths
    ]


def test_hostile_payloads_raise_cinr_errors(fitted: tuple[np.ndarray, Any, Any, bytes]) -> None:
    _, cfg, _, payload = fitted
    for bad in _hostile(payload):
        with pytest.raises(CinrFormatError):
            CODEC.load(bad, cfg, "hostile")


def test_flipped_latent_bytes_fail_or_decode_in_bounded_time(
    fitted: tuple[np.ndarray, Any, Any, bytes],
) -> None:
    _, cfg, _, payload = fitted
    rng = np.random.default_rng(7)
    (nw,) = struct.unpack_from("<I", payload, 12)
    start = 16 + nw + 4
    for _ in range(8):
        bad = bytearray(payload)
        i = int(rng.integers(start, len(payload)))
        bad[i] ^= int(rng.integers(1, 256))
        t0 = time.perf_counter()
        try:
            block = CODEC.load(bytes(bad), cfg, "flipped")
            assert block.render(48, 40, 64.0, x0=3, y0=5).shape == (48, 40, 3)
        except CinrError:
            pass
        assert time.perf_counter() - t0 < 30


def test_a_slide_encodes_and_decodes_in_the_compressive_codec(tissue_crop: np.ndarray, tmp_path) -> None:
    from PIL import Image

    from cinr_codec import open_cinr
    from cinr_codec.encode.slide import encode_slide
    from cinr_codec.format.container import CinrReader

    image = np.ascontiguousarray(tissue_crop[:48])
    src = tmp_path / "crop.png"
    Image.fromarray(image).save(src)  # 96 x 48: two blocks of 64 (the second one 32 wide)
    out = tmp_path / "c.cinr"
    s = encode_slide(src, out, model="ccinr", preset="q8", steps=30, block_size=64, tissue_mask=False)
    assert s["model"] == "ccinr" and s["quant"] == "entropy" and s["tissue_blocks"] == 2
    with CinrReader(out) as r:
        assert r.version == (1, 7) and r.json_compressed  # the synthesis' stabiliser
        assert r.header["model"]["kind"] == "ccinr" and r.header["model"]["stabiliser"] is True
        assert r.header["model"]["upsampling"] == "learned"
        assert "quantization" not in r.header
    with open_cinr(out) as slide:
        pixels = slide.read(0, 0, 96, 48)
        assert psnr(pixels, image) == pytest.approx(s["psnr_all"], abs=0.01)
        assert slide.read(0, 0, 96, 48, scale=0.5).shape == (24, 48, 3)
        assert slide.properties["cinr.model"] == "ccinr"


def test_latent_shift_scales_what_the_synthesis_reads() -> None:
    import torch

    from cinr_codec.core.synthesis import Synthesis

    base = CODEC.config_for("ccinr", "q1", 64, 64)
    assert base.latent_shift == 0 and CODEC.config_for("ccinr", "q8", 64, 64).latent_shift == 3
    torch.manual_seed(0)
    grids = [torch.randint(-9, 9, (1, 64 >> k, 64 >> k)).float() for k in range(base.levels)]
    s0 = Synthesis(base)
    s2 = Synthesis(LatentConfig.from_dict({**base.to_dict(), "latent_shift": 2}))
    s2.load_state_dict(s0.state_dict())
    with torch.no_grad():
        assert torch.equal(s2.features(grids, 64, 64), s0.features([g / 4 for g in grids], 64, 64))


def test_the_stabiliser_is_a_linear_path_from_the_latents_to_rgb() -> None:
    """With ``stabiliser`` the head reads the upsampled latents after the two flows: zero those
    flows' contribution and the synthesis is the head's linear map of the features (before the
    residual convolutions, which start at zero)."""
    import torch

    from cinr_codec.core.config import latent_macs_per_pixel
    from cinr_codec.core.synthesis import Synthesis, macs_per_pixel

    on = CODEC.config_for("ccinr", "q3", 64, 64)
    off = LatentConfig.from_dict({**on.to_dict(), "stabiliser": False})
    assert on.stabiliser and not off.stabiliser
    s = Synthesis(on)
    d = on.mlp[-1] + on.conv_width
    assert s.head.weight.shape == (3, d + on.levels, 1, 1)
    assert Synthesis(off).head.weight.shape == (3, d, 1, 1)
    assert macs_per_pixel(on)["total"] - macs_per_pixel(off)["total"] == 3 * on.levels
    assert latent_macs_per_pixel(on) == macs_per_pixel(on)["total"]
    torch.manual_seed(0)
    f = torch.randn(1, on.levels, 16, 16)
    with torch.no_grad():
        s.head.weight[:, :d] = 0
        x = s(f)
        w = s.head.weight[:, d:, 0, 0]
        assert torch.allclose(
            x, torch.einsum("ck,nkhw->nchw", w, f) + s.head.bias[None, :, None, None], atol=1e-6
        )


def test_compressive_slides_default_to_512_px_blocks(tissue_crop: np.ndarray, tmp_path) -> None:
    # Smaller blocks halve a cold tile's decoding for no measured loss in bytes (docs/architecture.md).
    from PIL import Image

    from cinr_codec.encode.slide import encode_slide

    src = tmp_path / "crop.png"
    Image.fromarray(np.ascontiguousarray(tissue_crop[:48])).save(src)
    s = encode_slide(src, tmp_path / "c.cinr", model="ccinr", preset="q4", steps=2, tissue_mask=False)
    assert s["block_size"] == 512 == CODEC.block_size
    s = encode_slide(src, tmp_path / "h.cinr", model="cinr", preset="fast", steps=2, tissue_mask=False)
    assert s["block_size"] == 1024


@pytest.fixture(scope="module")
def tiled(fitted: tuple[np.ndarray, Any, Any, bytes]) -> tuple[Any, bytes]:
    """The same fit stored with its first grid in 16-px tiles (3 x 3 over its 48 x 40): format 1.8."""
    from dataclasses import replace

    _, cfg, fit, _ = fitted
    tcfg = replace(cfg, latent_tile=16)
    fit.model.config = tcfg
    try:
        return tcfg, CODEC.serialize(fit, "entropy")
    finally:
        fit.model.config = cfg


def test_a_tiled_first_grid_decodes_to_the_same_latents_and_pixels(
    fitted: tuple[np.ndarray, Any, Any, bytes], tiled: tuple[Any, bytes]
) -> None:
    _, cfg, fit, payload = fitted
    tcfg, tpayload = tiled
    assert tcfg.latent_tiles(48, 40)[-1] == (32, 48, 32, 40) and len(tcfg.latent_tiles(48, 40)) == 9
    assert CODEC.minor_version(CODEC.header_fields(tcfg, "entropy")) == 8
    assert CODEC.parse_config(CODEC.header_fields(tcfg, "entropy"), "t") == tcfg
    assert len(tpayload) > len(payload)  # nine streams and their lengths, contexts cut at the tiles
    want = CODEC.load(payload, cfg, "t").latent_grids()
    block = CODEC.load(tpayload, tcfg, "t")
    assert block._tiled is not None and not any(block._tiled.done())  # nothing decoded yet
    # A window decodes the other grids and only the first grid's tiles under it and the synthesis'
    # halo (3 px): rows 0-6 and columns 20-29 lie in tile (0, 1) only; its pixels are the untiled block's.
    part = block.render(4, 6, 64.0, x0=3 + 23, y0=5)
    assert block._tiled.done() == [False, True] + [False] * 7 + [True]
    assert np.array_equal(part, CODEC.load(payload, cfg, "t").render(4, 6, 64.0, x0=3 + 23, y0=5))
    assert all(np.array_equal(a, b) for a, b in zip(block.latent_grids(), want, strict=True))
    assert np.array_equal(block.render(48, 40, 64.0, x0=3, y0=5), render_latents(fit.model))


def test_pieces_name_what_a_render_would_decode(
    fitted: tuple[np.ndarray, Any, Any, bytes], tiled: tuple[Any, bytes]
) -> None:
    """``pieces`` of a rectangle: the pieces its render would decode and that are not decoded yet,
    with their latents; ``decode_piece`` decodes one, and the render then decodes nothing more."""
    _, cfg, fit, payload = fitted
    tcfg, tpayload = tiled
    block = CODEC.load(tpayload, tcfg, "t")
    assert block._tiled is not None
    other = sum(h * w for h, w in tcfg.grid_shapes(48, 40)[1:])
    # Rows 0-6 and columns 20-29 (with the synthesis' halo) lie in first-grid tile (0, 1) only.
    assert block.pieces(4, 6, x0=3 + 23, y0=5) == [(9, other), (1, 16 * 16)]
    assert sorted(k for k, _ in block.pieces(48, 40, x0=3, y0=5)) == list(range(10))  # the whole block
    block.decode_piece(1)
    block.decode_piece(9)
    assert block._tiled.done() == [False, True] + [False] * 7 + [True]
    assert block.pieces(4, 6, x0=3 + 23, y0=5) == []
    decoded: list[int] = []
    decode = block._tiled._decode
    block._tiled._decode = lambda k: (decoded.append(k), decode(k))[1]  # type: ignore[method-assign]
    part = block.render(4, 6, 64.0, x0=3 + 23, y0=5)
    assert decoded == [] and np.array_equal(
        part, CODEC.load(payload, cfg, "t").render(4, 6, 64.0, x0=26, y0=5)
    )
    assert CODEC.load(payload, cfg, "t").pieces(48, 40, x0=3, y0=5) == []  # untiled: decoded on load
    block.render(48, 40, 64.0, x0=3, y0=5)
    assert block.pieces(48, 40, x0=3, y0=5) == []


def test_tiles_decode_once_when_threads_render_at_the_same_time(tiled: tuple[Any, bytes]) -> None:
    import threading

    tcfg, tpayload = tiled
    want = CODEC.load(tpayload, tcfg, "t").render(48, 40, 64.0, x0=3, y0=5)
    block = CODEC.load(tpayload, tcfg, "t")
    tiled_grids = block._tiled
    assert tiled_grids is not None
    decoded: list[int] = []
    decode = tiled_grids._decode

    def counted(k: int) -> None:
        if tiled_grids._streams[k] is not None:
            decoded.append(k)
        decode(k)

    tiled_grids._decode = counted  # type: ignore[method-assign]
    out: dict[tuple[int, int], np.ndarray] = {}

    def render(dy: int, dx: int) -> None:
        out[dy, dx] = block.render(8, 8, 64.0, x0=3 + dx, y0=5 + dy)

    jobs = [
        threading.Thread(target=render, args=(dy, dx)) for dy in range(0, 48, 8) for dx in range(0, 40, 8)
    ]
    for t in jobs:
        t.start()
    for t in jobs:
        t.join()
    assert len(out) == 30 and all(
        np.array_equal(v, want[dy : dy + 8, dx : dx + 8]) for (dy, dx), v in out.items()
    )
    assert sorted(decoded) == list(range(10))  # every piece, each once


def test_hostile_tiled_payloads_raise_cinr_errors(tiled: tuple[Any, bytes]) -> None:
    tcfg, tpayload = tiled
    (nw,) = struct.unpack_from("<I", tpayload, 12)
    section = 16 + nw + 4
    lengths = list(struct.unpack_from("<9I", tpayload, section))
    bads = []
    for k, value in ((0, lengths[0] + 2), (3, 1 << 30), (8, lengths[8] + 4 * 10**6)):
        bad = bytearray(tpayload)
        struct.pack_into("<I", bad, section + 4 * k, value)
        bads.append(bytes(bad))
    # A section too short for the nine lengths.
    short = tpayload[: section - 4] + struct.pack("<I", 8) + bytes(8)
    for bad in (*bads, short):
        with pytest.raises(CinrFormatError, match="hostile"):
            CODEC.load(bad, tcfg, "hostile").render(48, 40, 64.0, x0=3, y0=5)
    # Garbage in one tile's stream: an error when a render reaches that tile, or latents in bounded time.
    start = section + 36 + sum(lengths[:4])
    rng = np.random.default_rng(3)
    for _ in range(6):
        bad = bytearray(tpayload)
        for i in rng.integers(start, start + lengths[4], 4):
            bad[int(i)] ^= int(rng.integers(1, 256))
        t0 = time.perf_counter()
        try:
            CODEC.load(bytes(bad), tcfg, "garbage").render(48, 40, 64.0, x0=3, y0=5)
        except CinrError as exc:
            assert "garbage" in str(exc)
        assert time.perf_counter() - t0 < 30
    for tile in (8, 1, 10**6):
        fields = CODEC.header_fields(tcfg, "entropy")
        fields["model"]["latent_tile"] = tile
        with pytest.raises(CinrFormatError, match="latent_tile"):
            CODEC.parse_config(fields, "t")


def test_a_stored_fit_continues_at_a_higher_weight(
    fitted: tuple[np.ndarray, Any, Any, bytes], tiled: tuple[Any, bytes]
) -> None:
    """``stored_fit`` gives back the stored block exactly (tiled or not); a fit that continues it
    (``FitSettings.start``) trains nothing, keeps its networks and searches its latents at the new
    weight: at 16x the level's, fewer bytes (at 4x the bundled sample's crop, the fallback without
    the shared data, kept every latent)."""
    from cinr_codec.encode.train.latent import lambda_of

    img, cfg, fit, payload = fitted
    for c, p in ((cfg, payload), tiled):
        again = CODEC.stored_fit(p, img, c, 1e-3)
        assert CODEC.serialize(again, "entropy") == p and again.origin == (3, 5) and again.steps == 0
        assert np.array_equal(render_latents(again.model), render_latents(fit.model))
    lam = 16 * lambda_of("q8")
    more = CODEC.fit(img, cfg, "ccinr", "q8", FitSettings(start=payload, lam=lam, frame=(3, 5, 64.0)))
    assert more.steps == 0 and more.lam == lam and more.exponents == fit.exponents
    assert len(CODEC.serialize(more, "entropy")) < len(payload)
    kept = dict(CODEC.stored_fit(payload, img, cfg, lam).model.named_parameters())
    moved = [n for n, p in more.model.named_parameters() if not bool((p == kept[n]).all())]
    assert moved and all(n.startswith("latents.") for n in moved)
    with pytest.raises(ValueError, match="a stored payload is continued at a given rate weight"):
        CODEC.fit(img, cfg, "ccinr", "q8", FitSettings(start=payload))
    with pytest.raises(ValueError, match=r"a 40x48 domain for 40x47 pixels"):
        CODEC.stored_fit(payload, img[:47], cfg, 1e-3)
    from cinr_codec.coding.registry import get_codec

    with pytest.raises(ValueError, match="cannot continue a stored payload"):
        get_codec("cinr").fit(img, None, "cinr", "fast", FitSettings(start=payload, lam=lam))
