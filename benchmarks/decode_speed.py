"""Region decoding speed: cinr's SlideDecoder against OpenSlide and pyvips on the source slide.

python -m benchmarks.decode_speed --viewer [...]: the viewer pattern of a ccinr slide against OpenSlide
    (``benchmarks.viewer_speed``: cold tile, 16 DeepZoom tiles, warm tiles; the slides issue's ratios)
python -m benchmarks.decode_speed [--quick] [--slide PATH] [--cinr PATH] [--model ccinr] [--preset q4] [--steps N]
                                  [--sizes 256,512,1024] [--scales 1,1/2,1/4,1/8,1/16,1/32]
                                  [--reads N] [--threads 1,4] [--device auto|cpu|cuda]
                                  [--torch-threads N] [--no-cache] [--json] [--results DIR] [--quiet]

The source slide (default ``../shared/data/CMU-1-Small-Region.svs``, 2220 x 2967, one level) is
encoded once with ``encode_slide`` (the default codec: ``--model ccinr``, preset ``q4``, 512-px
blocks; the hash grids with ``--model cinr|ngp|engp``, preset ``fast``, 1024-px blocks; mips on;
``--quick``: 20 steps per block, since decoding speed does not depend on training) and the ``.cinr`` is cached in
the temporary folder (keyed by the source, the settings and the encoder's code; ``--cinr PATH``
uses a given file, ``--no-cache`` re-encodes).

Reads. For each output size S (256, 512, 1024) and scale s (1 to 1/32) a read covers a square of
S/s level pixels and returns S x S pixels: ``SlideDecoder.read(x, y, S/s, S/s, s)``. Positions are
random (seeded) and inside the slide; where S/s exceeds the slide's side the position is clamped
to 0 on that axis and the read covers the whole slide there plus background (noted in the table).
Per combination ``--reads`` reads (full 12, quick 3), each at a new position:

- cold: ``clear_cache()`` (decoded tiles and loaded models dropped) before the read; the file stays
  open and the OS page cache is warm, so "cold" is the decoder's work, not disk latency;
- warm: the same region read again at once (every tile and model cached);
- lattice: the same reads (cold and warm) with positions moved down to multiples of 1/s level
  pixels, where ``SlideDecoder`` copies or averages whole source pixels instead of area-resampling;
- viewer row (256 px tiles): ``clear_cache()``, then a row of up to 8 adjacent 256 x 256 output tiles
  on a viewer's tile lattice (level positions multiples of 256/s; fewer tiles when the slide is
  narrower); first tile and following tiles reported apart.

Threads: the same decoder (thread-safe) read by 1 and 4 threads, each reading different random
512 x 512 output regions, cache cleared before each batch; throughput in regions per second.

Baselines on the source slide, all returning the same S x S RGB output:

- OpenSlide: ``OpenSlide(src).read_region((x, y), level, (w, h))`` at
  ``get_best_level_for_downsample(1/s)`` for the part of the region inside the slide (OpenSlide
  returns transparent pixels outside), then a box downsample (PIL ``reduce``) by what that level
  leaves and paste on white. The slide has one level, so at s = 1/2 OpenSlide reads 4x the output
  pixels, at 1/32 1024x (up to the whole slide). Timed: read_region + conversion + downsample.
  Cold: a fresh ``OpenSlide`` handle (opened untimed) per read; warm: the same region again on
  that handle (OpenSlide's tile cache).
- pyvips: ``Image.new_from_file(src, access="random")`` (pyvips-binary has no openslide loader, so
  the .svs is read by ``tiffload``; a slide tiffload cannot read is skipped with a note), ``crop``
  of the part inside the slide, ``shrink`` (box) by 1/s, ``write_to_memory``. libvips' operation
  cache is off (``cache_set_max(0)``) so repeats recompute. Cold: a fresh image per read; warm:
  the same region again from the same image object.

The 3x target (the issue): for 512 x 512 output, each scale's median time relative to scale 1's,
cold and warm, at random and at lattice positions; it must be <= 3 at every scale.

``--device cuda`` (or auto with a GPU): ``SlideDecoder(path, device=...)`` runs the block models on
the GPU; baselines stay on the CPU. Writes ``decode_speed_<quick|full>[_cuda].md`` and ``.json``
to ``--results``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .common import RESULTS, SHARED, NullSink, header, library_versions, load_average, publish

DEFAULT_SLIDE = SHARED / "CMU-1-Small-Region.svs"
SIZES = (256, 512, 1024)
SCALES = ("1", "1/2", "1/4", "1/8", "1/16", "1/32")
ROW_TILES = 8
LATTICE = "cinr lattice"  # cinr reads at positions on multiples of 1/scale
TARGET_RATIO = 3.0


# --------------------------------------------------------------------------------------------
# The .cinr under test
# --------------------------------------------------------------------------------------------


#: The packages of ``cinr_codec`` whose code makes a ``.cinr`` file (encoder, models, format).
ENCODER_PACKAGES = ("core", "coding", "encode", "format")


def _code_hash() -> str:
    """Hash of the encoder's source files: a cached .cinr is reused only for the same encoder."""
    import cinr_codec

    root = Path(cinr_codec.__file__).parent
    h = hashlib.sha1()
    for package in ENCODER_PACKAGES:
        for f in sorted((root / package).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def cached_cinr(
    src: Path,
    preset: str,
    steps: int | None,
    block: int | None,
    device: str,
    use_cache: bool,
    scratch: Path,
    log: Callable[[str], None],
    model: str = "cinr",
) -> tuple[Path, dict[str, Any]]:
    """Path of the encoded slide and how it was made (``model`` with ``preset``).

    With ``use_cache`` a copy in ``$TMPDIR/cinr-bench-cache`` made by the same encoder code with
    the same settings is reused (else made there); without, the slide is encoded into ``scratch``.
    """
    if use_cache:
        st = src.stat()
        settings = [str(src.resolve()), st.st_size, st.st_mtime_ns, preset, steps, block, _code_hash()]
        settings += [model] if model != "cinr" else []  # hash-grid keys as before
        key = hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:16]
        cache = Path(tempfile.gettempdir()) / "cinr-bench-cache"
        cache.mkdir(exist_ok=True)
        dst = cache / f"{src.stem}-{model}-{preset}-{steps}-{block}-{key}.cinr"
    else:
        dst = scratch / f"{src.stem}.cinr"
    meta = dst.with_suffix(".json")
    if use_cache and dst.exists() and meta.exists():
        log(f"reusing {dst}")
        return dst, {**json.loads(meta.read_text()), "cached": True}
    from cinr_codec.encode.slide import encode_slide

    log(f"encoding {src.name} ({preset}, {steps or 'preset'} steps per block) ...")
    t = time.perf_counter()
    s = encode_slide(src, dst, model=model, preset=preset, steps=steps, block_size=block, device=device)
    info = {
        "path": str(dst),
        "preset": preset,
        "steps_per_block": steps,
        "block_size": block,
        "blocks": s["blocks"],
        "tissue_blocks": s["tissue_blocks"],
        "psnr": s["psnr"],
        "bytes": s["bytes"],
        "encode_seconds": time.perf_counter() - t,
        "encode_device": s["device"],
    }
    if use_cache:
        meta.write_text(json.dumps(info))
    return dst, {**info, "cached": False}


# --------------------------------------------------------------------------------------------
# Readers: each returns an S x S x 3 uint8 array for the level region (x, y, L, L) at scale s
# --------------------------------------------------------------------------------------------


def _inside(x: int, y: int, L: int, W: int, H: int) -> tuple[int, int, int, int]:
    return max(x, 0), max(y, 0), min(x + L, W), min(y + L, H)


class OpenSlideMethod:
    """OpenSlide ``read_region`` at the best level, box-downsampled to the output size."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        self.slide = openslide.OpenSlide(str(path))
        self.W, self.H = self.slide.dimensions

    def fresh(self) -> OpenSlideMethod:
        return OpenSlideMethod(self.path)

    def level_for(self, scale: float) -> tuple[int, float]:
        level = int(self.slide.get_best_level_for_downsample(1.0 / scale))
        return level, float(self.slide.level_downsamples[level])

    def read(self, x: int, y: int, L: int, size: int, scale: float) -> np.ndarray:
        from PIL import Image

        level, ds = self.level_for(scale)
        x0, y0, x1, y1 = _inside(x, y, L, self.W, self.H)
        w, h = math.ceil((x1 - x0) / ds), math.ceil((y1 - y0) / ds)
        im = self.slide.read_region((x0, y0), level, (w, h))
        f = (1.0 / scale) / ds  # what the level leaves to downsample
        rgb = Image.new("RGB", im.size, (255, 255, 255))
        rgb.paste(im, mask=im.getchannel("A"))
        if f > 1.0:
            k = int(round(f))
            if abs(k - f) < 1e-6:
                rgb = rgb.reduce(k)
            else:
                rgb = rgb.resize((max(1, round(w / f)), max(1, round(h / f))), Image.Resampling.BOX)
        out = np.full((size, size, 3), 255, np.uint8)
        a = np.asarray(rgb)
        ox, oy = round((x0 - x) * scale), round((y0 - y) * scale)
        hh, ww = min(a.shape[0], size - oy), min(a.shape[1], size - ox)
        out[oy : oy + hh, ox : ox + ww] = a[:hh, :ww]
        return out

    def close(self) -> None:
        self.slide.close()


class VipsMethod:
    """libvips: crop of the part inside the slide, ``shrink`` (box) by 1/scale."""

    name = "pyvips"

    def __init__(self, path: Path) -> None:
        import pyvips

        pyvips.cache_set_max(0)
        self.path = path
        self.img = pyvips.Image.new_from_file(str(path), access="random")
        self.loader = str(self.img.get("vips-loader"))
        self.W, self.H = self.img.width, self.img.height
        if self.img.bands == 4:
            self.img = self.img.flatten(background=255)

    def fresh(self) -> VipsMethod:
        return VipsMethod(self.path)

    def read(self, x: int, y: int, L: int, size: int, scale: float) -> np.ndarray:
        x0, y0, x1, y1 = _inside(x, y, L, self.W, self.H)
        region = self.img.crop(x0, y0, x1 - x0, y1 - y0)
        f = 1.0 / scale
        if f > 1.0:
            region = region.shrink(f, f)
        a = np.ndarray(
            buffer=region.write_to_memory(), dtype=np.uint8, shape=(region.height, region.width, region.bands)
        )[..., :3]
        out = np.full((size, size, 3), 255, np.uint8)
        ox, oy = round((x0 - x) * scale), round((y0 - y) * scale)
        hh, ww = min(a.shape[0], size - oy), min(a.shape[1], size - ox)
        out[oy : oy + hh, ox : ox + ww] = a[:hh, :ww]
        return out

    def close(self) -> None:
        pass


class CinrMethod:
    """``SlideDecoder(path, device=device, threads=threads).read``; cold = ``clear_cache()`` first."""

    name = "cinr"

    def __init__(self, path: Path, device: str, threads: int | None = None) -> None:
        from cinr_codec.decode import SlideDecoder

        self.path = path
        self.device = device
        self.dec = SlideDecoder(path, device=device, threads=threads)
        self.W, self.H = self.dec.width, self.dec.height

    def read(self, x: int, y: int, L: int, size: int, scale: float) -> np.ndarray:
        out = self.dec.read(x, y, L, L, scale)
        if out.shape != (size, size, 3):
            raise RuntimeError(f"cinr read returned {out.shape}, expected {(size, size, 3)}")
        return out  # type: ignore[no-any-return]

    def close(self) -> None:
        self.dec.close()


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def _stats(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    p90 = s[min(len(s) - 1, max(0, math.ceil(0.9 * len(s)) - 1))]
    return {"median": statistics.median(s), "p90": p90, "n": len(s)}


def positions(rng: np.random.Generator, L: int, W: int, H: int, n: int) -> list[tuple[int, int]]:
    xs = rng.integers(0, W - L + 1, n) if L <= W else np.zeros(n, int)
    ys = rng.integers(0, H - L + 1, n) if L <= H else np.zeros(n, int)
    return [(int(a), int(b)) for a, b in zip(xs, ys)]


def snap(pos: list[tuple[int, int]], scale: float) -> list[tuple[int, int]]:
    """Positions moved down onto multiples of 1/scale level pixels (a viewer's tile lattice)."""
    step = max(1, int(round(1.0 / scale)))
    return [(x // step * step, y // step * step) for x, y in pos]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_reads(
    method: Any, pos: list[tuple[int, int]], L: int, size: int, scale: float, device: str
) -> dict[str, Any]:
    """Cold and warm read times (ms) of one method at the given positions."""
    cold, warm = [], []
    for x, y in pos:
        if isinstance(method, CinrMethod):
            reader = method
            method.dec.clear_cache()
        else:
            reader = method.fresh()
        t = time.perf_counter()
        reader.read(x, y, L, size, scale)
        _sync(device)
        cold.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        reader.read(x, y, L, size, scale)
        _sync(device)
        warm.append((time.perf_counter() - t) * 1e3)
        if reader is not method:
            reader.close()
    return {"cold": _stats(cold), "warm": _stats(warm)}


def time_row(
    cinr: CinrMethod, rng: np.random.Generator, scale: float, rows: int, device: str
) -> dict[str, Any]:
    """Viewer pattern: rows of adjacent 256 px output tiles, cache cleared before each row."""
    L = int(round(256 / scale))
    cols, lines = max(1, -(-cinr.W // L)), max(1, -(-cinr.H // L))
    n = min(ROW_TILES, cols)
    first, rest = [], []
    for _ in range(rows):
        # Tiles on the viewer's lattice (multiples of L from the origin), like a deep-zoom viewer.
        x0 = int(rng.integers(0, cols - n + 1)) * L
        y = int(rng.integers(0, lines)) * L
        cinr.dec.clear_cache()
        for i in range(n):
            t = time.perf_counter()
            cinr.read(x0 + i * L, y, L, 256, scale)
            _sync(device)
            (first if i == 0 else rest).append((time.perf_counter() - t) * 1e3)
    return {
        "tiles": n,
        "first": _stats(first),
        "following": _stats(rest) if rest else None,
        "row_ms": (sum(first) + sum(rest)) / rows,
    }


def throughput(
    reader: Any, regions: list[tuple[int, int]], L: int, size: int, scale: float, threads: int, device: str
) -> float:
    """Regions per second when ``threads`` threads read ``regions`` from one shared reader."""
    if isinstance(reader, CinrMethod):
        reader.dec.clear_cache()
    lock = threading.Lock()
    todo = list(regions)

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                x, y = todo.pop()
            reader.read(x, y, L, size, scale)

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(worker) for _ in range(threads)]:
            f.result()
    _sync(device)
    return len(regions) / (time.perf_counter() - t)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ms(st: dict[str, float] | None) -> str:
    if not st:
        return "–"
    return f"{st['median']:.1f} ({st['p90']:.1f})"


def report(result: dict[str, Any], extra: dict[str, str]) -> str:
    st = result["settings"]
    enc = result["cinr"]
    methods = result["methods"]
    lines = [
        header("Region decoding speed: cinr against OpenSlide and pyvips", extra),
        f"Source `{Path(st['slide']).name}` ({result['slide_size'][0]} x {result['slide_size'][1]}, "
        f"{result['slide_levels']} level(s)). cinr file: preset {enc['preset']}, "
        f"{enc['steps_per_block'] or 'the preset’s'} steps per block, block size {enc['block_size']}, "
        f"{enc['blocks']} blocks ({enc['tissue_blocks']} tissue), {enc['bytes']:,} bytes, tissue PSNR "
        f"{enc['psnr']:.2f} dB{' (cached encode)' if enc.get('cached') else ''}. Decoder device "
        f"{st['device']}, torch threads {st['torch_threads']}; opening the decoder takes "
        f"{result['open_ms']:.1f} ms (median of 5).",
        "",
        "Each read returns S x S pixels of a square of S/scale level pixels at a random position "
        f"(seed {st['seed']}); {st['reads']} reads per cell, each at a new position; *cinr lattice*: the "
        "same reads with positions moved down to multiples of 1/scale. Cells: median (p90) in milliseconds. cinr cold = `clear_cache()` before the read (models and tiles dropped; file "
        "open, OS cache warm); warm = the same region again. OpenSlide: `read_region` at the best level "
        "for the scale (this slide has one level, so it reads all S/scale x S/scale pixels and the "
        "benchmark box-downsamples them with PIL `reduce`; both timed); cold = a fresh handle per read. "
        f"pyvips ({result.get('vips_loader', '?')}): `crop` + `shrink` + `write_to_memory`, operation "
        "cache off; cold = a fresh image per read.",
        "",
    ]
    if result.get("notes"):
        lines += [f"- {n}" for n in result["notes"]] + [""]
    head = "| output | scale | level px read | " + " | ".join(f"{m} cold | {m} warm" for m in methods) + " |"
    lines += ["## Single-thread read time, ms: median (p90)", "", head]
    lines.append("|---|---|---|" + "---:|---:|" * len(methods))
    for c in result["cells"]:
        note = "*" if c["clamped"] else ""
        cells = []
        for m in methods:
            r = c.get(m)
            cells += [_ms(r["cold"]) if r else "–", _ms(r["warm"]) if r else "–"]
        lines.append(f"| {c['size']} | {c['scale']} | {c['L']}{note} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "\\* region larger than the slide on at least one axis: position clamped to 0 there, so the read "
        "covers the whole slide along it plus background.",
        "",
        f"## The 3x target: {result['target_size']} x {result['target_size']} output, median time relative "
        "to scale 1 (cinr)",
        "",
        "Random positions (first group) and the same positions moved onto multiples of 1/scale "
        "(lattice, what a tile viewer asks for).",
        "",
        "| scale | cold ms | cold / s1 | cold <= 3x | warm ms | warm / s1 | warm <= 3x "
        "| lattice cold ms | / s1 | lattice warm ms | / s1 | lattice <= 3x | OpenSlide cold / s1 |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    yes = {True: "yes", False: "**no**"}
    for t in result["target"]:
        osr = "–" if t.get("openslide_ratio") is None else f"{t['openslide_ratio']:.2f}"
        lines.append(
            f"| {t['scale']} | {t['cold_ms']:.1f} | {t['cold_ratio']:.2f} | {yes[t['cold_pass']]} | "
            f"{t['warm_ms']:.2f} | {t['warm_ratio']:.2f} | {yes[t['warm_pass']]} | "
            f"{t['lattice_cold_ms']:.1f} | {t['lattice_cold_ratio']:.2f} | {t['lattice_warm_ms']:.2f} | "
            f"{t['lattice_warm_ratio']:.2f} | {yes[t['lattice_pass']]} | {osr} |"
        )
    lines += [
        "",
        "A warm read copies cached pixels when its boxes fall on whole source pixels (scale 1 at integer "
        "positions; power-of-two scales on the lattice); elsewhere even a warm read area-resamples, so "
        "warm ratios can compare a copy with a filter.",
    ]
    lines += [
        "",
        "## Viewer pattern: a row of adjacent 256 x 256 output tiles (cinr, cache cleared before each row)",
        "",
        "| scale | tiles per row | first tile ms | following tiles ms | whole row ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['scale']} | {r['tiles']} | {_ms(r['first'])} | {_ms(r['following'])} | {r['row_ms']:.1f} |"
        )
    lines += [
        "",
        f"## Throughput from several threads: {result['thread_size']} x {result['thread_size']} output, "
        f"{result['thread_regions']} different random regions per batch, one shared reader, regions/s",
        "",
        "| method | scale | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in st["threads"]) + " |",
        "|---|---|" + "---:|" * len(st["threads"]),
    ]
    for r in result["threads"]:
        lines.append(
            f"| {r['method']} | {r['scale']} | "
            + " | ".join(f"{r['rps'][str(t)]:.2f}" for t in st["threads"])
            + " |"
        )
    lines += [
        "",
        f"Load average (1, 5, 15 min): {result['load_start']} at start, {result['load_end']} at end; "
        f"measuring took {result['seconds']:.0f} s (plus {enc['encode_seconds']:.0f} s for the encode"
        f"{', earlier' if enc.get('cached') else ''}). Other jobs shared this 2-core machine, so "
        "times are noisy; compare methods within one run. The cinr decoder renders on "
        f"{st['device']}; libvips uses its own thread pool inside each read.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_scales(text: str) -> list[tuple[str, float]]:
    out = []
    for t in text.split(","):
        t = t.strip()
        if not t:
            continue
        v = float(Fraction(t))
        if not 0 < v <= 1:
            raise ValueError(f"--scales: {t} is not in (0, 1]")
        if abs(1 / v - round(1 / v)) > 1e-9:
            raise ValueError(f"--scales: {t} is not 1/integer")
        out.append((t, v))
    return out


def _smoke_slide(tmp: Path, src: Path) -> Path:
    """A 256 x 256 JPEG-tiled TIFF cut from the source slide (for the tests)."""
    from PIL import Image

    from cinr_codec.encode.source import SlideSource

    with SlideSource(src) as s:
        w, h = min(256, s.width), min(256, s.height)
        px = s.read((s.width - w) // 2, (s.height - h) // 2, w, h)
    png = tmp / "smoke.png"
    Image.fromarray(px).save(png)
    import pyvips

    out = tmp / "smoke.tif"
    pyvips.Image.new_from_file(str(png)).tiffsave(
        str(out), tile=True, tile_width=128, tile_height=128, compression="jpeg", Q=90
    )
    return out


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    if "--viewer" in args_in:  # the viewer pattern on a ccinr slide (benchmarks.viewer_speed)
        from .viewer_speed import main as viewer_main

        viewer_main([a for a in args_in if a != "--viewer"])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", default=str(DEFAULT_SLIDE), help="source slide (baselines read it)")
    ap.add_argument("--cinr", default=None, help="use this .cinr of the slide instead of encoding one")
    ap.add_argument(
        "--model", default="ccinr", choices=("ccinr", "cinr", "ngp", "engp"), help="the codec (default ccinr)"
    )
    ap.add_argument("--preset", default=None, help="default: q4 for ccinr, fast for the hash grids")
    ap.add_argument(
        "--steps", type=int, default=None, help="steps per block (default: the preset's; quick 20)"
    )
    ap.add_argument("--block-size", type=int, default=None, help="default: 512 for ccinr, 1024 otherwise")
    ap.add_argument("--sizes", default=None, help="output sizes (default 256,512,1024)")
    ap.add_argument("--scales", default=None, help="scales (default 1,1/2,1/4,1/8,1/16,1/32)")
    ap.add_argument("--reads", type=int, default=None, help="reads per cell (full 12, quick 3)")
    ap.add_argument("--threads", default="1,4", help="reader threads for the throughput table")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads of each render (default: the decoder's, the cores other processes leave free)",
    )
    ap.add_argument("--no-baselines", action="store_true", help="time cinr only")
    ap.add_argument("--no-cache", action="store_true", help="encode again even if a cached .cinr exists")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="20 training steps, 3 reads per cell")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    ap.add_argument("--results", default=None, help="output folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    interactive = sys.stderr.isatty()

    def log(msg: str) -> None:
        if not args.quiet and not interactive:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:  # arguments first, before the heavy imports
        sizes = [
            int(v) for v in (args.sizes or ("64,128" if args.smoke else ",".join(map(str, SIZES)))).split(",")
        ]
        scales = _parse_scales(args.scales or ("1,1/4" if args.smoke else ",".join(SCALES)))
        threads = [int(v) for v in args.threads.split(",") if v.strip()]
        if args.smoke and args.threads == "1,4":
            threads = [1, 2]
        if not sizes or min(sizes) < 1 or not threads or min(threads) < 1 or not scales:
            raise ValueError("--sizes and --threads must be positive; --scales must not be empty")
        reads = args.reads or {"smoke": 2, "quick": 3, "full": 12}[mode]
        steps = args.steps if args.steps is not None else ({"smoke": 1, "quick": 20}.get(mode))
        slide = Path(args.slide)
        if not slide.is_file():
            raise ValueError(f"{slide}: no such file")
        out_dir = Path(args.results) if args.results else RESULTS
        out_dir.mkdir(parents=True, exist_ok=True)
        if args.torch_threads is not None and args.torch_threads < 1:
            raise ValueError("--torch-threads must be >= 1")
    except (ValueError, ZeroDivisionError) as exc:
        print(f"benchmarks.decode_speed: error: {exc}", file=sys.stderr)
        sys.exit(2)

    import torch

    from cinr_codec.core.render import resolve_device
    from cinr_codec.decode import SlideDecoder
    from cinr_codec.errors import CinrError

    try:
        dev = str(resolve_device(args.device))
    except ValueError as exc:
        print(f"benchmarks.decode_speed: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    name = mode + ("_cuda" if dev.startswith("cuda") else "")

    import click

    result: dict[str, Any] = {"notes": [], "load_start": load_average()}
    extra = library_versions()  # the code measured: taken at the start (others may edit meanwhile)
    tmpdir = tempfile.TemporaryDirectory(prefix="cinr-decspeed-")
    try:
        ccinr = args.model == "ccinr"
        block = args.block_size or (512 if ccinr else 1024)
        preset = args.preset or ("q4" if ccinr else "fast")
        if args.smoke:
            slide = _smoke_slide(Path(tmpdir.name), slide)
            block = 128 if args.block_size is None else block
        if args.cinr:
            cpath = Path(args.cinr)
            from cinr_codec.format.container import CinrReader

            with CinrReader(cpath) as r:
                footer = r.footer if isinstance(r.footer, dict) else {}
                hdr = r.header
            q = footer.get("quality") or {}
            blocks = footer.get("blocks") or {}
            fit = footer.get("fit") if isinstance(footer.get("fit"), dict) else {}
            tissue = blocks.get("tissue") or 0
            enc = {
                "path": str(cpath),
                "preset": hdr.get("encoder", {}).get("preset", "?"),
                "steps_per_block": round(fit["steps"] / tissue) if tissue and fit.get("steps") else None,
                "block_size": hdr.get("grid", {}).get("block_size", "?"),
                "blocks": blocks.get("total", "?"),
                "tissue_blocks": blocks.get("tissue", "?"),
                "psnr": q.get("psnr_db") or float("nan"),
                "bytes": cpath.stat().st_size,
                "encode_seconds": 0.0,
                "cached": True,
            }
        else:
            cpath, enc = cached_cinr(
                slide,
                preset,
                steps,
                block,
                dev,
                not args.no_cache and not args.smoke,
                Path(tmpdir.name),
                log,
                model=args.model,
            )
        result["cinr"] = enc

        cinr = CinrMethod(cpath, dev, args.torch_threads)
        W, H = cinr.W, cinr.H
        methods: list[Any] = [cinr]
        if not args.no_baselines:
            try:
                methods.append(OpenSlideMethod(slide))
            except Exception as exc:  # noqa: BLE001 - any OpenSlide failure means: no baseline
                result["notes"].append(f"OpenSlide baseline skipped: {exc}")
            try:
                v = VipsMethod(slide)
                result["vips_loader"] = v.loader
                if v.loader not in ("tiffload", "openslideload", "jpegload", "pngload"):
                    raise RuntimeError(f"loader {v.loader}")
                if (v.W, v.H) != (W, H):
                    raise RuntimeError(f"pyvips sees {v.W} x {v.H}, not the slide's level 0")
                methods.append(v)
            except Exception as exc:  # noqa: BLE001 - pyvips cannot read this slide
                result["notes"].append(f"pyvips baseline skipped: {str(exc).strip()[:200]}")
        if (W, H) != (getattr(methods[-1], "W", W), getattr(methods[-1], "H", H)):
            result["notes"].append("slide and .cinr sizes differ")
        import openslide

        with openslide.OpenSlide(str(slide)) as osr:
            result["slide_levels"] = osr.level_count
        result["slide_size"] = [W, H]

        opens = []
        for _ in range(5):
            t = time.perf_counter()
            SlideDecoder(cpath, device=dev).close()
            opens.append((time.perf_counter() - t) * 1e3)
        result["open_ms"] = statistics.median(opens)

        # Warm-up (untimed): one read per method.
        for m in methods:
            m.read(0, 0, 64, 64, 1.0)
        rng = np.random.default_rng(args.seed)
        thread_size = 512 if 512 in sizes else sizes[len(sizes) // 2]
        thread_regions = {"smoke": 2, "quick": 4, "full": 16}[mode]
        total = (
            len(sizes) * len(scales) * len(methods) + len(scales) + len(scales) * len(methods) * len(threads)
        )
        t0 = time.perf_counter()
        cells: list[dict[str, Any]] = []
        with click.progressbar(
            length=total,
            label="decode_speed",
            file=NullSink() if args.quiet else sys.stderr,  # type: ignore[arg-type]
            show_pos=True,
            show_eta=True,
        ) as bar:
            for size in sizes:
                for label, s in scales:
                    L = int(round(size / s))
                    pos = positions(rng, L, W, H, reads)
                    cell: dict[str, Any] = {"size": size, "scale": label, "L": L, "clamped": L > W or L > H}
                    for m in methods:
                        bar.label = f"{m.name} {size} px @ {label}"
                        cell[m.name] = time_reads(m, pos, L, size, s, dev if m is cinr else "cpu")
                        if m is cinr:  # the same reads moved onto the viewer's lattice
                            cell[LATTICE] = time_reads(m, snap(pos, s), L, size, s, dev)
                        bar.update(1)
                    for m in methods:
                        if isinstance(m, OpenSlideMethod):
                            cell["openslide_level"] = m.level_for(s)[0]
                    cells.append(cell)
                    log(
                        f"{size} px @ {label}: cinr cold {_ms(cell['cinr']['cold'])} warm {_ms(cell['cinr']['warm'])}"
                    )
            result["cells"] = cells
            rows = []
            for label, s in scales:
                bar.label = f"viewer row @ {label}"
                rows.append(
                    {"scale": label, **time_row(cinr, rng, s, {"smoke": 1, "quick": 1, "full": 4}[mode], dev)}
                )
                bar.update(1)
            result["rows"] = rows
            trows = []
            for m in methods:
                for label, s in scales:
                    L = int(round(thread_size / s))
                    regions = positions(rng, L, W, H, thread_regions)
                    rps = {}
                    for t in threads:
                        bar.label = f"{m.name} {t} threads @ {label}"
                        rps[str(t)] = throughput(
                            m, regions, L, thread_size, s, t, dev if m is cinr else "cpu"
                        )
                        bar.update(1)
                    trows.append({"method": m.name, "scale": label, "rps": rps})
            result["threads"] = trows
            result["thread_size"] = thread_size
            result["thread_regions"] = thread_regions
        result["seconds"] = time.perf_counter() - t0
        for m in methods:
            m.close()
    except (ValueError, CinrError, OSError, RuntimeError) as exc:
        print(f"benchmarks.decode_speed: error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        tmpdir.cleanup()

    target = []
    tsize = 512 if 512 in sizes else sizes[0]
    base = next((c for c in cells if c["size"] == tsize and c["scale"] == scales[0][0]), None)
    if base is not None and scales[0][1] == 1.0:
        for c in cells:
            if c["size"] != tsize:
                continue
            cold = c["cinr"]["cold"]["median"] / base["cinr"]["cold"]["median"]
            warm = c["cinr"]["warm"]["median"] / base["cinr"]["warm"]["median"]
            lcold = c[LATTICE]["cold"]["median"] / base[LATTICE]["cold"]["median"]
            lwarm = c[LATTICE]["warm"]["median"] / base[LATTICE]["warm"]["median"]
            osr = None
            if "openslide" in c and "openslide" in base:
                osr = c["openslide"]["cold"]["median"] / base["openslide"]["cold"]["median"]
            target.append(
                {
                    "scale": c["scale"],
                    "cold_ms": c["cinr"]["cold"]["median"],
                    "cold_ratio": cold,
                    "warm_ms": c["cinr"]["warm"]["median"],
                    "warm_ratio": warm,
                    "cold_pass": cold <= TARGET_RATIO,
                    "warm_pass": warm <= TARGET_RATIO,
                    "lattice_cold_ms": c[LATTICE]["cold"]["median"],
                    "lattice_cold_ratio": lcold,
                    "lattice_warm_ms": c[LATTICE]["warm"]["median"],
                    "lattice_warm_ratio": lwarm,
                    "lattice_pass": lcold <= TARGET_RATIO and lwarm <= TARGET_RATIO,
                    "openslide_ratio": osr,
                }
            )
    result["target"] = target
    result["target_size"] = tsize
    result["methods"] = [m.name for m in methods[:1]] + [LATTICE] + [m.name for m in methods[1:]]
    result["load_end"] = load_average()
    result["settings"] = {
        "slide": str(args.slide),
        "mode": mode,
        "sizes": sizes,
        "scales": [lbl for lbl, _ in scales],
        "reads": reads,
        "threads": threads,
        "device": dev,
        "torch_threads": args.torch_threads or "auto",
        "seed": args.seed,
    }
    extra["load average at start"] = result["load_start"]
    md = out_dir / f"decode_speed_{name}.md"
    publish(md, report(result, extra), result, args.json, data=result, show=False)
    if not args.json and not args.quiet:
        print(f"wrote {md}", file=sys.stderr)


if __name__ == "__main__":
    main()
