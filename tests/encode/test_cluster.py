"""Blocks as Dask tasks (``encode.cluster``): on a local cluster of worker processes the file's
blocks are those of a serial one-thread encode; a worker killed mid-encode changes nothing; a
block the source cannot give fails the encode with one line, its finished blocks journaled."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cinr_container_helpers import SMALL_ENCODE as SETTINGS
from cinr_container_helpers import stored_blocks, wait_for_a_journaled_block
from PIL import Image

from cinr_codec.encode.journal import journal_path
from cinr_codec.encode.slide import encode_slide
from cinr_codec.errors import CinrInputError

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from cinr_codec.encode.cluster import cluster_client

    with cluster_client(workers=2) as c:
        yield c


def test_blocks_on_a_cluster_are_the_serial_ones(
    tissue_png: Path, serial_cinr: Path, client: Any, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    out = tmp_path / "dask.cinr"
    s = encode_slide(tissue_png, out, client=client, progress=events.append, **SETTINGS)
    assert stored_blocks(out) == stored_blocks(serial_cinr)
    assert s["tissue_blocks"] >= 2 and s["blocks"] == 12
    done = [e for e in events if e["stage"] == "block"]
    assert sorted(e["block_id"] for e in done) == list(range(12))
    assert not journal_path(out).exists()


def test_a_worker_killed_mid_encode_changes_nothing(
    tissue_png: Path, serial_cinr: Path, client: Any, tmp_path: Path
) -> None:
    """SIGKILL of a worker process while it fits a block: the nanny restarts it, the scheduler
    reruns its task, and the file is the same."""
    killed: list[int] = []

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                pids = client.run(os.getpid, workers=[busy[0]])
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    out = tmp_path / "killed.cinr"
    encode_slide(tissue_png, out, client=client, **{**SETTINGS, "steps": 40}, seed=0)
    killer.join()
    assert killed, "no worker was busy to kill"
    serial40 = tmp_path / "serial40.cinr"
    encode_slide(tissue_png, serial40, threads=1, **{**SETTINGS, "steps": 40}, seed=0)
    assert stored_blocks(out) == stored_blocks(serial40)
    client.wait_for_workers(2, timeout=60)


def test_a_block_the_source_cannot_give_fails_with_one_line(
    tissue_png: Path, client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slide file goes bad after planning (workers read it themselves): the encode stops with a
    CinrInputError naming the block and the journal, and the blocks done so far stay journaled."""
    from cinr_codec.encode import cluster

    bad = tmp_path / "bad.png"
    bad.write_bytes(tissue_png.read_bytes())
    out = tmp_path / "bad.cinr"
    original = cluster.run_on_cluster

    def truncate_then_run(*args: Any, **kwargs: Any) -> None:
        bad.write_bytes(tissue_png.read_bytes()[:200])  # what the workers will open: a broken PNG
        original(*args, **kwargs)

    monkeypatch.setattr(cluster, "run_on_cluster", truncate_then_run)
    with pytest.raises(CinrInputError) as info:
        encode_slide(bad, out, client=client, **SETTINGS)
    text = str(info.value)
    assert "\n" not in text and str(journal_path(out)) in text and " (block " in text
    assert not out.exists() and journal_path(out).exists()


def test_settings_a_cluster_cannot_honour_are_refused(tissue_png: Path, client: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="total time budget"):
        encode_slide(tissue_png, tmp_path / "x.cinr", client=client, total_time_budget=10.0, **SETTINGS)


def test_gpu_fits_go_only_to_a_cluster_that_offers_a_gpu(
    tissue_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU encode on a cluster whose workers offer no ``GPU`` resource is refused at once (its
    tasks would wait for one for ever); a local cluster on a machine with a GPU offers it on every
    worker."""
    import torch

    from cinr_codec.encode.cluster import check_gpu_workers, cluster_client

    with cluster_client(workers=1) as cpu_only:  # no GPU here (and none in tests: conftest)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        out = tmp_path / "x.cinr"
        with pytest.raises(ValueError, match="no worker of the cluster offers one"):
            encode_slide(tissue_png, out, client=cpu_only, device="cuda", **SETTINGS)
        assert not out.exists() and not journal_path(out).exists()
    with cluster_client(workers=1) as gpu:
        workers = gpu.scheduler_info()["workers"].values()
        assert workers and all(w["resources"] == {"GPU": 1} for w in workers)
        check_gpu_workers(gpu)


def test_a_cohort_on_one_cluster_goes_on_past_a_bad_slide(
    tissue_png: Path, serial_cinr: Path, tmp_path: Path
) -> None:
    """``cinr encode A B C --out-dir DIR --workers 2`` with B unreadable: A and C are encoded (A's
    blocks are the serial encode's), B is one error line, ``--json`` gives a line per slide, and
    the exit status is 2."""
    import json

    from click.testing import CliRunner

    from cinr_codec.cli import main

    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + bytes(100))
    other = tmp_path / "other.png"
    Image.open(tissue_png).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    out_dir = tmp_path / "out"
    args = ["encode", str(tissue_png), str(bad), str(other), "--out-dir", str(out_dir)]
    args += ["--model", "cinr", "--steps", "12", "--block-size", "64", "--workers", "2", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [line.get("source") for line in lines] == [str(tissue_png), str(bad), str(other)]
    assert "error" in lines[1] and "error" not in lines[0] and "error" not in lines[2]
    assert "1 of 3 slides failed" in res.stderr and f"cinr: error: {bad}:" in res.stderr
    assert stored_blocks(out_dir / "tissue.cinr") == stored_blocks(serial_cinr)
    assert (out_dir / "other.cinr").exists() and not (out_dir / "broken.cinr").exists()
    res = CliRunner().invoke(
        main, ["encode", str(tissue_png), "-o", str(out_dir / "x.cinr"), "--workers", "2", "--threads", "1"]
    )
    assert res.exit_code == 2 and "one thread" in res.stderr
    res = CliRunner().invoke(main, ["encode", str(tissue_png), str(other), "-o", str(out_dir / "x.cinr")])
    assert res.exit_code == 2 and "--out-dir" in res.stderr


def test_the_client_killed_then_resumed_on_a_new_cluster(
    tissue_png: Path, serial_cinr: Path, tmp_path: Path
) -> None:
    """kill -9 of ``cinr encode --workers 2`` (client, scheduler and workers: its process group)
    once the journal holds a block, then ``--resume`` on a new cluster: the file is the serial one."""
    import subprocess
    import sys

    out = tmp_path / "resumed.cinr"
    jpath = journal_path(out)
    args = [sys.executable, "-m", "cinr_codec", "encode", str(tissue_png), "-o", str(out), "--quiet"]
    args += ["--model", "cinr", "--steps", "12", "--block-size", "64", "--workers", "2"]
    proc = subprocess.Popen(args, start_new_session=True, stderr=subprocess.PIPE)
    try:
        wait_for_a_journaled_block(proc, jpath, timeout=120, poll=0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert jpath.exists() and not out.exists()
    res = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert stored_blocks(out) == stored_blocks(serial_cinr) and not jpath.exists()
