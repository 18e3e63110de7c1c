"""``cinr encode``: a slide or image to a ``.cinr`` file, with progress and a summary."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import click

from ..coding.registry import DEFAULT_MODEL, get_codec, model_kinds, storage_settings
from ..errors import CinrError
from .common import NullSink, check_output, fmt, handle_errors, json_safe


@click.command("encode")
@click.argument("slides", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option(
    "-o",
    "--output",
    default=None,
    help="Output .cinr file  [default: SLIDE's name with .cinr, in the current folder]",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Folder for the outputs (each SLIDE's name with .cinr), for several slides  [default: .]",
)
@click.option("--level", default=0, show_default=True, help="Source level to encode (0 = full resolution).")
@click.option(
    "--model",
    type=click.Choice(list(model_kinds())),
    default=DEFAULT_MODEL,
    show_default=True,
    help="Block representation: ccinr (compressive: entropy-coded latent grids, the codec), or the "
    "hash-grid networks cinr, ngp, engp (the paper's; files larger than JPEG).",
)
@click.option(
    "--preset",
    default=None,
    help="For the hash-grid models a recipe: fast (CPU, tests and demos), default (CPU, better), high "
    "(GPU, best), paper (the authors'); for ccinr a quality level q1 ... q8 (as --quality)  "
    "[default: fast; for ccinr q4, aimed at --slide-psnr]",
)
@click.option(
    "--quality",
    type=click.Choice([f"q{i}" for i in range(1, 9)] + [str(i) for i in range(1, 9)]),
    default=None,
    help="ccinr quality level 1 (smallest files) ... 8 (best); the same as --preset qN "
    "(with --target-psnr: the first guess of each block's search; with --slide-psnr: the first block's "
    "level)  [default: aim the slide at --slide-psnr from level 4]",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Optimiser steps per block  [default: the preset's; ccinr 2400 on a GPU, on a CPU 270, or up "
    "to 600 on a slide with less tissue than the bundled sample's, so that it trains no longer]",
)
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
    help="Hash-grid models: a block stops once it reaches this PSNR (dB); ccinr: each block searches "
    "the rate weight that reaches it with the fewest bits (up to 3 fits), starting from --quality or, "
    "without it, from the level whose typical PSNR reaches the target  [default: none]",
)
@click.option(
    "--slide-psnr",
    type=float,
    default=None,
    help="ccinr: fit one block first at --quality's level, then every other block at the one rate "
    "weight predicted to put the slide's PSNR over tissue at this many dB, never a lower weight than "
    "the level's (never more bits), corrected for the last two thirds of the blocks by the first "
    "third's fits; a slide that then lands under this or 35 dB, the lower, has those blocks fitted "
    "again at the weight their errors put 0.3 dB over it  [default, when neither --quality nor "
    "--target-psnr is given: "
    "chosen per slide in 35.75-38 dB where the file is predicted smallest against a JPEG pyramid "
    "of the slide (36 where that gains under 1 %); a --quality alone keeps its level's weight for "
    "every block]",
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
    type=click.Choice(list(storage_settings())),
    default=None,
    help="Storage setting of the block representation  [default: the representation's; int8+float16 "
    "(hash tables + network weights) for cinr, ngp, engp]",
)
@click.option(
    "--block-size",
    type=int,
    default=None,
    help="Block side in pixels (multiple of 16)  [default: 1024; 512 for ccinr]",
)
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
    help="Fit in this process with this many CPU threads for PyTorch  [default: for ccinr on a CPU one "
    "worker process of one thread per core other processes leave free; otherwise those cores as "
    "threads, re-measured before each block]",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Fit ccinr blocks on the CPU in this many local worker processes of one thread each  [default: "
    "one per core other processes leave free, measured at the start]",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Fit the blocks on a local Dask cluster of this many worker processes, one thread each "
    "(needs dask's distributed: pip install -e '.[dask]')",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Fit the blocks on the Dask cluster of this scheduler (tcp://host:8786); its workers must "
    "see SLIDE at the same path",
)
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted encode from its journal (OUTPUT.journal)."
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse a level of more pixels than this  [default: 2^36 (about 69 gigapixels), and at most "
    "1024 pixels per byte of the file beyond 2^28 (a declared size absurd for the file); a number "
    "replaces both rules]",
)
@click.option("-f", "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors (and --json output).")
@handle_errors
def encode_cmd(
    slides: tuple[str, ...],
    output: str | None,
    out_dir: str | None,
    level: int,
    model: str,
    preset: str | None,
    quality: str | None,
    steps: int | None,
    time_budget: float | None,
    total_time_budget: float | None,
    target_psnr: float | None,
    slide_psnr: float | None,
    device: str,
    quant: str | None,
    block_size: int | None,
    margin: int,
    no_tissue_mask: bool,
    no_mips: bool,
    seed: int,
    workers: int | None,
    scheduler: str | None,
    resume: bool,
    threads: int | None,
    processes: int | None,
    max_pixels: int | None,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Encode whole-slide images (any OpenSlide format, or PNG/JPEG/TIFF) as .cinr files.

    Several SLIDES are encoded one after the other (sharing one cluster with --workers or
    --scheduler): a slide that fails is reported and the others go on; the exit status is 2 when
    any failed."""
    import os

    from ..encode.journal import journal_path
    from ..encode.slide import encode_slide

    codec = get_codec(model)
    latent = codec.name == "latent"
    if quality is not None:
        if not latent:
            raise ValueError(f"--quality is for --model ccinr; --model {model} takes --preset")
        if preset is not None:
            raise ValueError("give --quality or --preset, not both")
        preset = quality if quality.startswith("q") else f"q{quality}"
    elif latent and target_psnr is not None and preset is None:
        from ..encode.train.latent import quality_for_psnr

        preset = quality_for_psnr(target_psnr)  # its latent step suits the target
    if slide_psnr is not None and not latent:
        raise ValueError(f"--slide-psnr is for --model ccinr; --model {model} has no rate weight to aim")
    # No preset: the library's default (for ccinr, the default level aimed at --slide-psnr's default).
    if latent:
        from ..decode.cache import tune_allocator

        # ccinr training re-allocates the same large tensors every step; with glibc's default a
        # 1024^2 block's step spent 1.7 of 4.2 s page-faulting (3.1 s tuned, +19 % peak memory).
        tune_allocator(1 << 30)
    if output is not None and (len(slides) > 1 or out_dir is not None):
        raise ValueError("-o names one output; for several slides give --out-dir")
    outs = [
        output
        or os.path.join(out_dir or "", os.path.splitext(os.path.basename(os.path.normpath(sl)))[0] + ".cinr")
        for sl in slides
    ]
    if len(set(map(os.path.abspath, outs))) < len(outs):
        raise ValueError("two slides have the same name: their outputs would collide; encode them separately")
    for out in outs:
        check_output(out, overwrite, ".cinr")
    if out_dir is not None:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{out_dir}: cannot make the output folder: {exc.strerror or exc}") from None
    show = not quiet and not as_json
    sink = sys.stderr if show else NullSink()
    state: dict[str, Any] = {"bar": None, "done": 0, "processes": processes or 1}
    why = "worker processes" if processes is not None else "one worker process per free core"

    def progress(ev: dict[str, Any]) -> None:
        stage = ev.get("stage")
        if stage == "start":
            pool = state["processes"]
            bar = click.progressbar(
                length=ev["total"],
                label=f"encoding {ev['total']} blocks ({ev['tissue_blocks']} with tissue)"
                + (f", {pool} at a time ({why})" if pool > 1 else ""),
                file=sink,  # type: ignore[arg-type]
                show_pos=True,
                show_eta=True,
            )
            bar.__enter__()
            if ev["done"]:
                bar.update(ev["done"])
            state["bar"] = bar
        elif stage in ("floor", "trim"):  # a second pass over the slide's blocks
            if state["bar"] is not None:
                state["bar"].__exit__(None, None, None)
            n = ev["total"]
            bar = click.progressbar(
                length=n,
                # floor: landed under its floor, fitted again; trim: over its aim, latents searched again
                label=f"the slide is under its floor: fitting {n} blocks again"
                if stage == "floor"
                else f"the slide is over its aim: searching {n} blocks' latents again",
                file=sink,  # type: ignore[arg-type]
                show_pos=True,
                show_eta=True,
            )
            bar.__enter__()
            state["bar"] = bar
        elif stage == "block" and state["bar"] is not None:
            p = ev.get("psnr")
            what = "background" if ev["kind"] == "background" else f"{fmt(p, ' dB')}"
            state["bar"].label = f"block {ev['block_id'] + 1}/{ev['total']}: {what}"
            state["bar"].update(1)
        elif stage == "write" and state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
            state["bar"] = None

    if workers is not None and scheduler is not None:
        raise ValueError("give --workers (a local cluster) or --scheduler (a running one), not both")
    if (workers is not None or scheduler is not None) and threads is not None:
        raise ValueError("on a cluster each block is fitted with one thread; --threads is for a local encode")
    if processes is not None:
        from ..core.render import resolve_device

        if workers is not None or scheduler is not None:
            raise ValueError(
                "give --processes (local workers) or --workers/--scheduler (a cluster), not both"
            )
        if threads is not None:
            raise ValueError(
                "give --processes (worker processes of one thread) or --threads (in this process), not both"
            )
        if not latent:
            raise ValueError(f"--processes is for --model ccinr; --model {model} fits with --threads")
        if resolve_device(device).type != "cpu":
            raise ValueError("--processes is for fits on the CPU")
    stack = contextlib.ExitStack()
    client = None
    if workers is not None or scheduler is not None:
        from ..encode.cluster import cluster_client, dashboard_link

        client = stack.enter_context(cluster_client(workers, scheduler))
        link = dashboard_link(client)
    if client is None and threads is None and latent and processes is None:
        from ..core.render import resolve_device

        if resolve_device(device).type == "cpu":
            from ..core.threads import CpuMonitor

            # A ccinr fit runs on one core (its training kernels are single-threaded): one worker
            # process per core that other processes leave free.
            processes = CpuMonitor().threads()
            state["processes"] = processes
    failed: list[tuple[str, str]] = []
    try:
        if client is not None and show:
            where = scheduler or f"a local cluster of {workers} worker processes"
            click.echo(f"encoding on {where}" + (f" (dashboard: {link})" if link else ""), err=True)
        for i, (slide, out) in enumerate(zip(slides, outs, strict=True)):
            if show and len(slides) > 1:
                click.echo(f"slide {i + 1} of {len(slides)}: {slide}", err=True)
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
                    slide_psnr=slide_psnr,
                    device=device,
                    quant=quant,
                    block_size=block_size,
                    margin=margin,
                    tissue_mask=not no_tissue_mask,
                    mips=not no_mips,
                    seed=seed,
                    resume=resume,
                    threads=None if client is not None else "auto" if threads is None else threads,
                    progress=progress,
                    max_pixels=max_pixels,
                    client=client,
                    processes=processes,
                )
            except KeyboardInterrupt:
                if state["bar"] is not None:
                    state["bar"].__exit__(None, None, None)
                    state["bar"] = None
                jp = journal_path(out)
                click.echo(
                    f"cinr: interrupted; finished blocks are kept in {jp}: run the same command with --resume",
                    err=True,
                )
                sys.exit(130)
            except (CinrError, ValueError) as exc:
                if len(slides) == 1:
                    raise
                if state["bar"] is not None:
                    state["bar"].__exit__(None, None, None)
                    state["bar"] = None
                click.echo(f"cinr: error: {slide}: {exc}", err=True)
                failed.append((slide, str(exc)))
                if as_json:
                    click.echo(json.dumps({"source": slide, "path": out, "error": str(exc)}))
                continue
            finally:
                if state["bar"] is not None:
                    state["bar"].__exit__(None, None, None)
                    state["bar"] = None
            if as_json:
                click.echo(json.dumps({k: json_safe(v) for k, v in summary.items()}))
            elif not quiet:
                _print_summary(summary)
    finally:
        stack.close()
    if failed:
        click.echo(
            f"cinr: {len(failed)} of {len(slides)} slides failed: {', '.join(f for f, _ in failed)}", err=True
        )
        sys.exit(2)


def _jpeg_line(s: dict[str, Any]) -> str:
    """The summary's comparison with a 256-px JPEG-tiled pyramid of the same level."""
    if s.get("jpeg_q80_bytes") is None:
        return "not measured (no tissue block, or blocks journaled by an older encoder)"
    at_q80 = f"q80 {s['jpeg_q80_bytes']:,} bytes at {fmt(s['jpeg_q80_psnr'], ' dB')} over tissue"
    if s.get("jpeg_equal_psnr_bytes") is None:
        qs, ps, bs = s.get("jpeg_qualities") or [], s.get("jpeg_psnr") or [], s.get("jpeg_bytes") or []
        if qs and ps and bs and s.get("psnr") is not None and s["psnr"] > max(ps):
            # Above every JPEG quality's PSNR (a JPEG-sourced slide re-encoded on another grid
            # loses much): the best JPEG is still a yardstick, at a lower PSNR.
            best = max(range(len(ps)), key=lambda i: ps[i])
            return (
                f"{at_q80}; this file's PSNR is above JPEG q{qs[best]}'s "
                f"({fmt(ps[best], ' dB')}, {bs[best]:,} bytes): this file is {s['bytes'] / bs[best]:.2f}x of it"
            )
        return f"{at_q80}; this file's PSNR lies outside JPEG q20-q95's"
    return (
        f"{at_q80}; at this file's PSNR {s['jpeg_equal_psnr_bytes']:,} bytes: "
        f"this file is {s['vs_jpeg_pyramid']:.2f}x of it"
    )


def _aim_line(s: dict[str, Any]) -> str:
    """The summary's PSNR aim and the rate weight it gave the blocks after the first."""
    from ..encode.train.latent import lambda_of

    level = lambda_of(s["preset"])
    lam = s["rate_weight"]
    how = (
        f"{s['preset']}'s: the slide was predicted under the aim, and the aim never lowers the weight"
        if lam <= level
        else f"{lam / level:.2f}x {s['preset']}'s"
    )
    chosen = " (chosen from the slide's JPEG curve)" if s.get("aim_chosen") else ""
    line = f"{s['slide_psnr']:.2f} dB over tissue{chosen}: rate weight {lam:.3g} ({how})"
    if s.get("requant_credit"):
        line += f", the blocks' own error aimed {s['requant_credit']:.2f} dB lower (re-quantized to the source's JPEG)"
    if s.get("corrected_rate_weight"):
        rest = s["corrected_rate_weight"]
        line += (
            f", corrected by the calibration blocks' fits to {rest:.3g} ({rest / level:.2f}x) for the rest"
        )
    if s.get("floor_rate_weight"):
        again = s["floor_rate_weight"]
        line += (
            f"; landed under the floor, so those blocks were fitted again at {again:.3g} "
            f"({again / level:.2f}x {s['preset']}'s)"
        )
    if s.get("trim_factor"):
        line += (
            f"; landed over the aim, so the later blocks' latents were searched again at "
            f"{s['trim_factor']:.2f}x their weights"
        )
    if s.get("finer_step"):
        from ..encode.aim import SLIDE_PSNR_FLOOR

        floor = min(float(s["slide_psnr"]), SLIDE_PSNR_FLOOR)
        line += f"; stored at a finer latent step, as the level's predicted the slide under {floor:g} dB"
    return line


def _steps(s: dict[str, Any]) -> str:
    """The summary's training steps: a block's and all blocks' together."""
    if s.get("block_steps") is None:
        return f"{s['steps']} steps"
    return f"{s['block_steps']} steps a block, {s['steps']} in all"


def _print_summary(s: dict[str, Any]) -> None:
    """The human-readable summary of one encoded slide."""
    rows = [
        ("output", s["path"]),
        ("dimensions", f"{s['width']} x {s['height']} (level {s['level']})"),
        ("model", f"{s['model']} / {s['preset']}, {s['quant']}, device {s['device']}"),
        *([("aim", _aim_line(s))] if s.get("slide_psnr") is not None and s.get("rate_weight") else []),
        (
            "blocks",
            f"{s['blocks']} of {s['block_size']} px: {s['tissue_blocks']} tissue, "
            f"{s['background_blocks']} background (tissue fraction {s['tissue_fraction']:.1%})",
        ),
        ("PSNR tissue", f"{fmt(s['psnr'], ' dB')}  (all pixels {fmt(s['psnr_all'], ' dB')})"),
        ("SSIM tissue", fmt(s["ssim"], "", 4)),
        (
            "seams",
            f"PSNR {fmt(s['psnr_border'], ' dB')} in 16-px strips along block borders, "
            f"{fmt(s['psnr_adjacent'], ' dB')} in the 32 px next to them, {fmt(s['psnr_interior'], ' dB')} in block interiors",
        ),
        (
            "size",
            f"{s['bytes']:,} bytes (models {s['model_bytes']:,}, mips {s['mip_bytes']:,}, "
            f"associated images {s['associated_bytes']:,})",
        ),
        ("bits/pixel", f"{fmt(s['bpp_tissue'], '', 3)} over tissue, {s['bpp']:.3f} over the slide"),
        (
            "compression",
            f"{fmt(s['compression_ratio'], 'x', 2)} against the source file ({s['source_bytes']:,} bytes, "
            f"{8.0 * s['source_bytes'] / (s['width'] * s['height']):.3f} bits/pixel of this level)",
        ),
        ("JPEG pyramid", _jpeg_line(s)),
        ("time", f"{s['seconds']:.1f} s ({_steps(s)})"),
    ]
    for k, v in rows:
        click.echo(f"{k:>12}: {v}")
