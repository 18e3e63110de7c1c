"""How many CPU threads an encode should use: the cores other processes leave free, re-read per block.

On a busy machine two torch threads on two taken cores wait for each other at every parallel
region and burn CPU without progress; one thread then finishes sooner and costs less. On a quiet
machine every core helps. ``CpuMonitor`` measures, between two calls, how much CPU the rest of
the machine used (system-wide busy time from ``/proc/stat`` minus this process's own CPU time)
and ``threads()`` answers the cores left for this process. Where ``/proc/stat`` is missing
(not Linux) it falls back to the 1-minute load average, less this process's own share.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

__all__ = ["CpuMonitor", "threads_for", "usable_cores"]


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
