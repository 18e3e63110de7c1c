"""Shared helpers: paths, machine and library versions, result headers, Markdown tables, report writing."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cinr_codec.cli import NullSink

__all__ = [
    "RESULTS",
    "SHARED",
    "SHARED_IMAGES",
    "NullSink",
    "code_version",
    "codec_library_versions",
    "cpu_model",
    "csv_list",
    "header",
    "library_versions",
    "load_average",
    "machine",
    "md_table",
    "module_name",
    "num",
    "publish",
    "pyplot",
    "write_report",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
#: The shared real slides and images (``../shared/data`` beside the repository).
SHARED = ROOT.parent / "shared" / "data"
#: The three real images the quality benchmarks use by default (those that exist).
SHARED_IMAGES = [
    SHARED / "he-prostate-2500.jpeg",
    SHARED / "CMU-1-Small-Region.svs",
    SHARED / "TCGA-CR-7395-01A-01-TS1.svs",
]


# --------------------------------------------------------------------------------------------
# What ran: machine, libraries, code, load
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What ran the benchmark: CPU, cores, GPU, library versions, then the ``extra`` entries."""
    import numpy
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu_model(),
        "cores": str(cores()),
        "torch threads": str(torch.get_num_threads()),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        **dict(extra or {}),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or '?'."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def code_version() -> str:
    """``git describe``-like id of the working tree's code: short commit, ``+dirty`` if cinr_codec differs."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cinr_codec"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """cinr_codec (with its code version), OpenSlide and libvips: ``machine()`` extras of the speed benchmarks."""
    out: dict[str, str] = {}
    try:
        import cinr_codec

        out["cinr_codec"] = f"{cinr_codec.__version__} (code {code_version()})"
    except ImportError:
        pass
    try:
        import openslide

        out["openslide"] = f"{openslide.__library_version__} (python {openslide.__version__})"
    except (ImportError, AttributeError):
        out["openslide"] = "not installed"
    try:
        import pyvips

        out["libvips"] = (
            f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)} (pyvips {pyvips.__version__})"
        )
    except (ImportError, AttributeError, OSError):
        out["libvips"] = "not installed"
    return out


def codec_library_versions() -> dict[str, str]:
    """imagecodecs and its codec libraries, Pillow, pyvips, OpenSlide: ``machine()`` extras of ``rd``."""
    out: dict[str, str] = {}
    try:
        import imagecodecs as ic

        out["imagecodecs"] = ic.__version__
        libs = dict(
            item.split("-", 1)
            for item in ic.version().split(", ")
            if "-" in item and not item.endswith("n/a")
        )
        out["codec libraries"] = ", ".join(
            f"{k} {libs[k]}"
            for k in ("libjpeg_turbo", "openjpeg", "libjxl", "libavif", "libwebp")
            if k in libs
        )
    except ImportError:
        out["imagecodecs"] = "not installed"
    try:
        import PIL

        out["pillow"] = PIL.__version__
    except ImportError:
        pass
    try:
        import pyvips

        out["pyvips"] = (
            f"{pyvips.__version__} (libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)})"
        )
    except Exception:  # noqa: BLE001 - a broken libvips must not stop the benchmark
        out["pyvips"] = "not available"
    try:
        import openslide

        out["openslide"] = f"{openslide.__version__} (library {openslide.__library_version__})"
    except Exception:  # noqa: BLE001
        pass
    return out


def module_name() -> str:
    """The module run as ``python -m NAME`` (or the script's stem)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def header(title: str, extra: Mapping[str, str] | None = None) -> str:
    """Markdown header: title, date, exact command, machine (``extra``: more ``machine()`` entries)."""
    cmd = "python -m " + " ".join(
        [Path(sys.argv[0]).with_suffix("").name and module_name()] + [shlex.quote(a) for a in sys.argv[1:]]
    )
    lines = [
        f"# {title}",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{cmd}`",
    ]
    lines += [f"- {k}: {v}" for k, v in machine(extra).items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def md_table(head: Sequence[str], align: str, rows: Iterable[Sequence[object]] = ()) -> list[str]:
    """Lines of a Markdown table: the head, the rule (``align``: one ``l`` or ``r`` per column), the rows.

    Cells are written with ``str``; format numbers before.
    """
    if len(align) != len(head):
        raise ValueError(f"{len(head)} columns but align {align!r}")
    rule = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def num(v: float | None, spec: str = ".3f", none: str = "–") -> str:
    """``format(v, spec)``, or ``none`` when ``v`` is None."""
    return none if v is None else format(v, spec)


def csv_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated option."""
    return [t.strip() for t in text.split(",") if t.strip()]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


# --------------------------------------------------------------------------------------------
# Writing and printing a report
# --------------------------------------------------------------------------------------------


def write_report(path: Path, text: str, data: object | None = None) -> None:
    """Write the Markdown report to ``path`` and, with ``data``, ``data`` as JSON beside it (``.json``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if data is not None:
        path.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")


def publish(
    path: Path | None,
    text: str,
    payload: object,
    as_json: bool,
    *,
    data: object | None = None,
    show: bool = True,
) -> None:
    """Write the report (``write_report``; not when ``path`` is None), then print on stdout.

    Stdout gets ``payload`` as one line of JSON with ``as_json``, else the report when ``show``.
    """
    if path is not None:
        write_report(path, text, data)
    if as_json:
        print(json.dumps(payload))
    elif show:
        print(text)
