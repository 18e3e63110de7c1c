"""``cinr decode``: a region of a ``.cinr`` slide, at any scale, to an image file."""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

import click

from .common import check_output, handle_errors


class ScaleType(click.ParamType):
    """A scale as a number (0.25) or a fraction (1/4), as downsample factors are written."""

    name = "scale"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        try:
            num, _, den = text.partition("/")
            return float(num) / float(den) if den else float(num)
        except (ValueError, ZeroDivisionError):
            self.fail(f"{text!r} is not a number or a fraction such as 0.25 or 1/4", param, ctx)


@click.command("decode")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, help="Output image: .png, .jpg, .tif or .webp.")
@click.option(
    "--region", default=None, metavar="X,Y,W,H", help="Region in level-0 pixels [default: the whole slide]."
)
@click.option(
    "--scale",
    type=ScaleType(),
    default=1.0,
    show_default=True,
    help="Output pixels per level-0 pixel, in (0, 4]: a number or a fraction (0.25 or 1/4).",
)
@click.option("-f", "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for PyTorch  [default: the cores other processes leave free, re-measured as blocks decode]",
)
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@handle_errors
def decode_cmd(
    path: str,
    output: str,
    region: str | None,
    scale: float,
    overwrite: bool,
    threads: int | None,
    quiet: bool,
) -> None:
    """Decode a .cinr slide, or a region of it at any scale, to an image (written atomically).

    The format follows OUTPUT's extension; .tif/.tiff is a tiled pyramidal TIFF (JPEG tiles)
    that OpenSlide opens: for the whole slide an Aperio-layout TIFF with the slide's levels,
    objective power, mpp, vendor properties, label, macro and thumbnail. Whole-slide exports are
    streamed in strips (bounded memory).
    """

    from ..api import open_cinr
    from ..decode.cache import tune_allocator
    from ..export import export_region

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
    check_output(output, overwrite)
    with open_cinr(path, threads=threads) as slide, contextlib.ExitStack() as stack:
        if box is not None:
            w0, h0 = slide.dimensions
            x, y, w, h = box
            if w > 0 and h > 0 and (x >= w0 or y >= h0 or x + w <= 0 or y + h <= 0):
                click.echo(
                    f"cinr: warning: region {region} lies wholly outside the {w0} x {h0} slide; "
                    "the output is background",
                    err=True,
                )
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
