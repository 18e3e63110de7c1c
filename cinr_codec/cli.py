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


def _fmt(v: Any, unit: str = "", digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return ("inf" if math.isinf(v) else f"{v:.{digits}f}") + unit
    return f"{v}{unit}"


def _json_safe(v: Any) -> Any:
    """JSON has no infinity: a lossless PSNR becomes null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@main.command("encode")
@click.argument("slide", type=click.Path(dir_okay=True, path_type=str))
@click.option(
    "-o",
    "--output",
    default=None,
    help="Output .cinr file  [default: SLIDE's name with .cinr, in the current folder]",
)
@click.option("--level", default=0, show_default=True, help="Source level to encode (0 = full resolution).")
@click.option(
    "--model", type=click.Choice(["cinr", "ngp", "engp"]), default="cinr", show_default=True, help="Network."
)
@click.option(
    "--preset",
    default="fast",
    show_default=True,
    help="Recipe: fast (CPU, tests and demos), default (CPU, better), high (GPU, best), paper (the authors').",
)
@click.option("--steps", type=int, default=None, help="Optimiser steps per block  [default: the preset's]")
@click.option(
    "--time-budget", type=float, default=None, help="Seconds of training per block  [default: none]"
)
@click.option(
    "--total-time-budget",
    type=float,
    default=None,
    help="Seconds of training for the whole slide, shared by the blocks left  [default: none]",
)
@click.option(
    "--target-psnr",
    type=float,
    default=None,
    help="A block stops once it reaches this PSNR (dB)  [default: none]",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto = CUDA when present.",
)
@click.option(
    "--quant",
    type=click.Choice(["int8+float16", "int8", "float16", "bfloat16", "float32"]),
    default="int8+float16",
    show_default=True,
    help="Storage precision: hash tables + network weights.",
)
@click.option("--block-size", default=1024, show_default=True, help="Block side in pixels (multiple of 16).")
@click.option(
    "--margin",
    default=0,
    show_default=True,
    help="Pixels of context each block is fitted with beyond its edges.",
)
@click.option("--no-tissue-mask", is_flag=True, help="Encode every block, glass included.")
@click.option(
    "--no-mips",
    is_flag=True,
    help="Store no box-filtered mip levels (coarse reads then decode every level pixel).",
)
@click.option("--seed", default=0, show_default=True, help="Random seed (blocks get seeds derived from it).")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for PyTorch  [default: PyTorch's choice; 1 is faster on a busy machine]",
)
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted encode from its journal (OUTPUT.journal)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors (and --json output).")
@_handle_errors
def encode_cmd(
    slide: str,
    output: str | None,
    level: int,
    model: str,
    preset: str,
    steps: int | None,
    time_budget: float | None,
    total_time_budget: float | None,
    target_psnr: float | None,
    device: str,
    quant: str,
    block_size: int,
    margin: int,
    no_tissue_mask: bool,
    no_mips: bool,
    seed: int,
    resume: bool,
    threads: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Encode a whole-slide image (any OpenSlide format, or PNG/JPEG/TIFF) as a .cinr file."""
    import os

    from .encoding import encode_slide
    from .journal import journal_path

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    out = output or (os.path.splitext(os.path.basename(os.path.normpath(slide)))[0] + ".cinr")
    show = not quiet and not as_json
    sink = sys.stderr if show else NullSink()
    state: dict[str, Any] = {"bar": None, "done": 0}

    def progress(ev: dict[str, Any]) -> None:
        stage = ev.get("stage")
        if stage == "start":
            bar = click.progressbar(
                length=ev["total"],
                label=f"encoding {ev['total']} blocks ({ev['tissue_blocks']} with tissue)",
                file=sink,  # type: ignore[arg-type]
                show_pos=True,
                show_eta=True,
            )
            bar.__enter__()
            if ev["done"]:
                bar.update(ev["done"])
            state["bar"] = bar
        elif stage == "block" and state["bar"] is not None:
            p = ev.get("psnr")
            what = "background" if ev["kind"] == "background" else f"{_fmt(p, ' dB')}"
            state["bar"].label = f"block {ev['block_id'] + 1}/{ev['total']}: {what}"
            state["bar"].update(1)
        elif stage == "write" and state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
            state["bar"] = None

    try:
        summary = encode_slide(
            slide,
            out,
            level=level,
            model=model,
            preset=preset,
            steps=steps,
            time_budget=time_budget,
            total_time_budget=total_time_budget,
            target_psnr=target_psnr,
            device=device,
            quant=quant,
            block_size=block_size,
            margin=margin,
            tissue_mask=not no_tissue_mask,
            mips=not no_mips,
            seed=seed,
            resume=resume,
            progress=progress,
        )
    except KeyboardInterrupt:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
        jp = journal_path(out)
        click.echo(
            f"cinr: interrupted; finished blocks are kept in {jp}: run the same command with --resume",
            err=True,
        )
        sys.exit(130)
    finally:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
    if as_json:
        click.echo(json.dumps({k: _json_safe(v) for k, v in summary.items()}))
        return
    if quiet:
        return
    s = summary
    rows = [
        ("output", s["path"]),
        ("dimensions", f"{s['width']} x {s['height']} (level {s['level']})"),
        ("model", f"{s['model']} / {s['preset']}, {s['quant']}, device {s['device']}"),
        (
            "blocks",
            f"{s['blocks']} of {s['block_size']} px: {s['tissue_blocks']} tissue, "
            f"{s['background_blocks']} background (tissue fraction {s['tissue_fraction']:.1%})",
        ),
        ("PSNR tissue", f"{_fmt(s['psnr'], ' dB')}  (all pixels {_fmt(s['psnr_all'], ' dB')})"),
        ("SSIM tissue", _fmt(s["ssim"], "", 4)),
        (
            "seams",
            f"PSNR {_fmt(s['psnr_border'], ' dB')} in 16-px strips along block borders, "
            f"{_fmt(s['psnr_adjacent'], ' dB')} in the 32 px next to them, {_fmt(s['psnr_interior'], ' dB')} in block interiors",
        ),
        (
            "size",
            f"{s['bytes']:,} bytes (models {s['model_bytes']:,}, mips {s['mip_bytes']:,}, "
            f"associated images {s['associated_bytes']:,})",
        ),
        ("bits/pixel", f"{_fmt(s['bpp_tissue'], '', 3)} over tissue, {s['bpp']:.3f} over the slide"),
        (
            "compression",
            f"{_fmt(s['compression_ratio'], 'x', 2)} against the source file ({s['source_bytes']:,} bytes)",
        ),
        ("time", f"{s['seconds']:.1f} s ({s['steps']} steps)"),
    ]
    for k, v in rows:
        click.echo(f"{k:>12}: {v}")


@main.command("info")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as one JSON object.")
@_handle_errors
def info_cmd(path: str, as_json: bool) -> None:
    """Print a .cinr file's metadata, blocks and stored quality figures."""
    import os

    from .container import CinrReader
    from .decoding import parse_layout, parse_mips

    with CinrReader(path) as reader:
        meta = reader.metadata
        blocks = [reader.block_info(i) for i in range(reader.n_blocks)]
        layout = parse_layout(reader)  # CinrFormatError (exit 2) when the header is not a slide's
        mips = parse_mips(reader, layout)
        n = layout.n_blocks
        level = blocks[:n]

        def obj(key: str) -> dict[str, Any]:
            v = meta.get(key)
            return v if isinstance(v, dict) else {}

        slide, quality = obj("slide"), obj("quality")
        summary = {
            "path": path,
            "bytes": os.path.getsize(path),
            "version": list(reader.version),
            "blocks": reader.n_blocks,
            "model_blocks": sum(1 for b in blocks if b.kind == "model"),
            "associated_images": sorted(reader.associated_images),
            "width": layout.width,
            "height": layout.height,
            "level": slide.get("level", 0),
            "mpp": [slide.get("mpp_x"), slide.get("mpp_y")],
            "model": layout.config.kind,
            "preset": obj("encoder").get("preset"),
            "quantization": obj("quantization").get("setting"),
            "grid": {
                "block_size": layout.block_size,
                "margin": layout.halo,
                "cols": layout.cols,
                "rows": layout.rows,
            },
            "level_blocks": {
                "total": n,
                "model": sum(1 for b in level if b.kind == "model"),
                "background": sum(1 for b in level if b.kind == "background"),
            },
            "model_bytes": sum(b.stored_length for b in level if b.kind == "model"),
            "mips": [
                {
                    "downsample": d,
                    "image_blocks": sum(1 for b in blocks[n * (1 + k) : n * (2 + k)] if b.kind == "image"),
                    "bytes": sum(b.stored_length for b in blocks[n * (1 + k) : n * (2 + k)]),
                }
                for k, d in enumerate(mips)
            ],
            "associated_image_bytes": {k: v.length for k, v in sorted(reader.associated_images.items())},
            "bpp": 8.0 * os.path.getsize(path) / (layout.width * layout.height),
            "quality": quality,
            "metadata": meta,
        }
    if as_json:
        click.echo(json.dumps(summary))
        return
    for key in ("path", "bytes", "version", "blocks", "model_blocks", "associated_images"):
        click.echo(f"{key:>17}: {summary[key]}")
    lb = summary["level_blocks"]
    click.echo(
        f"{'size':>17}: {layout.width} x {layout.height} px (level {summary['level']}), mpp {summary['mpp']}"
    )
    click.echo(f"{'model':>17}: {summary['model']}/{summary['preset']}, {summary['quantization']}")
    click.echo(
        f"{'grid':>17}: {layout.cols} x {layout.rows} blocks of {layout.block_size} px, margin {layout.halo}; "
        f"{lb['model']} model, {lb['background']} background; model bytes {summary['model_bytes']}"
    )
    for m in summary["mips"]:
        click.echo(
            f"{'mip 1/' + str(m['downsample']):>17}: {m['image_blocks']} image blocks, {m['bytes']} bytes"
        )
    click.echo(f"{'bpp':>17}: {summary['bpp']:.3f}")
    for key in ("psnr_db", "ssim", "psnr_all_db", "psnr_border_db", "psnr_adjacent_db", "psnr_interior_db"):
        if key in quality:
            click.echo(f"{'quality.' + key:>17}: {quality[key]}")
    click.echo(json.dumps(meta, indent=2, sort_keys=True))


@main.command("decode")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, help="Output image: .png, .jpg, .tif or .webp.")
@click.option(
    "--region", default=None, metavar="X,Y,W,H", help="Region in level-0 pixels [default: the whole slide]."
)
@click.option(
    "--scale", type=float, default=1.0, show_default=True, help="Output pixels per level-0 pixel, in (0, 4]."
)
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@_handle_errors
def decode_cmd(path: str, output: str, region: str | None, scale: float, quiet: bool) -> None:
    """Decode a .cinr slide, or a region of it at any scale, to an image (written atomically).

    The format follows OUTPUT's extension; .tif/.tiff is a tiled pyramidal TIFF (JPEG tiles)
    that OpenSlide opens. Whole-slide exports are streamed in strips (bounded memory).
    """
    import contextlib

    from .api import open_cinr
    from .decoding import tune_allocator
    from .export import export_region

    # Keep freed memory for reuse: tiles decode 1.4-1.7x faster. Not for `encode`, whose peak
    # memory it raised from 0.7 to 1.4 GB per 1024-px block (docs/architecture.md).
    tune_allocator()

    box: tuple[float, float, float, float] | None = None
    if region is not None:
        parts = region.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"--region must be four numbers X,Y,W,H, not {region!r}")
        box = (values[0], values[1], values[2], values[3])
    with open_cinr(path) as slide, contextlib.ExitStack() as stack:
        bar: list[Any] = []

        def progress(done: int, total: int) -> None:
            if not bar:
                pb = click.progressbar(length=total, label=f"decoding {path}", file=sys.stderr, show_eta=True)
                bar.extend((stack.enter_context(pb), 0))
            bar[0].update(done - bar[1])
            bar[1] = done

        show = not quiet and box is None
        summary = export_region(slide, output, box, scale, quiet=True, progress=progress if show else None)
    if not quiet:
        click.echo(
            f"{summary['path']}: {summary['width']} x {summary['height']} px, {summary['format']}, "
            f"{summary['bytes']} bytes"
        )


class NullSink:
    """A write-only sink for a silenced progress bar (the benchmarks use it too)."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


if __name__ == "__main__":  # pragma: no cover
    main()
