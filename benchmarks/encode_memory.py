"""Peak memory of ``cinr encode``: it should depend on the block size, not on the slide size.

python -m benchmarks.encode_memory [--quick] [--runs SIDE[s]:BLOCK,...] [--steps 1] [--timeout S]
                                   [--device auto|cpu|cuda] [--threads N] [--append]
                                   [--json] [--results DIR] [--quiet] [--keep DIR]

Slides. Pyramidal, JPEG-tiled BigTIFFs built from real pixels with libvips and saved with
``tiffsave(tile=True, pyramid=True, compression="jpeg", Q=85, bigtiff=True)`` (256 px tiles):

- ``SIDE`` (tiled): ``he-prostate-2500.jpeg`` (2500 x 2500 H&E biopsy) repeated n x n times
  (``pyvips.Image.arrayjoin``) and cropped to SIDE. Tiling one image repeats its content (a 20000 px
  slide holds the same picture 64 times): fine for memory and streaming, not for rate figures.
- ``SIDEs`` (sparse): the same n x n grid of 2500 px cells, white glass except ``--tissue-cells``
  copies of the image spread along the diagonal, like a biopsy on a mostly empty slide. Every
  block is still read and measured, but only blocks with tissue are fitted, so the whole pipeline
  of a large slide runs in a fraction of the time of a fully tiled one.

Runs. Each ``cinr encode SLIDE.tif -o out.cinr --model cinr --steps 1 --quiet --json --block-size B``
(the hash grid's fast preset; before the default became ccinr, the default) runs as
its own child process; its peak resident set size is the ``ru_maxrss`` that ``os.wait4`` returns
for that child alone (Linux: kilobytes), so runs do not mix. While it runs, the child's VmHWM
(``/proc/PID/status``) and the number of blocks in its journal are sampled, so the table also
shows the peak after the first quarter of the blocks: a flat curve means memory does not grow
with the number of blocks. ``--steps 1`` because only memory and the streaming path matter: every
block is still read, fitted (one step), quantized, decoded, measured and written with its mips, so
the per-block work and buffers are those of a real encode; the training time is not.
``--timeout`` stops a run after that many seconds and reports the peak so far with the blocks
done (the file is then not assembled, so the end of the pipeline is not covered).

Default plan (full): 2500 and 5000 px at block size 1024, 2500 px at 2048 (memory should grow with
the block size), and a sparse 20000 px slide at 1024; ``--quick``: 2500 and 5000 px at 1024.
A ``python -c 'import torch, cinr_codec.cli, ...'`` child gives the fixed cost of the interpreter
and libraries.

Writes ``encode_memory_<quick|full>.md`` and ``.json`` to ``--results`` (default
``benchmarks/results``), updated after every run so a long run leaves partial results;
``--append`` keeps the rows already in that JSON (runs already measured are skipped).
``--json`` prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    RESULTS,
    SHARED,
    NullSink,
    code_version,
    header,
    library_versions,
    load_average,
    module_name,
    publish,
    write_report,
)

SOURCE = SHARED / "he-prostate-2500.jpeg"
CELL = 2500  # side of a cell of the slide grid (the source image's side)
FULL_RUNS = "2500:1024,2500:2048,5000:1024,20000s:1024"
QUICK_RUNS = "2500:1024,5000:1024"
SMOKE_RUNS = "256:128"


def _tissue_cells(n: int, k: int) -> set[int]:
    """k cells of an n x n grid spread along the diagonal (cell index r * n + c)."""
    k = max(1, min(k, n))
    return {round(i * (n - 1) / max(1, k - 1)) * (n + 1) for i in range(k)} if k > 1 else {(n // 2) * (n + 1)}


def build_tiff(
    source: Path, side: int, dst: Path, sparse: bool = False, tissue_cells: int = 2
) -> dict[str, Any]:
    """A side x side pyramidal JPEG-tiled BigTIFF of ``source`` (repeated, or sparse on glass)."""
    import pyvips

    img = pyvips.Image.new_from_file(str(source))
    if img.bands == 4:
        img = img.flatten(background=255)
    img = img.extract_band(0, n=3) if img.bands > 3 else img
    cell = min(img.width, img.height)
    img = img.crop(0, 0, cell, cell)
    n = max(1, -(-side // cell))
    if sparse:
        glass = (pyvips.Image.black(cell, cell, bands=3) + 255).cast("uchar")
        keep = _tissue_cells(n, tissue_cells)
        cells = [img if i in keep else glass for i in range(n * n)]
        copies = len(keep)
    else:
        cells = [img] * (n * n)
        copies = n * n
    big = pyvips.Image.arrayjoin(cells, across=n) if n > 1 else img
    big = big.crop(0, 0, min(side, big.width), min(side, big.height))
    t = time.perf_counter()
    big.tiffsave(
        str(dst),
        tile=True,
        tile_width=256,
        tile_height=256,
        pyramid=True,
        compression="jpeg",
        Q=85,
        bigtiff=True,
    )
    return {
        "side": side,
        "layout": "sparse" if sparse else "tiled",
        "copies": copies,
        "tiff_bytes": dst.stat().st_size,
        "build_seconds": time.perf_counter() - t,
    }


def journal_blocks(path: Path) -> int:
    """Number of complete records in an encode journal (walks the record headers only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:8] != b"CINRJNL1":
                return 0
            pos = 12 + int.from_bytes(head[8:12], "little") + 4
            size = os.fstat(f.fileno()).st_size
            n = 0
            while pos + 12 <= size:
                f.seek(pos)
                body = int.from_bytes(f.read(8), "little")
                if pos + 12 + body > size:
                    break
                pos += 12 + body
                n += 1
            return n
    except OSError:
        return 0


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(
    cmd: list[str], env: dict[str, str], timeout: float | None = None, journal: Path | None = None
) -> dict[str, Any]:
    """Run ``cmd``: stdout, stderr, exit status, wall seconds, its own peak RSS (MB), samples.

    Samples are (seconds, journal blocks, VmHWM MB) every ~2 s. After ``timeout`` seconds the
    child is killed (``timed_out``); ``ru_maxrss`` still holds its peak so far.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = None if timeout is None else time.monotonic() + timeout
        samples: list[tuple[float, int, float]] = []
        timed_out = False
        next_sample = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter() - t
            if now >= next_sample:
                hwm = _vm_hwm_mb(proc.pid)
                if hwm is not None:
                    samples.append((round(now, 1), journal_blocks(journal) if journal else 0, hwm))
                next_sample = now + 2.0
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "returncode": proc.returncode,
            "stdout": out.read(),
            "stderr": err.read(),
            "seconds": seconds,
            "peak_rss_mb": usage.ru_maxrss / 1024.0,  # Linux: kilobytes
            "samples": samples,
            "timed_out": timed_out,
            "blocks_done": journal_blocks(journal) if journal and timed_out else None,
        }


def baseline_rss(env: dict[str, str]) -> float:
    """Peak RSS (MB) of a child that only imports what ``cinr encode`` imports."""
    code = "import torch, numpy, openslide, pyvips, PIL.Image, cinr_codec.cli, cinr_codec.encode.slide"
    r = run_child([sys.executable, "-c", code], env)
    if r["returncode"] != 0:
        raise RuntimeError(f"baseline child failed: {r['stderr'].strip()[-300:]}")
    return float(r["peak_rss_mb"])


def _peak_at(samples: list[tuple[float, int, float]], blocks: int, fraction: float) -> float | None:
    """VmHWM (MB) at the first sample with at least ``fraction`` of the blocks in the journal."""
    need = max(1, math.ceil(fraction * blocks))
    for _, done, hwm in samples:
        if done >= need:
            return hwm
    return None


def encode_once(
    tiff: Path,
    out: Path,
    block: int,
    steps: int,
    device: str,
    env: dict[str, str],
    timeout: float | None = None,
) -> dict[str, Any]:
    """One ``cinr encode`` child: peak RSS, seconds and the encoder's JSON summary."""
    cmd = [
        sys.executable,
        "-m",
        "cinr_codec",
        "encode",
        str(tiff),
        "-o",
        str(out),
        "--model",  # the hash grid's fast preset, as every result here (ccinr: its own figures)
        "cinr",
        "--steps",
        str(steps),
        "--quiet",
        "--json",
        "--overwrite",  # the runs share one scratch output
        "--block-size",
        str(block),
        "--device",
        device,
    ]
    journal = out.with_name(out.name + ".journal")
    r = run_child(cmd, env, timeout, journal)
    journal.unlink(missing_ok=True)
    row: dict[str, Any] = {
        "peak_rss_mb": r["peak_rss_mb"],
        "seconds": r["seconds"],
        "samples": r["samples"],
        "timed_out": r["timed_out"],
        "command": "cinr " + " ".join(cmd[3:]),
    }
    if r["timed_out"]:
        row.update(blocks_done=r["blocks_done"], blocks=None, tissue_blocks=None, device=device)
        return row
    if r["returncode"] != 0:
        raise RuntimeError(f"cinr encode failed ({r['returncode']}): {r['stderr'].strip()[-500:]}")
    summary = json.loads(r["stdout"].strip().splitlines()[-1])
    out.unlink(missing_ok=True)
    row.update(
        blocks=summary.get("blocks"),
        blocks_done=summary.get("blocks"),
        tissue_blocks=summary.get("tissue_blocks"),
        background_blocks=summary.get("background_blocks"),
        device=summary.get("device"),
        width=summary.get("width"),
        height=summary.get("height"),
        cinr_bytes=summary.get("bytes"),
    )
    return row


def report(result: dict[str, Any], extra: dict[str, str]) -> str:
    s = result["settings"]
    base = result.get("baseline_rss_mb") or 0.0
    lines = [
        header("Encoder peak memory against slide size and block size", extra),
        "Slides: pyramidal JPEG-tiled (Q 85, 256 px tiles) BigTIFFs built with libvips from "
        f"`{SOURCE.name}` (real H&E biopsy, 2500 x 2500): *tiled* = the image repeated n x n times and "
        "cropped (the content repeats: a 20000 px slide holds the same picture 64 times, which does not "
        "matter for memory); *sparse* = the same grid of 2500 px cells left as white glass except "
        f"{s.get('tissue_cells', 2)} copies along the diagonal (a biopsy on a mostly empty slide: every "
        "block is read and measured, only tissue blocks are fitted).",
        "",
        f"Each run: `cinr encode SLIDE -o out.cinr --steps {s['steps']} --quiet --json --block-size B "
        f"--device {s['device']}` in its own child process"
        + (f" with OMP_NUM_THREADS={s['threads']}" if s["threads"] is not None else "")
        + ". Peak RSS is the child's own `ru_maxrss` from `os.wait4`; *at 25 %* is its VmHWM (peak so "
        "far) sampled when a quarter of the blocks were in the journal. "
        f"`--steps {s['steps']}`: only memory and the streaming path matter here (every block is still "
        "read, fitted, quantized, decoded, measured and written with its mips), so the seconds are "
        "those of that pipeline, not of a real encode's training.",
        "",
        f"Fixed cost: a child that only imports torch, numpy, openslide, pyvips and cinr_codec peaks at "
        f"{base:.0f} MB.",
        "",
        "| slide (px) | layout | block size | peak RSS (MB) | above imports (MB) | peak at 25 % of blocks (MB) "
        "| seconds | blocks (tissue) | device | TIFF (MB) | started | code |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for r in sorted(result["rows"], key=lambda r: (r["side"], r.get("layout", "tiled"), r["block_size"])):
        n = math.ceil(r["side"] / r["block_size"]) ** 2
        q = _peak_at(r.get("samples", []), n, 0.25)
        if r.get("timed_out"):
            blocks = f"stopped after {r.get('blocks_done')} of {n}"
        else:
            blocks = f"{r['blocks']} ({r['tissue_blocks']})"
        lines.append(
            f"| {r['side']} x {r['side']} | {r.get('layout', 'tiled')} | {r['block_size']} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - base:.0f} | {'–' if q is None else f'{q:.0f}'} | "
            f"{r['seconds']:.1f} | {blocks} | {r['device']} | {r['tiff_bytes'] / 1e6:.1f} | "
            f"{r.get('date', '?')[-5:]} | {r.get('code', '?')} |"
        )
    if result.get("pending"):
        lines += ["", "Not measured (yet): " + ", ".join(result["pending"]) + "."]
    if result.get("failed"):
        lines += ["", "Failed: " + "; ".join(result["failed"])]
    if len(result.get("invocations", [])) > 1:
        lines += ["", "Rows come from these invocations (`--append`):"]
        lines += [f"- `{c}`" for c in result["invocations"]]
    lines += ["", "Load average (1, 5, 15 min) at start: " + result["load_start"]]
    if result.get("load_end"):
        lines.append(f"at end: {result['load_end']}; wall time of the benchmark {result['seconds']:.0f} s.")
    lines += [
        "",
        "Other jobs shared this 2-core machine during the runs, so seconds are noisy; peak RSS is not "
        "affected by load.",
    ]
    return "\n".join(lines) + "\n"


def parse_runs(text: str) -> list[tuple[int, bool, int]]:
    """``SIDE[s]:BLOCK,...`` -> [(side, sparse, block)]."""
    runs = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = re.fullmatch(r"\s*(\d+)(s?):(\d+)\s*", part)
        if not m:
            raise ValueError(f"--runs: {part!r} is not SIDE:BLOCK or SIDEs:BLOCK")
        runs.append((int(m.group(1)), m.group(2) == "s", int(m.group(3))))
    if not runs:
        raise ValueError("--runs: no runs")
    return runs


def _key(side: int, sparse: bool, block: int) -> str:
    return f"{side}{'s' if sparse else ''}:{block}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"runs {QUICK_RUNS}")
    ap.add_argument("--smoke", action="store_true", help="one tiny slide, one run (tests)")
    ap.add_argument("--runs", default=None, help=f"SIDE[s]:BLOCK,... (s: sparse); full default {FULL_RUNS}")
    ap.add_argument("--tissue-cells", type=int, default=2, help="image copies on a sparse slide")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=None, help="stop each run after this many seconds")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the children")
    ap.add_argument("--image", default=str(SOURCE), help="picture to repeat (default he-prostate-2500.jpeg)")
    ap.add_argument("--keep", default=None, help="build the TIFFs in this folder and keep them")
    ap.add_argument("--append", action="store_true", help="keep the rows of an earlier run's JSON")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    ap.add_argument("--results", default=None, help="output folder (default benchmarks/results)")
    args = ap.parse_args(argv)

    try:
        src = Path(args.image)
        if not src.is_file():
            raise ValueError(f"{src}: no such file")
        plan = args.runs or (SMOKE_RUNS if args.smoke else QUICK_RUNS if args.quick else FULL_RUNS)
        runs = parse_runs(plan)
        for side, _, b in runs:
            if b < 64 or b % 16:
                raise ValueError(f"block size {b}: must be a multiple of 16, at least 64")
            if side < 64:
                raise ValueError(f"slide side {side}: must be >= 64")
        if args.threads is not None and args.threads < 1:
            raise ValueError("--threads must be >= 1")
        if args.timeout is not None and not args.timeout > 0:
            raise ValueError("--timeout must be > 0")
        name = "smoke" if args.smoke else ("quick" if args.quick else "full")
        out_dir = Path(args.results) if args.results else RESULTS
        out_dir.mkdir(parents=True, exist_ok=True)
    except ValueError as exc:
        print(f"benchmarks.encode_memory: error: {exc}", file=sys.stderr)
        sys.exit(2)

    import click

    threads = 1 if args.smoke and args.threads is None else args.threads
    env = _child_env(threads)
    extra = library_versions()
    md = out_dir / f"encode_memory_{name}.md"
    js = out_dir / f"encode_memory_{name}.json"
    invocation = " ".join(["python -m", module_name(), *sys.argv[1:]])
    result: dict[str, Any] = {
        "rows": [],
        "settings": {
            "runs": plan,
            "steps": args.steps,
            "device": args.device,
            "threads": threads,
            "source": str(src),
            "tissue_cells": args.tissue_cells,
            "mode": name,
            "timeout": args.timeout,
        },
        "load_start": load_average(),
        "failed": [],
        "invocations": [invocation],
    }
    if args.append and js.exists():
        old = json.loads(js.read_text())
        result["rows"] = [r for r in old.get("rows", []) if isinstance(r, dict)]
        result["invocations"] = old.get("invocations", ["(an earlier invocation)"]) + [invocation]
    done = {_key(r["side"], r.get("layout") == "sparse", r["block_size"]) for r in result["rows"]}
    runs = [r for r in runs if _key(*r) not in done]
    result["pending"] = [_key(*r) for r in runs]

    def save() -> None:
        write_report(md, report(result, extra), result)

    t0 = time.perf_counter()
    work = (
        tempfile.mkdtemp(prefix="cinr-encmem-", dir=args.keep)
        if args.keep
        else tempfile.mkdtemp(prefix="cinr-encmem-")
    )
    interactive = sys.stderr.isatty()

    def log(msg: str) -> None:
        if not interactive and not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        result["baseline_rss_mb"] = baseline_rss(env)
        built: dict[tuple[int, bool], dict[str, Any]] = {}
        total = sum(math.ceil(s / b) ** 2 for s, _, b in runs)
        with click.progressbar(
            length=max(1, total),
            label="encode_memory",
            file=NullSink() if args.quiet else sys.stderr,  # type: ignore[arg-type]
            show_pos=True,
            show_eta=True,
        ) as bar:
            for side, sparse, block in runs:
                key = _key(side, sparse, block)
                bar.label = key
                if (side, sparse) not in built:
                    log(f"building the {'sparse ' if sparse else ''}{side} px slide ...")
                    tif = Path(work) / f"slide_{side}{'s' if sparse else ''}.tif"
                    built[side, sparse] = {
                        **build_tiff(src, side, tif, sparse, args.tissue_cells),
                        "path": tif,
                    }
                b = built[side, sparse]
                log(f"{key}: cinr encode ...")
                code, started = code_version(), time.strftime("%Y-%m-%d %H:%M")
                try:
                    row = encode_once(
                        b["path"], Path(work) / "out.cinr", block, args.steps, args.device, env, args.timeout
                    )
                except RuntimeError as exc:
                    result["failed"].append(f"{key}: {exc}")
                    log(f"  failed: {exc}")
                else:
                    row.update(
                        side=side,
                        layout=b["layout"],
                        copies=b["copies"],
                        block_size=block,
                        tiff_bytes=b["tiff_bytes"],
                        load=load_average(),
                        date=started,
                        code=code,
                    )
                    result["rows"].append(row)
                    log(f"  peak {row['peak_rss_mb']:.0f} MB, {row['seconds']:.0f} s")
                result["pending"].remove(key)
                save()
                bar.update(math.ceil(side / block) ** 2)
    except (OSError, RuntimeError) as exc:
        print(f"benchmarks.encode_memory: error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.perf_counter() - t0
    result["load_end"] = load_average()
    publish(md, report(result, extra), result, args.json, data=result, show=False)
    if not args.json and not args.quiet:
        print(f"wrote {md}", file=sys.stderr)
    if result["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
