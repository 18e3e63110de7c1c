"""Issue 13's held-out check by proxy: ``cinr encode`` at the defaults on JPEG-tiled pyramidal TIFFs.

python -m benchmarks.jpeg_sourced [--source tcga|prostate|sample] [--region X,Y,W,H]
                                  [--qualities 80,90] [--keep DIR] [--out NAME] [--json]

The slides issue is checked on "JPEG-tiled pyramidal TIFFs built from real H&E" that the encoder
never saw. This builds such files from a region of a shared slide: libvips saves the region as a
tiled pyramidal TIFF (``tiffsave(tile=True, pyramid=True, compression="jpeg", Q=q)``, 256-px tiles;
libvips subsamples chroma 4:2:0 below Q 90 and keeps 4:4:4 from Q 90), once per ``--qualities``
entry. Each file is then encoded by the README's command, ``cinr encode SLIDE.tif -o X.cinr --json
--quiet``, in a child process, and the table gives its PSNR over tissue, bytes (mips included),
``vs_jpeg_pyramid`` (the file against a JPEG-tiled pyramid of the same level at equal PSNR,
``encode/reference.py``; the target is at most 0.7x at 35 dB or more) and the wall time.

Default region: the TCGA slide's 2048 x 1536 window at (1400, 900), nearly all tissue (the
calibration crops of ``benchmarks.ccinr_variants`` are 256-px windows elsewhere on the same slides,
so these pixels are near-held-out; the source's JPEG 2000 coding is replaced by the TIFF's JPEG).
Writes ``NAME.md``/``.json`` to ``benchmarks/results`` (default ``jpeg_sourced``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import RESULTS, SHARED, csv_list, header, load_average, md_table, num, publish

SOURCES = {
    "tcga": SHARED / "TCGA-CR-7395-01A-01-TS1.svs",
    "prostate": SHARED / "he-prostate-2500.jpeg",
    "sample": Path(__file__).resolve().parents[1] / "cinr_codec" / "data" / "CMU-1-Small-Region.svs",
}
DEFAULT_REGION = {
    "tcga": (1400, 900, 2048, 1536),
    "prostate": (0, 0, 2500, 2500),
    "sample": (0, 0, 2220, 2967),
}


def build_tiff(source: Path, region: tuple[int, int, int, int], quality: int, out: Path) -> int:
    """Save ``region`` (x, y, w, h) of level 0 of ``source`` as a 256-px JPEG-tiled pyramidal TIFF
    at libvips quality ``quality``; returns the file's bytes."""
    import pyvips

    from cinr_codec.encode.source import SlideSource

    x, y, w, h = region
    with SlideSource(source) as src:
        pixels = src.read(x, y, w, h)
    img = pyvips.Image.new_from_memory(pixels.tobytes(), w, h, 3, "uchar")
    img.tiffsave(
        str(out), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=quality
    )
    return out.stat().st_size


def encode(tif: Path, dst: Path) -> dict[str, Any]:
    """The README's encode of ``tif`` (defaults, ``--json --quiet``) in a child process: its summary
    and the wall time."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cinr_codec", "encode", str(tif), "-o", str(dst), "--json", "--quiet"],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"cinr encode {tif.name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = wall
    return summary


def _weight(run: dict[str, Any], key: str = "rate_weight") -> str:
    """The run's aimed rate weight (or the floor pass's, ``key``) against its quality level's, or
    "-" without one."""
    from cinr_codec.encode.train.latent import lambda_of

    if run.get("slide_psnr") is None or not run.get(key):
        return "–"
    return f"{run[key] / lambda_of(run['preset']):.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.jpeg_sourced", description=__doc__.split("\n")[0])
    ap.add_argument("--source", choices=sorted(SOURCES), default="tcga")
    ap.add_argument("--region", help="X,Y,W,H of level 0 (default: the source's in DEFAULT_REGION)")
    ap.add_argument("--qualities", default="80,90", help="libvips JPEG qualities, comma-separated")
    ap.add_argument("--keep", type=Path, help="keep the TIFFs and .cinr files in this folder")
    ap.add_argument("--out", default="jpeg_sourced")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    source = SOURCES[args.source]
    if not source.exists():
        raise SystemExit(f"{source} is missing")
    region = tuple(int(v) for v in csv_list(args.region)) if args.region else DEFAULT_REGION[args.source]
    if len(region) != 4:
        raise SystemExit("--region takes X,Y,W,H")
    qualities = [int(q) for q in csv_list(args.qualities)]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for q in qualities:
            tif = folder / f"{args.source}_q{q}.tif"
            tif_bytes = build_tiff(source, region, q, tif)  # type: ignore[arg-type]
            print(f"q{q}: {tif.name} {tif_bytes:,} bytes; encoding", file=sys.stderr, flush=True)
            s = encode(tif, folder / f"{args.source}_q{q}.cinr")
            keys = ("psnr", "bytes", "model_bytes", "mip_bytes", "jpeg_equal_psnr_bytes", "vs_jpeg_pyramid")
            runs.append(
                {"tiff_quality": q, "tiff_bytes": tif_bytes, **{k: s.get(k) for k in keys}}
                | {
                    "jpeg_psnr": s.get("jpeg_psnr"),
                    "jpeg_bytes": s.get("jpeg_bytes"),
                    "blocks": s.get("blocks"),
                }
                | {
                    "tissue_blocks": s.get("tissue_blocks"),
                    "wall_seconds": s["wall_seconds"],
                    "preset": s.get("preset"),
                    "slide_psnr": s.get("slide_psnr"),
                    "rate_weight": s.get("rate_weight"),
                    "floor_rate_weight": s.get("floor_rate_weight"),
                    "trim_factor": s.get("trim_factor"),
                    "block_steps": s.get("block_steps"),
                }
            )
    rows = [
        (
            f"Q{r['tiff_quality']}",
            f"{r['tiff_bytes']:,}",
            num(r["psnr"], ".2f"),
            num(r.get("slide_psnr"), ".2f"),
            f"{r['bytes']:,}",
            f"{r['mip_bytes']:,}",
            f"{r['jpeg_equal_psnr_bytes']:,}" if r["jpeg_equal_psnr_bytes"] else "–",
            num(r["vs_jpeg_pyramid"], ".3f"),
            "met"
            if r["vs_jpeg_pyramid"] is not None and r["vs_jpeg_pyramid"] <= 0.7 and r["psnr"] >= 35
            else "not met",
            f"{r['wall_seconds'] / 60:.1f}",
            _weight(r),
            _weight(r, "floor_rate_weight"),
            num(r.get("trim_factor"), ".2f"),
            str(r["block_steps"] or "–"),
        )
        for r in runs
    ]
    x, y, w, h = region
    text = header("cinr encode at the defaults on JPEG-tiled pyramidal TIFFs (issue 13's check, by proxy)")
    text += (
        f"\n\nSource: `{source.name}`, level 0 region {w}x{h} at ({x}, {y}), saved by libvips as 256-px "
        "JPEG-tiled pyramidal TIFFs (4:2:0 below Q 90, 4:4:4 from Q 90); each encoded by `cinr encode "
        "SLIDE.tif -o X.cinr --json --quiet` (the defaults) in a child process. PSNR over tissue "
        "against the TIFF's level 0; `vs JPEG pyramid`: the file against a 256-px JPEG-tiled pyramid "
        f"of the same level at equal PSNR (target <= 0.7x at >= 35 dB); `λ / level's`: the rate weight the "
        "default's PSNR aim gave the blocks after the first, against its quality level's (`floor pass`: the "
        "weight of their second fit where the slide landed under the floor; `trim`: the factor of the later "
        "blocks' weights at which their latents were searched again where it landed over its aim); "
        "`aim dB`: the PSNR over tissue the encode aimed at; `steps a block`: the "
        "default's training steps. Load average at "
        f"the end: {load_average()}.\n\n"
    )
    text += "\n".join(
        md_table(
            [
                "TIFF",
                "TIFF bytes",
                "PSNR dB",
                "aim dB",
                "cinr bytes",
                "mips bytes",
                "JPEG pyramid bytes",
                "vs JPEG pyramid",
                "target",
                "min",
                "λ / level's",
                "floor pass λ / level's",
                "trim",
                "steps a block",
            ],
            "lrrrrrrrlrrrrr",
            rows,
        )
    )
    text += "\n"
    publish(
        RESULTS / f"{args.out}.md",
        text,
        runs,
        args.json,
        data={"region": region, "source": source.name, "runs": runs},
    )


if __name__ == "__main__":
    main()
