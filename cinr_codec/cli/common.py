"""What every ``cinr`` command shares: error handling (one line, exit status 2 or 1; an interrupt
is never lost), a silent progress sink, number formatting for summaries."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
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
            with lost_interrupts_redelivered():
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


#: How long a dropped interrupt waits before it is sent again: time for the C code that called
#: back into Python to return.
REDELIVERY_DELAY_S = 0.01


def _signal_of(exc: BaseException | None) -> int | None:
    """The signal whose handler raised ``exc``: SIGINT for KeyboardInterrupt, ``exc.signum`` for an
    exception a handler of ours raised (the export's SIGTERM); None for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    signum = getattr(exc, "signum", None)
    if not isinstance(exc, Exception) and isinstance(signum, int):
        return signum
    return None


@contextlib.contextmanager
def lost_interrupts_redelivered() -> Iterator[None]:
    """While a command runs, send again an interrupt that Python had to drop.

    A signal's handler runs in whatever Python code the main thread runs next; when that is a
    callback from C -- pyvips' log callback runs inside every libvips call that computes pixels --
    the ``KeyboardInterrupt`` it raises cannot travel through C and is dropped ("Exception ignored
    from cffi callback"), and the command would run on to the end. Python reports such dropped
    exceptions to ``sys.unraisablehook``: here, one raised by a signal handler sends its signal to
    the main thread again a moment later (``REDELIVERY_DELAY_S``), outside the callback, where it
    unwinds the command as usual (exit 130). Other unraisable exceptions go to the previous hook.
    """
    previous = sys.unraisablehook
    main_thread = threading.main_thread()
    pending: list[tuple[threading.Timer, int]] = []
    lock = threading.Lock()

    def send(timer_signum: int) -> None:
        with lock:
            pending[:] = [(t, s) for t, s in pending if t is not threading.current_thread()]
        if main_thread.ident is not None:
            signal.pthread_kill(main_thread.ident, timer_signum)

    def hook(unraisable: Any) -> None:
        signum = _signal_of(unraisable.exc_value)
        if signum is None or threading.current_thread() is not main_thread:
            previous(unraisable)
            return
        timer = threading.Timer(REDELIVERY_DELAY_S, send, (signum,))
        timer.daemon = True
        with lock:
            pending.append((timer, signum))
        timer.start()

    def stop() -> list[tuple[threading.Timer, int]]:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous
        with lock:
            left = list(pending)
            pending.clear()
        for timer, _ in left:
            timer.cancel()
        return left

    sys.unraisablehook = hook
    try:
        yield
    except BaseException:
        stop()
        raise
    left = stop()
    if left:  # the command ended before its interrupt came back: deliver it now, here
        signal.raise_signal(left[0][1])


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
