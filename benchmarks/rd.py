"""Rate-distortion: cinr and ccinr against JPEG, JPEG 2000, JPEG XL, AVIF and WebP on real H&E regions.

python -m benchmarks.rd [--quick] [--json] [--image PATH ...] [--size N] [--steps N | PRESET=N,...]
                        [--no-cinr] [--qualities qN,...] [--ccinr-steps N] [--no-ccinr] [--jobs N]
                        [--region saturated|centre] [--out NAME] [--results DIR] [--quiet]

Regions. For each image (default: the three real slides in ../shared/data; ``--quick``: the
first only, 256 px) one ``--size`` x ``--size`` region (default 1000) is read at level 0,
composited on white. ``--region saturated`` (default) takes the window with the highest mean
HSV saturation on a <= 1024 px thumbnail (tissue-rich, stained), ``centre`` the centred crop.
The region's coordinates are in the output.

cinr. For each preset (``fast``, ``default``) the ``cinr`` model is fitted ONCE to the region
(``fit_cinr``) and stored at every storage precision of ``cinr_codec.QUANT_SETTINGS``
(``store_cinr``, i.e. ``write_fitted``); bpp = whole ``.cinr`` file bytes * 8 / pixels, and
PSNR/SSIM are those of the decoded file (measured after quantization). ``--no-cinr`` skips them.

ccinr (compressive CINR: integer latent grids trained with a rate term, entropy-coded, small
synthesis network). One encode per quality level (``--qualities``, default q1,q3,q5,q6,q8, an
even spread over the eight levels, meant to cover roughly 32-44 dB; ``--quick``: q2,q3,q4,q5), each
trained for ``--ccinr-steps`` steps (default the recipe's ``RECIPE["steps"]``; ``--quick``: 2400),
the same encode as ``encode_image(model="ccinr", preset=q)``. On a CPU the encodes run in
``--jobs`` worker processes of one torch thread each (default one per core, at most one per
level), started before the hash-grid fits, which run beside them. Rows ``codec: "ccinr"``,
``setting: "qN"``; bpp = whole ``.cinr`` file bytes (header, quantized network weights and the
entropy-coded latents) * 8 / pixels, so the network's bits are counted at the region size used
(they weigh more per pixel on small regions). ``--no-ccinr`` skips them.

Time of ``--quick`` (one 256 px region) on 2 CPU cores: ccinr 4 levels x 2400 steps in two
processes (two levels at a time, the first two beside the hash-grid fits) at about 58 ms a step
(the compiled training kernels, 2026-12-04), plus ~5 s each to quantize the networks and
entropy-code; codec sweeps, pyramids, plot: ~0.5 min. In all 4 min 24 s on the prostate image and
4 min 30 s on the TCGA slide (quiet AMD EPYC, 2026-12-04); before the training kernels 8 min on
that machine and 14.6 min on a 2-core Intel Xeon whose torch training steps took twice as long.
Measured: see the time in ``rd_quick.md``.

Codecs (imagecodecs): JPEG (libjpeg-turbo, 4:2:0, quality), JPEG 2000 (OpenJPEG, ``level`` =
target PSNR in dB), JPEG XL (libjxl, effort 7, butteraugli distance), AVIF (libavif, speed 6,
quality), WebP (libwebp lossy, method 4, quality). Each codec runs a base sweep, then extra
lower/higher-rate settings while its bpp or PSNR range does not cover the range of the cinr
and ccinr points (``rd_run.cinr_target``). Missing encoders are skipped with a note. Lossless
results (infinite PSNR) are listed, not plotted.

BD-rate (``benchmarks.bdrate``): Bjøntegaard delta rate with PCHIP interpolation of log-rate
against PSNR over the overlapping PSNR interval, in percent, of cinr against each codec
(negative: cinr needs fewer bits). The cinr curve is the rate-distortion front of ALL cinr
points of the image (both presets, every precision; dominated points dropped); the
``default``-preset-only figure is reported too. ``None`` when curves do not overlap or a
curve has fewer than two points. Averaged over images (mean of the defined per-image values).
ccinr's BD-rate against each codec (``bd_rate_ccinr``, ``bd_rate_ccinr_per_image``) is the same
with the PSNR integral restricted to the part of the curves' overlap inside 34-40 dB
(``rd_run.BD_WINDOW``); the hash-grid figures above use the whole overlap, as before.

Bits per pixel at 37.5 dB (``bpp_at_37_5``, per image): each curve (cinr, ccinr, every codec)
read on its rate-distortion front with the same PCHIP of log-rate on PSNR; None outside the
curve's PSNR range.

Also reported: the bytes of the source slide's own level-0 tiles that cover the region (read
from the TIFF tile tables; an untiled file is estimated pro rata by area) and of a
JPEG-tiled pyramid of the region written by libvips (256 px tiles, Q 80 and 90), split into
level 0 and the down-sampled levels, which cinr does not need to store.

Writes ``rd_<name>.md``, ``rd_<name>.png`` and ``rd_<name>.json`` to ``--results``
(default ``benchmarks/results``); ``<name>`` is ``quick``, ``full`` or ``--out``.
``--json`` prints one JSON object on stdout; progress and logs go to stderr.
MS-SSIM is not reported.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cinr_codec import QUANT_SETTINGS
from cinr_codec.core.render import resolve_device
from cinr_codec.encode.train.latent import QUALITY_LAMBDAS, RECIPE
from cinr_codec.encode.train.presets import get_preset
from cinr_codec.errors import CinrError

from .common import (
    RESULTS,
    SHARED,
    SHARED_IMAGES,
    NullSink,
    codec_library_versions,
    cores,
    csv_list,
    machine,
    publish,
)
from .rd_codecs import CODECS, make_codecs
from .rd_report import plot, report
from .rd_run import BD_WINDOW, BPP_AT_PSNR, Config, mean_bd, planned_work, run_image

DEFAULT_IMAGES = SHARED_IMAGES
PRESETS = ("fast", "default")
QUICK_QUANTS = ("int8+float16", "int8", "float16")
QUICK_STEPS = 300
#: ccinr quality levels: an even spread over q1 (smallest) ... q8 (best), and the --quick one.
QUALITIES = ("q1", "q3", "q5", "q6", "q8")
#: --quick's levels: about 33, 35, 37.3 and 40 dB on H&E at QUICK_CCINR_STEPS, an even spread over
#: the 34-40 dB window (four encodes in two processes take as long as three). The earlier
#: q3, q5, q7 (35, 39.3, 40.8 dB before the latent steps of format 1.5) skipped the knee of the
#: curve: on the prostate crop, with all eight levels measured, their BD-rate against JPEG was
#: 3 points better than the whole curve's.
QUICK_QUALITIES = ("q2", "q3", "q4", "q5")
#: ccinr training steps of --quick (the default is the recipe's, RECIPE["steps"]): twice the
#: steps gave -7 % BD-rate against JPEG XL (800 -> 1600 on a 256 px H&E crop); 2400 with leaky
#: ReLU keep --quick at about half its 15-minute budget on two quiet cores (two processes).
QUICK_CCINR_STEPS = 2400


def parse_qualities(text: str | None, quick: bool) -> list[str]:
    """``q2,q4,...`` (ccinr quality levels, in the order given, repeats dropped); None: the default spread."""
    if text is None:
        return list(QUICK_QUALITIES if quick else QUALITIES)
    out = list(dict.fromkeys(csv_list(text)))
    bad = [q for q in out if q not in QUALITY_LAMBDAS]
    if bad or not out:
        raise ValueError(
            f"--qualities: unknown quality levels {bad or text!r}; choose from {', '.join(QUALITY_LAMBDAS)}"
        )
    return out


def ccinr_steps(value: int | None, quick: bool) -> int:
    """``--ccinr-steps``: the value, or QUICK_CCINR_STEPS with --quick, or the recipe's steps."""
    if value is None:
        return QUICK_CCINR_STEPS if quick else int(RECIPE["steps"])
    if value < 1:
        raise ValueError("--ccinr-steps must be >= 1")
    return value


def parse_steps(text: str | None, presets: Sequence[str], quick: bool) -> dict[str, int | None]:
    """``N`` (every preset) or ``PRESET=N,...`` (the others keep their default)."""
    out: dict[str, int | None] = {p: (QUICK_STEPS if quick else None) for p in presets}
    if text is None:
        return out
    try:
        if "=" not in text:
            out = {p: int(text) for p in presets}
        else:
            for item in text.split(","):
                k, v = item.split("=", 1)
                if k.strip() not in out:
                    raise ValueError(f"--steps: preset {k.strip()!r} is not among --presets")
                out[k.strip()] = int(v)
    except ValueError as exc:
        if "--steps" in str(exc):
            raise
        raise ValueError(f"--steps: expected N or PRESET=N,...; got {text!r}") from None
    if any(v is not None and v < 1 for v in out.values()):
        raise ValueError("--steps must be >= 1")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--image", action="append", help="slide or image (repeatable; default: the shared slides)"
    )
    ap.add_argument(
        "--size", type=int, default=None, help="region side in pixels (default 1000; --quick 256)"
    )
    ap.add_argument("--region", choices=("saturated", "centre"), default="saturated")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"256 px, one image, fewer settings, 300 cinr steps, {QUICK_CCINR_STEPS} ccinr steps",
    )
    ap.add_argument("--presets", default=",".join(PRESETS), help="cinr presets (default fast,default)")
    ap.add_argument(
        "--quants", default=None, help="storage precisions (default: all; --quick: int8+float16,int8,float16)"
    )
    ap.add_argument("--steps", default=None, help="cinr steps: N for every preset, or PRESET=N,...")
    ap.add_argument("--no-cinr", action="store_true", help="skip the hash-grid cinr fits")
    ap.add_argument(
        "--qualities",
        default=None,
        help=f"ccinr quality levels (default {','.join(QUALITIES)}; --quick {','.join(QUICK_QUALITIES)})",
    )
    ap.add_argument(
        "--ccinr-steps",
        type=int,
        default=None,
        help=f"ccinr training steps (default: the recipe's; --quick {QUICK_CCINR_STEPS})",
    )
    ap.add_argument("--no-ccinr", action="store_true", help="skip the compressive CINR (ccinr) encodes")
    ap.add_argument("--codecs", default=",".join(CODECS), help="conventional codecs to compare")
    ap.add_argument("--no-pyramid", action="store_true", help="skip the JPEG pyramid sizes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is much faster on a busy 2-core machine)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="ccinr encodes run in this many processes of one torch thread each "
        "(default: on a CPU, one per core up to the number of quality levels; on a GPU 1)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    ap.add_argument(
        "--out", default=None, help="result name: rd_<NAME>.md/.png/.json (default quick or full)"
    )
    ap.add_argument(
        "--results", default=None, help="folder for the result files (default benchmarks/results)"
    )
    args = ap.parse_args(argv)

    try:
        images = [Path(p) for p in (args.image or [])]
        if not images:
            images = [p for p in DEFAULT_IMAGES if p.exists()]
            if not images:
                raise ValueError(f"no --image given and no default images in {SHARED}")
            if args.quick:
                images = images[:1]
        for p in images:
            if not p.is_file():
                raise ValueError(f"{p}: no such file")
        size = args.size if args.size is not None else (256 if args.quick else 1000)
        if size < 16:
            raise ValueError("--size must be >= 16")
        presets = [] if args.no_cinr else csv_list(args.presets)
        for p in presets:
            get_preset("cinr", p)
        if not presets and not args.no_cinr:
            raise ValueError("--presets: give at least one cinr preset (or --no-cinr)")
        qualities = [] if args.no_ccinr else parse_qualities(args.qualities, args.quick)
        n_ccinr_steps = ccinr_steps(args.ccinr_steps, args.quick)
        if not presets and not qualities:
            raise ValueError("--no-cinr and --no-ccinr: nothing to measure")
        quants = (
            csv_list(args.quants) if args.quants else list(QUICK_QUANTS if args.quick else QUANT_SETTINGS)
        )
        unknown = [q for q in quants if q not in QUANT_SETTINGS]
        if unknown or not quants:
            raise ValueError(f"unknown storage settings {unknown}; choose from {', '.join(QUANT_SETTINGS)}")
        wanted = csv_list(args.codecs)
        bad = [c for c in wanted if c not in CODECS]
        if bad:
            raise ValueError(f"unknown codecs {bad}; choose from {', '.join(CODECS)}")
        steps = parse_steps(args.steps, presets, args.quick)
        try:
            import tifffile  # noqa: F401 - rd_sources.source_tiles reads the TIFF tile tables with it
        except ImportError:
            raise ValueError("tifffile is not installed (pip install tifffile, or the bench extra)") from None
        device = resolve_device(args.device)
        if args.jobs is not None and args.jobs < 1:
            raise ValueError("--jobs must be >= 1")
        jobs = args.jobs
        if jobs is None:
            jobs = 1 if device.type != "cpu" else max(1, min(cores(), len(qualities)))
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError("--threads must be >= 1")
            import torch

            torch.set_num_threads(args.threads)
        available, skipped = make_codecs()
        codecs = {c: available[c] for c in CODECS if c in wanted and c in available}
        skipped = {c: why for c, why in skipped.items() if c in wanted}
        cfg = Config(
            size=size,
            region=args.region,
            presets=presets,
            quants=quants,
            steps=steps,
            codecs=codecs,
            quick=args.quick,
            device=args.device,
            seed=args.seed,
            pyramid=not args.no_pyramid,
            qualities=qualities,
            jobs=jobs,
            ccinr_steps=n_ccinr_steps,
        )
        name = args.out or ("quick" if args.quick else "full")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"--out: {name!r} is not a plain file-name part")
        out_dir = Path(args.results) if args.results else RESULTS
        out_dir.mkdir(parents=True, exist_ok=True)

        labels: list[str] = []
        for p in images:
            label = p.name
            k = 2
            while label in labels:
                label, k = f"{p.name}#{k}", k + 1
            labels.append(label)

        import click

        quiet = args.quiet
        interactive = sys.stderr.isatty()

        def log(msg: str) -> None:
            if not quiet and not interactive:
                print(msg, file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        results = []
        with click.progressbar(
            length=planned_work(cfg) * len(images),
            label="rd",
            file=NullSink() if quiet or not interactive else sys.stderr,  # type: ignore[arg-type]
            show_pos=True,
            show_eta=True,
        ) as bar:
            for p, label in zip(images, labels):
                results.append(run_image(p, label, cfg, bar, log))
    except (ValueError, CinrError, OSError) as exc:
        print(f"benchmarks.rd: error: {exc}", file=sys.stderr)
        sys.exit(2)

    names = list(codecs)
    extra = codec_library_versions()
    result: dict[str, Any] = {
        "rows": [r for im in results for r in im["rows"]],
        "bd_rate": mean_bd(results, "bd_rate", names),
        "bd_rate_per_image": {im["image"]: im["bd_rate"] for im in results},
        "bd_rate_cinr_curve": "rate-distortion front of all cinr points of an image (every preset and precision)",
        "bd_rate_default_preset": mean_bd(results, "bd_rate_default_preset", names)
        if "default" in presets
        else {},
        "bd_rate_ccinr": mean_bd(results, "bd_rate_ccinr", names),
        "bd_rate_ccinr_per_image": {im["image"]: im["bd_rate_ccinr"] for im in results},
        "bd_rate_ccinr_window_db": list(BD_WINDOW),
        "bpp_at_37_5": {im["image"]: im["bpp_at_37_5"] for im in results},
        "codecs": names,
        "codec_labels": {c: codecs[c].label for c in names},
        "skipped": skipped,
        "settings": {
            "size": size,
            "region": args.region,
            "region_how": "most saturated window of a thumbnail"
            if args.region == "saturated"
            else "centred crop",
            "presets": presets,
            "quants": quants,
            "steps": steps,
            "cinr": bool(presets),
            "ccinr": bool(qualities),
            "qualities": qualities,
            "ccinr_lambdas": {q: QUALITY_LAMBDAS[q] for q in qualities},
            "ccinr_steps": n_ccinr_steps if qualities else None,
            "ccinr_jobs": jobs if qualities else None,
            "bd_window_db": list(BD_WINDOW),
            "bpp_at_psnr_db": BPP_AT_PSNR,
            "quick": args.quick,
            "device": args.device,
            "seed": args.seed,
            "torch_threads": args.threads,
        },
        "machine": machine(extra),
        "images": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    md = out_dir / f"rd_{name}.md"
    png = out_dir / f"rd_{name}.png"
    has_png = plot(result, png, extra)
    text = report(result, extra, png.name if has_png else None)
    payload = {k: v for k, v in result.items() if k != "images"}
    payload["images"] = [{k: v for k, v in im.items() if k != "rows"} for im in result["images"]]
    publish(md, text, payload, args.json, data=payload, show=not quiet)
    if not quiet:
        print(f"wrote {md}" + (f", {png.name}" if has_png else "") + f" and rd_{name}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
