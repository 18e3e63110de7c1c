"""Milliseconds to decode 256² and 512² regions at scale 1, per preset, beside OpenSlide's read_region.

python -m benchmarks.decode_presets [--image PATH] [--presets fast,default,high] [--repeat 7] [--device cpu]

Decode time depends on the architecture and the table size, not on how long the model was
trained, so each preset's model is fitted for a few steps only (``--steps``). For each preset
and size: "first read" = a fresh decoder (the block's model is loaded, then its tiles decoded),
"model loaded" = the tiles decoded with the model already in memory, "cached" = the same read
again (a copy from the LRU cache). OpenSlide reads the same region from the source file, with a
fresh ``OpenSlide`` object for the cold read (its tile cache is per object).
Results: ``benchmarks/results/decode_presets_<device>.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cinr_codec.decode import SlideDecoder
from cinr_codec.encode.slide import encode_slide

from .common import RESULTS, header, md_table, publish

SAMPLE = Path(__file__).resolve().parents[1] / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 2)


def _time_cell(
    out: Path, image: Path, size: int, spots: list[tuple[int, int]], device: str
) -> dict[str, float]:
    """Median ms of each kind of read of a size x size region (see the module docstring)."""
    import openslide

    first, loaded, cached, os_cold, os_warm = [], [], [], [], []
    for x, y in spots:
        with SlideDecoder(out, device=device) as dec:
            t = time.perf_counter()
            dec.read(x, y, size, size)
            first.append(time.perf_counter() - t)
            dec.clear_cache(models=False)  # decoded tiles only: the model stays loaded
            t = time.perf_counter()
            dec.read(x, y, size, size)
            loaded.append(time.perf_counter() - t)
            t = time.perf_counter()
            dec.read(x, y, size, size)
            cached.append(time.perf_counter() - t)
        slide = openslide.open_slide(str(image))
        try:
            t = time.perf_counter()
            slide.read_region((x, y), 0, (size, size))
            os_cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            slide.read_region((x, y), 0, (size, size))
            os_warm.append(time.perf_counter() - t)
        finally:
            slide.close()
    return {
        "first_read_ms": _median_ms(first),
        "model_loaded_ms": _median_ms(loaded),
        "cached_ms": _median_ms(cached),
        "openslide_cold_ms": _median_ms(os_cold),
        "openslide_warm_ms": _median_ms(os_warm),
    }


def run(image: Path, presets: list[str], steps: int, repeat: int, device: str) -> list[dict[str, object]]:
    """Time every (preset, size) cell; one row each."""
    rows: list[dict[str, object]] = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            out = Path(tmp) / f"{preset}.cinr"
            encode_slide(
                image,
                out,
                model="cinr",
                preset=preset,
                steps=steps,
                device=device,
                mips=False,
                tissue_mask=False,
            )
            with SlideDecoder(out) as probe:
                width, height = probe.width, probe.height
            for size in (256, 512):
                # Positions on the 256-px tile lattice (as a viewer's tiles are), inside the slide.
                spots = [
                    (
                        int(rng.integers(0, (width - size) // 256 + 1)) * 256,
                        int(rng.integers(0, (height - size) // 256 + 1)) * 256,
                    )
                    for _ in range(repeat)
                ]
                row: dict[str, object] = {"preset": preset, "size": size, "device": device}
                row.update(_time_cell(out, image, size, spots, device))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    return rows


def add_preset_arguments(ap: argparse.ArgumentParser) -> None:
    """``--image``, ``--presets`` and ``--steps``: which hash-grid models to time, fitted on what
    (shared with ``benchmarks.decode_allocator``)."""
    ap.add_argument("--image", type=Path, default=SAMPLE)
    ap.add_argument("--presets", default="fast,default,high")
    ap.add_argument("--steps", type=int, default=5)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_arguments(ap)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not args.image.exists():
        print(f"decode_presets: error: {args.image}: no such file", file=sys.stderr)
        sys.exit(2)
    rows = run(args.image, args.presets.split(","), args.steps, args.repeat, args.device)
    lines = [
        header("Decode time per preset at scale 1, beside OpenSlide"),
        f"Source `{args.image.name}`; models fitted {args.steps} steps (decode time does not depend on "
        f"training); blocks of 1024 px; median of {args.repeat} reads, ms.\n",
        *md_table(
            (
                "preset",
                "region",
                "first read (model load + tiles)",
                "model loaded",
                "cached",
                "OpenSlide cold",
                "OpenSlide warm",
            ),
            "llrrrrr",
            (
                (
                    r["preset"],
                    f"{r['size']}²",
                    r["first_read_ms"],
                    r["model_loaded_ms"],
                    r["cached_ms"],
                    r["openslide_cold_ms"],
                    r["openslide_warm_ms"],
                )
                for r in rows
            ),
        ),
    ]
    text = "\n".join(lines) + "\n"
    publish(args.results / f"decode_presets_{args.device}.md", text, {"rows": rows}, args.json)


if __name__ == "__main__":
    main()
