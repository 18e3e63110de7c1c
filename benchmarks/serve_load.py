"""``cinr serve`` under load: concurrent clients fetching DeepZoom tiles on loopback.

    python -m benchmarks.serve_load [--cinr PATH] [--clients 16] [--seconds 30] [--json] [--out NAME]

The slide (default: the bundled sample, encoded with the fast preset at 20 steps a block and
cached like ``benchmarks.decode_speed``'s) is served by ``cinr serve`` in its own process. Each
client (a thread with its own HTTP connection) requests random tiles of random DeepZoom levels
(the top four levels, where a viewer spends its time, and any level below) until the time is up.
Reported: requests, errors (anything but 200), tiles per second, p50 / p95 / max latency, and the
server's peak resident memory (``VmHWM``).
"""

from __future__ import annotations

import argparse
import http.client
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, header, md_table, publish

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"


def _levels(dzi: str) -> list[tuple[int, int]]:
    """(columns, rows) of tiles per DeepZoom level of a descriptor."""
    size = int(re.search(r'TileSize="(\d+)"', dzi).group(1))  # type: ignore[union-attr]
    w = int(re.search(r'Width="(\d+)"', dzi).group(1))  # type: ignore[union-attr]
    h = int(re.search(r'Height="(\d+)"', dzi).group(1))  # type: ignore[union-attr]
    dims = [(w, h)]
    while dims[-1] != (1, 1):
        a, b = dims[-1]
        dims.append((max(1, -(-a // 2)), max(1, -(-b // 2))))
    return [(-(-a // size), -(-b // size)) for a, b in reversed(dims)]


def _peak_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n")[0])
    ap.add_argument("--cinr", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", default="serve_load")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.cinr is None:
        from benchmarks.decode_speed import cached_cinr

        with tempfile.TemporaryDirectory() as tmp:
            path, _ = cached_cinr(SAMPLE, "fast", args.steps, 1024, "cpu", True, Path(tmp), print)
    else:
        path = args.cinr
    proc = subprocess.Popen(
        [sys.executable, "-m", "cinr_codec", "serve", str(path), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        port = int(line.split("127.0.0.1:", 1)[1].split("/", 1)[0])
        name = proc.stderr.readline().split(":", 1)[0].strip()  # "  NAME: PATH"
        log_lines: list[str] = []  # the server's log, drained (a full pipe would stop the server)
        threading.Thread(target=lambda: log_lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", f"/slides/{name}.dzi")
        levels = _levels(conn.getresponse().read().decode())
        conn.close()
        top = len(levels) - 1
        stop = time.monotonic() + args.seconds
        lat: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            while time.monotonic() < stop:
                lv = top - rng.randrange(4) if rng.random() < 0.8 else rng.randrange(len(levels))
                cols, rows = levels[lv]
                url = f"/slides/{name}_files/{lv}/{rng.randrange(cols)}_{rng.randrange(rows)}.jpeg"
                t = time.perf_counter()
                try:
                    c.request("GET", url)
                    r = c.getresponse()
                    r.read()
                    ok = r.status == 200
                    what = f"HTTP {r.status} {url}"
                except (OSError, http.client.HTTPException) as exc:
                    ok, what = (
                        False,
                        f"{type(exc).__name__} ({exc}) {url} after {time.perf_counter() - t:.1f} s",
                    )
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    (lat.append(time.perf_counter() - t) if ok else errors.append(what))
            c.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        peak = _peak_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    result: dict[str, Any] = {
        "clients": args.clients,
        "seconds": wall,
        "requests": len(lat) + len(errors),
        "errors": len(errors),
        "error_examples": errors[:5],
        "tiles_per_second": len(lat) / wall,
        "p50_ms": q[49] * 1000,
        "p95_ms": q[94] * 1000,
        "max_ms": lat[-1] * 1000 if lat else float("nan"),
        "server_peak_mib": peak / 1024 if peak else None,
        "file": path.name,
    }
    text = "\n".join(
        [
            header("cinr serve under load (loopback)"),
            f"- slide: {path.name}; {args.clients} clients for {args.seconds:g} s; random 254-px JPEG tiles, "
            "80 % from the top four DeepZoom levels",
            "",
            *md_table(
                ["requests", "errors", "tiles/s", "p50 ms", "p95 ms", "max ms", "server peak RSS (MiB)"],
                "rrrrrrr",
                [
                    (
                        result["requests"],
                        result["errors"],
                        f"{result['tiles_per_second']:.1f}",
                        f"{result['p50_ms']:.0f}",
                        f"{result['p95_ms']:.0f}",
                        f"{result['max_ms']:.0f}",
                        f"{result['server_peak_mib']:.0f}" if peak else "n/a",
                    )
                ],
            ),
            "",
            *(["Errors (first five): " + "; ".join(errors[:5])] if errors else []),
        ]
    )
    publish(RESULTS / f"{args.out}.md", text, result, args.json, data=result)


if __name__ == "__main__":
    main()
