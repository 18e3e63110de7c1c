"""Encode cost of one compressive CINR (ccinr) block on the CPU, phase by phase: training steps,
the networks' quantization, the search over rounded latents, storing.

    python -m benchmarks.latent_encode [--size 512] [--steps 300] [--quality q4] [--sign both,predicted]

One ``--size`` x ``--size`` region of a real slide (default: the bundled sample at (1024, 1024),
where the default encode spends its time) is fitted once with one torch thread (``fit_latents``,
the default CPU steps), its networks quantized (``quantize_networks``), then the search
(``refine_latents``) runs on a copy of the model for each ``--sign`` (its directions: ``both``,
the eleventh session's, and ``predicted``, the default), and the result is stored
(``LatentCodec.serialize``). Reports seconds per phase, milliseconds per training step, each
search's loss reduction and the stored block's PSNR and bytes.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, header, load_average, md_table, publish

SAMPLE = Path(__file__).resolve().parents[1] / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"


def measure(
    image: Path, x: int, y: int, size: int, steps: int, quality: str, signs: list[str]
) -> dict[str, Any]:
    """Fit, quantize, search and store one block (see the module docstring)."""
    import torch

    from cinr_codec.coding.latent import CODEC, laplace_weight_bits
    from cinr_codec.core.metrics import psnr
    from cinr_codec.encode.source import SlideSource
    from cinr_codec.encode.train import latent as L
    from cinr_codec.encode.train.rdo import refine_latents

    torch.set_num_threads(1)
    with SlideSource(image) as src:
        region = np.ascontiguousarray(src.read(x, y, size, size))
    cfg = CODEC.config_for("ccinr", quality, size, size)
    lam = L.lambda_of(quality)
    t0 = time.perf_counter()
    fit = L.fit_latents(region, cfg, lam, steps=steps)
    t1 = time.perf_counter()
    L.quantize_networks(fit, region, laplace_weight_bits)
    t2 = time.perf_counter()
    searches = []
    chosen = None
    for sign in signs:
        model = copy.deepcopy(fit.model)
        s0 = time.perf_counter()
        out = refine_latents(
            model,
            region,
            lam,
            sweeps=int(L.RECIPE["rdo_sweeps"]),
            levels=int(L.RECIPE["rdo_levels"]),
            later_levels=int(L.RECIPE["rdo_later_levels"]),
            sign=sign,
        )
        searches.append({"sign": sign, "seconds": time.perf_counter() - s0, **out})
        if sign == L.RECIPE["rdo_sign"] or chosen is None:
            chosen = model
    assert chosen is not None
    fit.model = chosen
    s0 = time.perf_counter()
    payload = CODEC.serialize(fit, "entropy")
    store_s = time.perf_counter() - s0
    pixels = CODEC.load(payload, cfg, "bench").render(size, size, float(size))
    return {
        "image": image.name,
        "x": x,
        "y": y,
        "size": size,
        "quality": quality,
        "steps": fit.steps,
        "fit_seconds": t1 - t0,
        "ms_per_step": 1000 * (t1 - t0) / max(1, fit.steps),
        "quantize_seconds": t2 - t1,
        "searches": searches,
        "store_seconds": store_s,
        "payload_bytes": len(payload),
        "bpp": 8.0 * len(payload) / (size * size),
        "psnr": psnr(pixels, region),
    }


def report(r: dict[str, Any]) -> str:
    """The Markdown report of one measurement."""
    rows: list[list[object]] = [
        ["training", f"{r['steps']} steps, {r['ms_per_step']:.0f} ms each", f"{r['fit_seconds']:.1f}"],
        ["networks' quantization", "-", f"{r['quantize_seconds']:.1f}"],
    ]
    for s in r["searches"]:
        gain = s["loss_before"] - s["loss_after"]
        rows.append(
            [
                f"search, directions: {s['sign']}",
                f"loss {s['loss_before']:.4g} -> {s['loss_after']:.4g} (-{gain:.3g}), {s['moved']:.0f} latents moved",
                f"{s['seconds']:.1f}",
            ]
        )
    rows.append(["storing (entropy coding)", "-", f"{r['store_seconds']:.1f}"])
    lines = [
        header(f"Encode cost of one {r['size']}² ccinr block on the CPU"),
        "",
        f"Block: {r['size']}² of {r['image']} at ({r['x']}, {r['y']}), quality {r['quality']}, one torch "
        f"thread. Stored with the default search: {r['payload_bytes']} bytes, {r['bpp']:.3f} bpp, "
        f"{r['psnr']:.2f} dB. Load average at the end: {load_average()}.",
        "",
        *md_table(["phase", "detail", "seconds"], "llr", rows),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from cinr_codec.encode.train.latent import CPU_STEPS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=Path, default=SAMPLE)
    ap.add_argument("--x", type=int, default=1024)
    ap.add_argument("--y", type=int, default=1024)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=CPU_STEPS)
    ap.add_argument("--quality", default="q4")
    ap.add_argument("--sign", default="both,predicted", help="comma-separated search directions to time")
    ap.add_argument("--out", default="latent_encode", help="result name (benchmarks/results/NAME.md/.json)")
    ap.add_argument("--no-write", action="store_true", help="print only; write no result files")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    signs = [s for s in args.sign.split(",") if s]
    problem = None
    if not args.image.exists():
        problem = f"no such file: {args.image}"
    elif not signs or any(s not in ("both", "predicted") for s in signs):
        problem = f"--sign wants both and/or predicted, not {args.sign!r}"
    elif args.size < 16 or args.steps < 1:
        problem = "--size must be at least 16 and --steps at least 1"
    if problem:
        print(f"benchmarks.latent_encode: error: {problem}", file=sys.stderr)
        sys.exit(2)
    r = measure(args.image, args.x, args.y, args.size, args.steps, args.quality, signs)
    publish(None if args.no_write else RESULTS / f"{args.out}.md", report(r), r, args.json, data=r)


if __name__ == "__main__":
    main()
