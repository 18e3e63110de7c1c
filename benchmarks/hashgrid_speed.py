"""Hash-grid throughput on this machine: points/s forward and forward+backward.

python -m benchmarks.hashgrid_speed [--points 262144] [--repeat 3] [--device cpu]

Compares the naive version (one gather per level and corner) with this package's encoding,
for scattered points (``HashGrid.forward``) and for pixel grids (``HashGrid.forward_grid``,
what fitting and decoding use), on the paper's configuration and on the default preset's,
with the compiled kernels (``cinr_codec/core/native.py``, when built) and on the pure-PyTorch path.
``--points 4096`` is the batch that training on random pixels uses.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable

import torch

from cinr_codec.core import native
from cinr_codec.core.hashgrid import HashGrid, HashGridConfig, naive_hashgrid
from cinr_codec.encode.train.presets import get_preset

from .common import RESULTS, header, md_table, publish


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t)
    return best


def _measure(name: str, cfg: HashGridConfig, side: int, repeat: int, device: str) -> list[dict[str, object]]:
    """Rows for one configuration: naive, scattered points, pixel grid."""
    n = side * side
    torch.manual_seed(0)
    grid = HashGrid(cfg).to(device)
    with torch.no_grad():
        grid.table.uniform_(-1, 1)
    pts = torch.rand(n, 2, device=device)
    xs = ((torch.arange(side, device=device) + 0.5) / side).unsqueeze(0)
    ys = xs.clone()

    def fwd_bwd(f: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run_once() -> None:
            grid.table.grad = None
            f().sum().backward()

        return run_once

    def naive() -> torch.Tensor:
        return naive_hashgrid(pts, grid.table, cfg)

    def scattered() -> torch.Tensor:
        return grid(pts)

    def on_grid() -> torch.Tensor:
        return grid.forward_grid(xs, ys)

    with torch.no_grad():
        t_naive = _time(naive, max(1, repeat - 1))
    tb_naive = _time(fwd_bwd(naive), 1)
    timings = [("naive: gather per level and corner", t_naive, tb_naive)]
    # The compiled kernels (when built) and the pure-PyTorch path they replace.
    variants = [("native", contextlib.nullcontext)] if native.available() and device == "cpu" else []
    variants.append(("pure PyTorch", native.disabled))
    for label, ctx in variants:
        with ctx():
            with torch.no_grad():
                t_pts = _time(scattered, repeat)
                t_grid = _time(on_grid, repeat)
            tb_pts = _time(fwd_bwd(scattered), repeat)
            tb_grid = _time(fwd_bwd(on_grid), repeat)
        timings.append((f"scattered points, {label}", t_pts, tb_pts))
        timings.append((f"pixel grid (forward_grid), {label}", t_grid, tb_grid))
    rows: list[dict[str, object]] = []
    for method, tf, tb in timings:
        rows.append(
            {
                "config": name,
                "params": cfg.n_params(),
                "method": method,
                "fwd_mpts": n / tf / 1e6,
                "fwd_bwd_mpts": n / tb / 1e6,
                "fwd_speedup": t_naive / tf,
            }
        )
    return rows


def run(points: int, repeat: int, device: str, which: str = "all") -> list[dict[str, object]]:
    """Measure each configuration; returns one row per (config, method)."""
    side = int(points**0.5)
    configs = {
        "paper (L24 F2 T24 Nmin4 b1.5)": HashGridConfig(24, 2, 24, 4, 1.5),
        "default preset @512px": get_preset("cinr").resolve_hash(512, 512),
    }
    rows: list[dict[str, object]] = []
    for name, cfg in configs.items():
        if which == "all" or name.startswith(which):
            rows += _measure(name, cfg, side, repeat, device)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=512 * 512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", choices=["all", "paper", "default"], default="all")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args(argv)
    rows = run(args.points, args.repeat, args.device, args.config)
    lines = [
        header("Hash-grid encoding speed"),
        f"{args.points} points (a {int(args.points**0.5)}² pixel grid for `forward_grid`), "
        f"device {args.device}, best of {args.repeat}.\n",
        *md_table(
            ("config", "table params", "method", "forward Mpts/s", "fwd+bwd Mpts/s", "forward vs naive"),
            "lrlrrr",
            (
                (
                    r["config"],
                    f"{r['params']:,}",
                    r["method"],
                    f"{r['fwd_mpts']:.2f}",
                    f"{r['fwd_bwd_mpts']:.3f}",
                    f"{r['fwd_speedup']:.1f}x",
                )
                for r in rows
            ),
        ),
    ]
    text = "\n".join(lines) + "\n"
    out = None if args.no_write else RESULTS / f"hashgrid_speed_{args.device}.md"
    publish(out, text, {"rows": rows}, args.json)
    if out is not None:
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
