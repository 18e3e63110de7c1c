"""Block size and margin: PSNR, bits per pixel and time of whole-region encodes at equal total steps.

python -m benchmarks.block_size [--image PATH] [--size 2048] [--blocks 512,1024,2048] [--margins 0,32]
                                [--preset fast] [--device auto] [--quick] [--json]

A tissue-rich square region of a real image is encoded with each block size and margin. The
total number of optimiser steps is held constant (the preset's steps per 1024^2 of pixels), so
that every row costs about the same training time: a block of side B gets steps * (B/1024)^2.
Results: ``benchmarks/results/block_size_<device>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cinr_codec.encode.slide import encode_slide
from cinr_codec.encode.train.presets import get_preset

from .common import RESULTS, SHARED, header, md_table, publish

DEFAULT_IMAGE = SHARED / "he-prostate-2500.jpeg"


#: The row entries in table order.
COLUMNS = (
    "block_size",
    "margin",
    "blocks",
    "steps_per_block",
    "psnr",
    "psnr_border",
    "psnr_interior",
    "ssim",
    "bpp",
    "model_bpp",
    "mip_bpp",
    "seconds",
)


def _region(path: Path, size: int) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w = img.shape[:2]
    size = min(size, h, w)
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y : y + size, x : x + size])


def run(
    image: Path, size: int, blocks: list[int], margins: list[int], preset: str, device: str
) -> list[dict[str, object]]:
    """Encode the region once per (block size, margin); return one row each."""
    region = _region(image, size)
    base_steps = int(get_preset("cinr", preset).train["steps"])
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "region.png"
        Image.fromarray(region).save(src)
        for b in blocks:
            steps = max(1, round(base_steps * (b / 1024) ** 2))
            for m in margins:
                if m > b // 2:
                    continue
                s = encode_slide(
                    src,
                    Path(tmp) / f"b{b}m{m}.cinr",
                    model="cinr",
                    preset=preset,
                    block_size=b,
                    margin=m,
                    steps=steps,
                    device=device,
                    tissue_mask=False,
                )
                row = {
                    "block_size": b,
                    "margin": m,
                    "blocks": s["blocks"],
                    "steps_per_block": steps,
                    "psnr": round(float(s["psnr"]), 3),
                    "psnr_border": None if s["psnr_border"] is None else round(float(s["psnr_border"]), 3),
                    "psnr_interior": round(float(s["psnr_interior"]), 3),
                    "ssim": round(float(s["ssim"]), 4),
                    "bpp": round(float(s["bpp"]), 3),
                    "model_bpp": round(8 * int(s["model_bytes"]) / region.shape[0] ** 2, 3),
                    "mip_bpp": round(8 * int(s["mip_bytes"]) / region.shape[0] ** 2, 3),
                    "seconds": round(float(s["seconds"]), 1),
                    "device": s["device"],
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--blocks", default="512,1024,2048")
    ap.add_argument("--margins", default="0,32")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="512 px region, blocks 128 and 256, 1 margin")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not args.image.exists():
        print(f"block_size: error: {args.image}: no such file", file=sys.stderr)
        sys.exit(2)
    size, blocks, margins = (
        args.size,
        [int(b) for b in args.blocks.split(",")],
        [int(m) for m in args.margins.split(",")],
    )
    if args.quick:
        size, blocks, margins = 512, [128, 256], [16]
    rows = run(args.image, size, blocks, margins, args.preset, args.device)
    device = str(rows[0]["device"]) if rows else args.device
    lines = [
        header("Block size and margin"),
        f"Region: centred {size}² of `{args.image.name}`; preset `{args.preset}`; every block fitted "
        f"(no tissue mask); steps per block = preset steps × (B/1024)², so total training is equal. "
        f"bpp = whole file (models + mips + container) bits per pixel.\n",
    ]
    lines += md_table(
        (
            "block",
            "margin",
            "blocks",
            "steps/block",
            "PSNR",
            "border PSNR",
            "interior PSNR",
            "SSIM",
            "bpp",
            "model bpp",
            "mip bpp",
            "s",
        ),
        "r" * 12,
        ([r[k] for k in COLUMNS] for r in rows),
    )
    text = "\n".join(lines) + "\n"
    name = "quick" if args.quick else device.split(":")[0]
    publish(args.results / f"block_size_{name}.md", text, {"rows": rows}, args.json)


if __name__ == "__main__":
    main()
