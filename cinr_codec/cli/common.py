"""What every ``cinr`` command shares: error handling (one line, exit status 2 or 1), a silent
progress sink, number formatting for summaries."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from ..errors import CinrError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn library errors into one-line messages and exit codes (tracebacks only with --debug)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except (CinrError, ValueError) as exc:
            if debug:
                raise
            click.echo(f"cinr: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("cinr: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # The reader went away (``cinr info x.cinr | head``): stop quietly, as Unix tools do,
            # and keep Python from complaining again when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # noqa: BLE001
            if debug:
                raise
            click.echo(f"cinr: internal error: {exc.__class__.__name__}: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def check_output(path: str, overwrite: bool, suffix: str | None = None) -> None:
    """Refuse an output that would replace an existing file (unless ``overwrite``) or, with
    ``suffix``, whose name does not end in it (ValueError: a one-line error, exit 2)."""
    if suffix is not None and not path.lower().endswith(suffix):
        raise ValueError(f"{path}: the output's name must end in {suffix}")
    if os.path.lexists(path):
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder; give a file name")
        if not overwrite:
            raise ValueError(f"{path} exists; pass --overwrite (-f) to replace it")


class NullSink:
    """A write-only sink for a silenced progress bar (the benchmarks use it too)."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def fmt(v: Any, unit: str = "", digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return ("inf" if math.isinf(v) else f"{v:.{digits}f}") + unit
    return f"{v}{unit}"


def json_safe(v: Any) -> Any:
    """JSON has no infinity: a lossless PSNR becomes null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
