"""core.threads: free cores from /proc/stat-like counters, and the thread count chosen from them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cinr_codec.core import threads as T


def test_threads_for_rounds_and_clamps() -> None:
    assert T.threads_for(0.0, 2) == 1  # never zero threads
    assert T.threads_for(0.6, 2) == 1
    assert T.threads_for(1.6, 2) == 2
    assert T.threads_for(7.9, 4) == 4
    assert T.threads_for(float("nan"), 3) == 3


def _write_stat(path: Path, busy: int, idle: int) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0\n", encoding="ascii")


@pytest.mark.parametrize(("others", "expected"), [(0.0, 2), (0.4, 2), (1.0, 1), (1.7, 1), (2.0, 1)])
def test_monitor_subtracts_own_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, others: float, expected: int
) -> None:
    """Over 10 s with this process using 0.5 cores and others `others` cores of 2, the free
    cores are 2 - others."""
    hz = os.sysconf("SC_CLK_TCK")
    clock = {"t": 100.0, "own": 5.0}
    monkeypatch.setattr(T.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(T, "_own_seconds", lambda: clock["own"])
    monkeypatch.setattr(T.os, "cpu_count", lambda: 2)
    stat = tmp_path / "stat"
    _write_stat(stat, busy=1000 * hz, idle=1000 * hz)
    mon = T.CpuMonitor(cores=2, stat_path=str(stat))
    clock["t"] += 10.0
    clock["own"] += 5.0  # this process: 0.5 cores
    busy = round((others + 0.5) * 10 * hz)
    _write_stat(stat, busy=1000 * hz + busy, idle=1000 * hz + 20 * hz - busy)
    assert mon.free_cores() == pytest.approx(max(0.0, 2 - others), abs=1e-6)
    _write_stat(stat, busy=1000 * hz + busy, idle=1000 * hz + 20 * hz - busy)
    clock["t"] += 10.0
    _write_stat(stat, busy=1000 * hz + 2 * busy, idle=1000 * hz + 40 * hz - 2 * busy)
    clock["own"] += 5.0
    assert mon.threads() == expected


def test_monitor_without_proc_stat_uses_load_average(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"t": 100.0, "own": 5.0}
    monkeypatch.setattr(T.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(T, "_own_seconds", lambda: clock["own"])
    monkeypatch.setattr(T.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    mon = T.CpuMonitor(cores=4, stat_path=str(tmp_path / "missing"))
    clock["t"] += 10.0
    clock["own"] += 5.0
    # Load 3, of which this process ran 0.5: 1.5 cores free.
    assert mon.free_cores() == pytest.approx(1.5)
    clock["t"] += 10.0
    clock["own"] += 10.0  # this process ran 1 of the 3: 2 free
    assert mon.threads() == 2


def test_real_monitor_answers_a_valid_count() -> None:
    mon = T.CpuMonitor()
    n = mon.threads()
    assert 1 <= n <= T.usable_cores()


def test_threads_now_does_not_wait_and_remeasures_after_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a first interval the answer is the load average's guess; after ``min_interval`` it
    is measured from /proc/stat; in between the last answer holds, with no sleep."""
    hz = os.sysconf("SC_CLK_TCK")
    clock = {"t": 100.0, "own": 5.0}
    monkeypatch.setattr(T.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(T.time, "sleep", lambda s: pytest.fail("threads_now must not sleep"))
    monkeypatch.setattr(T, "_own_seconds", lambda: clock["own"])
    monkeypatch.setattr(T.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(T.os, "getloadavg", lambda: (1.8, 1.0, 1.0))
    stat = tmp_path / "stat"
    _write_stat(stat, busy=1000 * hz, idle=1000 * hz)
    mon = T.CpuMonitor(cores=2, stat_path=str(stat))
    assert mon.threads_now() == 1  # load 1.8 of 2 cores: one thread
    clock["t"] += 1.0  # others idle over this second: both cores free
    _write_stat(stat, busy=1000 * hz, idle=1000 * hz + 2 * hz)
    assert mon.threads_now() == 2
    clock["t"] += 0.1  # too soon to measure again: the last answer, whatever /proc/stat says
    _write_stat(stat, busy=1000 * hz + 2 * hz, idle=1000 * hz + 2 * hz)
    assert mon.threads_now() == 2


def test_torch_threads_sets_and_restores_even_when_nested_or_failing() -> None:
    import torch

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with T.torch_threads(other):
        assert torch.get_num_threads() == other
        with T.torch_threads(before):  # a second user: the latest count holds until both leave
            assert torch.get_num_threads() == before
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), T.torch_threads(other):
        raise RuntimeError("render failed")
    assert torch.get_num_threads() == before


def test_decode_threads_never_exceed_the_callers_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process (a DataLoader worker, a forked child) that set one torch thread keeps one: more
    would hang a forked child whose parent ran OpenMP regions; free cores only ever lower it."""
    import torch

    monkeypatch.setattr(T.CpuMonitor, "threads_now", lambda self, min_interval=0.5: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert T.decode_threads() == 1
        torch.set_num_threads(2)
        assert T.decode_threads() == 2
        with T.torch_threads(1):  # inside a render, the cap is still the caller's own count
            assert T.caller_threads() == 2 and T.decode_threads() == 2
        monkeypatch.setattr(T.CpuMonitor, "threads_now", lambda self, min_interval=0.5: 1)
        assert T.decode_threads() == 1
    finally:
        torch.set_num_threads(before)
