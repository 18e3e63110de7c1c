"""``cinr fit``: fit a model to a crop of an image and print its quality."""

from __future__ import annotations

import json
import math
import sys

import click

from ..core.config import MODEL_KINDS
from .common import NullSink, handle_errors


@click.command("fit")
@click.argument("image", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.option("--crop", default=512, show_default=True, help="Side of the centred crop to fit, in pixels.")
@click.option("--level", default=0, show_default=True, help="Slide level to read.")
@click.option(
    "--model",
    type=click.Choice(list(MODEL_KINDS)),
    default="cinr",
    show_default=True,
    help="Network to fit.",
)
@click.option("--preset", default="default", show_default=True, help="Recipe: fast, default or paper.")
@click.option(
    "--steps", type=int, default=None, help="Optimiser steps [default: the preset's, unless a budget is set]."
)
@click.option("--time-budget", type=float, default=None, help="Seconds of training.")
@click.option("--target-psnr", type=float, default=None, help="Stop once the crop reaches this PSNR (dB).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors (and --json output).")
@handle_errors
def fit_cmd(
    image: str | None,
    crop: int,
    level: int,
    model: str,
    preset: str,
    steps: int | None,
    time_budget: float | None,
    target_psnr: float | None,
    device: str,
    seed: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Fit a model to a crop of IMAGE (default: the bundled sample slide) and print its quality."""
    from ..encode.source import read_crop, sample_slide_path
    from ..encode.train.fit import fit_image
    from ..encode.train.presets import get_preset

    if crop < 2:
        raise ValueError("--crop must be at least 2 pixels")
    path = image or str(sample_slide_path())
    pixels = read_crop(path, crop, level)
    if steps is None and time_budget is None:
        steps = int(get_preset(model, preset).train["steps"])
    show = not quiet and not as_json
    # The bar counts steps when they bound the run, otherwise seconds of the time budget.
    total = steps if steps is not None else (int(math.ceil(time_budget)) if time_budget else None)
    label = f"fitting {model}/{preset} on {pixels.shape[1]}x{pixels.shape[0]}"
    with click.progressbar(
        length=total or 1,
        label=label,
        file=sys.stderr if show else NullSink(),  # type: ignore[arg-type]
        show_pos=steps is not None,
        show_eta=True,
    ) as bar:
        done = [0]

        def progress(step: int, seconds: float, est_psnr: float) -> None:
            pos = step if steps is not None else int(seconds)
            if total and pos > done[0]:
                bar.update(min(pos, total) - done[0])
                done[0] = min(pos, total)
            if step % 25 == 0:
                bar.label = f"{label}: step {step}, ~{est_psnr:.1f} dB"

        result = fit_image(
            pixels,
            model=model,
            preset=preset,
            steps=steps,
            time_budget=time_budget,
            target_psnr=target_psnr,
            device=device,
            seed=seed,
            progress=progress,
        )
        if total:
            bar.update(total - done[0])
    summary = {
        "image": path,
        "crop": [pixels.shape[1], pixels.shape[0]],
        "model": model,
        "preset": preset,
        "psnr": round(result.psnr, 3),
        "ssim": round(result.ssim, 5),
        "n_params": result.n_params,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "device": result.device,
    }
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        for key, value in summary.items():
            click.echo(f"{key:>9}: {value}")
