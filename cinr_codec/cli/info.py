"""``cinr info``: a ``.cinr`` file's metadata, blocks and quality figures (no torch)."""

from __future__ import annotations

import json
from typing import Any

import click

from .common import handle_errors


@click.command("info")
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="Also print the whole header and footer.")
@handle_errors
def info_cmd(path: str, as_json: bool, verbose: bool) -> None:
    """Print a readable summary of a .cinr file: image, encoding, blocks, quality and size."""

    import numpy as np

    from ..format.container import CinrReader
    from ..format.container.binary import KIND_BACKGROUND, KIND_IMAGE, KIND_MODEL
    from ..format.header import describe, parse_layout

    with CinrReader(path) as reader:
        meta = reader.metadata
        # numpy over the index: a file of 2^22 blocks is summarised in about a second
        codes, lengths = reader.kind_codes(), reader.stored_lengths()
        layout = parse_layout(reader)  # CinrFormatError (exit 2) when the header is not a slide's
        about = describe(reader.header, reader.footer)
        mips = layout.mips
        n = layout.n_blocks
        level, level_lengths = codes[:n], lengths[:n]
        quality = about.quality
        summary = {
            "path": path,
            "bytes": reader.file_size,
            "version": list(reader.version),
            "blocks": reader.n_blocks,
            "model_blocks": int(np.count_nonzero(codes == KIND_MODEL)),
            "associated_images": sorted(reader.associated_images),
            "derived_images": {k: list(v) for k, v in sorted(about.derived_images.items())},
            "source_jpeg": _source_jpeg(reader.header, path),
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
                "model": int(np.count_nonzero(level == KIND_MODEL)),
                "background": int(np.count_nonzero(level == KIND_BACKGROUND)),
            },
            "model_bytes": int(level_lengths[level == KIND_MODEL].sum()),
            "mips": [
                {
                    "downsample": d,
                    "image_blocks": int(np.count_nonzero(codes[n * (1 + k) : n * (2 + k)] == KIND_IMAGE)),
                    "bytes": int(lengths[n * (1 + k) : n * (2 + k)].sum()),
                }
                for k, d in enumerate(mips)
            ],
            "associated_image_bytes": {k: v.length for k, v in sorted(reader.associated_images.items())},
            "bpp": 8.0 * reader.file_size / (layout.width * layout.height),
            "quality": quality,
            "metadata": meta,
        }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo("\n".join(_text(summary, about)))
    if verbose:
        click.echo(json.dumps(meta, indent=2, sort_keys=True))
    else:
        click.echo("(the whole header and footer: --verbose, or --json for machines)")


def _num(v: Any, digits: int) -> str:
    """A stored figure rounded, or "unknown" (absent, not a number, infinite or too large)."""
    from ..format.header import finite

    f = finite(v)
    return f"{f:.{digits}f}" if f is not None else "unknown"


def _text(s: dict[str, Any], about: Any) -> list[str]:
    """The readable summary of ``cinr info``: one labelled line per subject."""
    q = s["quality"]
    mpp = s["mpp"]
    where = [f"{s['width']} x {s['height']} px (level {s['level']} of the source)"]
    if mpp[0] is not None and mpp[1] is not None:
        where.append(f"{mpp[0]:.4g} x {mpp[1]:.4g} µm per pixel")
    if about.objective_power is not None:
        where.append(f"objective {about.objective_power:g}x")
    if about.vendor:
        where.append(f"from {about.vendor}")
    storage = f", {s['quantization']}" if s["quantization"] else ""
    software = f" ({about.software})" if about.software else ""
    g, lb = s["grid"], s["level_blocks"]
    margin = f", fitted with {g['margin']} px of margin" if g["margin"] else ""
    lines = [
        f"{'file':>9}: {s['path']}, {s['bytes']:,} bytes, format {s['version'][0]}.{s['version'][1]}",
        f"{'image':>9}: " + "; ".join(where),
        f"{'encoding':>9}: {s['model']}/{s['preset']}{storage}{software}",
        f"{'blocks':>9}: {g['cols']} x {g['rows']} blocks of {g['block_size']} px{margin}: "
        f"{lb['model']} fitted by the model, {lb['background']} background (no tissue: stored as one colour)",
    ]
    quality = f"PSNR {_num(q.get('psnr_db'), 2)} dB, SSIM {_num(q.get('ssim'), 4)}"
    if "psnr_all_db" in q:
        quality = (
            f"over tissue PSNR {_num(q.get('psnr_db'), 2)} dB, SSIM {_num(q.get('ssim'), 4)}; "
            f"all pixels {_num(q.get('psnr_all_db'), 2)} dB"
        )
    lines.append(f"{'quality':>9}: {quality} (against the source, after storage)")
    if s["source_jpeg"] is not None:
        sj = s["source_jpeg"]
        lines.append(
            f"{'decoding':>9}: on the source's JPEG lattice ({sj['tile']}-px tiles, {sj['transform']} "
            f"{_subsampling(sj['sampling'])}, spread {_spread(sj['spread'])})"
        )
    if "psnr_border_db" in q:
        lines.append(
            f"{'':>9}  block borders {_num(q.get('psnr_border_db'), 2)} dB, next to them "
            f"{_num(q.get('psnr_adjacent_db'), 2)} dB, interiors {_num(q.get('psnr_interior_db'), 2)} dB"
        )
    parts = [f"models {s['model_bytes']:,} B"]
    mip_bytes = sum(m["bytes"] for m in s["mips"])
    if s["mips"]:
        parts.append(
            f"mips {mip_bytes:,} B (1/{s['mips'][0]['downsample']} ... 1/{s['mips'][-1]['downsample']})"
        )
    assoc = s["associated_image_bytes"]
    if assoc:
        parts.append(f"associated images {sum(assoc.values()):,} B ({', '.join(assoc)})")
    for name, (w, h) in s["derived_images"].items():
        parts.append(f"{name} {w}x{h} rendered from the slide")
    other = s["bytes"] - s["model_bytes"] - mip_bytes - sum(assoc.values())
    parts.append(f"header, index and the rest {other:,} B")
    lines.append(f"{'size':>9}: {s['bpp']:.3f} bits per pixel; " + ", ".join(parts))
    return lines


def _source_jpeg(header: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The header's ``slide.source_jpeg`` (tile, transform, sampling, spread), checked as readers
    check it (``CinrFormatError``), or None."""
    from ..core.requant import source_jpeg_of

    sj = source_jpeg_of(header, where)
    if sj is None:
        return None
    shown = sj.to_header()
    del shown["tables"]
    return shown


def _spread(spread: float | list[list[float]]) -> str:
    """A spread for people: the number, or the range of a per-coefficient one."""
    if isinstance(spread, list):
        values = [v for t in spread for v in t]
        return f"{min(values):g}-{max(values):g} by coefficient"
    return f"{spread:g}"


def _subsampling(sampling: list[list[int]]) -> str:
    """JPEG sampling factors as the usual J:a:b name (4:4:4, 4:2:2, 4:2:0), else the factors."""
    names = {"1x1 1x1 1x1": "4:4:4", "2x1 1x1 1x1": "4:2:2", "2x2 1x1 1x1": "4:2:0"}
    factors = " ".join(f"{h}x{v}" for h, v in sampling)
    return names.get(factors, factors)
