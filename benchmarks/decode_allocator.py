"""How much hash-grid decoding depends on the process's malloc setting (``decode.tune_allocator``).

python -m benchmarks.decode_allocator [--presets fast,default,high] [--rounds 3] [--reads 6]

For each preset a slide of the bundled sample is encoded (a few steps: decode time does not
depend on training); then fresh processes, alternating glibc's default malloc and
``tune_allocator()``, each open the file, read one region to load the model, and time
``--reads`` 512² reads at scale 1 (other places, so every tile is decoded) with one torch thread,
counting the minor page faults of each read. Median over rounds and reads.
Results: ``benchmarks/results/decode_allocator.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cinr_codec.encode.slide import encode_slide

from .common import RESULTS, header, load_average, md_table, publish
from .decode_presets import add_preset_arguments

# One fresh process: the allocator setting first (or not), then the reads.
_CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
if sys.argv[2] == "tuned":
    from cinr_codec.decode import tune_allocator
    tune_allocator()
from cinr_codec.decode import SlideDecoder
size, reads = int(sys.argv[3]), int(sys.argv[4])
times, faults = [], []
with SlideDecoder(sys.argv[1], device="cpu") as dec:
    dec.read(0, 0, 64, 64)
    step_x, step_y = max(1, (dec.width - size) // reads), max(1, (dec.height - size) // reads)
    for i in range(reads):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        dec.read(64 + i * step_x // 2, 64 + i * step_y // 2 + (i % 2) * 300, size, size)
        times.append(time.perf_counter() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"ms": [t * 1e3 for t in times], "faults": faults}))
"""


def _child(path: Path, mode: str, size: int, reads: int) -> dict[str, list[float]]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), mode, str(size), str(reads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(
    image: Path, presets: list[str], steps: int, rounds: int, reads: int, size: int
) -> list[dict[str, object]]:
    """One row per preset: median ms and page faults per read, default malloc and tuned."""
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            out = Path(tmp) / f"{preset}.cinr"
            encode_slide(
                image, out, model="cinr", preset=preset, steps=steps, mips=False, tissue_mask=False, threads=1
            )
            got: dict[str, dict[str, list[float]]] = {
                m: {"ms": [], "faults": []} for m in ("default", "tuned")
            }
            for _ in range(rounds):
                for mode in ("default", "tuned"):
                    r = _child(out, mode, size, reads)
                    got[mode]["ms"] += r["ms"]
                    got[mode]["faults"] += r["faults"]
            row: dict[str, object] = {"preset": preset, "size": size}
            for mode in ("default", "tuned"):
                row[f"{mode}_ms"] = round(statistics.median(got[mode]["ms"]), 1)
                row[f"{mode}_faults"] = int(statistics.median(got[mode]["faults"]))
            row["ratio"] = round(float(row["default_ms"]) / float(row["tuned_ms"]), 2)  # type: ignore[arg-type]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_arguments(ap)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reads", type=int, default=6)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", default="decode_allocator", help="report name in benchmarks/results/")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not args.image.exists():
        print(f"decode_allocator: error: {args.image}: no such file", file=sys.stderr)
        sys.exit(2)
    if args.rounds < 1 or args.reads < 1 or args.size < 16 or args.steps < 1:
        print(
            "decode_allocator: error: --rounds, --reads and --steps must be >= 1, --size >= 16",
            file=sys.stderr,
        )
        sys.exit(2)
    load = load_average()
    rows = run(args.image, args.presets.split(","), args.steps, args.rounds, args.reads, args.size)
    lines = [
        header(
            "Hash-grid decoding with glibc's default malloc and with tune_allocator()",
            {"load at start": load},
        ),
        f"Source `{args.image.name}`; CINR models fitted {args.steps} steps; {args.size}² reads at scale 1, "
        f"one torch thread; {args.rounds} rounds of two fresh processes (default, tuned), {args.reads} reads "
        "each; medians.\n",
        *md_table(
            (
                "preset",
                "default malloc, ms",
                "tune_allocator, ms",
                "ratio",
                "page faults / read (default)",
                "(tuned)",
            ),
            "lrrrrr",
            (
                (
                    r["preset"],
                    r["default_ms"],
                    r["tuned_ms"],
                    r["ratio"],
                    r["default_faults"],
                    r["tuned_faults"],
                )
                for r in rows
            ),
        ),
    ]
    publish(args.results / f"{args.out}.md", "\n".join(lines) + "\n", {"rows": rows}, args.json)


if __name__ == "__main__":
    main()
