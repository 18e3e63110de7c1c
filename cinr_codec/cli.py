"""The ``cinr`` command line. Bad input: one line on stderr, exit status 2; internal errors: 1."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from .errors import CinrError

F = TypeVar("F", bound=Callable[..., Any])


def _handle_errors(fn: F) -> F:
    """Turn library errors into one-line messages and exit codes (tracebacks only with --debug)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except (CinrError, ValueError) as exc:
            if debug:
                raise
            click.echo(f"cinr: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("cinr: interrupted", err=True)
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # noqa: BLE001
            if debug:
                raise
            click.echo(f"cinr: internal error: {exc.__class__.__name__}: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.version_option(package_name="cinr-codec")
def main(debug: bool) -> None:
    """cinr: a neural codec for pathology whole-slide images."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@main.command("fit")
@click.argument("image", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.option("--crop", default=512, show_default=True, help="Side of the centred crop to fit, in pixels.")
@click.option("--level", default=0, show_default=True, help="Slide level to read.")
@click.option(
    "--model",
    type=click.Choice(["cinr", "ngp", "engp"]),
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
@_handle_errors
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
    from .fitting import fit_image
    from .presets import get_preset
    from .slide import read_crop, sample_slide_path

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
        file=sys.stderr if show else _Null(),  # type: ignore[arg-type]
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


@main.command("info")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as one JSON object.")
@_handle_errors
def info_cmd(path: str, as_json: bool) -> None:
    """Print a .cinr file's metadata, blocks and stored quality figures."""
    import os

    from .container import CinrReader

    with CinrReader(path) as reader:
        meta = reader.metadata
        blocks = [reader.block_info(i) for i in range(reader.n_blocks)]
        summary = {
            "path": path,
            "bytes": os.path.getsize(path),
            "version": list(reader.version),
            "blocks": reader.n_blocks,
            "model_blocks": sum(1 for b in blocks if b.kind == "model"),
            "associated_images": sorted(reader.associated_images),
            "metadata": meta,
        }
    if as_json:
        click.echo(json.dumps(summary))
        return
    for key in ("path", "bytes", "version", "blocks", "model_blocks", "associated_images"):
        click.echo(f"{key:>17}: {summary[key]}")
    click.echo(json.dumps(meta, indent=2, sort_keys=True))


@main.command("decode")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, help="Output image: .png, .jpg, .tif or .webp.")
@_handle_errors
def decode_cmd(path: str, output: str) -> None:
    """Decode a (single-block) .cinr file to an image, written atomically."""
    import os
    import tempfile

    from PIL import Image

    from .decoding import decode_image

    formats = {
        ".png": "PNG",
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".tif": "TIFF",
        ".tiff": "TIFF",
        ".webp": "WEBP",
    }
    ext = os.path.splitext(output)[1].lower()
    if ext not in formats:
        raise ValueError(f"{output}: unknown output type {ext!r}; use one of {', '.join(formats)}")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ValueError(f"{output}: folder {folder} does not exist")
    pixels = decode_image(path)
    fd, tmp = tempfile.mkstemp(prefix=".cinr-decode-", suffix=ext, dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(pixels).save(fh, format=formats[ext])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Null:
    """A write-only sink for a silenced progress bar."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


if __name__ == "__main__":  # pragma: no cover
    main()
