"""Decode cost of one compressive CINR (ccinr) block: multiply-adds per pixel, and milliseconds for
entropy decoding and synthesis, separately, on the CPU.

    python -m benchmarks.latent_decode [--size 1024] [--steps 40] [--quality q6] [--threads 2] [--repeat 3]

The block is fitted to a real H&E region for ``--steps`` steps (enough for realistic latent
statistics to within the purpose of a timing; the rate-distortion benchmark trains fully), stored
with ``LatentCodec.serialize``, then decoded ``--repeat`` times: ``entropy`` = payload to integer
latents (``LatentCodec.load``: weights, context model, range decoder), ``synthesis`` = latents to
RGB pixels (``LatentBlock.render`` of the whole block). Both are timed on the compiled kernels
(``coding/_latent.c``, ``core/_synthesis.c``, when a C compiler built them) and on the numpy and
torch paths (``core.native.disabled()``), alternately in the same run. Medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, SHARED, header, load_average, md_table, publish

IMAGE = SHARED / "he-prostate-2500.jpeg"


def measure(image: Path, size: int, steps: int, quality: str, repeat: int, seed: int = 0) -> dict[str, Any]:
    """Fit, store and time the decode of one ``size`` x ``size`` block (see the module docstring)."""
    from PIL import Image

    from cinr_codec.coding.base import FitSettings
    from cinr_codec.coding.latent import CODEC
    from cinr_codec.core.metrics import psnr
    from cinr_codec.core.synthesis import macs_per_pixel

    with Image.open(image) as im:
        rgb = np.asarray(im.convert("RGB"))
    y0, x0 = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
    region = np.ascontiguousarray(rgb[y0 : y0 + size, x0 : x0 + size])
    cfg = CODEC.config_for("ccinr", quality, size, size)
    t0 = time.perf_counter()
    fit = CODEC.fit(region, cfg, "ccinr", quality, FitSettings(steps=steps, seed=seed))
    fit_s = time.perf_counter() - t0
    payload = CODEC.serialize(fit, "entropy")
    from cinr_codec.coding.entropy import _latent_lib
    from cinr_codec.core import native
    from cinr_codec.core.synthesis import _synthesis_lib

    compiled = _latent_lib() is not None
    compiled_synthesis = _synthesis_lib() is not None
    entropy_ms, numpy_ms, synthesis_ms, torch_ms = [], [], [], []
    pixels = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        block = CODEC.load(payload, cfg, "bench")
        grids = block.latent_grids()  # every tile of a tiled first grid too
        t1 = time.perf_counter()
        pixels = block.render(size, size, float(size))
        t2 = time.perf_counter()
        with native.disabled():
            slow = CODEC.load(payload, cfg, "bench")
            slow_grids = slow.latent_grids()
            t3 = time.perf_counter()
            assert all(np.array_equal(a, b) for a, b in zip(grids, slow_grids, strict=True))
            slow_pixels = slow.render(size, size, float(size))
            t4 = time.perf_counter()
        assert int(np.abs(slow_pixels.astype(int) - pixels).max()) <= 1  # a rounding step at most
        entropy_ms.append(1000 * (t1 - t0))
        synthesis_ms.append(1000 * (t2 - t1))
        numpy_ms.append(1000 * (t3 - t2))
        torch_ms.append(1000 * (t4 - t3))
    assert pixels is not None
    macs = macs_per_pixel(cfg)
    return {
        "image": image.name,
        "size": size,
        "quality": quality,
        "fit_steps": fit.steps,
        "fit_seconds": round(fit_s, 1),
        "payload_bytes": len(payload),
        "bpp": 8.0 * len(payload) / (size * size),
        "psnr": psnr(pixels, region),
        "macs_per_pixel": macs,
        "entropy_ms": statistics.median(entropy_ms),
        "entropy_numpy_ms": statistics.median(numpy_ms),
        "compiled": compiled,
        "synthesis_ms": statistics.median(synthesis_ms),
        "synthesis_torch_ms": statistics.median(torch_ms),
        "compiled_synthesis": compiled_synthesis,
        "repeat": repeat,
    }


def report(r: dict[str, Any]) -> str:
    """The Markdown report of one measurement."""
    m = r["macs_per_pixel"]
    rows = [
        [
            "synthesis (MLP flow, 3x3 flow, head, residual convs), "
            + ("compiled" if r.get("compiled_synthesis") else "torch: no C compiler"),
            f"{m['synthesis']:.0f}",
            f"{r['synthesis_ms']:.0f}",
        ],
        [
            "synthesis on torch (the same block; not in the total)",
            "-",
            f"{r['synthesis_torch_ms']:.0f}" if "synthesis_torch_ms" in r else "-",
        ],
        ["context model (per latent x latents per pixel)", f"{m['context']:.0f}", "(in entropy decoding)"],
        ["upsampling", f"{m['upsampling']:.0f}", "(in synthesis)"],
        [
            "entropy decoding (weights, context model, range decoder), "
            + ("compiled" if r["compiled"] else "numpy: no C compiler"),
            "-",
            f"{r['entropy_ms']:.0f}",
        ],
        [
            "entropy decoding on the numpy path (the same latents; not in the total)",
            "-",
            f"{r['entropy_numpy_ms']:.0f}",
        ],
        ["total", f"{m['total']:.0f}", f"{r['entropy_ms'] + r['synthesis_ms']:.0f}"],
    ]
    lines = [
        header(f"Decode cost of one {r['size']}² ccinr block"),
        "",
        f"Block: centred {r['size']}² region of {r['image']}, quality {r['quality']}, fitted "
        f"{r['fit_steps']} steps ({r['fit_seconds']} s): {r['payload_bytes']} bytes, {r['bpp']:.3f} bpp, "
        f"{r['psnr']:.2f} dB (a fit for timing, not a rate-distortion point). Medians of {r['repeat']} "
        f"decodes; load average at the end: {load_average()}.",
        "",
        *md_table(["part", "multiply-adds / pixel", "ms per block"], "lrr", rows),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=IMAGE)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--quality", default="q6")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not args.image.is_file():
        print(f"benchmarks.latent_decode: error: {args.image}: no such file", file=sys.stderr)
        sys.exit(2)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    r = measure(args.image, args.size, args.steps, args.quality, args.repeat)
    publish(RESULTS / f"latent_decode_{args.size}.md", report(r), r, args.json)


if __name__ == "__main__":
    main()
