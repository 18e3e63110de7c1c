"""Reading a ``.cinr`` over HTTP: bytes fetched against the file and the blocks touched, time against
a local read.

    python -m benchmarks.remote_read [--cinr PATH] [--steps 20] [--reads 5] [--latency MS] [--json] [--out NAME]

The slide (default: the bundled sample, encoded with the fast preset at ``--steps`` per block,
cached like ``benchmarks.decode_speed``'s) is served by a range-capable HTTP server on loopback
(``http.server`` threads; every response body counted). For each case a fresh ``open_cinr(url)``
and a fresh ``open_cinr(path)``: opening (preamble, header, index, footer), a 256 x 256 read at
scale 1, a 1024 x 1024 read at scale 1, a 512 x 512 read at scale 1/4 (from the mips), and the
thumbnail. Reported per case: bytes fetched and requests (after opening), the stored bytes of the
blocks the read touched (from the index: the lower bound), the file size, and the median seconds
of the remote and the local read (``--reads`` times, positions fixed; loopback, so the time is
the protocol's overhead, not a network's latency). ``--latency MS`` makes the server wait that
long before each response (a network's round trip; concurrent requests wait side by side), and
each case is then also read with the decoder's fetching of a read's blocks together
(``CinrReader.prefetch``) switched off, alternating with it, to show what it saves.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, header, md_table, publish
from benchmarks.loopback import RangeServer, serve

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"


def touched_bytes(path: Path, x: int, y: int, w: int, h: int, scale: float) -> int:
    """Stored bytes of the blocks (level blocks at scale 1, else the mip level used) under a read."""
    from cinr_codec.decode import SlideDecoder

    d = SlideDecoder(path)
    try:
        g = d.layout
        k = -1  # the level itself, else the mip a read at this scale starts from
        if scale < 1:
            usable = [j for j, ds in enumerate(g.mips) if ds <= 1 / scale]
            k = usable[-1] if usable else -1
        lengths = d.reader.stored_lengths()
        bs = g.block_size
        c0, c1 = x // bs, min(g.cols - 1, (x + w - 1) // bs)
        r0, r1 = y // bs, min(g.rows - 1, (y + h - 1) // bs)
        blocks = {r * g.cols + c for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}
        ids = blocks if k < 0 else {d.grid.mip_id(b, k) for b in blocks}
        return int(sum(int(lengths[i]) for i in ids))
    finally:
        d.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.remote_read", description=__doc__.split("\n")[0])
    ap.add_argument("--cinr", type=Path, default=None, help="a .cinr file (default: the sample, encoded)")
    ap.add_argument("--steps", type=int, default=20, help="steps per block when encoding the sample")
    ap.add_argument("--reads", type=int, default=5)
    ap.add_argument("--latency", type=float, default=0.0, help="ms the server waits before each response")
    ap.add_argument("--out", default="remote_read")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from benchmarks.decode_speed import cached_cinr

    if args.cinr is None:
        with tempfile.TemporaryDirectory() as tmp:
            path, _ = cached_cinr(SAMPLE, "fast", args.steps, 1024, "cpu", True, Path(tmp), print)
    else:
        path = args.cinr
    with serve({f"/{path.name}": path.read_bytes()}, latency=args.latency / 1000) as server:
        _measure(args, path, server)


def _measure(args: argparse.Namespace, path: Path, server: RangeServer) -> None:
    """``main``'s reads and report, against ``server``."""
    from cinr_codec.api import open_cinr
    from cinr_codec.format.container.reader import CinrReader

    prefetch = CinrReader.prefetch
    url = server.url(f"/{path.name}")
    size = path.stat().st_size
    with open_cinr(path) as s:
        W, H = s.dimensions
    cx, cy = W // 2, H // 2
    cases: list[tuple[str, Any, tuple[int, int, int, int, float] | None]] = [
        ("256² at scale 1", lambda s: s.read_region((cx, cy), 0, (256, 256)), (cx, cy, 256, 256, 1.0)),
        (
            "1024² at scale 1",
            lambda s: s.read_region((cx - 512, cy - 512), 0, (1024, 1024)),
            (cx - 512, cy - 512, 1024, 1024, 1.0),
        ),
        ("512² at scale 1/4", lambda s: s.read_region((0, 0), 2, (512, 512)), (0, 0, 2048, 2048, 0.25)),
        ("thumbnail 256 px", lambda s: s.get_thumbnail((256, 256)), (0, 0, W, H, 256 / max(W, H))),
    ]
    rows, payload = [], []
    open_sent: list[int] = []
    for name, fn, where in cases:
        t_remote, t_plain, t_local, sent, reqs, plain_reqs = [], [], [], 0, 0, 0
        for _ in range(args.reads):
            before = (server.sent, server.requests)
            with open_cinr(url) as s:
                open_sent.append(server.sent - before[0])
                mid = (server.sent, server.requests)
                t = time.perf_counter()
                fn(s)
                t_remote.append(time.perf_counter() - t)
                sent, reqs = server.sent - mid[0], server.requests - mid[1]
            if args.latency:  # the same read, each block fetched when the decoder reaches it
                CinrReader.prefetch = lambda self, ids: 0  # type: ignore[method-assign]
                try:
                    with open_cinr(url) as s:
                        mid = (server.sent, server.requests)
                        t = time.perf_counter()
                        fn(s)
                        t_plain.append(time.perf_counter() - t)
                        plain_reqs = server.requests - mid[1]
                finally:
                    CinrReader.prefetch = prefetch  # type: ignore[method-assign]
            with open_cinr(path) as s:
                t = time.perf_counter()
                fn(s)
                t_local.append(time.perf_counter() - t)
        touched = touched_bytes(path, *where) if where else None
        r = {
            "case": name,
            "bytes_fetched": sent,
            "requests": reqs,
            "touched_block_bytes": touched,
            "remote_s": statistics.median(t_remote),
            "local_s": statistics.median(t_local),
        }
        if args.latency:
            r |= {"remote_one_by_one_s": statistics.median(t_plain), "requests_one_by_one": plain_reqs}
        payload.append(r)
        row = [
            name,
            f"{sent:,}",
            reqs,
            f"{touched:,}" if touched is not None else "n/a",
            f"{r['remote_s'] * 1000:.0f}",
        ]
        if args.latency:
            row += [f"{r['remote_one_by_one_s'] * 1000:.0f} ({plain_reqs})"]
        row += [f"{r['local_s'] * 1000:.0f}", f"{r['remote_s'] / r['local_s']:.2f}"]
        rows.append(tuple(row))
    cols = [
        "read (fresh open each)",
        "bytes fetched",
        "requests",
        "stored bytes of the blocks under it",
        "remote ms",
    ]
    if args.latency:
        cols += ["remote ms, blocks fetched one by one (requests)"]
    cols += ["local ms", "remote / local"]
    where = (
        f"loopback with {args.latency:g} ms before each response (a network's round trip)"
        if args.latency
        else "loopback, so remote time is the protocol's overhead, not a network's latency"
    )
    text = "\n".join(
        [
            header("Reading a .cinr over HTTP (loopback)"),
            f"- file: {path.name}, {size:,} bytes, {W} x {H} px",
            f"- opening fetches {statistics.median(open_sent):,.0f} bytes (preamble, header, index, footer: "
            f"{statistics.median(open_sent) / size:.1%} of the file)",
            f"- server latency: {args.latency:g} ms",
            "",
            *md_table(cols, "l" + "r" * (len(cols) - 1), rows),
            "",
            f"Medians of the reads; the server is `http.server` on {where}. A read's blocks are "
            "fetched together (concurrent requests, adjacent blocks merged into one).",
        ]
    )
    publish(RESULTS / f"{args.out}.md", text, payload, args.json, data={"file_bytes": size, "cases": payload})


if __name__ == "__main__":
    main()
