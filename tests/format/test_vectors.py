"""Test vectors (formats/vectors/): each committed .cinr decodes to pixels of the recorded SHA-256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from cinr_codec.decode import decode_image
from cinr_codec.format.container import CinrReader

VECTORS = Path(__file__).resolve().parents[2] / "formats" / "vectors"
EXPECTED: list[dict[str, Any]] = json.loads((VECTORS / "expected.json").read_text())["vectors"]


def test_there_are_vectors() -> None:
    assert len(EXPECTED) >= 2
    for e in EXPECTED:
        size = (VECTORS / e["file"]).stat().st_size
        assert size == e["file_bytes"] and 1_000 <= size <= 60_000


@pytest.mark.parametrize("entry", EXPECTED, ids=[e["file"] for e in EXPECTED])
def test_vector_decodes_to_expected_pixels(entry: dict[str, Any]) -> None:
    path = VECTORS / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["file_sha256"], "vector file changed"
    pixels = decode_image(path)
    assert list(pixels.shape) == entry["shape"]
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == entry["decoded_sha256"]


@pytest.mark.parametrize("entry", EXPECTED, ids=[e["file"] for e in EXPECTED])
def test_vector_is_well_formed(entry: dict[str, Any]) -> None:
    with CinrReader(VECTORS / entry["file"]) as r:
        r.verify()
        assert r.n_blocks == 1 and r.block_info(0).kind == "model"
        storage = r.header["quantization"]["setting"] if "quantization" in r.header else "entropy"
        assert storage == entry["encode"]["quant"]
        assert r.header["model"]["kind"] == entry["encode"]["model"]
        h, w = entry["shape"][:2]
        assert (r.header["slide"]["width"], r.header["slide"]["height"]) == (w, h)
        assert r.footer["quality"]["psnr_db"] == pytest.approx(entry["psnr_db_vs_source"], abs=1e-3)


@pytest.mark.parametrize("entry", [e for e in EXPECTED if "latents_sha256" in e], ids=lambda e: e["file"])
def test_compressive_vector_latents_are_exact(entry: dict[str, Any]) -> None:
    """The entropy-coded latents decode to the same integers on every machine (pixels may
    differ by a rounding step elsewhere; the latents may not)."""
    import sys

    sys.path.insert(0, str(VECTORS))
    from make_vectors import latents_digest

    assert latents_digest(VECTORS / entry["file"]) == entry["latents_sha256"]
