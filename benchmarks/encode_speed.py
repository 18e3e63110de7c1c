"""Encoding speed: megapixels per minute, and the PSNR reached against time, per preset and device.

python -m benchmarks.encode_speed [--quick] [--image PATH ...] [--size 1024] [--presets fast,default]
                                  [--steps 250,500,1000,2000] [--whole-slide [PRESETS]]
                                  [--block-size 1024] [--device auto|cpu|cuda] [--threads N]
                                  [--processes N]
                                  [--json] [--results DIR] [--out NAME] [--quiet]

Images. Each ``--image`` (default ``../shared/data/he-prostate-2500.jpeg``) is cut to its most
tissue-rich ``--size`` x ``--size`` window (highest mean HSV saturation on a 1024 px thumbnail;
``--size 0``: the whole image), saved as PNG in a temporary folder, and encoded with
``cinr_codec.encode_slide`` at ``--block-size`` (default 1024, so a 1024 px crop is one
block; the encoder fits it with its 32 px margin clipped to the image). ``--whole-slide`` also
encodes the real slide ``CMU-1-Small-Region.svs`` (2220 x 2967, 9 blocks) whole, once per preset
named (default ``fast``) at the preset's own step count (``--quick``: the largest quick count).

Presets: ``fast`` and ``default`` (and ``high`` when the device is CUDA) of the hash-grid CINR;
``q1`` ... ``q8`` name the compressive model's quality levels (``--model ccinr --quality N``),
e.g. ``--presets q2,q4,q6 --steps 600,2400 --size 256`` for its megapixels per minute per level,
or ``--presets q2,q4,q6 --steps 300 --block-size 512 --processes 2`` for what ``cinr encode
--quality qN`` does on a 2-core CPU (its default steps there, one worker process of one thread
per core; ``--processes``: ``encode_slide``'s local worker processes, default none: the fits run
serially in the benchmark's process).
For each preset the same image is encoded at several step counts (full: 250, 500, 1000, 2000
and the preset's own count; ``high``: 1000, 2500, 5000, 10000; ``--quick``: 50 and 200, on a
512 px crop). Each point is a separate encode (the learning-rate schedule depends on the step count), so the curve is the PSNR
an encode of that length reaches, not a snapshot of one long run.

Reported per encode: wall seconds of ``encode_slide`` (reading, tissue detection, fitting,
quantization, the decode and metrics of every block, mips, writing), fit seconds (training only),
megapixels per minute = level pixels / wall seconds (and over fit seconds), tissue PSNR and SSIM
(after quantization, from the file's footer), PSNR over all pixels, bpp (file bytes * 8 / level
pixels), steps and device. Timings depend on machine load: the load average is in the results.

Writes ``encode_speed_<quick|full>[_cuda].md`` (or ``encode_speed_<OUT>.md`` with ``--out``),
``.json`` and ``.png`` (PSNR against wall seconds per preset) to ``--results`` (default
``benchmarks/results``). ``--json`` prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    RESULTS,
    SHARED,
    NullSink,
    csv_list,
    header,
    library_versions,
    load_average,
    num,
    publish,
    pyplot,
)

DEFAULT_IMAGE = SHARED / "he-prostate-2500.jpeg"
WHOLE_SLIDE = SHARED / "CMU-1-Small-Region.svs"
FULL_STEPS = (250, 500, 1000, 2000)
HIGH_STEPS = (1000, 2500, 5000, 10000)
QUICK_STEPS = (50, 200)
SMOKE_STEPS = (2, 4)


def tissue_window(path: Path, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The size x size window of ``path`` with the highest mean HSV saturation (RGB uint8, where)."""
    from cinr_codec.encode.source import SlideSource
    from cinr_codec.encode.tissue import hsv_saturation_value

    with SlideSource(path) as src:
        W, H = src.width, src.height
        if size <= 0 or (size >= W and size >= H):
            return src.read(0, 0, W, H), {"x": 0, "y": 0, "width": W, "height": H, "image": [W, H]}
        w, h = min(size, W), min(size, H)
        thumb = src.thumbnail(1024)
        th, tw = thumb.shape[:2]
        sx, sy = W / tw, H / th
        ww, wh = max(1, min(tw, round(w / sx))), max(1, min(th, round(h / sy)))
        sat, _ = hsv_saturation_value(thumb)
        ii = np.zeros((th + 1, tw + 1))
        ii[1:, 1:] = sat.astype(np.float64).cumsum(0).cumsum(1)
        sums = ii[wh:, ww:] - ii[:-wh, ww:] - ii[wh:, :-ww] + ii[:-wh, :-ww]
        ty, tx = np.unravel_index(int(np.argmax(sums)), sums.shape)
        x = min(max(int(round(tx * sx)), 0), W - w)
        y = min(max(int(round(ty * sy)), 0), H - h)
        return src.read(x, y, w, h), {"x": x, "y": y, "width": w, "height": h, "image": [W, H]}


def model_of(preset: str) -> str:
    """The model a preset name encodes with: ``ccinr`` for its quality levels q1-q8, else ``cinr``."""
    return "ccinr" if re.fullmatch(r"q[1-8]", preset) else "cinr"


def own_steps(preset: str) -> int:
    """The preset's own steps per block (ValueError for an unknown preset)."""
    from cinr_codec.coding.registry import get_codec

    model = model_of(preset)
    return int(get_codec(model).recipe(model, preset)["steps"])


def encode_one(
    src: Path,
    dst: Path,
    preset: str,
    steps: int | None,
    block_size: int,
    device: str,
    seed: int,
    processes: int | None = None,
) -> dict[str, Any]:
    """One ``encode_slide`` run (in ``processes`` local worker processes, or serially): its summary
    figures plus megapixels per minute."""
    from cinr_codec.encode.slide import encode_slide

    t = time.perf_counter()
    s = encode_slide(
        src,
        dst,
        model=model_of(preset),
        preset=preset,
        steps=steps,
        block_size=block_size,
        device=device,
        seed=seed,
        processes=processes,
    )
    wall = time.perf_counter() - t
    pixels = int(s["width"]) * int(s["height"])
    dst.unlink(missing_ok=True)
    return {
        "preset": preset,
        "model": s["model"],
        "steps_per_block": steps,
        "steps": s["steps"],
        "device": s["device"],
        "width": s["width"],
        "height": s["height"],
        "blocks": s["blocks"],
        "tissue_blocks": s["tissue_blocks"],
        "seconds": wall,
        "fit_seconds": s["fit_seconds"],
        "mp_per_min": pixels / 1e6 / wall * 60.0,
        "mp_per_min_fit": pixels / 1e6 / s["fit_seconds"] * 60.0 if s["fit_seconds"] else None,
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "psnr_all": s["psnr_all"],
        "bytes": s["bytes"],
        "bpp": s["bpp"],
        "bpp_tissue": s.get("bpp_tissue"),
        "load": load_average(),
    }


def report(result: dict[str, Any], extra: dict[str, str], png: str | None) -> str:
    st = result["settings"]
    lines = [
        header("Encoding speed and PSNR against time", extra),
        f"Device {st['device']}, torch threads {st['torch_threads']}, block size {st['block_size']}, "
        f"seed {st['seed']}"
        + (
            f", fits in {st['processes']} worker processes of one thread (as `cinr encode` on this many free cores)"
            if st.get("processes")
            else ""
        )
        + ". Each row is one `encode_slide` run; seconds are wall-clock seconds of the "
        "whole encode (read, tissue detection, fit, quantize, decode and measure every block, mips, "
        "write); fit seconds are training only"
        + (", summed over the processes" if st.get("processes") else "")
        + ". MP/min = level pixels / seconds. PSNR and SSIM are "
        "over tissue blocks, after quantization; bpp = file bytes x 8 / level pixels.",
        "",
    ]
    for im in result["images"]:
        where = im["region"]
        lines.append(
            f"- `{im['label']}`: {where['width']} x {where['height']} at ({where['x']}, {where['y']}) of a "
            f"{where['image'][0]} x {where['image'][1]} image ({im['how']})"
        )
    lines += [
        "",
        "## Throughput at each preset's step count",
        "",
        "| image | preset | device | steps/block | blocks (tissue) | seconds | fit s | MP/min | MP/min (fit only) | PSNR dB | SSIM | bpp |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["throughput"]:
        lines.append(
            f"| {r['image']} | {r['preset']} | {r['device']} | {r['steps_per_block']} | "
            f"{r['blocks']} ({r['tissue_blocks']}) | {r['seconds']:.1f} | {r['fit_seconds']:.1f} | "
            f"{r['mp_per_min']:.3f} | {num(r['mp_per_min_fit'], '.3f')} | {num(r['psnr'], '.2f')} | "
            f"{num(r['ssim'], '.4f')} | {r['bpp']:.3f} |"
        )
    lines += [
        "",
        "## PSNR reached against time (one encode per step count)",
        "",
        "| image | preset | device | steps/block | seconds | fit s | PSNR dB | SSIM | bpp | load (1 min) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["curve"]:
        lines.append(
            f"| {r['image']} | {r['preset']} | {r['device']} | {r['steps_per_block']} | {r['seconds']:.1f} | "
            f"{r['fit_seconds']:.1f} | {num(r['psnr'], '.2f')} | {num(r['ssim'], '.4f')} | {r['bpp']:.3f} | "
            f"{r['load'].split()[0]} |"
        )
    if png:
        lines += ["", f"![PSNR against seconds]({png})"]
    lines += [
        "",
        f"Load average (1, 5, 15 min): {result['load_start']} at start, {result['load_end']} at end; "
        f"the benchmark took {result['seconds']:.0f} s. Other jobs shared this machine, so seconds "
        "(and MP/min) are noisy; PSNR for a given step count is not.",
    ]
    if st["torch_threads"] == 1:
        lines.append(
            "One torch thread (`--threads 1`): on this 2-core machine, under load from other jobs, "
            "two OpenMP threads made the same encode several times slower (busy-waiting threads)."
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(r["image"], r["preset"], r["device"]) for r in result["curve"]})
    for key in keys:
        rows = sorted(
            (r for r in result["curve"] if (r["image"], r["preset"], r["device"]) == key),
            key=lambda r: r["steps_per_block"],
        )
        xs = [r["seconds"] for r in rows if r["psnr"] is not None]
        ys = [r["psnr"] for r in rows if r["psnr"] is not None]
        ax.plot(xs, ys, marker="o", label=f"{key[1]} ({key[2]}) – {key[0]}")
        for r in rows:
            if r["psnr"] is not None:
                ax.annotate(
                    str(r["steps_per_block"]),
                    (r["seconds"], r["psnr"]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
    ax.set_xlabel("encode wall seconds (labels: steps)")
    ax.set_ylabel("tissue PSNR (dB, after quantization)")
    ax.set_title("cinr encode: PSNR reached against time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", action="append", help="image or slide to crop (repeatable)")
    ap.add_argument("--size", type=int, default=None, help="crop side (default 1024; quick 512; 0: whole)")
    ap.add_argument(
        "--presets",
        default=None,
        help="cinr presets, or ccinr levels q1-q8 (default fast,default; +high on CUDA)",
    )
    ap.add_argument("--steps", default=None, help="step counts of the PSNR-against-time curve, e.g. 250,500")
    ap.add_argument(
        "--whole-slide",
        nargs="?",
        const="fast",
        default=None,
        help="also encode CMU-1-Small-Region.svs whole with these presets",
    )
    ap.add_argument("--slide", default=str(WHOLE_SLIDE), help="the slide for --whole-slide")
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument(
        "--processes", type=int, default=None, help="fit in N local worker processes (default: serially)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="512 px crop, 50 and 200 steps")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    ap.add_argument("--results", default=None, help="output folder (default benchmarks/results)")
    ap.add_argument("--out", default=None, help="result name: encode_speed_<OUT>.md (default the mode)")
    args = ap.parse_args(argv)
    for p in args.image or []:  # before the heavy imports: a typo fails at once
        if not Path(p).is_file():
            print(f"benchmarks.encode_speed: error: {p}: no such file", file=sys.stderr)
            sys.exit(2)

    import torch

    from cinr_codec.core.render import resolve_device
    from cinr_codec.errors import CinrError

    try:
        dev = str(resolve_device(args.device))
        cuda = dev.startswith("cuda")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError("--threads must be >= 1")
            torch.set_num_threads(args.threads)
        if args.processes is not None and args.processes < 1:
            raise ValueError("--processes must be >= 1")
        images = [Path(p) for p in (args.image or [str(DEFAULT_IMAGE)])]
        for p in images:
            if not p.is_file():
                raise ValueError(f"{p}: no such file")
        mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        size = args.size if args.size is not None else {"smoke": 128, "quick": 512, "full": 1024}[mode]
        presets = (
            csv_list(args.presets) if args.presets else (["fast"] if args.smoke else ["fast", "default"])
        )
        if cuda and not args.presets and not args.smoke:
            presets.append("high")
        for p in presets:
            own_steps(p)
        block = 128 if args.smoke and args.block_size == 1024 else args.block_size
        if args.steps:
            fixed: list[int] | None = sorted({int(v) for v in csv_list(args.steps)})
            if not fixed or min(fixed) < 1:
                raise ValueError("--steps: give positive step counts")
        else:
            fixed = None

        def steps_for(preset: str) -> list[int]:
            if fixed is not None:
                return fixed
            if mode == "smoke":
                return list(SMOKE_STEPS)
            if mode == "quick":
                return list(QUICK_STEPS)
            own = own_steps(preset)
            base = HIGH_STEPS if preset == "high" else FULL_STEPS
            return sorted(set(base) | {own})

        whole = csv_list(args.whole_slide) if args.whole_slide else []
        for p in whole:
            own_steps(p)
        if whole and not Path(args.slide).is_file():
            raise ValueError(f"{args.slide}: no such file")
        out_dir = Path(args.results) if args.results else RESULTS
        out_dir.mkdir(parents=True, exist_ok=True)
        name = args.out or mode + ("_cuda" if cuda else "")
    except (ValueError, CinrError) as exc:
        print(f"benchmarks.encode_speed: error: {exc}", file=sys.stderr)
        sys.exit(2)

    import click

    result: dict[str, Any] = {
        "images": [],
        "throughput": [],
        "curve": [],
        "settings": {
            "mode": mode,
            "size": size,
            "presets": presets,
            "steps": {p: steps_for(p) for p in presets},
            "whole_slide": whole,
            "block_size": block,
            "device": dev,
            "torch_threads": torch.get_num_threads(),
            "processes": args.processes,
            "seed": args.seed,
        },
        "load_start": load_average(),
    }
    extra = library_versions()  # the code measured: taken at the start (others may edit meanwhile)
    plan = [(p, s) for p in presets for s in steps_for(p)]
    whole_steps = {p: (None if mode == "full" else max(steps_for(p))) for p in whole}
    total = len(images) * sum(s + 100 for _, s in plan) + sum(
        9 * ((s or own_steps(p)) + 100) for p, s in whole_steps.items()
    )
    t0 = time.perf_counter()
    interactive = sys.stderr.isatty()

    def log(msg: str) -> None:
        if not args.quiet and not interactive:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        with (
            tempfile.TemporaryDirectory(prefix="cinr-encspeed-") as tmp,
            click.progressbar(
                length=total,
                label="encode_speed",
                file=NullSink() if args.quiet else sys.stderr,  # type: ignore[arg-type]
                show_pos=True,
                show_eta=True,
            ) as bar,
        ):
            from PIL import Image

            # Warm-up (untimed): the first encode in a process pays one-off imports and allocations.
            warm = Path(tmp) / "warm.png"
            Image.fromarray(np.full((64, 64, 3), (200, 120, 170), np.uint8)).save(warm)
            encode_one(warm, Path(tmp) / "warm.cinr", presets[0], 1, 64, dev, args.seed)
            for k, path in enumerate(images):
                region, where = tissue_window(path, size)
                png = Path(tmp) / f"image{k}.png"
                Image.fromarray(region).save(png)
                label = path.name if size <= 0 else f"{path.name} [{where['width']}x{where['height']} crop]"
                result["images"].append(
                    {
                        "label": label,
                        "path": str(path),
                        "region": where,
                        "how": "whole image" if size <= 0 else "most saturated window of a 1024 px thumbnail",
                    }
                )
                for preset, steps in plan:
                    bar.label = f"{preset} {steps} steps"
                    log(f"{label}: {preset}, {steps} steps ...")
                    row = encode_one(
                        png, Path(tmp) / "out.cinr", preset, steps, block, dev, args.seed, args.processes
                    )
                    row["image"] = label
                    result["curve"].append(row)
                    log(f"  {row['seconds']:.1f} s, {num(row['psnr'], '.2f')} dB")
                    bar.update(steps + 100)
                for preset in presets:
                    own = own_steps(preset)
                    mine = [r for r in result["curve"] if r["image"] == label and r["preset"] == preset]
                    pick = [r for r in mine if r["steps_per_block"] == own] or [
                        max(mine, key=lambda r: r["steps"])
                    ]
                    result["throughput"].append(pick[0])
            for preset, steps in whole_steps.items():
                bar.label = f"whole slide, {preset}"
                log(f"{Path(args.slide).name}: {preset}, {steps or 'preset'} steps ...")
                row = encode_one(
                    Path(args.slide),
                    Path(tmp) / "out.cinr",
                    preset,
                    steps,
                    block,
                    dev,
                    args.seed,
                    args.processes,
                )
                row["image"] = f"{Path(args.slide).name} (whole)"
                row["steps_per_block"] = steps or own_steps(preset)
                result["throughput"].append(row)
                log(f"  {row['seconds']:.1f} s, {num(row['psnr'], '.2f')} dB")
                bar.update(9 * (row["steps_per_block"] + 100))
    except (ValueError, CinrError, OSError) as exc:
        print(f"benchmarks.encode_speed: error: {exc}", file=sys.stderr)
        sys.exit(2)

    result["seconds"] = time.perf_counter() - t0
    result["load_end"] = load_average()
    extra["load average at start"] = result["load_start"]
    png_path = out_dir / f"encode_speed_{name}.png"
    has_png = plot(result, png_path)
    md = out_dir / f"encode_speed_{name}.md"
    publish(
        md,
        report(result, extra, png_path.name if has_png else None),
        result,
        args.json,
        data=result,
        show=False,
    )
    if not args.json and not args.quiet:
        print(f"wrote {md}", file=sys.stderr)


if __name__ == "__main__":
    main()
