"""Encoding a slide's blocks on a Dask cluster (``distributed``): one task per block.

``encode_slide(..., client=...)`` plans the slide as usual (``plan_slide``) and, instead of
its serial loop, hands the blocks to ``run_on_cluster``: each block not yet in the journal is a
task ``block_task(source, job)`` that reads its own pixels from the slide path (the client ships
the small ``BlockJob``, never pixels), fits it with one torch thread and returns the journal
metadata and parts. The client alone writes the journal, as tasks finish, and ``assemble`` then
writes the file in block order: the payloads are those of a serial encode with the same settings
and one thread. A worker that dies mid-block has its task rerun elsewhere (Dask's retries,
bounded by ``RETRIES`` and the scheduler's ``allowed-failures``); a block that fails for its
own reason fails the encode with one line naming it, the finished blocks kept in the journal.

``distributed`` is optional (``pip install -e '.[dask]'``); nothing here imports it until a
cluster is asked for.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CinrInputError
from .block import BlockJob, encode_block

if TYPE_CHECKING:
    from .journal import BlockSink

log = logging.getLogger(__name__)

#: Further tries of a block whose task failed by an exception that is not the block's own fault.
RETRIES = 2


@dataclass(frozen=True)
class SourceSpec:
    """What a worker needs to open the slide itself: its path (as the workers see it), the level
    and the pixel limit the client checked it with."""

    path: str
    level: int
    max_pixels: int | None
    #: The file's (size, mtime in ns) when the client planned the encode: a worker that has the
    #: same path open from another encode opens it again if it changed.
    stamp: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, path: str | os.PathLike[str], level: int, max_pixels: int | None) -> SourceSpec:
        """The spec of a local file as it is now."""
        p = os.path.abspath(path)
        st = os.stat(p)
        return cls(p, level, max_pixels, (st.st_size, st.st_mtime_ns))


_sources: dict[SourceSpec, Any] = {}
_sources_lock = threading.Lock()


def _open_source(spec: SourceSpec) -> Any:
    """The worker process's open ``SlideSource`` for ``spec`` (opened once, then reused)."""
    from .source import SlideSource

    with _sources_lock:
        src = _sources.get(spec)
        if src is None:
            src = SlideSource(spec.path, spec.level, max_pixels=spec.max_pixels)
            if len(_sources) >= 4:  # a cohort moves on: close the oldest
                old = next(iter(_sources))
                _sources.pop(old).close()
            _sources[spec] = src
        return src


@functools.lru_cache(maxsize=1)
def _tune_worker_allocator() -> bool:
    """Once per worker process: let malloc keep freed memory (``decode.cache.tune_allocator``).
    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, under which every fit's
    fresh tensors are page-faulted back in: a fast-preset block's fit took 1.8x as long in a
    worker as in a plain process (benchmarks/results/cluster_efficiency.md). A worker running
    these tasks is this program, so the process-wide setting is ours to make here."""
    from ..decode.cache import tune_allocator

    return tune_allocator(1 << 30)


def block_task(spec: SourceSpec, job: BlockJob, threads: int = 1) -> tuple[dict[str, Any], list[bytes]]:
    """Run on a worker: read block ``job``'s fit region from the slide and encode it
    (``encode_block``) with ``threads`` torch threads. A region the source cannot decode raises
    ``CinrInputError`` naming the block."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    _tune_worker_allocator()
    fx0, fy0, fw, fh = job.grid.fit_region(job.block_id)
    try:
        pixels = _open_source(spec).read(fx0, fy0, fw, fh)
    except CinrInputError as exc:
        raise CinrInputError(f"{exc} (block {job.block_id + 1} of {job.grid.n_level_blocks})") from None
    return encode_block(job, pixels)


def run_on_cluster(
    client: Any,
    spec: SourceSpec,
    jobs: list[BlockJob],
    journal: BlockSink,
    on_done: Callable[[BlockJob, dict[str, Any]], None],
    *,
    gpu: bool = False,
) -> None:
    """Encode ``jobs`` on ``client``'s cluster, appending each result to ``journal`` as it arrives
    and calling ``on_done(job, meta)``. ``gpu``: each task asks for the worker resource ``GPU=1``
    (workers started with ``--resources GPU=1``). The first block that fails stops the encode:
    the other tasks are cancelled and its error is raised (``CinrInputError`` naming the block for
    the slide's own faults)."""
    from distributed import as_completed

    run = uuid.uuid4().hex[:12]  # this call's tasks: keys never shared with another encode's
    by_key = {}
    futures = []
    for job in jobs:
        fut = client.submit(
            block_task,
            spec,
            job,
            key=f"cinr-block-{os.path.basename(spec.path)}-{job.block_id}-{job.seed}-{run}",
            retries=RETRIES,
            pure=False,
            resources={"GPU": 1} if gpu else None,
        )
        by_key[fut.key] = job
        futures.append(fut)
    try:
        for fut in as_completed(futures):
            job = by_key[fut.key]
            meta, parts = fut.result()
            journal.append(meta, parts)
            on_done(job, meta)
            fut.release()
    finally:
        client.cancel([f for f in futures if not f.done()])


def check_gpu_workers(client: Any) -> None:
    """Refuse GPU fits (ValueError) on a cluster whose workers, if any have joined yet, offer no
    ``GPU`` resource: their tasks would wait for one for ever."""
    workers = client.scheduler_info().get("workers", {})
    if workers and not any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()):
        raise ValueError(
            "the blocks would fit on a GPU, but no worker of the cluster offers one: start the workers "
            "with --resources GPU=1 (one per GPU), or encode with --device cpu"
        )


@contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: connected to ``scheduler`` (an address such as
    ``tcp://host:8786``), or to a new local cluster of ``workers`` processes of one thread each."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CinrInputError(
            "encoding on a cluster needs dask's distributed package: pip install 'cinr-codec[dask]' (or -e '.[dask]' in a clone)"
        ) from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise CinrInputError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = max(1, int(workers or 1))
    import torch

    # On a machine with a GPU the blocks fit there (``run_on_cluster(gpu=True)`` asks each task
    # for the resource): every local worker shares it.
    resources = {"GPU": 1} if torch.cuda.is_available() else None
    # The scheduler of a local cluster runs in this process: its start-up chatter is not the user's.
    chatter = logging.getLogger("distributed")
    level = chatter.level
    chatter.setLevel(max(level, logging.WARNING))
    try:
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # loopback, a free port
                silence_logs=logging.WARNING,
                resources=resources,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    finally:
        chatter.setLevel(level)


def dashboard_link(client: Any) -> str | None:
    """The cluster's dashboard URL, when it serves one (the dashboard needs bokeh)."""
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        return None
    link = getattr(client, "dashboard_link", None)
    return link if isinstance(link, str) else None
