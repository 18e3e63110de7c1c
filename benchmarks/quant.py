"""Storage quantization of fitted models: bytes, bits per pixel and quality lost, per setting.

python -m benchmarks.quant [--quick] [--json] [--image PATH ...] [--budget S | --steps N]

For each image (default: 512x512 centred crops of the three real slides in ../shared/data)
the ``cinr`` model is fitted ONCE (``default`` preset, 60 s; ``--quick``: ``fast`` preset,
10 s), then written as a single-block ``.cinr`` file under every storage setting of
``cinr_codec.QUANT_SETTINGS`` and decoded back with ``decode_image``. Reported per
setting: the compressed block payload in bytes, bits per pixel over all pixels and over
tissue pixels, PSNR and SSIM of the decoded file, and the PSNR lost against float32.

Tissue: pixels whose HSV saturation S = (max - min) / max (0..255) exceeds
``min(Otsu threshold of S, 25)``. Otsu separates unsaturated glass from stained tissue; the
cap at 25 (~0.1) keeps an all-tissue crop all tissue, where Otsu alone would split tissue
into pale and dark halves.

The chosen default is the setting with the fewest payload bytes (summed over the images)
among those that lose at most 0.1 dB on every image. Writes ``benchmarks/results/quant.md``
(``quant_quick.md`` with ``--quick``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cinr_codec import DEFAULT_QUANT, QUANT_SETTINGS, decode_image, fit_image, write_fitted
from cinr_codec.core.metrics import psnr, ssim
from cinr_codec.core.render import resolve_device
from cinr_codec.encode.source import read_crop, sample_slide_path
from cinr_codec.encode.tissue import hsv_saturation_value, otsu_threshold
from cinr_codec.errors import CinrError
from cinr_codec.format.container import CinrReader

from .common import RESULTS, SHARED_IMAGES, header, md_table, num, publish

DEFAULT_IMAGES = SHARED_IMAGES
#: PSNR a setting may lose against float32 on every image to be eligible as the default.
MAX_LOSS_DB = 0.1
#: Saturation (0..255) above which a pixel is tissue whatever Otsu says.
SATURATION_CAP = 25


def saturation_histogram(saturation: np.ndarray) -> np.ndarray:
    """256-bin histogram of saturations 0..255 (a value counts in the bin of its integer part)."""
    return np.bincount(np.clip(saturation, 0, 255).astype(np.int64).ravel(), minlength=256)


def tissue_mask(image: np.ndarray) -> tuple[np.ndarray, float]:
    """(boolean mask of tissue pixels, saturation threshold used); see the module docstring."""
    s, _ = hsv_saturation_value(image)
    threshold = min(otsu_threshold(saturation_histogram(s)), float(SATURATION_CAP))
    return s > threshold, threshold


def measure(
    path: str,
    crop: int,
    preset: str,
    budget: float | None,
    steps: int | None,
    device: str,
    seed: int,
    settings: list[str],
    quiet: bool,
) -> dict[str, Any]:
    """Fit once, then write and decode the model under every setting; one result per setting."""
    pixels = read_crop(path, crop)
    h, w = pixels.shape[:2]
    mask, threshold = tissue_mask(pixels)
    n_tissue = int(mask.sum())
    if not quiet:
        what = f"{budget:g} s" if steps is None else f"{steps} steps"
        print(
            f"{Path(path).name}: fitting cinr/{preset} for {what} on {w}x{h} ...", file=sys.stderr, flush=True
        )
    fit = fit_image(
        pixels, model="cinr", preset=preset, time_budget=budget, steps=steps, device=device, seed=seed
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings:
            dst = Path(tmp) / f"{setting}.cinr"
            summary = write_fitted(fit, pixels, dst, quant=setting)
            decoded = decode_image(dst)
            with CinrReader(dst) as r:
                info = r.block_info(0)
            p = psnr(decoded, pixels)
            if p != summary["psnr"]:
                raise AssertionError(
                    f"{setting}: decoded PSNR {p} differs from the encoder's {summary['psnr']}"
                )
            rows.append(
                {
                    "setting": setting,
                    "payload_bytes": info.stored_length,
                    "raw_bytes": info.raw_length,
                    "file_bytes": summary["bytes"],
                    "bpp": 8.0 * info.stored_length / (h * w),
                    "bpp_tissue": 8.0 * info.stored_length / n_tissue if n_tissue else None,
                    "psnr": p,
                    "ssim": ssim(decoded, pixels),
                }
            )
            if not quiet:
                print(f"  {setting}: {info.stored_length} B, {p:.3f} dB", file=sys.stderr, flush=True)
    base = next((r["psnr"] for r in rows if r["setting"] == "float32"), fit.psnr)
    for r in rows:
        r["psnr_loss"] = base - r["psnr"]
    return {
        "image": str(path),
        "width": w,
        "height": h,
        "tissue_fraction": n_tissue / (h * w),
        "saturation_threshold": threshold,
        "fit_psnr": fit.psnr,
        "fit_ssim": fit.ssim,
        "steps": fit.steps,
        "seconds": fit.seconds,
        "n_params": fit.n_params,
        "device": fit.device,
        "rows": rows,
    }


def choose(images: list[dict[str, Any]], settings: list[str]) -> str | None:
    """The setting with the fewest total payload bytes that loses <= MAX_LOSS_DB on every image."""
    ok = []
    for s in settings:
        rows = [next(r for r in im["rows"] if r["setting"] == s) for im in images]
        if all(r["psnr_loss"] <= MAX_LOSS_DB for r in rows):
            ok.append((sum(r["payload_bytes"] for r in rows), s))
    return min(ok)[1] if ok else None


def report(images: list[dict[str, Any]], chosen: str | None, preset: str, what: str) -> str:
    """Markdown: machine header, one table per image, the choice."""
    lines = [
        header("Storage quantization: bytes and quality per setting"),
        f"Model `cinr`, preset `{preset}`, fitted once per image ({what}), then written as a single-block "
        "`.cinr` file under each storage setting (`cinr_codec.QUANT_SETTINGS`) and decoded with "
        "`decode_image`. *payload* = the zstd-compressed block (the file adds ~1.1 KB of header, footer, "
        "index and trailer). bpp = payload bits / pixels of the crop; *bpp tissue* = payload bits / tissue "
        f"pixels (HSV saturation > min(Otsu, {SATURATION_CAP})). Δ = PSNR lost against float32.\n",
    ]
    for im in images:
        lines.append(
            f"### {Path(im['image']).name} ({im['width']}x{im['height']} centred crop)\n\n"
            f"Fitted: {im['fit_psnr']:.3f} dB, SSIM {im['fit_ssim']:.4f}, {im['steps']} steps in "
            f"{im['seconds']:.1f} s on {im['device']}, {im['n_params']:,} parameters; tissue "
            f"{100 * im['tissue_fraction']:.1f}% of pixels (saturation > {im['saturation_threshold']:.0f}).\n"
        )
        lines += md_table(
            ("setting", "payload (B)", "raw (B)", "bpp", "bpp tissue", "PSNR (dB)", "Δ (dB)", "SSIM"),
            "lrrrrrrr",
            (
                (
                    r["setting"],
                    f"{r['payload_bytes']:,}",
                    f"{r['raw_bytes']:,}",
                    f"{r['bpp']:.3f}",
                    num(r["bpp_tissue"], ".3f", "-"),
                    f"{r['psnr']:.3f}",
                    f"{r['psnr_loss']:+.3f}",
                    f"{r['ssim']:.5f}",
                )
                for r in im["rows"]
            ),
        )
        lines.append("")
    if chosen is None:
        lines.append(f"No setting loses at most {MAX_LOSS_DB} dB on every image.")
    else:
        lines.append(
            f"Smallest setting within {MAX_LOSS_DB} dB of float32 on every image: **{chosen}** "
            f"(`cinr_codec.DEFAULT_QUANT` is `{DEFAULT_QUANT}`)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--image", action="append", help="image or slide (repeatable; default: the three shared slides)"
    )
    ap.add_argument("--crop", type=int, default=512, help="side of the centred crop")
    ap.add_argument("--quick", action="store_true", help="preset fast, 10 s per image")
    ap.add_argument("--preset", default=None, help="cinr preset (default: default; --quick: fast)")
    ap.add_argument(
        "--budget", type=float, default=None, help="training seconds per image (default 60; --quick 10)"
    )
    ap.add_argument("--steps", type=int, default=None, help="train this many steps instead of a time budget")
    ap.add_argument("--settings", default=",".join(QUANT_SETTINGS), help="comma-separated storage settings")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args(argv)
    preset = args.preset or ("fast" if args.quick else "default")
    budget = None if args.steps is not None else (args.budget or (10.0 if args.quick else 60.0))
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    images = args.image or [str(p) for p in DEFAULT_IMAGES if p.exists()] or [str(sample_slide_path())]
    try:
        unknown = [s for s in settings if s not in QUANT_SETTINGS]
        if unknown or not settings:
            raise ValueError(f"unknown storage settings {unknown}; choose from {', '.join(QUANT_SETTINGS)}")
        resolve_device(args.device)
        for p in images:
            if not Path(p).is_file():
                raise ValueError(f"{p}: no such file")
        if args.steps is not None and args.steps < 1:
            raise ValueError("--steps must be >= 1")
        quiet = args.quiet or args.json
        results = [
            measure(p, args.crop, preset, budget, args.steps, args.device, args.seed, settings, quiet)
            for p in images
        ]
    except (ValueError, CinrError) as exc:
        print(f"benchmarks.quant: error: {exc}", file=sys.stderr)
        sys.exit(2)
    chosen = choose(results, settings)
    what = f"{args.steps} steps" if args.steps is not None else f"{budget:g} s of training"
    text = report(results, chosen, preset, what)
    payload = {"preset": preset, "training": what, "chosen": chosen, "images": results}
    out = None if args.no_write else RESULTS / ("quant_quick.md" if args.quick else "quant.md")
    publish(out, text, payload, args.json, show=not args.quiet)
    if out is not None:
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
