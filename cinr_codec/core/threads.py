"""How many CPU threads an encode or a decode should use: the cores other processes leave free.

On a busy machine two torch threads on two taken cores wait for each other at every parallel
region and burn CPU without progress; one thread then finishes sooner and costs less. On a quiet
machine every core helps. ``CpuMonitor`` measures, between two calls, how much CPU the rest of
the machine used (system-wide busy time from ``/proc/stat`` minus this process's own CPU time)
and ``threads()`` answers the cores left for this process. Where ``/proc/stat`` is missing
(not Linux) it falls back to the 1-minute load average, less this process's own share.

The encoder asks before each fitted block (``threads``, which waits for a first interval); the
decoder before each render, without waiting (``threads_now``: the answer of the last interval
of at least ``min_interval`` seconds, a load-average guess before the first), never above the
caller's own torch setting (``decode_threads``), and runs the render inside ``torch_threads``,
which restores the caller's setting afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

__all__ = ["CpuMonitor", "caller_threads", "decode_threads", "threads_for", "torch_threads", "usable_cores"]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_for(free_cores: float, cores: int) -> int:
    """Threads for ``free_cores`` idle cores out of ``cores``: the free cores rounded, 1 … cores."""
    if free_cores != free_cores:  # NaN: nothing known, use every core
        return cores
    return max(1, min(cores, int(free_cores + 0.5)))


def _busy_seconds(path: str = "/proc/stat") -> float | None:
    """Seconds all CPUs spent busy since boot (``/proc/stat``'s first line), or None."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    try:
        ticks = [int(v) for v in fields[1:]]
    except ValueError:
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
    total = sum(ticks[:8])
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds this process (all its threads) has used."""
    t = os.times()
    return t.user + t.system


class CpuMonitor:
    """Free cores measured over the interval between calls (see the module docstring)."""

    def __init__(self, cores: int | None = None, stat_path: str = "/proc/stat") -> None:
        self.cores = cores if cores is not None else usable_cores()
        self._stat_path = stat_path
        self._last = self._sample()
        self._lock = threading.Lock()
        self._answer: int | None = None

    def _sample(self) -> tuple[float, float | None, float]:
        return time.monotonic(), _busy_seconds(self._stat_path), _own_seconds()

    def free_cores(self, min_interval: float = 0.2) -> float:
        """Cores the rest of the machine left idle since the last call (waits until at least
        ``min_interval`` seconds have passed, so a first call measures something)."""
        wait = min_interval - (time.monotonic() - self._last[0])
        if wait > 0:
            time.sleep(wait)
        t0, busy0, own0 = self._last
        now = self._sample()
        self._last = now
        t1, busy1, own1 = now
        if busy0 is None or busy1 is None:
            try:
                load = os.getloadavg()[0]
            except (AttributeError, OSError):
                return float("nan")
            # The load average counts this process's running threads too; it can only guess them.
            others = max(0.0, load - (own1 - own0) / max(t1 - t0, 1e-6))
        else:
            ncpu = os.cpu_count() or self.cores
            others = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-6)
            # /proc/stat counts every CPU of the machine; scale to the ones this process may use.
            others *= self.cores / max(ncpu, self.cores)
        return max(0.0, self.cores - others)

    def threads(self) -> int:
        """Threads to use now (``threads_for`` of ``free_cores``)."""
        n = threads_for(self.free_cores(), self.cores)
        log.debug("cpu threads: %d of %d cores", n, self.cores)
        return n

    def threads_now(self, min_interval: float = 0.5) -> int:
        """Threads to use now, without waiting: re-measured when at least ``min_interval`` seconds
        have passed since the last measurement, else the last answer (before the first one, the
        1-minute load average's guess). Thread-safe."""
        with self._lock:
            if time.monotonic() - self._last[0] >= min_interval:
                self._answer = threads_for(self.free_cores(0.0), self.cores)
            elif self._answer is None:
                try:
                    others = os.getloadavg()[0]
                except (AttributeError, OSError):
                    others = float("nan")
                self._answer = threads_for(self.cores - others, self.cores)
            return self._answer


_decode_monitor: CpuMonitor | None = None
_decode_monitor_lock = threading.Lock()


def decode_threads() -> int:
    """Threads for a decoder's render now: ``CpuMonitor.threads_now`` of one monitor per process,
    never more than the caller's own torch setting. Raising it would be unsafe as well as rude: a
    forked child (a DataLoader worker, a fuzz child) whose parent ran OpenMP regions hangs in its
    first region with more threads (measured: ``tests/format/test_fuzz.py``'s forked read hung)."""
    global _decode_monitor
    with _decode_monitor_lock:
        if _decode_monitor is None:
            _decode_monitor = CpuMonitor()
        monitor = _decode_monitor
    return min(monitor.threads_now(), caller_threads())


def caller_threads() -> int:
    """The caller's torch CPU thread count (the one ``torch_threads`` blocks will restore)."""
    import torch

    with _torch_lock:
        return _torch_saved if _torch_users else torch.get_num_threads()


_torch_lock = threading.Lock()
_torch_users = 0
_torch_saved = 0


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then give the caller back its own count.

    Torch's count is process-wide, so concurrent blocks share one saved value: the first to enter
    saves it, the last to leave restores it (in between, the latest ``n`` holds)."""
    global _torch_users, _torch_saved
    import torch

    with _torch_lock:
        if _torch_users == 0:
            _torch_saved = torch.get_num_threads()
        _torch_users += 1
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    try:
        yield
    finally:
        with _torch_lock:
            _torch_users -= 1
            if _torch_users == 0 and torch.get_num_threads() != _torch_saved:
                torch.set_num_threads(_torch_saved)
