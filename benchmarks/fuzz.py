"""Fuzz the reader with structure-aware mutants: only ``CinrError``, in bounded time and memory.

Seeds are the format vectors (``formats/vectors/``), slides assembled from their blocks (a grid with
background blocks, mips and associated images, one per model kind) and, with ``--encoded``, small
slides made by the encoder. Each mutant (``benchmarks.cinr_mutator.mutate``: one to three
structure-aware changes, every length and CRC recomputed) goes through what a viewer does:
``open_cinr``, ``properties``, each associated image, ``read_region`` at level 0, ``read`` at
scale 1 and at a coarse scale, ``read_region`` of the last level, and ``get_thumbnail``. Anything
but a ``CinrError`` is a failure.

Each mutant runs in a forked child (the parent has imported everything once) under an address-space
limit (``--memory-gb``, ``RLIMIT_AS``) and a wall-clock limit (``--timeout``); per call the child
records the exception type, the seconds and the peak resident memory (``VmHWM``, reset before each
call through ``/proc/self/clear_refs``). The report (Markdown and JSON) gives the exception types,
the maxima per call, and every failure with the mutations that made it.

    python -m benchmarks.fuzz --mutants 100000 --seed 0                  # the full run
    python -m benchmarks.fuzz --time-budget 1200 --encoded               # what fits in 20 minutes
    python -m benchmarks.fuzz --jobs 16                                  # the full run on 16 cores
    python -m benchmarks.fuzz --first 50000 --mutants 50000 --out B.md   # a share of the full run
    python -m benchmarks.fuzz --merge A.json B.json --out fuzz.md        # shares added up

``tests/format/test_fuzz.py`` runs a few hundred mutants in-process with a fixed seed (CI).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cinr_mutator import (
    KIND_BACKGROUND,
    KIND_IMAGE,
    KIND_MODEL,
    Assoc,
    Block,
    assemble,
    mutate,
    parse,
)

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "formats" / "vectors"
SAMPLE = ROOT / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"
RESULTS = Path(__file__).resolve().parent / "results"

#: The calls every mutant goes through, in order (a failed ``open`` ends the list).
CALLS = (
    "open",
    "properties",
    "associated_images",
    "read_region",
    "read",
    "coarse",
    "last_level",
    "thumbnail",
)


# -- seeds ----------------------------------------------------------------------------------------


def _png(img: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, quality=90)
    return buf.getvalue()


def _box(img: np.ndarray, d: int) -> np.ndarray:
    from cinr_codec.core.resample import box_downsample, to_uint8

    return to_uint8(box_downsample(img, d))


def grid_seed(vector: Path) -> bytes:
    """A slide assembled from a vector's block: 5 x 1 or 5 x 2 blocks of 64 px (two of them the
    vector's model, sharing nothing), mips at 2 (PNG) and 4 (AVIF stored short, format 1.11, when
    Pillow has it, else PNG; decoded from the vector), background blocks, a label (PNG) and a macro (JPEG), slide
    properties with bounds and resolution, a footer."""
    from cinr_codec.coding.images import avif_available, encode_avif
    from cinr_codec.decode.image import decode_image
    from cinr_codec.format.container import MINOR_SHORT_AVIF, short_avif

    f = parse(vector.read_bytes())
    model = f.blocks[0]
    pixels = decode_image(vector)
    h, w = pixels.shape[:2]
    ccinr = f.header.get("model", {}).get("kind") == "ccinr"
    avif = avif_available()
    if avif:
        f.minor = max(f.minor, MINOR_SHORT_AVIF)
    cols, rows = 5, 1 if ccinr else 2
    W, H = 64 * (cols - 1) + 44, h if ccinr else 64 + h
    n = cols * rows
    models = {0, n - 2} if not ccinr else {0, 3}
    level = [
        Block(KIND_MODEL, payload=model.payload) if i in models else Block(KIND_BACKGROUND, (246, 244, 247))
        for i in range(n)
    ]
    mips = []
    for d in (2, 4):
        for i in range(n):
            if i in models:
                bh = min(64, H - (i // cols) * 64)
                bw = min(64, W - (i % cols) * 64)
                # The vector's pixels stand for the block (its frame renders them at the top left).
                tile = np.full((bh, bw, 3), 200, dtype=np.uint8)
                tile[: min(bh, h), : min(bw, w)] = pixels[:bh, :bw]
                # The coarser mips are AVIF where Pillow has it, stored short as the encoder's are.
                data = (
                    short_avif.stored_form(encode_avif(_box(tile, d), 80))
                    if d == 4 and avif
                    else _png(_box(tile, d))
                )
                mips.append(Block(KIND_IMAGE, payload=data))
            else:
                mips.append(Block(KIND_BACKGROUND, (246, 244, 247)))
    f.blocks = level + mips
    f.header["slide"] = {
        **f.header.get("slide", {}),
        "width": W,
        "height": H,
        "mpp_x": 0.25,
        "mpp_y": 0.25,
        "objective_power": 40,
        "vendor": "aperio",
        "level": 0,
        "level_downsample": 1.0,
        "background": [246, 244, 247],
        "properties": {
            "aperio.MPP": "0.25",
            "openslide.vendor": "aperio",
            "openslide.mpp-x": "0.25",
            "openslide.bounds-x": "3",
            "openslide.bounds-y": "2",
            "openslide.bounds-width": "200",
            "openslide.bounds-height": "40",
            "openslide.associated.label.width": "40",
        },
    }
    f.header["grid"] = {"block_size": 64, "halo": 0, "cols": cols, "rows": rows}
    f.header["mips"] = {"downsamples": [2, 4], "first_block": n, "filter": "box"}
    f.header["tissue"] = {"method": "otsu", "fraction": 0.3}
    f.footer = {"quality": {"psnr_db": 30.5, "ssim": 0.9, "region": "tissue blocks"}, "fit": {"steps": 10}}
    label = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    f.images = [
        Assoc("label", "image/png", _png(label)),
        Assoc("macro", "image/jpeg", _png(np.full((20, 50, 3), (200, 40, 90), dtype=np.uint8), "JPEG")),
    ]
    f.minor = max(f.minor, 1)
    return assemble(f)


def encoded_seed(model: str, folder: Path, steps: int = 5) -> bytes:
    """A 192 x 128 crop of the bundled sample slide encoded by ``encode_slide`` (blocks of 64 px,
    margin 8, mips), with a label added."""
    from PIL import Image

    from cinr_codec.encode.slide import encode_slide
    from cinr_codec.encode.source import read_crop

    crop = read_crop(SAMPLE, 192)[:128]
    png = folder / f"crop-{model}.png"
    Image.fromarray(crop).save(png)
    out = folder / f"seed-{model}.cinr"
    if out.exists():
        out.unlink()
    encode_slide(
        png,
        out,
        model=model,
        preset="q6" if model == "ccinr" else "fast",
        steps=steps,
        block_size=64,
        margin=8,
        tissue_mask=False,
        device="cpu",
        threads=1,
    )
    f = parse(out.read_bytes())
    f.images.append(Assoc("label", "image/png", _png(crop[:20, :30])))
    return assemble(f)


def seeds(encoded: tuple[str, ...] = (), folder: Path | None = None) -> dict[str, bytes]:
    """name -> bytes of every seed: the vectors, a grid slide per vector, and encoder-made slides."""
    out = {}
    for path in sorted(VECTORS.glob("*.cinr")):
        out[path.name] = path.read_bytes()
        out[f"grid-{path.name}"] = grid_seed(path)
    if encoded:
        tmp = folder or Path(tempfile.mkdtemp(prefix="cinr-fuzz-seeds-"))
        for model in encoded:
            out[f"encoded-{model}.cinr"] = encoded_seed(model, tmp)
    return out


# -- one mutant through the reader ---------------------------------------------------------------


@dataclass
class Call:
    """One API call on one mutant."""

    name: str
    error: str | None  # exception type name, None when it returned
    ok: bool  # returned, or raised a CinrError
    seconds: float
    peak_kib: int | None = None  # VmHWM during the call (forked runs)
    message: str = ""


def _hwm_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _hwm() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def exercise(path: str | os.PathLike[str], *, measure: bool = False) -> list[Call]:
    """Run ``CALLS`` on the file; each call's outcome (an exception other than ``CinrError`` is not ok)."""
    from cinr_codec.api import open_cinr
    from cinr_codec.errors import CinrError

    calls: list[Call] = []

    def call(name: str, fn: Callable[[], Any]) -> Any:
        if measure:
            _hwm_reset()
        t0 = time.perf_counter()
        result, error, ok, message = None, None, True, ""
        try:
            result = fn()
        except CinrError as exc:
            error, message = type(exc).__name__, str(exc)[:300]
        except (Exception, RecursionError) as exc:  # noqa: BLE001 - the point: anything else is a failure
            error, ok = type(exc).__name__, False
            message = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:300]
            message += " | " + " < ".join(
                f"{Path(fr.filename).name}:{fr.lineno}" for fr in traceback.extract_tb(exc.__traceback__)[-4:]
            )
        calls.append(Call(name, error, ok, time.perf_counter() - t0, _hwm() if measure else None, message))
        return result

    slide = call("open", lambda: open_cinr(path))
    if slide is None:
        return calls
    try:
        W, H = slide.dimensions

        def images() -> None:
            for name in list(slide.associated_images):
                slide.associated_images[name].load()

        call("properties", lambda: dict(slide.properties))
        call("associated_images", images)
        call("read_region", lambda: slide.read_region((0, 0), 0, (min(W, 200), min(H, 150))))
        call("read", lambda: slide.read(max(0, W // 2 - 64), max(0, H // 2 - 64), 128, 128, 1.0))
        scale = min(0.5, 64.0 / max(W, H))
        call("coarse", lambda: slide.read(0, 0, W, H, scale))
        call(
            "last_level", lambda: slide.read_region((0, 0), slide.level_count - 1, slide.level_dimensions[-1])
        )
        call("thumbnail", lambda: slide.get_thumbnail((128, 128)))
    finally:
        slide.close()
    return calls


# -- running many ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """A mutant's result: its calls, or how its child died."""

    index: int
    seed_name: str
    mutations: list[str]
    size: int
    calls: list[Call] = field(default_factory=list)
    died: str | None = None  # "timeout after N s", "signal N", "exit N"
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.died is None and all(c.ok for c in self.calls)


def mutants(
    sources: dict[str, bytes], n: int, seed: int, max_blocks: int, first: int = 0
) -> Iterator[tuple[int, str, bytes, list[str]]]:
    """(index, seed name, bytes, mutations) of mutants first..first+n-1, seeds taken in turn.

    Mutant i depends only on (seed, i), so runs over disjoint ranges add up to one run.
    """
    names = sorted(sources)
    for i in range(first, first + n):
        name = names[i % len(names)]
        data, what = mutate(sources[name], f"{seed}:{i}", max_blocks=max_blocks)
        yield i, name, data, what


def run_inprocess(
    sources: dict[str, bytes], n: int, seed: int, folder: Path, max_blocks: int = 1 << 12
) -> list[Outcome]:
    """Mutants run in this process (CI): no memory limit or timeout, no per-call memory."""
    out = []
    path = folder / "mutant.cinr"
    for i, name, data, what in mutants(sources, n, seed, max_blocks):
        path.write_bytes(data)
        t0 = time.perf_counter()
        calls = exercise(path)
        out.append(Outcome(i, name, what, len(data), calls, seconds=time.perf_counter() - t0))
    return out


def _child(path: Path, data: bytes, memory: int, wfd: int) -> None:  # pragma: no cover - runs in the fork
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        path.write_bytes(data)
        calls = exercise(path, measure=True)
        payload = json.dumps([c.__dict__ for c in calls]).encode()
        view = memoryview(payload)
        while view:
            view = view[os.write(wfd, view) :]
    finally:
        os._exit(0)


def run_forked(data: bytes, folder: Path, timeout: float, memory: int) -> tuple[list[Call], str | None]:
    """One mutant in a forked child under ``memory`` bytes of address space and ``timeout`` seconds."""
    rfd, wfd = os.pipe()
    path = folder / f"mutant-{os.getpid()}.cinr"
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os.close(rfd)
        _child(path, data, memory, wfd)
    os.close(wfd)
    chunks, died = [], None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            died = f"timeout after {timeout:.0f} s"
            break
        ready, _, _ = select.select([rfd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if died is None and os.WIFSIGNALED(status):
        died = f"signal {os.WTERMSIG(status)}"
    calls = []
    try:
        calls = [Call(**c) for c in json.loads(b"".join(chunks) or b"[]")]
    except ValueError:
        died = died or "no result"
    if died is None and (not calls or (calls[0].ok and calls[0].error is None and len(calls) < len(CALLS))):
        died = "exited early"
    return calls, died


# -- the report -----------------------------------------------------------------------------------


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    """Exception types per call, maxima of time and memory per call, failures."""
    types: dict[str, collections.Counter[str]] = {c: collections.Counter() for c in CALLS}
    worst: dict[str, dict[str, Any]] = {c: {"seconds": 0.0, "peak_kib": 0} for c in CALLS}
    failures = []
    for o in outcomes:
        for c in o.calls:
            types[c.name][c.error or "returned"] += 1
            w = worst[c.name]
            if c.seconds > w["seconds"]:
                w.update(seconds=c.seconds, seconds_at=o.index)
            if c.peak_kib is not None and c.peak_kib > w["peak_kib"]:
                w.update(peak_kib=c.peak_kib, peak_at=o.index)
        if not o.ok:
            failures.append(
                {
                    "mutant": o.index,
                    "seed": o.seed_name,
                    "mutations": o.mutations,
                    "died": o.died,
                    "calls": [c.__dict__ for c in o.calls if not c.ok],
                }
            )
    return {
        "mutants": len(outcomes),
        "failures": failures,
        "exception_types": {c: dict(types[c].most_common()) for c in CALLS},
        "worst": worst,
        "max_file_seconds": max((o.seconds for o in outcomes), default=0.0),
        "max_file_bytes": max((o.size for o in outcomes), default=0),
    }


def report(
    summary: dict[str, Any], settings: dict[str, Any], seed_names: list[str], versions: dict[str, str]
) -> str:
    from benchmarks.common import header, load_average, md_table

    lines = [
        header("Structure-aware fuzzing of the reader (issue 14)", versions),
        f"- load average at the end: {load_average()}",
        "",
        "Each mutant: one to three structure-aware changes of a seed (`benchmarks/cinr_mutator.py`), every",
        "length and CRC recomputed; then `open_cinr`, `properties`, each associated image, `read_region`",
        "at level 0, `read` at scale 1 and at a coarse scale, `read_region` of the last level,",
        "`get_thumbnail`, in a forked child under an address-space limit and a timeout. A failure is any",
        "exception that is not a `CinrError`, or a child that died or ran out of time.",
        "",
        f"- mutants: {summary['mutants']:,} (indices "
        + ", ".join(
            f"{a:,}–{b - 1:,}"
            for a, b in settings.get("ranges")
            or [(settings.get("first", 0), settings.get("first", 0) + summary["mutants"])]
        )
        + f"); seed {settings['seed']}; seeds: {', '.join(seed_names)}",
        f"- limits per mutant: {settings['memory_gb']} GB of address space, {settings['timeout']} s",
        f"- wall time: {settings['wall_seconds']:.0f} s"
        + (f", summed over {settings['workers']} runs" if settings["workers"] > 1 else " on 1 worker"),
        f"- **failures: {len(summary['failures'])}**",
        f"- largest mutant: {summary['max_file_bytes']:,} bytes; slowest mutant (all calls): "
        f"{summary['max_file_seconds']:.2f} s",
        "",
        "## Per call: the maxima",
        "",
    ]
    rows = []
    for c in CALLS:
        w = summary["worst"][c]
        peak = w["peak_kib"] / 1024 if w["peak_kib"] else None
        rows.append(
            (
                c,
                f"{w['seconds']:.3f}",
                w.get("seconds_at", ""),
                f"{peak:.0f}" if peak else "n/a",
                w.get("peak_at", ""),
            )
        )
    lines += md_table(("call", "max seconds", "at mutant", "max peak RSS (MiB)", "at mutant"), "lrrrr", rows)
    lines += ["", "## Outcomes per call (returned, or the exception type)", ""]
    for c in CALLS:
        kinds = summary["exception_types"][c]
        lines.append(f"- `{c}`: " + ", ".join(f"{k} {v:,}" for k, v in kinds.items()))
    if summary["failures"]:
        lines += ["", "## Failures", ""]
        for f in summary["failures"][:50]:
            what = "; ".join(f["mutations"])
            bad = "; ".join(f"{c['name']}: {c['message'][:160]}" for c in f["calls"])
            lines.append(f"- mutant {f['mutant']} ({f['seed']}: {what}): {f['died'] or ''} {bad}")
    return "\n".join(lines) + "\n"


def merge(parts: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, settings) of runs over disjoint ranges of the same mutants, as one run's.

    Raises ``ValueError`` when the runs differ in seed, limits or seeds, or their ranges overlap.
    """
    keys = ("seed", "memory_gb", "timeout", "max_blocks", "seed_names", "code")
    first = parts[0]["settings"]
    for p in parts[1:]:
        diff = [k for k in keys if p["settings"].get(k) != first.get(k)]
        if diff:
            raise ValueError(f"the runs differ in {', '.join(diff)}")
    ranges = sorted((p["settings"]["first"], p["settings"]["first"] + p["mutants"]) for p in parts)
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        if start < end:
            raise ValueError(f"mutant ranges overlap at {start}")
    types: dict[str, collections.Counter[str]] = {c: collections.Counter() for c in CALLS}
    worst: dict[str, dict[str, Any]] = {c: {"seconds": 0.0, "peak_kib": 0} for c in CALLS}
    for p in parts:
        for c in CALLS:
            types[c].update(p["exception_types"][c])
            w, pw = worst[c], p["worst"][c]
            if pw["seconds"] > w["seconds"]:
                w.update(seconds=pw["seconds"], seconds_at=pw.get("seconds_at"))
            if pw["peak_kib"] > w["peak_kib"]:
                w.update(peak_kib=pw["peak_kib"], peak_at=pw.get("peak_at"))
    summary = {
        "mutants": sum(p["mutants"] for p in parts),
        "failures": [f for p in parts for f in p["failures"]],
        "exception_types": {c: dict(types[c].most_common()) for c in CALLS},
        "worst": worst,
        "max_file_seconds": max(p["max_file_seconds"] for p in parts),
        "max_file_bytes": max(p["max_file_bytes"] for p in parts),
    }
    settings = {
        **{k: first.get(k) for k in keys},
        "first": ranges[0][0],
        "ranges": ranges,
        "wall_seconds": sum(p["settings"]["wall_seconds"] for p in parts),
        "workers": len(parts),
    }
    return summary, settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=100_000, help="how many mutants [%(default)s]")
    ap.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first", type=int, default=0, help="index of the first mutant [%(default)s]")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="add up the JSON reports of runs over disjoint ranges",
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant [%(default)s]")
    ap.add_argument("--memory-gb", type=float, default=4.0, help="address space per mutant [%(default)s]")
    ap.add_argument(
        "--max-blocks", type=int, default=1 << 20, help="most blocks a mutation may grow a grid to"
    )
    ap.add_argument(
        "--encoded", action="store_true", help="also seed with slides made by the encoder (ngp, cinr, ccinr)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "fuzz.md", help="report (and .json beside it)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="split the range over this many processes, then merge [%(default)s]",
    )
    args = ap.parse_args(argv)
    if args.merge:
        return _merged(args.merge, args.out)
    if args.jobs > 1:
        return _parallel(args, argv if argv is not None else sys.argv[1:])

    import torch

    torch.set_num_threads(1)
    import safetensors.torch  # noqa: F401 - a child under its memory limit could not map the library

    import cinr_codec.api  # noqa: F401 - imported once, before the forks
    import cinr_codec.coding.hashgrid  # noqa: F401
    import cinr_codec.coding.latent  # noqa: F401
    import cinr_codec.coding.tensors  # noqa: F401
    from benchmarks.common import library_versions

    versions = library_versions()  # the code the forks run: recorded before, not after, the run
    folder = Path(tempfile.mkdtemp(prefix="cinr-fuzz-"))
    sources = seeds(("ngp", "cinr", "ccinr") if args.encoded else (), folder)
    t0 = time.perf_counter()
    outcomes: list[Outcome] = []
    memory = int(args.memory_gb * (1 << 30))
    for i, name, data, what in mutants(sources, args.mutants, args.seed, args.max_blocks, args.first):
        if args.time_budget is not None and time.perf_counter() - t0 > args.time_budget:
            break
        t = time.perf_counter()
        calls, died = run_forked(data, folder, args.timeout, memory)
        outcomes.append(Outcome(i, name, what, len(data), calls, died, time.perf_counter() - t))
        if not outcomes[-1].ok:
            print(
                f"FAIL mutant {i} ({name}: {'; '.join(what)}): {died or ''} "
                f"{[(c.name, c.message[:200]) for c in calls if not c.ok]}",
                file=sys.stderr,
                flush=True,
            )
        if (i + 1) % 500 == 0:
            print(f"{i + 1} mutants, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    settings = {
        "seed": args.seed,
        "first": args.first,
        "memory_gb": args.memory_gb,
        "timeout": args.timeout,
        "wall_seconds": time.perf_counter() - t0,
        "workers": 1,
        "max_blocks": args.max_blocks,
        "seed_names": sorted(sources),
        "code": versions.get("cinr_codec"),
    }
    summary = summarise(outcomes)
    from benchmarks.common import write_report

    write_report(
        args.out,
        report(summary, settings, sorted(sources), versions),
        {"settings": settings, "versions": versions, **summary},
    )
    print(f"{len(outcomes)} mutants, {len(summary['failures'])} failures; report: {args.out}")
    return 1 if summary["failures"] else 0


def _parallel(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.jobs`` processes over equal shares of the range (each a ``--first`` run), then merge."""
    import subprocess

    drop = {"--jobs", "--first", "--mutants", "--out"}
    rest, skip = [], False
    for a in argv:  # the shares' own options replace these
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in drop:
            skip = "=" not in a
            continue
        rest.append(a)
    bounds = [args.first + args.mutants * k // args.jobs for k in range(args.jobs + 1)]
    parts = [args.out.with_name(f"{args.out.stem}.part{k}.md") for k in range(args.jobs)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.fuzz",
                *rest,
                "--first",
                str(a),
                "--mutants",
                str(b - a),
                "--out",
                str(o),
            ],
            cwd=ROOT,
        )
        for a, b, o in zip(bounds, bounds[1:], parts)
    ]
    codes = [p.wait() for p in procs]
    if any(c not in (0, 1) for c in codes):
        print(f"a share failed to run (exit statuses {codes})", file=sys.stderr)
        return 2
    status = _merged([o.with_suffix(".json") for o in parts], args.out)
    for o in parts:
        o.unlink(missing_ok=True)
        o.with_suffix(".json").unlink(missing_ok=True)
    return status


def _merged(paths: list[Path], out: Path) -> int:
    from benchmarks.common import write_report

    parts = [json.loads(p.read_text()) for p in paths]
    try:
        summary, settings = merge(parts)
    except ValueError as exc:
        print(f"cannot merge: {exc}", file=sys.stderr)
        return 2
    versions = parts[0].get("versions", {})
    write_report(
        out,
        report(summary, settings, settings["seed_names"], versions),
        {"settings": settings, "versions": versions, **summary},
    )
    print(f"{summary['mutants']} mutants, {len(summary['failures'])} failures; report: {out}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
