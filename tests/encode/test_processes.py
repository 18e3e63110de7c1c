"""Blocks fitted in local worker processes (``encode.processes``, ``encode_slide(processes=N)``):
the file's blocks are those of a serial one-thread encode (hash grid and ccinr); a worker killed
mid-encode stops the encode with one line and the finished blocks journaled, and ``resume``
completes the same file; a block the source cannot give fails with one line naming it; Ctrl-C
of ``cinr encode`` leaves no worker running, nor does SIGKILL of it."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from cinr_container_helpers import SMALL_ENCODE as SETTINGS
from cinr_container_helpers import ctrl_c_as_in_a_terminal, stored_blocks, wait_for_a_journaled_block

from cinr_codec.encode import processes as pool_module
from cinr_codec.encode.journal import journal_path
from cinr_codec.encode.slide import encode_slide
from cinr_codec.errors import CinrInputError, CinrWorkerError


def test_blocks_in_processes_are_the_serial_ones(tissue_png: Path, serial_cinr: Path, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    out = tmp_path / "pool.cinr"
    s = encode_slide(tissue_png, out, processes=2, progress=events.append, **SETTINGS)
    assert stored_blocks(out) == stored_blocks(serial_cinr)
    assert s["tissue_blocks"] >= 2 and s["blocks"] == 12
    done = [e for e in events if e["stage"] == "block"]
    assert sorted(e["block_id"] for e in done) == list(range(12))
    assert not journal_path(out).exists()


def test_ccinr_blocks_in_processes_are_the_serial_ones(tissue_png: Path, tmp_path: Path) -> None:
    """The default representation, as ``cinr encode`` runs it on a CPU: the same payloads."""
    settings: dict[str, Any] = {"model": "ccinr", "preset": "q4", "steps": 3, "block_size": 64}
    serial, pooled = tmp_path / "serial.cinr", tmp_path / "pooled.cinr"
    encode_slide(tissue_png, serial, threads=1, **settings)
    encode_slide(tissue_png, pooled, processes=2, **settings)
    blocks = stored_blocks(pooled)
    assert sum(kind == "model" for kind, _ in blocks) >= 2 and blocks == stored_blocks(serial)


def test_a_killed_worker_stops_the_encode_and_resume_completes_it(
    tissue_png: Path, serial_cinr: Path, tmp_path: Path
) -> None:
    """SIGKILL of a worker once a block is done: one line naming the journal, no output file, the
    finished blocks kept; ``resume`` (serial or in processes) then gives the serial file."""
    out = tmp_path / "killed.cinr"
    killed: list[int] = []

    def kill_a_worker(ev: dict[str, Any]) -> None:
        if ev["stage"] == "block" and not killed:
            worker = next(p for p in multiprocessing.active_children() if p.is_alive())
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    with pytest.raises(CinrWorkerError) as info:
        encode_slide(tissue_png, out, processes=2, progress=kill_a_worker, **SETTINGS)
    text = str(info.value)
    assert killed and "\n" not in text and "died" in text and str(journal_path(out)) in text
    assert not out.exists() and journal_path(out).exists()
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]  # none left running
    encode_slide(tissue_png, out, processes=2, resume=True, **SETTINGS)
    assert stored_blocks(out) == stored_blocks(serial_cinr) and not journal_path(out).exists()


def test_a_block_the_source_cannot_give_fails_with_one_line(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slide file goes bad after planning (workers read it themselves): a CinrInputError naming
    the block and the journal; the output never appears."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(tissue_png.read_bytes())
    out = tmp_path / "bad.cinr"
    original = pool_module.run_in_processes

    def truncate_then_run(*args: Any, **kwargs: Any) -> None:
        bad.write_bytes(tissue_png.read_bytes()[:200])  # what the workers will open: a broken PNG
        original(*args, **kwargs)

    monkeypatch.setattr(pool_module, "run_in_processes", truncate_then_run)
    with pytest.raises(CinrInputError) as info:
        encode_slide(bad, out, processes=2, **SETTINGS)
    text = str(info.value)
    assert "\n" not in text and str(journal_path(out)) in text and " (block " in text
    assert not out.exists() and journal_path(out).exists()


def test_bad_process_counts_are_refused(tissue_png: Path, tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="processes"):
            encode_slide(tissue_png, tmp_path / "x.cinr", processes=bad, **SETTINGS)  # type: ignore[arg-type]
    assert not (tmp_path / "x.cinr").exists()


def test_the_cli_fits_in_the_processes_asked(tissue_png: Path, tmp_path: Path) -> None:
    """``--processes N`` fits in N worker processes whatever the load (the progress bar says so),
    giving the blocks of an in-process encode; it is refused beside --threads, a cluster or another
    model, with one line (click's usage text for a count under 1) and no file."""
    from click.testing import CliRunner

    from cinr_codec.cli import main

    runner = CliRunner()
    base = ["encode", str(tissue_png), "--steps", "3", "--block-size", "64"]
    serial, pooled = tmp_path / "serial.cinr", tmp_path / "pooled.cinr"
    assert runner.invoke(main, [*base, "-o", str(serial), "--threads", "1", "--quiet"]).exit_code == 0
    res = runner.invoke(main, [*base, "-o", str(pooled), "--processes", "2"])
    assert res.exit_code == 0, res.output
    assert "2 at a time (worker processes)" in res.stderr
    assert stored_blocks(pooled) == stored_blocks(serial)
    for extra, said in (
        (["--processes", "0"], "--processes"),
        (["--processes", "2", "--threads", "1"], "not both"),
        (["--processes", "2", "--workers", "2"], "not both"),
        (["--processes", "2", "--model", "ngp"], "--model ccinr"),
    ):
        res = runner.invoke(main, [*base, "-o", str(tmp_path / "x.cinr"), *extra])
        assert res.exit_code == 2 and said in res.stderr and "Traceback" not in res.stderr, (
            extra,
            res.output,
        )
        assert extra[1] == "0" or len(res.stderr.strip().splitlines()) == 1, res.stderr  # click's usage text
        assert not (tmp_path / "x.cinr").exists()


def test_ctrl_c_stops_every_worker_and_keeps_the_journal(tissue_png: Path, tmp_path: Path) -> None:
    """SIGINT to ``cinr encode`` (the default: ccinr in worker processes) once a block is
    journaled: exit 130 with the --resume hint and no traceback, and no worker left running."""
    import time

    out = tmp_path / "interrupted.cinr"
    jpath = journal_path(out)
    _, proc = _encode_until_a_block_is_journaled(tissue_png, out)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert jpath.exists() and not out.exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anything left in the encoder's process group?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("a worker process outlived the interrupted encode")


def _encode_until_a_block_is_journaled(tissue_png: Path, out: Path) -> tuple[list[str], Any]:
    """``cinr encode`` (the default: ccinr in worker processes; two of them, whatever the machine's
    load leaves free) of ``tissue_png`` to ``out`` in a session of its own, once a block is in its
    journal: its arguments and its ``Popen``."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "cinr_codec", "encode", str(tissue_png), "-o", str(out), "--quiet"]
    args += ["--steps", "400", "--block-size", "64", "--no-tissue-mask", "--processes", "2"]
    with ctrl_c_as_in_a_terminal():  # it takes Ctrl-C even when this suite runs in the background
        proc = subprocess.Popen(args, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_a_journaled_block(proc, journal_path(out), timeout=180, poll=0.05)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return args, proc


def _state_and_parent(stat: Path) -> tuple[str, int] | None:
    """The state letter and parent pid in a ``/proc/PID/stat`` file; None once the process is gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _spawned_children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is ``pid`` (Linux's /proc)."""
    return [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if (st := _state_and_parent(stat)) is not None and st[0] != "Z" and st[1] == pid
    ]


def _alive(pid: int) -> bool:
    st = _state_and_parent(Path(f"/proc/{pid}/stat"))
    return st is not None and st[0] != "Z"


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_while_workers_start_is_acted_on_after() -> None:
    """A Ctrl-C that another thread of the encoder takes while workers are being started (CI saw one
    cut a new worker's start-up data, which died with a traceback) is noted, not raised, inside
    ``_sigint_held``, and raised as KeyboardInterrupt when the section ends."""
    import threading
    import time

    stop = threading.Event()
    other = threading.Thread(target=stop.wait, args=(30,))  # a thread with SIGINT not blocked
    other.start()
    finished = False
    try:
        with ctrl_c_as_in_a_terminal():  # Python's own handler, even in a suite run in the background
            with pytest.raises(KeyboardInterrupt):
                with pool_module._sigint_held():
                    os.kill(os.getpid(), signal.SIGINT)  # the kernel gives it to the other thread
                    for _ in range(5):  # the GIL given up and taken again, as writing to a pipe does:
                        time.sleep(0.02)  # a Python handler that raised would act here
                    finished = True
            assert finished
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        stop.set()
        other.join()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux's /proc")
def test_workers_end_when_the_encoder_is_killed(tissue_png: Path, tmp_path: Path) -> None:
    """SIGKILL of ``cinr encode`` alone (not its group) while its workers fit blocks: they cannot
    be told to stop, so each notices its parent is gone and ends within seconds (before, they
    fitted on as orphans, then waited for ever); the journal is kept and ``--resume`` completes
    the file."""
    import subprocess
    import time

    out = tmp_path / "killed.cinr"
    jpath = journal_path(out)
    args, proc = _encode_until_a_block_is_journaled(tissue_png, out)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            # The next stage's workers (and multiprocessing's resource tracker) once started.
            workers = _spawned_children(proc.pid)
            time.sleep(0.05)
        assert len(workers) >= 2 and proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [w for w in workers if _alive(w)]
        assert not left, f"worker processes {left} outlived the killed encoder"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert jpath.exists() and not out.exists()
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert out.exists() and not jpath.exists()


def test_the_costliest_blocks_are_handed_out_first() -> None:
    """Tissue blocks before background ones, larger fit regions before smaller (edge blocks), the
    plan's order among equals: the last fits to finish are short ones."""
    from types import SimpleNamespace

    from cinr_codec.format.grid import BlockGrid

    grid = BlockGrid(width=300, height=200, block_size=128)  # 3 x 2 blocks; the right column is 44 wide
    background = {1}
    jobs = [SimpleNamespace(grid=grid, block_id=i, maybe_background=i in background) for i in range(6)]
    waiting = sorted(jobs, key=pool_module._cost)  # type: ignore[arg-type]
    handed = [waiting.pop().block_id for _ in range(len(jobs))]
    # The full 128x128 tissue block (0), the 128x72 bottom ones (3, 4: the plan's order), the
    # 44-wide right column (2 before 5, taller), then the background block.
    assert handed == [0, 3, 4, 2, 5, 1]
