"""Rate-distortion benchmark, one image: cinr fits and stores, ccinr encodes, codec sweeps, source and
pyramid sizes, BD-rates, bits per pixel at a PSNR."""

from __future__ import annotations

import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cinr_codec.encode.train.presets import get_preset

from .bdrate import bd_rate, rate_at
from .rd_cinr import encode_ccinr, fit_cinr, store_cinr
from .rd_codecs import Codec, sweep
from .rd_sources import PYRAMID_QUALITIES, jpeg_pyramid, read_region, source_tiles

__all__ = [
    "BD_WINDOW",
    "BPP_AT_PSNR",
    "Config",
    "bd_rates",
    "bpp_at",
    "cinr_target",
    "equal_psnr",
    "mean_bd",
    "planned_work",
    "run_image",
]

#: PSNR window (dB) of the ccinr BD-rates: the part of the curves' overlap inside it counts.
BD_WINDOW = (34.0, 40.0)
#: PSNR (dB) at which ``bpp_at`` reads each curve.
BPP_AT_PSNR = 37.5
#: The neural codecs' rows (the codec sweeps cover their range).
NEURAL = ("cinr", "ccinr")


def cinr_target(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """The bpp and PSNR range of the cinr and ccinr rows (what the codec sweeps should cover)."""
    pts = [r for r in rows if r["psnr"] is not None and r["codec"] in NEURAL]
    if not pts:
        return None
    return {
        "bpp_min": min(r["bpp"] for r in pts),
        "bpp_max": max(r["bpp"] for r in pts),
        "psnr_min": min(r["psnr"] for r in pts),
        "psnr_max": max(r["psnr"] for r in pts),
    }


def bd_rates(
    rows: list[dict[str, Any]],
    codecs: Sequence[str],
    preset: str | None = None,
    *,
    model: str = "cinr",
    window: tuple[float, float] | None = None,
) -> dict[str, float | None]:
    """BD-rate (%) of ``model``'s rows (all presets, or one) against each codec, from one image's rows.

    ``window``: PSNR interval (dB) the BD integral is restricted to (``bdrate.bd_rate``).
    """
    cinr = [r for r in rows if r["codec"] == model and (preset is None or r["preset"] == preset)]
    out: dict[str, float | None] = {}
    for c in codecs:
        anchor = [r for r in rows if r["codec"] == c]
        out[c] = bd_rate(
            [r["bpp"] for r in anchor],
            [r["psnr"] for r in anchor],
            [r["bpp"] for r in cinr],
            [r["psnr"] for r in cinr],
            window,
        )
    return out


def bpp_at(rows: list[dict[str, Any]], codecs: Sequence[str], psnr: float) -> dict[str, float | None]:
    """Bits per pixel each codec's rate-distortion front needs for ``psnr`` (None outside its range)."""
    out: dict[str, float | None] = {}
    for c in codecs:
        pts = [r for r in rows if r["codec"] == c]
        out[c] = rate_at([r["bpp"] for r in pts], [r["psnr"] for r in pts], psnr)
    return out


def equal_psnr(rows: list[dict[str, Any]], codecs: Sequence[str]) -> list[dict[str, Any]]:
    """For each cinr and ccinr point: the bpp each codec needs for the same PSNR (None outside its range)."""
    out = []
    for r in rows:
        if r["codec"] not in NEURAL or r["psnr"] is None:
            continue
        entry = {
            "codec": r["codec"],
            "setting": r["setting"],
            "bpp": r["bpp"],
            "psnr": r["psnr"],
            "codecs": {},
        }
        for c in codecs:
            pts = [q for q in rows if q["codec"] == c]
            entry["codecs"][c] = rate_at([q["bpp"] for q in pts], [q["psnr"] for q in pts], r["psnr"])
        out.append(entry)
    return out


@dataclass
class Config:
    """What to run."""

    size: int
    region: str
    presets: list[str]
    quants: list[str]
    steps: dict[str, int | None]
    codecs: dict[str, Codec]
    quick: bool
    device: str
    seed: int
    pyramid: bool = True
    qualities: list[str] = field(default_factory=list)  # ccinr quality levels (none: no ccinr)
    ccinr_steps: int | None = None  # None: the ccinr recipe's steps
    jobs: int = 1  # ccinr encodes run in this many worker processes (one torch thread each)


def planned_work(cfg: Config) -> int:
    """Progress-bar units for one image: cinr fits and stores, ccinr encodes, codec settings, pyramids."""
    n = len(cfg.presets) * (1 + len(cfg.quants)) + len(cfg.qualities)
    for c in cfg.codecs.values():
        n += len(c.quick if cfg.quick else c.base) + len(c.low) + len(c.high)
    return n + (len(PYRAMID_QUALITIES) if cfg.pyramid else 0)


def run_image(path: Path, label: str, cfg: Config, bar: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Everything for one image: region, cinr fits and stores, ccinr encodes, codec sweeps, source and
    pyramid sizes, BD-rates."""
    t_image = time.perf_counter()
    region, where = read_region(path, cfg.size, cfg.region)
    h, w = region.shape[:2]
    n = w * h
    log(f"{label}: {w}x{h} region at ({where['x']}, {where['y']}), {where['how']}")
    rows: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []

    def step(what: str) -> None:
        bar.label = f"{label}: {what}"
        bar.update(1)
        log(f"  {what}")

    with tempfile.TemporaryDirectory() as tmp:
        # The ccinr encodes start first, in worker processes when cfg.jobs > 1, and the hash-grid
        # fits run beside them.
        started = _start_ccinr(region, Path(tmp), cfg)
        try:
            rows += _hashgrid_rows(region, Path(tmp), cfg, fits, label, bar, step)
            rows += _ccinr_rows(region, Path(tmp), cfg, started, label, bar, step)
        finally:
            if started is not None:
                started[0].shutdown(cancel_futures=True)
    target = cinr_target(rows)
    coverage = {}
    for name, codec in cfg.codecs.items():
        codec_rows, coverage[name] = sweep(
            codec, region, codec.quick if cfg.quick else codec.base, target, step
        )
        rows += codec_rows
    pyramids = []
    if cfg.pyramid:
        for q in PYRAMID_QUALITIES:
            try:
                pyramids.append(jpeg_pyramid(region, q))
            except Exception as exc:  # noqa: BLE001 - libvips problems skip this part only
                log(f"  JPEG pyramid Q{q} skipped: {exc.__class__.__name__}: {exc}")
            step(f"JPEG pyramid Q{q}")
    for r in rows:
        r["image"] = label
    names = list(cfg.codecs)
    curves = (["cinr"] if cfg.presets else []) + (["ccinr"] if cfg.qualities else []) + names
    return {
        "image": label,
        "path": str(path),
        "region": where,
        "pixels": n,
        "source_tiles": source_tiles(path, where),
        "pyramid": pyramids,
        "cinr_fits": fits,
        "coverage": coverage,
        "rows": rows,
        "bd_rate": bd_rates(rows, names),
        "bd_rate_default_preset": bd_rates(rows, names, "default") if "default" in cfg.presets else {},
        "bd_rate_ccinr": bd_rates(rows, names, model="ccinr", window=BD_WINDOW),
        "bpp_at_37_5": bpp_at(rows, curves, BPP_AT_PSNR),
        "equal_psnr": equal_psnr(rows, names),
        "seconds": round(time.perf_counter() - t_image, 1),
    }


def _hashgrid_rows(
    region: np.ndarray,
    folder: Path,
    cfg: Config,
    fits: list[dict[str, Any]],
    label: str,
    bar: Any,
    step: Callable[[str], None],
) -> list[dict[str, Any]]:
    """cinr (hash-grid) rows: each preset fitted once and stored at every precision; ``fits`` gets
    one entry per fit."""
    n = region.shape[0] * region.shape[1]
    rows: list[dict[str, Any]] = []
    for preset in cfg.presets:
        steps = cfg.steps.get(preset)
        total = steps if steps is not None else int(get_preset("cinr", preset).train["steps"])
        bar.label = f"{label}: fitting cinr/{preset}"
        bar.update(0)

        def progress(
            step_i: int, seconds: float, est: float, preset: str = preset, total: int = total
        ) -> None:
            if step_i % 50 == 0:
                bar.label = f"{label}: fitting cinr/{preset} step {step_i}/{total}, ~{est:.1f} dB"
                bar.update(0)

        fit = fit_cinr(region, preset, steps, device=cfg.device, seed=cfg.seed, progress=progress)
        fits.append(
            {
                "preset": preset,
                "steps": fit.steps,
                "seconds": round(fit.seconds, 2),
                "fit_psnr": fit.psnr,
                "n_params": fit.n_params,
                "device": fit.device,
            }
        )
        step(f"fit cinr/{preset}: {fit.steps} steps, {fit.seconds:.1f} s, {fit.psnr:.2f} dB before storage")
        for quant in cfg.quants:
            t0 = time.perf_counter()
            s = store_cinr(fit, region, folder / f"{preset}-{quant}.cinr", quant)
            p = s["psnr"] if math.isfinite(s["psnr"]) else None
            rows.append(
                {
                    "codec": "cinr",
                    "setting": f"{preset}/{quant}",
                    "preset": preset,
                    "quant": quant,
                    "bytes": s["bytes"],
                    "payload_bytes": s["payload_bytes"],
                    "bpp": 8.0 * s["bytes"] / n,
                    "psnr": p,
                    "ssim": s["ssim"],
                    "lossless": p is None,
                    "steps": fit.steps,
                    "seconds": round(fit.seconds + time.perf_counter() - t0, 3),
                }
            )
            step(f"cinr {preset}/{quant}: {8.0 * s['bytes'] / n:.3f} bpp, {s['psnr']:.2f} dB")
    return rows


def ccinr_row(
    region: np.ndarray,
    path: Path,
    quality: str,
    steps: int | None,
    device: str,
    seed: int,
    progress: Callable[[int, float, float], None] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Encode ``region`` with ccinr at ``quality`` as ``path``; the result row (``threads``: a
    worker process's call: set torch's CPU threads and tune the allocator first)."""
    from cinr_codec.encode.train.latent import QUALITY_LAMBDAS

    if threads is not None:
        import torch

        from cinr_codec.decode.cache import tune_allocator

        torch.set_num_threads(threads)
        # Training allocates the same large tensors every step, and with glibc's default a
        # 1024^2 step spent 1.7 of 4.2 s in the kernel page-faulting them back (3.1 s tuned; no
        # change at 256^2). Only in a worker: the setting is process-wide.
        tune_allocator(1 << 30)
    t0 = time.perf_counter()
    s = encode_ccinr(region, path, quality, steps, device=device, seed=seed, progress=progress)
    n = region.shape[0] * region.shape[1]
    p = s["psnr"] if math.isfinite(s["psnr"]) else None
    return {
        "codec": "ccinr",
        "setting": quality,
        "preset": quality,
        "quant": "entropy",
        "lambda": QUALITY_LAMBDAS[quality],
        "bytes": int(s["bytes"]),
        "payload_bytes": int(s["payload_bytes"]),
        "bpp": 8.0 * s["bytes"] / n,
        "psnr": p,
        "ssim": s["ssim"],
        "lossless": p is None,
        "steps": int(s["steps"]),
        "train_seconds": round(float(s["seconds"]), 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _start_ccinr(region: np.ndarray, folder: Path, cfg: Config) -> tuple[Any, dict[Any, str]] | None:
    """With ``cfg.jobs`` > 1: a pool of that many worker processes (one torch thread each) already
    encoding every ccinr quality level, and its futures; else None. Each encode is seeded and
    single-threaded, so the rows are those of the sequential run."""
    if cfg.jobs <= 1 or len(cfg.qualities) <= 1:
        return None
    pool = ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=multiprocessing.get_context("spawn"))
    futures = {
        pool.submit(
            ccinr_row, region, folder / f"ccinr-{q}.cinr", q, cfg.ccinr_steps, cfg.device, cfg.seed, None, 1
        ): q
        for q in cfg.qualities
    }
    return pool, futures


def _ccinr_rows(
    region: np.ndarray,
    folder: Path,
    cfg: Config,
    started: tuple[Any, dict[Any, str]] | None,
    label: str,
    bar: Any,
    step: Callable[[str], None],
) -> list[dict[str, Any]]:
    """ccinr rows of every quality level: the started pool's (``_start_ccinr``), or encoded here one
    after the other with progress."""
    from cinr_codec.encode.train.latent import RECIPE

    total = cfg.ccinr_steps if cfg.ccinr_steps is not None else int(RECIPE["steps"])

    def report(row: dict[str, Any]) -> None:
        step(
            f"ccinr {row['setting']}: {row['steps']} steps, {row['seconds']:.1f} s, "
            f"{row['bpp']:.3f} bpp, {row['psnr']:.2f} dB"
        )

    rows: dict[str, dict[str, Any]] = {}
    if started is not None:
        bar.label = f"{label}: ccinr {','.join(cfg.qualities)} in {cfg.jobs} processes, {total} steps each"
        bar.update(0)
        _, futures = started
        for fut in as_completed(futures):
            rows[futures[fut]] = fut.result()
            report(rows[futures[fut]])
        return [rows[q] for q in cfg.qualities]
    for quality in cfg.qualities:
        bar.label = f"{label}: ccinr/{quality}"
        bar.update(0)

        def progress(step_i: int, seconds: float, est: float, quality: str = quality) -> None:
            if step_i % 50 == 0:
                bar.label = f"{label}: ccinr/{quality} step {step_i}/{total}, ~{est:.1f} dB"
                bar.update(0)

        path = folder / f"ccinr-{quality}.cinr"
        rows[quality] = ccinr_row(region, path, quality, cfg.ccinr_steps, cfg.device, cfg.seed, progress)
        report(rows[quality])
    return [rows[q] for q in cfg.qualities]


def mean_bd(images: list[dict[str, Any]], key: str, codecs: Sequence[str]) -> dict[str, float | None]:
    """Mean over images of the defined per-image BD-rates."""
    out: dict[str, float | None] = {}
    for c in codecs:
        vals = [im[key][c] for im in images if im[key].get(c) is not None]
        out[c] = float(np.mean(vals)) if vals else None
    return out
