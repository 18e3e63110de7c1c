"""The block-representation seam: a second representation plugs in through ``coding.registry`` alone.

``ToyCodec`` stores each block as its mean colour. Registering it (one registry entry, no other
edit) is enough for ``encode_slide``, the journal, the container, ``SlideDecoder``, ``open_cinr``
and ``cinr info`` to encode and read slides made of it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cinr_codec import CinrFormatError, open_cinr
from cinr_codec.cli import main
from cinr_codec.coding import registry
from cinr_codec.coding.base import BlockCodec, FitSettings
from cinr_codec.coding.hashgrid import HashGridCodec
from cinr_codec.decode import SlideDecoder
from cinr_codec.encode.slide import encode_slide
from cinr_codec.errors import CinrError

MAGIC = b"TOY1"


@dataclass
class _Fitted:
    colour: tuple[int, int, int]
    config: Any
    steps: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    psnr: float = float("nan")
    ssim: float = float("nan")


class _Flat:
    def __init__(self, colour: tuple[int, int, int]) -> None:
        self.colour = colour

    def render(self, height: int, width: int, side: float, *, x0: int = 0, y0: int = 0) -> np.ndarray:
        return np.full((height, width, 3), self.colour, dtype=np.uint8)


class ToyCodec(BlockCodec):
    """Each block is its mean colour (a test representation, not a codec anyone would use)."""

    name = "toy"
    kinds = ("toy",)
    storages = ("plain",)
    default_storage = "plain"
    default_preset = "plain"

    def header_fields(self, config: Any, storage: str) -> dict[str, Any]:
        return {"model": dict(config)}

    def parse_config(self, header: Mapping[str, Any], where: str) -> Any:
        model = header["model"]
        if set(model) != {"kind"}:
            raise CinrFormatError(f"{where}: toy models have no settings")
        return dict(model)

    def load(self, payload: bytes, config: Any, where: str, device: str = "cpu") -> _Flat:
        self.check_payload(payload, where)
        r, g, b = struct.unpack_from("<3B", payload, 4)
        return _Flat((r, g, b))

    def check_payload(self, payload: bytes, where: str) -> None:
        if len(payload) != 8 or not payload.startswith(MAGIC):
            raise CinrFormatError(f"{where}: not a toy payload")

    def config_for(self, kind: str, preset: str, height: int, width: int) -> Any:
        return {"kind": kind}

    def recipe(self, kind: str, preset: str) -> dict[str, Any]:
        return {}

    def check_storage(self, storage: str) -> None:
        if storage != "plain":
            raise ValueError(f"unknown storage setting {storage!r}")

    def fit(self, pixels: np.ndarray, config: Any, kind: str, preset: str, settings: FitSettings) -> _Fitted:
        mean = np.rint(pixels.reshape(-1, 3).mean(axis=0)).astype(int)
        return _Fitted((int(mean[0]), int(mean[1]), int(mean[2])), config)

    def serialize(self, fitted: Any, storage: str) -> bytes:
        return MAGIC + struct.pack("<3B", *fitted.colour) + b"\0"


CODEC = ToyCodec()


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(registry.CODECS, "toy", __name__)
    yield


def test_registry_knows_the_hash_grid_models() -> None:
    assert set(registry.model_kinds()) >= {"ngp", "engp", "cinr"}
    assert isinstance(registry.get_codec("cinr"), HashGridCodec)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        registry.get_codec("nope")
    with pytest.raises(CinrFormatError, match="kind 'nope' is not one of"):
        registry.codec_for_header({"model": {"kind": "nope"}}, "f.cinr")


def test_a_second_representation_needs_only_a_registry_entry(
    toy_registered: None, tissue_crop: np.ndarray, tmp_path: Path
) -> None:
    image = np.ascontiguousarray(np.tile(tissue_crop, (2, 2, 1))[:150, :170])
    src = tmp_path / "crop.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "toy.cinr"
    summary = encode_slide(src, out, model="toy", quant="plain", block_size=64, tissue_mask=False)
    assert summary["model"] == "toy" and summary["tissue_blocks"] == 9 and out.exists()

    with SlideDecoder(out) as dec:
        assert isinstance(dec.codec, ToyCodec)
        pixels = dec.read(0, 0, 170, 150)
    for by in range(0, 150, 64):
        for bx in range(0, 170, 64):
            block = image[by : by + 64, bx : bx + 64].reshape(-1, 3).mean(axis=0)
            assert np.abs(pixels[by + 1, bx + 1].astype(float) - block).max() <= 0.5 + 1e-9

    with open_cinr(out) as slide:
        assert slide.properties["cinr.model"] == "toy"
        assert slide.read(0, 0, 80, 80, scale=0.5).shape == (40, 40, 3)  # from the stored mips

    result = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == "toy"


def test_the_writer_checks_payloads_with_the_representation(toy_registered: None, tmp_path: Path) -> None:
    from cinr_codec.format.container import CinrWriter

    with CinrWriter(tmp_path / "x.cinr", {"model": {"kind": "toy"}}, 1) as w:
        with pytest.raises(ValueError, match="not a valid payload"):
            w.add_model_block(0, b"garbage!", check=CODEC.check_payload)
        w.add_model_block(0, MAGIC + b"\1\2\3\0", check=CODEC.check_payload)
        w.commit()


def test_unregistered_kinds_are_format_errors(tmp_path: Path, tissue_crop: np.ndarray, monkeypatch) -> None:
    src = tmp_path / "crop.png"
    Image.fromarray(tissue_crop).save(src)
    out = tmp_path / "toy.cinr"
    monkeypatch.setitem(registry.CODECS, "toy", __name__)
    encode_slide(src, out, model="toy", quant="plain", block_size=64, tissue_mask=False)
    monkeypatch.delitem(registry.CODECS, "toy")
    with pytest.raises(CinrError, match="kind 'toy' is not one of"):
        SlideDecoder(out)
