"""``cinr info``: a ``.cinr`` file's metadata, blocks and quality figures (no torch)."""

from __future__ import annotations

import json

import click

from .common import handle_errors


@click.command("info")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as one JSON object.")
@handle_errors
def info_cmd(path: str, as_json: bool) -> None:
    """Print a .cinr file's metadata, blocks and stored quality figures."""
    import os

    from ..format.container import CinrReader
    from ..format.header import describe, parse_layout

    with CinrReader(path) as reader:
        meta = reader.metadata
        blocks = [reader.block_info(i) for i in range(reader.n_blocks)]
        layout = parse_layout(reader)  # CinrFormatError (exit 2) when the header is not a slide's
        about = describe(reader.header, reader.footer)
        mips = layout.mips
        n = layout.n_blocks
        level = blocks[:n]
        quality = about.quality
        summary = {
            "path": path,
            "bytes": os.path.getsize(path),
            "version": list(reader.version),
            "blocks": reader.n_blocks,
            "model_blocks": sum(1 for b in blocks if b.kind == "model"),
            "associated_images": sorted(reader.associated_images),
            "width": layout.width,
            "height": layout.height,
            "level": about.level,
            "mpp": list(about.mpp),
            "model": about.model,
            "preset": about.preset,
            "quantization": about.storage,
            "grid": {
                "block_size": layout.block_size,
                "margin": layout.margin,
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
        f"{'grid':>17}: {layout.cols} x {layout.rows} blocks of {layout.block_size} px, margin {layout.margin}; "
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
