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

import numpy as np
import pytest
from PIL import Image

from cinr_codec.encode.journal import journal_path
from cinr_codec.encode.slide import encode_slide
from cinr_codec.errors import CinrInputError
from cinr_codec.format.container import CinrReader

distributed = pytest.importorskip("distributed")

SETTINGS: dict[str, Any] = {"preset": "fast", "steps": 12, "block_size": 64}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, he_image: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("cluster") / "tissue.png"
    Image.fromarray(np.ascontiguousarray(he_image[900:1092, 900:1156])).save(path)
    return path


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from cinr_codec.encode.cluster import cluster_client

    with cluster_client(workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def serial(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "serial.cinr"
    encode_slide(image, out, threads=1, **SETTINGS)
    return out


def _blocks(path: Path) -> list[tuple[str, Any]]:
    """Every block's kind and stored bytes (background: its colour)."""
    with CinrReader(path) as r:
        out: list[tuple[str, Any]] = []
        for b in r.blocks():
            if b.kind == "model":
                out.append((b.kind, r.read_stored(b.block_id)))
            elif b.kind == "image":
                out.append((b.kind, r.read_image_block(b.block_id)))
            else:
                out.append((b.kind, b.colour))
        return out


def test_blocks_on_a_cluster_are_the_serial_ones(
    image: Path, serial: Path, client: Any, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    out = tmp_path / "dask.cinr"
    s = encode_slide(image, out, client=client, progress=events.append, **SETTINGS)
    assert _blocks(out) == _blocks(serial)
    assert s["tissue_blocks"] >= 2 and s["blocks"] == 12
    done = [e for e in events if e["stage"] == "block"]
    assert sorted(e["block_id"] for e in done) == list(range(12))
    assert not journal_path(out).exists()


def test_a_worker_killed_mid_encode_changes_nothing(
    image: Path, serial: Path, client: Any, tmp_path: Path
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
    encode_slide(image, out, client=client, **{**SETTINGS, "steps": 40}, seed=0)
    killer.join()
    assert killed, "no worker was busy to kill"
    serial40 = tmp_path / "serial40.cinr"
    encode_slide(image, serial40, threads=1, **{**SETTINGS, "steps": 40}, seed=0)
    assert _blocks(out) == _blocks(serial40)
    client.wait_for_workers(2, timeout=60)


def test_a_block_the_source_cannot_give_fails_with_one_line(
    image: Path, client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slide file goes bad after planning (workers read it themselves): the encode stops with a
    CinrInputError naming the block and the journal, and the blocks done so far stay journaled."""
    from cinr_codec.encode import cluster

    bad = tmp_path / "bad.png"
    bad.write_bytes(image.read_bytes())
    out = tmp_path / "bad.cinr"
    original = cluster.run_on_cluster

    def truncate_then_run(*args: Any, **kwargs: Any) -> None:
        bad.write_bytes(image.read_bytes()[:200])  # what the workers will open: a broken PNG
        original(*args, **kwargs)

    monkeypatch.setattr(cluster, "run_on_cluster", truncate_then_run)
    with pytest.raises(CinrInputError) as info:
        encode_slide(bad, out, client=client, **SETTINGS)
    text = str(info.value)
    assert "\n" not in text and str(journal_path(out)) in text and " (block " in text
    assert not out.exists() and journal_path(out).exists()


def test_settings_a_cluster_cannot_honour_are_refused(image: Path, client: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="total time budget"):
        encode_slide(image, tmp_path / "x.cinr", client=client, total_time_budget=10.0, **SETTINGS)


def test_cli_workers(image: Path, serial: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cinr_codec.cli import main

    out = tmp_path / "cli.cinr"
    res = CliRunner().invoke(
        main, ["encode", str(image), "-o", str(out), "--steps", "12", "--block-size", "64", "--workers", "2"]
    )
    assert res.exit_code == 0, res.output
    assert "local cluster of 2 worker processes" in res.stderr
    assert _blocks(out) == _blocks(serial)
    res = CliRunner().invoke(
        main, ["encode", str(image), "-o", str(out), "--workers", "2", "--threads", "1", "-f"]
    )
    assert res.exit_code == 2 and "one thread" in res.stderr
