"""The paper's claim, measured: NGP, ENGP and CINR at equal hash grid and equal wall-clock.

python -m benchmarks.models --image PATH --crop 512 --budget SECONDS --models ngp,engp,cinr [--json]

Each model is fitted with its preset's network and training recipe, on the *same* hash grid
(the hash grid of the ``--hash-from`` model's preset, by default cinr's), for the same
training time, on a centred crop of a real image or slide. Prints a table; with ``--json``
prints one JSON object on stdout. Writes a Markdown table and a PSNR-versus-time plot to
``benchmarks/results/`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cinr_codec.core.render import resolve_device
from cinr_codec.encode.source import read_crop
from cinr_codec.encode.train.fit import fit_image
from cinr_codec.encode.train.presets import get_preset

from .common import RESULTS, SHARED, header, md_table, publish, pyplot, write_report

DEFAULT_IMAGE = SHARED / "he-prostate-2500.jpeg"


def run(
    image: str,
    crop: int,
    budget: float,
    models: list[str],
    preset: str,
    hash_from: str,
    device: str,
    seed: int,
    eval_every: float | None,
    quiet: bool,
) -> list[dict[str, object]]:
    """Fit each model; returns one result row per model."""
    pixels = read_crop(image, crop)
    h, w = pixels.shape[:2]
    hash_cfg = get_preset(hash_from, preset).resolve_hash(h, w)
    rows: list[dict[str, object]] = []
    for model in models:
        if not quiet:
            print(f"fitting {model}/{preset} for {budget:g} s on {w}x{h} ...", file=sys.stderr, flush=True)
        r = fit_image(
            pixels,
            model=model,
            preset=preset,
            time_budget=budget,
            device=device,
            seed=seed,
            hash_config=hash_cfg,
            eval_every=eval_every,
        )
        rows.append(
            {
                "model": model,
                "preset": preset,
                "psnr": round(r.psnr, 3),
                "ssim": round(r.ssim, 5),
                "params": r.n_params,
                "hash_params": hash_cfg.n_params(),
                "steps": r.steps,
                "seconds": round(r.seconds, 2),
                "device": r.device,
                "history": [(round(t, 2), s, round(p, 3)) for t, s, p in r.history],
            }
        )
        if not quiet:
            print(
                f"  {model}: {r.psnr:.2f} dB, SSIM {r.ssim:.4f}, {r.steps} steps", file=sys.stderr, flush=True
            )
    return rows


def _plot(rows: list[dict[str, object]], path: Path, title: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in rows:
        hist = r["history"]
        assert isinstance(hist, list)
        if hist:
            ax.plot([t for t, _, _ in hist], [p for _, _, p in hist], marker="o", ms=3, label=str(r["model"]))
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(DEFAULT_IMAGE), help="image or slide (default: shared H&E)")
    ap.add_argument("--crop", type=int, default=512, help="side of the centred crop")
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds per model")
    ap.add_argument("--models", default="ngp,engp,cinr")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--hash-from", default="cinr", help="whose preset's hash grid all models share")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--eval-every", type=float, default=None, help="seconds between PSNR samples for the plot"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    ap.add_argument("--tag", default="", help="suffix for the result file names")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        for m in models:
            get_preset(m, args.preset)
        resolve_device(args.device)
        if not Path(args.image).is_file():
            raise ValueError(f"{args.image}: no such file")
    except ValueError as exc:
        print(f"benchmarks.models: error: {exc}", file=sys.stderr)
        sys.exit(2)
    eval_every = args.eval_every if args.eval_every is not None else max(args.budget / 12, 1.0)
    rows = run(
        args.image,
        args.crop,
        args.budget,
        models,
        args.preset,
        args.hash_from,
        args.device,
        args.seed,
        eval_every,
        args.quiet or args.json,
    )
    lines = [
        header("NGP vs ENGP vs CINR at equal hash grid and equal wall-clock"),
        f"Image: `{args.image}`, centred {args.crop}² crop; {args.budget:g} s of training per model; "
        f"all models on the hash grid of the `{args.hash_from}/{args.preset}` preset.\n",
        *md_table(
            ("model", "PSNR (dB)", "SSIM", "parameters", "hash params", "steps", "seconds", "device"),
            "lrrrrrrl",
            (
                (
                    r["model"],
                    f"{r['psnr']:.2f}",
                    f"{r['ssim']:.4f}",
                    f"{r['params']:,}",
                    f"{r['hash_params']:,}",
                    r["steps"],
                    f"{r['seconds']:.1f}",
                    r["device"],
                )
                for r in rows
            ),
        ),
    ]
    text = "\n".join(lines) + "\n"
    payload = {"image": args.image, "crop": args.crop, "budget": args.budget, "results": rows}
    publish(None, text, payload, args.json, show=not args.quiet)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = f"models_{Path(args.image).stem}_{args.crop}_{int(args.budget)}s{args.tag}"
        png = RESULTS / f"{stem}.png"
        if _plot(rows, png, f"{Path(args.image).name}, {args.crop}² crop, PSNR vs training time"):
            text += f"\n![PSNR versus time]({png.name})\n"
        write_report(RESULTS / f"{stem}.md", text)
        print(f"wrote {RESULTS / (stem + '.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
