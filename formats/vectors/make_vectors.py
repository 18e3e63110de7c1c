"""Regenerate the test vectors of formats/vectors/: small .cinr files of real tissue and the
SHA-256 of their decoded pixels.

    python formats/vectors/make_vectors.py           # rewrite the .cinr files and expected.json
    python formats/vectors/make_vectors.py --check   # decode the files here and compare (no writes)

Each vector is encoded with ``cinr_codec.encode.image.encode_image`` from a crop of the bundled
sample slide (``CMU-1-Small-Region.svs``, CC0) with a fixed preset, step count, seed and
storage setting, on the CPU. Regenerating rewrites the files (fitting is deterministic on
one machine and PyTorch version, but need not be across them); ``expected.json`` then
records the new decoded pixels' SHA-256. tests/format/test_vectors.py decodes the committed files
and compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cinr_codec import encode_image  # noqa: E402
from cinr_codec.coding.registry import get_codec  # noqa: E402
from cinr_codec.core.metrics import psnr  # noqa: E402
from cinr_codec.decode import decode_image  # noqa: E402
from cinr_codec.encode.source import read_crop, sample_slide_path  # noqa: E402
from cinr_codec.encode.train.latent import PRESET_ARCH  # noqa: E402

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected.json"

#: What the ccinr vectors share: the same crop, preset, steps, seed and storage.
_CCINR: dict[str, Any] = {
    "crop": 64,
    "rows": 48,
    "model": "ccinr",
    "preset": "q6",
    "steps": 400,
    "seed": 0,
    "quant": "entropy",
}
#: The 1.7 architecture (the encoder's, with the synthesis' stabiliser).
_STABILISER_ARCH: dict[str, Any] = {
    "upsampling": "learned",
    "activation": "leaky_relu",
    "weight_coding": "laplace",
    "latent_shift": 2,
    "stabiliser": True,
}
#: name -> how it is made. ``rows``: keep only the first rows of the centred crop (non-square).
VECTORS: dict[str, dict[str, Any]] = {
    "cinr-fast-64x64-int8+float16.cinr": {
        "crop": 64,
        "rows": 64,
        "model": "cinr",
        "preset": "fast",
        "steps": 300,
        "seed": 0,
        "quant": "int8+float16",
    },
    "ngp-fast-64x40-int8.cinr": {
        "crop": 64,
        "rows": 40,
        "model": "ngp",
        "preset": "fast",
        "steps": 300,
        "seed": 0,
        "quant": "int8",
    },
    # Compressive CINR, one per format version that added to it: 1.2, 1.3 and 1.4 architectures
    # with plain JSON (``compact_json`` False), 1.5 with the header and footer compressed,
    # Laplace-coded weights and a latent step of 1/4 (q6's), 1.7 with the synthesis' stabiliser,
    # 1.8 with a tiled first grid.
    "ccinr-q6-64x48-entropy.cinr": {
        **_CCINR,
        "arch": {
            "upsampling": "bilinear",
            "activation": "relu",
            "weight_coding": "expgolomb",
            "latent_shift": 0,
            "stabiliser": False,
        },
        "compact_json": False,
    },
    "ccinr-q6-64x48-learned.cinr": {
        **_CCINR,
        "arch": {
            "upsampling": "learned",
            "activation": "relu",
            "weight_coding": "expgolomb",
            "latent_shift": 0,
            "stabiliser": False,
        },
        "compact_json": False,
    },
    "ccinr-q6-64x48-leaky.cinr": {
        **_CCINR,
        "arch": {
            "upsampling": "learned",
            "activation": "leaky_relu",
            "weight_coding": "expgolomb",
            "latent_shift": 0,
            "stabiliser": False,
        },
        "compact_json": False,
    },
    "ccinr-q6-64x48-compact.cinr": {
        **_CCINR,
        "arch": {
            "upsampling": "learned",
            "activation": "leaky_relu",
            "weight_coding": "laplace",
            "latent_shift": 2,
            "stabiliser": False,
        },
    },
    "ccinr-q6-64x48-stabiliser.cinr": {**_CCINR, "arch": _STABILISER_ARCH},
    # 1.8: the first grid in 32-px tiles (2 x 2 of its 64 x 48), each its own stream.
    "ccinr-q6-64x48-tiled.cinr": {**_CCINR, "arch": {**_STABILISER_ARCH, "latent_tile": 32}},
}


def latents_digest(path: Path) -> str | None:
    """SHA-256 of a compressive CINR file's decoded latent grids (int64, C order, level by level):
    exact on every machine, unlike pixels; None for other models."""
    from cinr_codec.format.container import CinrReader
    from cinr_codec.format.header import parse_layout

    with CinrReader(path) as r:
        layout = parse_layout(r)
        if layout.config.kind != "ccinr":
            return None
        block = layout.codec.load(r.read_payload(0), layout.config, str(path))
    h = hashlib.sha256()
    for g in block.latent_grids():  # type: ignore[attr-defined]
        h.update(np.ascontiguousarray(g, dtype=np.int64).tobytes())
    return h.hexdigest()


def source_pixels(spec: dict[str, Any]) -> np.ndarray:
    """The RGB crop a vector encodes."""
    crop = read_crop(sample_slide_path(), spec["crop"])
    return np.ascontiguousarray(crop[: spec["rows"]])


def decoded_digest(path: Path) -> tuple[str, list[int]]:
    """(SHA-256 of ``decode_image(path).tobytes()``, shape)."""
    pixels = decode_image(path)
    return hashlib.sha256(pixels.tobytes()).hexdigest(), list(pixels.shape)


def make(only: list[str] | None = None) -> dict[str, Any]:
    """Encode every vector (or only those named, keeping the others' files and entries), decode
    it back, and return the expected.json content."""
    kept = (
        {e["file"]: e for e in json.loads(EXPECTED.read_text())["vectors"]}
        if only and EXPECTED.exists()
        else {}
    )
    entries = []
    for name, spec in VECTORS.items():
        if only and name not in only:
            if name in kept:
                entries.append(kept[name])
            continue
        src = source_pixels(spec)
        path = HERE / name
        saved = dict(PRESET_ARCH)
        PRESET_ARCH.update(
            spec.get("arch", {})
        )  # latent_shift here overrides the quality level's  # a ccinr vector's architecture, whatever the preset's
        codec = get_codec(spec["model"])
        saved_compact = codec.compact_json
        codec.compact_json = spec.get("compact_json", saved_compact)  # type: ignore[misc]
        try:
            summary = encode_image(
                src,
                path,
                model=spec["model"],
                preset=spec["preset"],
                steps=spec["steps"],
                seed=spec["seed"],
                quant=spec["quant"],
                device="cpu",
            )
        finally:
            PRESET_ARCH.clear()
            PRESET_ARCH.update(saved)
            codec.compact_json = saved_compact  # type: ignore[misc]
        digest, shape = decoded_digest(path)
        entries.append(
            {
                "file": name,
                "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "file_bytes": path.stat().st_size,
                "decoded_sha256": digest,
                "shape": shape,
                "psnr_db_vs_source": round(psnr(decode_image(path), src), 4),
                "source": f"read_crop(sample_slide_path(), {spec['crop']})[:{spec['rows']}]",
                "encode": {
                    k: v for k, v in spec.items() if k not in ("crop", "rows", "arch", "compact_json")
                },
                **({"architecture": spec["arch"]} if "arch" in spec else {}),
            }
        )
        lat = latents_digest(path)
        if lat is not None:
            entries[-1]["latents_sha256"] = lat
        print(f"{name}: {summary['bytes']} bytes, {summary['psnr']:.2f} dB, sha256 {digest[:16]}...")
    return {
        "about": "SHA-256 of decode_image(file).tobytes() (uint8, H x W x 3, C order); see README.md",
        "generated_with": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "zstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
            "torch_threads": torch.get_num_threads(),
        },
        "vectors": entries,
    }


def check() -> bool:
    """Decode the files and compare with expected.json; True when all match."""
    expected = json.loads(EXPECTED.read_text())
    ok = True
    for e in expected["vectors"]:
        digest, shape = decoded_digest(HERE / e["file"])
        match = digest == e["decoded_sha256"] and shape == e["shape"]
        ok &= match
        print(f"{e['file']}: {'ok' if match else 'MISMATCH'} ({digest[:16]}..., shape {shape})")
    return ok


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="decode and compare; write nothing")
    ap.add_argument("--only", action="append", help="regenerate only this vector (repeatable)")
    args = ap.parse_args()
    if args.check:
        sys.exit(0 if check() else 1)
    EXPECTED.write_text(json.dumps(make(args.only), indent=2) + "\n")
    print(f"wrote {EXPECTED}")


if __name__ == "__main__":
    main()
