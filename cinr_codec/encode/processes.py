"""Fitting a slide's blocks in worker processes of this machine (``encode_slide(processes=N)``).

A ccinr block's training runs on one thread (its compiled kernels are single-threaded), so a
serial encode leaves every other core idle. ``run_in_processes`` fits up to N blocks at a time in
N spawned processes of one torch thread each. Each runs ``cluster.block_task``, the Dask workers'
own function: it reads its block's pixels from the slide itself, so only the small ``BlockJob``
travels. This process alone writes the journal, as blocks finish, and ``assemble`` then writes
the file in block order: the payloads are those of ``--workers N`` on Dask, or of a serial encode
with one torch thread.

A block that fails stops the encode with its own error (the block named, for the slide's own
faults); a worker that dies (killed, out of memory) stops it with one line. Either way, and on
Ctrl-C, the other workers are stopped at once and the finished blocks stay in the journal for
``--resume``. Workers ignore SIGINT: the parent alone decides, so an interrupt stops everything
without a traceback from each worker. They are started with SIGINT held (``_sigint_held``), so
that a Ctrl-C while one starts up, before it can ignore it, does not kill it with a traceback, and
the parent acts on such a Ctrl-C only once the worker has its start-up data.
An encoder killed with SIGKILL cannot stop its workers: each watches its parent instead
(``_exit_with_parent``) and ends itself within ``PARENT_POLL`` seconds of the parent's death,
whatever block it is fitting, rather than living on as an orphan that fits blocks nobody collects.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from ..errors import CinrWorkerError
from .block import BlockJob
from .cluster import SourceSpec, block_task

if TYPE_CHECKING:
    from .journal import BlockSink

log = logging.getLogger(__name__)


#: Seconds between a worker's checks that the process that started it is alive.
PARENT_POLL = 0.5


def _init_worker(parent: int) -> None:
    """In each worker, before any task: Ctrl-C is the parent's to handle, and the worker ends
    when its parent (pid ``parent``) is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="cinr-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this process at once when it is no longer the child of ``parent`` (the parent died and
    the process was adopted by another)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(1)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold Ctrl-C while tasks are handed out, and act on it after. The workers the pool starts then
    (and its manager thread) inherit SIGINT blocked, so a Ctrl-C while a worker starts up cannot
    kill it before ``_init_worker``; and this process only notes a Ctrl-C that another of its
    threads took, so that it cannot stop halfway through writing a new worker's start-up data (the
    worker would die of the cut pipe with a traceback)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handler = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a held Ctrl-C arrives here, and is noted
        signal.signal(signal.SIGINT, handler)
    if caught:
        if callable(handler):
            handler(signal.SIGINT, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool`` now: drop the queued blocks, end the running ones' processes, and wait until
    they are gone."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if callable(terminate):
        terminate()
        pool.shutdown(wait=True)
        return
    # Before 3.14 the executor has no public way to end a running task: its processes are ended
    # here (shutdown alone would wait for every running block's fit to finish).
    procs = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=10)
    if manager is not None:
        manager.join(timeout=10)


def _cost(job: BlockJob) -> tuple[int, int, int]:
    """Sort key, cheapest first (``waiting.pop()`` takes the last): background before tissue,
    then the fit region's pixels, then the plan's order reversed."""
    _, _, w, h = job.grid.fit_region(job.block_id)
    return (int(not job.maybe_background), w * h, -job.block_id)


def run_in_processes(
    processes: int,
    spec: SourceSpec,
    jobs: list[BlockJob],
    journal: BlockSink,
    on_done: Callable[[BlockJob, dict[str, Any]], None],
) -> None:
    """Encode ``jobs`` in ``processes`` worker processes of one torch thread each, appending each
    result to ``journal`` as it arrives and calling ``on_done(job, meta)``. The first block that
    fails stops the encode and its error is raised (``CinrWorkerError`` when a worker died)."""
    if not jobs:
        return
    n = max(1, min(int(processes), len(jobs)))
    log.info("fitting %d blocks in %d worker processes", len(jobs), n)
    pool = ProcessPoolExecutor(
        max_workers=n,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    finished = False
    # At most n blocks are handed out at a time, so a stopped encode leaves none half-queued.
    # The costliest first (the most pixels to fit; blocks the thumbnail saw as background, which
    # are mostly not fitted, last): the last blocks to finish are then short ones, and no core
    # waits long for another's last fit (on the sample the plan's order ended with a full tissue
    # block fitting alone).
    waiting = sorted(jobs, key=_cost)
    running: dict[Future[tuple[dict[str, Any], list[bytes]]], BlockJob] = {}
    try:
        while waiting or running:
            with _sigint_held():
                while waiting and len(running) < n:
                    job = waiting.pop()
                    running[pool.submit(block_task, spec, job)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: running[f].block_id):
                meta, parts = fut.result()  # a dead worker raises here, its block still in running
                job = running.pop(fut)
                journal.append(meta, parts)
                on_done(job, meta)
        finished = True
    except BrokenProcessPool:
        ids = sorted(j.block_id + 1 for j in running.values())
        where = (
            f" while fitting blocks {', '.join(map(str, ids))} of {jobs[0].grid.n_level_blocks}"
            if ids
            else ""
        )
        raise CinrWorkerError(f"a worker process died{where} (killed, or out of memory)") from None
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _stop(pool)
