"""A/B of compressive-CINR recipes at equal steps: BD-rate of each variant against JPEG, JPEG XL, AVIF.

    python -m benchmarks.ccinr_variants [--crop tcga|prostate|prostate-grid|sample ...] [--steps 800]
        [--qualities q3,q5,q7] [--variant base] [--variant 'upsampling="bilinear"'] [--seeds 0,1,2]
        [--jobs 2] [--json]

A variant is ``base`` (the package's recipe) or ``KEY=JSON[+KEY=JSON...]`` overriding entries of
``encode.train.latent.PRESET_ARCH`` (architecture) or ``RECIPE`` (training), e.g.
``context=24``, ``mlp=[28,24]``, ``latent_lr_mult=10``, ``latent_shift=0`` (one latent step for
every level instead of the quality levels' own). Each (variant, crop) trains every quality
level for ``--steps`` steps with one torch thread (``--jobs`` such processes at a time), quantizes
and serializes the block as ``cinr encode`` does, decodes the payload, and counts the payload's
bytes (network included, container excluded: the same for every variant). Crops are 256 px: the
TCGA slide's and the bundled sample's most saturated window (``benchmarks.rd``'s choice), the
prostate image's at (46, 1272) (``rd --quick``'s region, 2 px off the source JPEG's grid) and at
(48, 1272) (on it). Anchors: the sweeps of ``benchmarks.jpeg_grid``. BD-rate over 34–40 dB.
Compare variants of one run only (equal steps, same crops); wall-clock is not compared.

Seeds. One fit's result depends on its random initialisation by about a point of BD-rate (a third
of the seeds end 2–6 % worse in loss; docs/architecture.md, "Measured and left, ninth session"),
so ``--seeds 0,1,2`` trains each (variant, crop) once per seed (the same seeds for every variant:
paired) and reports each seed's BD-rate and their median; compare the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, SHARED, header, md_table, publish

#: name -> (path, x, y): x None = the most saturated 256 px window.
CROPS: dict[str, tuple[Path, int | None, int | None]] = {
    "tcga": (SHARED / "TCGA-CR-7395-01A-01-TS1.svs", None, None),
    "prostate": (SHARED / "he-prostate-2500.jpeg", 46, 1272),
    "prostate-grid": (SHARED / "he-prostate-2500.jpeg", 48, 1272),
    "sample": (
        Path(__file__).resolve().parents[1] / "cinr_codec" / "data" / "CMU-1-Small-Region.svs",
        None,
        None,
    ),
}
SIDE = 256
WINDOW = (34.0, 40.0)


def crop(name: str) -> Any:
    """The 256 px RGB crop called ``name``."""
    from benchmarks.rd_sources import read_region
    from cinr_codec.encode.source import SlideSource

    path, x, y = CROPS[name]
    if x is None or y is None:
        return read_region(path, SIDE, "saturated")[0]
    with SlideSource(path) as src:
        return src.read(x, y, SIDE, SIDE)


def apply(variant: str) -> None:
    """Override PRESET_ARCH / RECIPE entries as ``variant`` says (in this process)."""
    from cinr_codec.encode.train import latent as L

    for part in variant.split("+"):
        if part == "base":
            continue
        key, _, text = part.partition("=")
        value = json.loads(text)
        value = tuple(value) if isinstance(value, list) else value
        if key in L.PRESET_ARCH or key == "latent_shift":  # latent_shift: one step for every level
            L.PRESET_ARCH[key] = value
        elif key in L.RECIPE:
            L.RECIPE[key] = value
        else:
            raise ValueError(f"{key!r} is neither in PRESET_ARCH nor in RECIPE")


def run(
    variant: str, crop_name: str, steps: int, qualities: list[str], seed: int = 0
) -> list[dict[str, Any]]:
    """Train, store and decode every quality level of one (variant, crop); one row per level."""
    import torch

    from cinr_codec.decode.cache import tune_allocator
    from cinr_codec.encode.train import latent as L

    torch.set_num_threads(1)
    tune_allocator(1 << 30)
    # Worker processes run several jobs: each starts from the package's recipe and leaves it so.
    arch, recipe = dict(L.PRESET_ARCH), dict(L.RECIPE)
    try:
        apply(variant)
        return _levels(variant, crop_name, steps, qualities, seed)
    finally:
        L.PRESET_ARCH.clear()
        L.PRESET_ARCH.update(arch)
        L.RECIPE.clear()
        L.RECIPE.update(recipe)


def _levels(
    variant: str, crop_name: str, steps: int, qualities: list[str], seed: int
) -> list[dict[str, Any]]:
    """``run``'s work, with the variant applied."""
    import time

    from cinr_codec.coding.base import FitSettings
    from cinr_codec.coding.registry import get_codec
    from cinr_codec.core.metrics import psnr

    img = crop(crop_name)
    codec = get_codec("ccinr")
    rows = []
    for q in qualities:
        t0 = time.perf_counter()
        cfg = codec.config_for("ccinr", q, *img.shape[:2])
        fit = codec.fit(img, cfg, "ccinr", q, FitSettings(steps=steps, seed=seed, measure=False))
        payload = codec.serialize(fit, "entropy")
        out = codec.load(payload, cfg, "variant").render(img.shape[0], img.shape[1], float(SIDE))
        rows.append(
            {
                "variant": variant,
                "crop": crop_name,
                "quality": q,
                "steps": steps,
                "seed": seed,
                "bytes": len(payload),
                "bpp": len(payload) * 8 / (img.shape[0] * img.shape[1]),
                "psnr": psnr(out, img),
                "seconds": time.perf_counter() - t0,
            }
        )
    return rows


def anchors(crop_name: str) -> dict[str, tuple[list[float], list[float]]]:
    """(bpp, PSNR) sweeps of JPEG, JPEG XL and AVIF on the crop."""
    from benchmarks.jpeg_grid import SETTINGS
    from benchmarks.rd_codecs import make_codecs, measure_codec

    codecs, _ = make_codecs()
    img = crop(crop_name)
    out = {}
    for name, settings in SETTINGS.items():
        pts = [measure_codec(codecs[name], img, s) for s in settings]
        out[name] = ([p["bpp"] for p in pts], [p["psnr"] for p in pts])
    return out


def main(argv: list[str] | None = None) -> None:
    from benchmarks.bdrate import bd_rate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crop", action="append", choices=sorted(CROPS), help="default: tcga and prostate")
    ap.add_argument("--variant", action="append", help="default: base")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--qualities", default="q3,q5,q7")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (paired across variants)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default="ccinr_variants", help="result name (benchmarks/results/NAME.md/.json)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    crops = args.crop or ["tcga", "prostate"]
    variants = args.variant or ["base"]
    qualities = args.qualities.split(",")
    from cinr_codec.encode.train import latent as L

    arch, recipe = dict(L.PRESET_ARCH), dict(L.RECIPE)
    try:  # bad arguments fail here, in one line, before any training
        for v in variants:
            apply(v)
            # Each variant starts from the package's recipe (worker processes may be forked
            # from this one): undo what validating it changed.
            L.PRESET_ARCH.clear()
            L.PRESET_ARCH.update(arch)
            L.RECIPE.clear()
            L.RECIPE.update(recipe)
        for q in qualities:
            L.lambda_of(q)
        try:
            seeds = [int(x) for x in args.seeds.split(",")]
        except ValueError:
            raise ValueError(f"--seeds wants comma-separated integers, not {args.seeds!r}") from None
        for c in crops:
            if not CROPS[c][0].exists():
                raise ValueError(f"crop {c!r} needs {CROPS[c][0]}, which is missing")
    except ValueError as exc:
        print(f"benchmarks.ccinr_variants: error: {exc}", file=sys.stderr)
        sys.exit(2)
    jobs = [(v, c, seed) for c in crops for v in variants for seed in seeds]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run, v, c, args.steps, qualities, seed) for v, c, seed in jobs]
        results = [f.result() for f in futures]
    table = []
    data = []
    anchor = {c: anchors(c) for c in crops}
    per_seed: dict[tuple[str, str], list[dict[str, float | None]]] = {}
    for (v, c, seed), rows in zip(jobs, results, strict=True):
        bds = {
            n: bd_rate(r, p, [x["bpp"] for x in rows], [x["psnr"] for x in rows], WINDOW)
            for n, (r, p) in anchor[c].items()
        }
        per_seed.setdefault((c, v), []).append(bds)
        pts = " ".join(f"{x['quality']} {x['psnr']:.2f} dB @ {x['bpp']:.3f}" for x in rows)
        name = v if len(seeds) == 1 else f"{v} (seed {seed})"
        table.append((c, name, *(f"{b:+.1f}%" if b is not None else "n/a" for b in bds.values()), pts))
        data.append({"variant": v, "crop": c, "seed": seed, "bd_rate": bds, "rows": rows})
    medians = []
    if len(seeds) > 1:
        for (c, v), runs in per_seed.items():
            med = {}
            for n in runs[0]:
                vals = [b[n] for b in runs if b[n] is not None]
                med[n] = statistics.median(vals) if vals else None
            medians.append({"variant": v, "crop": c, "seeds": seeds, "median_bd_rate": med})
            cells = (f"{b:+.1f}%" if b is not None else "n/a" for b in med.values())
            table.append((c, f"**{v}: median of {len(seeds)} seeds**", *cells, ""))
    data.extend(medians)
    text = "\n".join(
        [
            header("ccinr recipe variants at equal steps"),
            f"{args.steps} steps per level, 256 px crops, payload bytes (network included, container "
            f"excluded), BD-rate over {WINDOW[0]:g}–{WINDOW[1]:g} dB against each codec (negative: fewer bits).",
            "",
            *md_table(["crop", "variant", "JPEG", "JPEG XL", "AVIF", "points"], "llrrrl", table),
            "",
        ]
    )
    publish(RESULTS / f"{args.out}.md", text, data, args.json)


if __name__ == "__main__":
    sys.exit(main())
