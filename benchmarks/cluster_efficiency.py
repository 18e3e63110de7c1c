"""Parallel efficiency of encoding on a local Dask cluster: serial time / (workers x parallel time).

    python -m benchmarks.cluster_efficiency [--workers 1,2] [--steps 150] [--block-size 512] [--json]

The bundled sample (or ``--slide``) is encoded serially with one torch thread, then on a local
cluster of 1, 2, ... worker processes of one thread each (``encode_slide(client=...)``; the
cluster is started before the clock). Reported per run: wall seconds, the fitting seconds the
blocks report (``fit_seconds``), efficiency against the serial run, and the overhead per block
outside the fits (workers x wall - fit seconds, per block: reading, mips, the quality check,
scheduling, journaling). The block payloads of every run are checked equal to the serial ones.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, csv_list, header, load_average, md_table, publish

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"


def _payloads(path: Path) -> list[bytes]:
    from cinr_codec.format.container import CinrReader

    with CinrReader(path) as r:
        return [r.read_stored(b.block_id) for b in r.blocks() if b.kind == "model"]


def main(argv: list[str] | None = None) -> None:
    from cinr_codec.encode.cluster import cluster_client
    from cinr_codec.encode.slide import encode_slide

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster_efficiency", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--slide", type=Path, default=SAMPLE)
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--out", default="cluster_efficiency")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    settings: dict[str, Any] = {
        "model": "cinr",
        "preset": args.preset,
        "steps": args.steps,
        "block_size": args.block_size,
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        s = encode_slide(args.slide, Path(tmp) / "serial.cinr", threads=1, **settings)
        serial = {
            "workers": 0,
            "wall_s": time.perf_counter() - t,
            "fit_s": s["fit_seconds"],
            "blocks": s["tissue_blocks"],
        }
        reference = _payloads(Path(tmp) / "serial.cinr")
        runs.append(serial)
        print(serial, flush=True)
        for n in (int(w) for w in csv_list(args.workers)):
            with cluster_client(workers=n) as client:
                client.wait_for_workers(n)
                out = Path(tmp) / f"w{n}.cinr"
                t = time.perf_counter()
                s = encode_slide(args.slide, out, client=client, **settings)
                wall = time.perf_counter() - t
            same = _payloads(out) == reference
            r = {
                "workers": n,
                "wall_s": wall,
                "fit_s": s["fit_seconds"],
                "blocks": s["tissue_blocks"],
                "same": same,
            }
            runs.append(r)
            print(r, flush=True)
    rows = []
    for r in runs:
        n = max(1, r["workers"])
        eff = serial["wall_s"] / (n * r["wall_s"]) if r["workers"] else None
        overhead = (n * r["wall_s"] - r["fit_s"]) / max(1, r["blocks"])
        r["efficiency"] = eff
        r["overhead_per_block_s"] = overhead
        rows.append(
            (
                "serial, 1 thread" if not r["workers"] else f"{r['workers']} worker(s)",
                f"{r['wall_s']:.1f}",
                f"{r['fit_s']:.1f}",
                "–" if eff is None else f"{eff:.2f}",
                f"{overhead:.2f}",
                "–" if not r["workers"] else ("yes" if r["same"] else "NO"),
            )
        )
    text = "\n".join(
        [
            header("Encoding on a local Dask cluster: parallel efficiency"),
            f"Slide: {args.slide.name}, preset {args.preset}, {args.steps} steps per block, blocks of "
            f"{args.block_size} px ({serial['blocks']} tissue blocks). Clusters started before the clock; "
            "one torch thread per worker. Efficiency = serial wall / (workers x wall).",
            "",
            *md_table(
                [
                    "run",
                    "wall s",
                    "fit s (summed)",
                    "efficiency",
                    "overhead s per block",
                    "payloads = serial",
                ],
                "lrrrrr",
                rows,
            ),
            "",
            f"Load average at the end: {load_average()}.",
        ]
    )
    publish(RESULTS / f"{args.out}.md", text, runs, args.json, data={"runs": runs})


if __name__ == "__main__":
    main()
