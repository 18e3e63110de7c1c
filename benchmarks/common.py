"""Shared helpers: machine description, result headers, output folder, report writing."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from cinr_codec.cli import NullSink

__all__ = ["RESULTS", "NullSink", "header", "machine", "publish"]

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What ran the benchmark: CPU, cores, GPU, library versions, then the ``extra`` entries."""
    import numpy
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": cpu_model(),
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        **dict(extra or {}),
    }


def header(title: str, extra: Mapping[str, str] | None = None) -> str:
    """Markdown header: title, date, exact command, machine (``extra``: more ``machine()`` entries)."""
    cmd = "python -m " + " ".join(
        [Path(sys.argv[0]).with_suffix("").name and _module_name()] + [shlex.quote(a) for a in sys.argv[1:]]
    )
    lines = [
        f"# {title}",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{cmd}`",
    ]
    lines += [f"- {k}: {v}" for k, v in machine(extra).items()]
    return "\n".join(lines) + "\n"


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def publish(path: Path, text: str, payload: object, as_json: bool) -> None:
    """Write the Markdown report to ``path``; print ``payload`` as JSON or the report on stdout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(json.dumps(payload) if as_json else text)
