"""Encode a whole slide: plan the block grid, run every block through ``encode_block``, assemble.

A slide's pixels travel one way: ``SlideSource`` (``encode.source``) reads one block's fit
region at a time -> ``encode_block`` (``encode.block``) returns its payload, mips and quality
sums -> the journal (``encode.journal``) keeps finished blocks on disk, so an interrupted encode
resumes -> ``assemble`` writes the ``.cinr`` file (``format.container``) from the journal, in
block order, with the header (``format.header``) and footer. Memory is bounded by the block size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..coding.base import BlockCodec, check_fit_limits
from ..coding.images import avif_available
from ..coding.registry import DEFAULT_MODEL, get_codec
from ..core.requant import SourceJpeg, source_jpeg_of
from ..errors import CinrInputError, CinrWorkerError
from ..format.container import (
    MINOR_JSON_ZSTD,
    MINOR_SHORT_AVIF,
    MINOR_SOURCE_JPEG,
    MINOR_SOURCE_JPEG_1_10,
    CinrWriter,
)
from ..format.grid import BlockGrid, default_mip_downsamples
from ..format.header import (
    SlideTotals,
    build_header,
    psnr_of,
    scale_slide_fields,
    slide_fields,
    slide_footer,
)
from .aim import (
    AUTO_AIM_RANGE,
    DEFAULT_SLIDE_PSNR,
    FINER_AT_ONCE_MARGIN,
    FIRST_PASS_KEY,
    FLOOR_KEY,
    FLOOR_MARGIN_DB,
    REQUANT_MAX,
    REQUANT_SHARE,
    SLIDE_PSNR_FLOOR,
    SLIDE_PSNR_RANGE,
    TRIM_KEY,
    TRIM_LANDED_KEY,
    TRIM_MIN_STEPS,
    TRIM_ROUND_KEY,
    SlideDifficulty,
    aimed_rate,
    calibration_blocks,
    chosen_aim,
    corrected_rate,
    difficulty,
    finer_at_once,
    floor_rate,
    measured_blocks,
    model_sse,
    predicted_psnr,
    requant_credit,
    retrim_factor,
    trim_factor,
)
from .block import SEAM_STRIP, BlockJob, block_seed, candidate_seed, encode_block
from .image import check_destination
from .journal import BlockSink, Journal, journal_path
from .jpeg_coding import jpeg_coding
from .reference import QUALITIES, PyramidTotals, block_reference
from .source import SlideSource
from .tissue import block_tissue, detect_tissue, is_glass

log = logging.getLogger(__name__)

#: Default fitting margin (the block side is the representation's, ``BlockCodec.block_size``);
#: see docs/architecture.md for the measurements.
DEFAULT_MARGIN = 0
#: At most this many tissue blocks besides the prior (evenly spaced) give the slide's JPEG curve
#: for a chosen aim: 64 ms a 512^2 block on one core of the 2-core machine.
CURVE_BLOCKS = 32
#: Smallest block side accepted (tests use small blocks; real encodes use 512 or 1024).
MIN_BLOCK_SIZE = 64
#: Smallest level accepted for a slide encode.
MIN_SLIDE_SIDE = 16
#: A block whose thumbnail tissue fraction is below this is checked at full resolution.
THUMB_TISSUE_MIN = 0.005

ProgressEvent = dict[str, Any]


def fingerprint_of(src: Path, header: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """What a journal must match to be resumed: the source file, the header and the settings."""
    st = src.stat()
    return {
        "source": str(src.resolve()),
        "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns,
        "header": header,
        **settings,
    }


@dataclass(frozen=True)
class SlidePlan:
    """What encoding one slide level takes, decided before any block is fitted.

    ``jobs`` holds one ``BlockJob`` per level block (in block order, ``time_budget`` per block
    as asked; a total budget is shared out while running); ``fingerprint`` is what a journal
    must match to be resumed. A serial loop (``encode_slide``) or a cluster runs the jobs;
    ``assemble`` writes the file from their results.
    """

    grid: BlockGrid
    header: dict[str, Any]
    fingerprint: dict[str, Any]
    codec: BlockCodec
    jobs: tuple[BlockJob, ...]
    tissue_blocks: frozenset[int]
    tissue_fraction: float
    mip_avif: bool = False  # mips may be AVIF: the file is format 1.6
    #: The block fitted first, whose stored networks start every other tissue block's fit
    #: (``BlockJob.init``; ``BlockCodec.warm_starts``), or None.
    prior: int | None = None
    #: Fits of the prior block, each from its own seed (``candidate_seed``), of which the one of
    #: lowest rate-distortion loss is kept (the representation's recipe, ``prior_candidates``).
    prior_candidates: int = 1
    #: The lambda of that loss (MSE of values in [0, 1] + lambda * bits per pixel): the preset's.
    rate_weight: float = 0.0
    #: The other tissue blocks start from the prior's networks (else the prior is fitted first
    #: only to aim the slide's rate weight).
    warm: bool = False
    #: The PSNR over tissue (dB) that the other blocks' one rate weight aims at (``encode.aim``),
    #: from the prior block's fit at ``rate_weight``; None: every block at ``rate_weight``.
    slide_psnr: float | None = None
    #: ``slide_psnr`` is only the fallback: the aim is chosen from the slide's JPEG curve, measured
    #: on its tissue blocks once the prior is fitted (``aim.chosen_aim``).
    auto_aim: bool = False
    #: The configuration and header of the same representation at a finer quantization step
    #: (``BlockCodec.finer_config``), for a slide whose prediction from the prior falls under
    #: ``aim.SLIDE_PSNR_FLOOR``; None where the aim cannot switch to one.
    finer: tuple[Any, dict[str, Any]] | None = None

    @property
    def block_steps(self) -> int | None:
        """The training steps of a block (every job has the plan's), or None without jobs."""
        return self.jobs[0].steps if self.jobs else None


def plan_slide(
    source: SlideSource,
    src_path: Path,
    *,
    level: int,
    model: str,
    preset: str,
    quant: str,
    steps: int | None,
    time_budget: float | None,
    total_time_budget: float | None,
    target_psnr: float | None,
    device: str,
    block_size: int,
    margin: int,
    tissue_mask: bool,
    mips: bool,
    seed: int,
    slide_psnr: float | None = None,
    auto_aim: bool = False,
) -> SlidePlan:
    """Cut the level into blocks, find tissue, build the header and one ``BlockJob`` per block.
    ``slide_psnr``: aim the slide's one rate weight at this PSNR over tissue (``encode.aim``);
    ``auto_aim``: choose that aim from the slide's JPEG curve instead (``aim.chosen_aim``). A
    JPEG-tiled source's coding is recorded (``slide.source_jpeg``): readers move decoded pixels to
    its lattice (``core.requant``)."""
    codec = get_codec(model)
    width, height = source.width, source.height
    if width < MIN_SLIDE_SIDE or height < MIN_SLIDE_SIDE:
        raise CinrInputError(
            f"{src_path}: level {level} is {width}x{height} pixels; at least "
            f"{MIN_SLIDE_SIDE}x{MIN_SLIDE_SIDE} is needed"
        )
    # A JPEG-tiled source: readers move decoded pixels to its lattice (``core.requant``), in each
    # block's parts of the source tiles (blocks, multiples of 16 px, lie on any MCU grid).
    requant = jpeg_coding(src_path, level, width, height)
    grid = BlockGrid(
        width,
        height,
        block_size,
        margin,
        default_mip_downsamples(block_size, codec.first_mip, codec.mip_step) if mips else (),
    )
    cfg = codec.config_for(model, preset, grid.side, grid.side)
    # Tissue: Otsu on the saturation of a thumbnail with at least ~4 thumbnail pixels per block.
    thumb_side = int(min(8192, max(1024, 4 * max(width, height) / block_size)))
    tmap = detect_tissue(source.thumbnail(thumb_side), width, height)
    if tissue_mask:
        fractions = block_tissue(tmap, block_size, grid.cols, grid.rows, margin_px=margin)
    else:
        fractions = np.ones((grid.rows, grid.cols))
    tissue_blocks = frozenset(b for b in range(grid.n_level_blocks) if fractions.flat[b] > 0)
    if steps is None:  # the device's default, recorded so that a resumed encode trains the same
        steps = codec.default_steps(device, sum(math.prod(grid.owned(b)[2:]) for b in tissue_blocks))
    slide = slide_fields(width, height, source.properties)
    scale_slide_fields(slide, level, source.downsample)
    slide["background"] = list(tmap.background)
    if requant is not None:
        slide["source_jpeg"] = requant.to_header()

    def header_of(config: Any) -> dict[str, Any]:
        return build_header(
            slide=slide,
            grid=grid,
            representation=codec.header_fields(config, quant),
            preset=preset,
            tissue={
                "method": "otsu-saturation",
                "threshold": round(float(tmap.threshold), 3),
                "fraction": round(float(tmap.tissue_fraction), 5),
                "masked": bool(tissue_mask),
            },
        )

    header = header_of(cfg)
    mip_avif = bool(grid.mip_downsamples) and avif_available()
    warm = codec.warm_starts(steps, target_psnr)
    train = codec.recipe(model, preset)
    prior = _prior_block(grid, fractions) if warm or slide_psnr is not None else None
    # A total time budget is shared out block by block: the prior is then fitted once.
    candidates = (
        max(1, int(train.get("prior_candidates", 1)))
        if prior is not None and warm and total_time_budget is None
        else 1
    )
    settings = {
        "prior": prior,
        "mip_avif": mip_avif,
        "seed": seed,
        "steps": steps,
        "time_budget": time_budget,
        "total_time_budget": total_time_budget,
        "target_psnr": target_psnr,
        "train": train,
        "prior_candidates": candidates,
        "slide_psnr": slide_psnr,
        "auto_aim": auto_aim and slide_psnr is not None,
        "software": __version__,
    }
    jobs = tuple(
        BlockJob(
            block_id=block_id,
            grid=grid,
            config=cfg,
            model=model,
            preset=preset,
            quant=quant,
            steps=steps,
            time_budget=time_budget,
            target_psnr=target_psnr,
            device=device,
            seed=block_seed(seed, block_id),
            maybe_background=bool(fractions.flat[block_id] < THUMB_TISSUE_MIN),
            tissue_threshold=float(tmap.threshold),
            mip_avif=mip_avif,
            requant=requant,
        )
        for block_id in range(grid.n_level_blocks)
    )
    # A slide aimed at a PSNR may switch to a finer step once its prior is fitted (not under a
    # total time budget, which the prior's second fit would overrun).
    fine = codec.finer_config(cfg) if slide_psnr is not None and total_time_budget is None else None
    return SlidePlan(
        grid=grid,
        header=header,
        fingerprint=fingerprint_of(src_path, header, settings),
        codec=codec,
        jobs=jobs,
        tissue_blocks=tissue_blocks,
        tissue_fraction=float(tmap.tissue_fraction),
        mip_avif=mip_avif,
        prior=prior,
        prior_candidates=candidates,
        rate_weight=float(train.get("lambda", 0.0)),
        warm=warm and prior is not None,
        slide_psnr=slide_psnr if prior is not None else None,
        auto_aim=auto_aim and slide_psnr is not None and prior is not None,
        finer=(fine, header_of(fine)) if fine is not None and prior is not None else None,
    )


def _slide_difficulty(
    source: SlideSource, plan: SlidePlan, prior: int, curve: bool = False
) -> tuple[SlideDifficulty, tuple[list[float], list[float]] | None]:
    """How hard the slide's tissue blocks are for JPEG (``aim.difficulty``): the prior block's,
    and those of at most ``aim.MAX_MEASURED_BLOCKS`` others (the glass ``encode_block`` will store
    as a colour left out), extrapolated to all; with ``curve``, also the JPEG pyramid's PSNR over
    tissue and bytes per quality (``reference.block_reference``) of the prior and at most
    ``CURVE_BLOCKS`` of the others (for ``aim.chosen_aim``), else None."""
    grid = plan.grid

    def owned(block_id: int) -> np.ndarray:
        return source.read(*grid.owned(block_id))

    others = [b for b in plan.tissue_blocks if b != prior]
    measured = measured_blocks(others)
    on_curve = set(measured_blocks(measured, CURVE_BLOCKS)) if curve else set()
    size = np.zeros(len(QUALITIES))
    sse = np.zeros(len(QUALITIES))
    n = 0

    def add(px: np.ndarray) -> None:
        nonlocal n
        ref = block_reference(px, error=True)
        size[:] += ref["bytes"]
        sse[:] += ref["sse"]
        n += px.size

    values = weighted = 0.0
    for b in measured:
        px = owned(b)
        job = plan.jobs[b]  # one job per block, in block order
        if job.maybe_background and is_glass(px, job.tissue_threshold):
            continue
        values += px.size
        weighted += px.size * difficulty(px)
        if b in on_curve:
            add(px)
    scale = len(others) / max(1, len(measured))
    px = owned(prior)
    slide = SlideDifficulty(prior=difficulty(px), values=values * scale, weighted=weighted * scale)
    if not curve:
        return slide, None
    add(px)
    psnr = [v if (v := psnr_of(float(e), n)) is not None else math.inf for e in sse]
    return slide, (psnr, [float(v) for v in size])


def _prior_block(grid: BlockGrid, fractions: np.ndarray) -> int | None:
    """The block whose networks start the others' fits: of the blocks surely fitted (tissue seen
    in the thumbnail), the one with the most tissue, then the nearest the centre, then the first;
    None when fewer than two blocks are surely fitted."""
    sure = [b for b in range(grid.n_level_blocks) if fractions.flat[b] >= THUMB_TISSUE_MIN]
    if len(sure) < 2:
        return None
    cy, cx = (grid.rows - 1) / 2, (grid.cols - 1) / 2

    def rank(b: int) -> tuple[float, float, int]:
        r, c = divmod(b, grid.cols)
        return (-float(fractions.flat[b]), (r - cy) ** 2 + (c - cx) ** 2, b)

    return min(sure, key=rank)


def encode_slide(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    level: int = 0,
    model: str = DEFAULT_MODEL,
    preset: str | None = None,
    steps: int | None = None,
    time_budget: float | None = None,
    total_time_budget: float | None = None,
    target_psnr: float | None = None,
    device: str = "auto",
    quant: str | None = None,
    block_size: int | None = None,
    margin: int = DEFAULT_MARGIN,
    tissue_mask: bool = True,
    mips: bool = True,
    seed: int = 0,
    resume: bool = False,
    threads: int | str | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    max_pixels: int | None = None,
    client: Any = None,
    processes: int | None = None,
    slide_psnr: float | None = None,
) -> dict[str, Any]:
    """Encode level ``level`` of a slide or image ``src`` as the ``.cinr`` file ``dst``; return a summary.

    The level is cut into ``block_size`` blocks (default: the representation's
    ``BlockCodec.block_size``; ``format.grid``), each fitted with ``margin``
    pixels of context on every side; blocks without tissue are stored as a colour. ``model``
    names the block representation (``coding.registry``; default the compressive ``ccinr``),
    ``preset`` its recipe or quality level and ``quant`` its storage setting (defaults: the
    representation's). Finished blocks go to a journal beside ``dst``
    (``resume`` continues an interrupted encode); ``dst`` appears, atomically, only when
    complete. ``time_budget`` bounds each block's training, ``total_time_budget`` the whole
    encode's, ``target_psnr`` stops a block early. Bad input raises ``CinrInputError``/``ValueError``
    before any fitting. ``threads``: torch's CPU threads for the fits (None: leave torch's setting;
    ``"auto"``: the cores other processes leave free, re-measured before each block,
    ``encode.threads``, or the representation's ``fit_threads`` where it fixes them). ``max_pixels``: the most pixels the level may have (None: at most
    ``source.DEFAULT_MAX_PIXELS``, and a level 0 plausible for the file's bytes; see ``SlideSource``);
    a source whose pixels cannot be decoded (a corrupt tile) raises ``CinrInputError`` naming the
    region, and the blocks finished before it stay in the journal. ``client``: a
    ``distributed.Client`` whose workers fit the blocks, one task per block, each reading its
    own pixels from ``src`` (which they must see at the same path) with one torch thread
    (``encode.cluster``); this process keeps the journal and writes the file. ``processes``: fit
    the blocks in this many local worker processes of one torch thread each (``encode.processes``;
    None or 1: in this process), the same payloads as on a cluster; a ``total_time_budget`` is then
    shared out once, each block getting ``processes`` times its share of the time left. When the
    representation warm-starts short fits (``BlockCodec.warm_starts``), the plan's prior block is
    fitted first, alone, and every other tissue block starts from its stored networks.
    ``slide_psnr``: fit the prior block at the preset's rate weight, then every other block at the
    one weight predicted to put the slide's PSNR over tissue at this many dB, never lower than the
    preset's (``encode.aim``; for representations with a rate weight). By default a compressive encode given neither ``preset``
    nor ``target_psnr`` aims at ``aim.DEFAULT_SLIDE_PSNR``; with a ``preset`` it keeps its weight.
    """
    from ..core.render import resolve_device

    t_start = time.perf_counter()
    codec = get_codec(model)
    quant = codec.default_storage if quant is None else quant
    level_given = preset is not None
    preset = codec.default_preset if preset is None else preset
    rated = bool(codec.recipe(model, preset).get("lambda"))  # a bad preset raises ValueError here
    auto_aim = False
    if slide_psnr is not None:
        if isinstance(slide_psnr, bool) or not isinstance(slide_psnr, int | float):
            raise ValueError(f"the slide's PSNR aim must be a number of dB, not {slide_psnr!r}")
        if not SLIDE_PSNR_RANGE[0] <= slide_psnr <= SLIDE_PSNR_RANGE[1]:
            raise ValueError(
                f"the slide's PSNR aim must lie in [{SLIDE_PSNR_RANGE[0]:g}, {SLIDE_PSNR_RANGE[1]:g}] dB, "
                f"not {slide_psnr:g}"
            )
        if target_psnr is not None:
            raise ValueError("give a PSNR target per block or an aim for the slide, not both")
        if not rated:
            raise ValueError(f"{model} blocks have no rate weight to aim at a PSNR")
    elif rated and not level_given and target_psnr is None:
        slide_psnr, auto_aim = DEFAULT_SLIDE_PSNR, True
    codec.check_storage(quant)
    if block_size is None:
        block_size = codec.block_size
    if not isinstance(block_size, int) or block_size < MIN_BLOCK_SIZE or block_size % 16:
        raise ValueError(f"block size must be a multiple of 16, at least {MIN_BLOCK_SIZE}")
    if not 0 <= margin <= block_size // 2:
        raise ValueError("margin must be in [0, block_size / 2]")
    check_fit_limits(steps, time_budget)
    if total_time_budget is not None and not total_time_budget > 0:
        raise ValueError("total time budget must be > 0 seconds")
    if client is not None and total_time_budget is not None:
        raise ValueError(
            "a total time budget is shared out block by block; on a cluster use a time budget per block"
        )
    if processes is not None and (
        isinstance(processes, bool) or not isinstance(processes, int) or processes < 1
    ):
        raise ValueError(f"processes must be a positive integer, not {processes!r}")
    if client is not None and processes not in (None, 1):
        raise ValueError("give a cluster client or local worker processes, not both")
    side = block_size + 2 * margin  # every block's frame (BlockGrid.side)
    codec.config_for(model, preset, side, side)  # a bad preset fails before the slide is opened
    dev = resolve_device(device)
    if client is not None and dev.type == "cuda":
        from .cluster import check_gpu_workers

        check_gpu_workers(client)  # else the tasks would wait for a GPU for ever
    _check_threads(threads)
    src_path = Path(src)
    path = check_destination(dst)
    if src_path.exists() and path.exists() and src_path.resolve() == path.resolve():
        raise ValueError(f"{path}: the output would overwrite the source")

    with _threads_restored(threads), SlideSource(src_path, level, max_pixels=max_pixels) as source:
        set_threads = _thread_setter(threads, dev.type == "cpu", codec.fit_threads)
        plan = plan_slide(
            source,
            src_path,
            level=level,
            model=model,
            preset=preset,
            quant=quant,
            steps=steps,
            time_budget=time_budget,
            total_time_budget=total_time_budget,
            target_psnr=target_psnr,
            device=str(dev),
            block_size=block_size,
            margin=margin,
            tissue_mask=tissue_mask,
            mips=mips,
            seed=seed,
            slide_psnr=slide_psnr,
            auto_aim=auto_aim,
        )
        grid = plan.grid
        jpath = journal_path(path)
        journal = (
            Journal.resume(jpath, plan.fingerprint) if resume else Journal.create(jpath, plan.fingerprint)
        )
        try:
            done = journal.done
            todo_tissue = sum(1 for b in plan.tissue_blocks if b not in done)
            if progress is not None:
                progress(
                    {
                        "stage": "start",
                        "total": grid.n_level_blocks,
                        "done": len(done),
                        "tissue_blocks": len(plan.tissue_blocks),
                    }
                )

            def block_done(job: BlockJob, meta: dict[str, Any]) -> None:
                if progress is not None:
                    progress(
                        {
                            "stage": "block",
                            "block_id": job.block_id,
                            "kind": meta["kind"],
                            "psnr": psnr_of(meta["sse"], meta["n"]),
                            "total": grid.n_level_blocks,
                        }
                    )

            def source_failed(exc: CinrInputError) -> CinrInputError:
                return CinrInputError(
                    f"{exc}; the source is corrupt there: the {len(journal.done)} blocks finished are kept "
                    f"in {jpath}"
                )

            def run_elsewhere(
                todo: list[BlockJob],
                todo_tissue: int,
                sink: BlockSink = journal,
                on_done: Callable[[BlockJob, dict[str, Any]], None] = block_done,
            ) -> None:
                """Fit ``todo`` on the cluster or in the local worker processes, each result to
                ``sink`` (the journal) and ``on_done``."""
                from .cluster import SourceSpec, run_on_cluster
                from .processes import run_in_processes

                spec = SourceSpec.of(src_path, level, max_pixels)
                try:
                    if client is not None:
                        run_on_cluster(client, spec, todo, sink, on_done, gpu=dev.type == "cuda")
                    else:
                        assert processes is not None
                        if total_time_budget is not None:
                            left = total_time_budget - (time.perf_counter() - t_start)
                            share = max(1.0, left * processes / max(1, todo_tissue))
                            todo = [
                                replace(
                                    j, time_budget=share if time_budget is None else min(time_budget, share)
                                )
                                for j in todo
                            ]
                        run_in_processes(processes, spec, todo, sink, on_done)
                except CinrInputError as exc:  # the worker's message names the block
                    raise source_failed(exc) from None
                except CinrWorkerError as exc:
                    raise CinrWorkerError(
                        f"{exc}; the {len(journal.done)} blocks finished are kept in {jpath}: "
                        "run the same command with --resume"
                    ) from None

            # The later blocks' rate weight (None without an aim), whether the slide is stored
            # at the finer step, the aim and its re-quantization credit, found once the prior is
            # journaled.
            aimed: list[tuple[float | None, bool, float | None, float]] = []

            def warmed(stage: list[BlockJob], corrected: float | None = None) -> list[BlockJob]:
                """The stage's jobs once the prior block is journaled: at the slide's latent step
                (``finer``), and its later tissue blocks starting from the prior block's stored
                networks and at the slide's aimed rate weight (or ``corrected``)."""
                if plan.prior is None or plan.prior not in journal.done:
                    return stage  # the prior's own stage
                lam, finer, _, _ = aimed_weight()  # may fit the prior again at a finer step
                lam = lam if corrected is None else corrected
                if finer and plan.finer is not None:
                    stage = [replace(j, config=plan.finer[0]) for j in stage]
                later = {
                    j.block_id for j in stage if j.block_id != plan.prior and j.block_id in plan.tissue_blocks
                }
                if not later:
                    return stage
                parts = journal.read(plan.prior).parts if plan.warm else []  # none: background
                init = parts[0] if parts else None
                return [replace(j, init=init, lam=lam) if j.block_id in later else j for j in stage]

            # The weight of the blocks after the calibration blocks, once they are journaled, with
            # its re-quantization credit, and the slide's difficulty (and JPEG curve) that the aim
            # measured.
            corrections: list[tuple[float, float]] = []
            measures: list[tuple[SlideDifficulty, tuple[list[float], list[float]] | None]] = []

            def measured() -> tuple[SlideDifficulty, tuple[list[float], list[float]] | None]:
                """The slide's difficulty for the aim and, with ``plan.auto_aim``, its JPEG curve
                (``_slide_difficulty``, measured once: it reads only the source's pixels)."""
                if not measures:
                    assert plan.prior is not None
                    try:
                        measures.append(_slide_difficulty(source, plan, plan.prior, curve=plan.auto_aim))
                    except CinrInputError as exc:
                        raise source_failed(exc) from None
                return measures[0]

            def calibration() -> list[int]:
                """The calibration blocks (``aim.calibration_blocks``) where the aim raised the
                later blocks' weight over the level's; else none."""
                if plan.prior is None or plan.prior not in journal.done:
                    return []
                lam, _, _, _ = aimed_weight()
                if lam is None or not lam > plan.rate_weight:
                    return []
                return calibration_blocks([b for b in plan.tissue_blocks if b != plan.prior])

            def corrected_weight() -> tuple[float, float]:
                """The weight of the blocks after the journaled calibration blocks, and by how
                much their own error is aimed under the aim (``aim.requant_credit`` of the prior
                and those blocks, pooled), found once."""
                if not corrections:
                    lam, _, aim, _ = aimed_weight()
                    assert lam is not None and aim is not None and plan.prior is not None
                    prior = journal.read(plan.prior).meta
                    done = [(b, m) for b in calibration() if (m := journal.read(b).meta)["kind"] == "model"]
                    again = [m[FIRST_PASS_KEY] for _, m in done if FIRST_PASS_KEY in m]
                    if again:  # fitted again for the floor (``floor_pass``): what their first fits gave
                        corrections.append((float(again[0][0]), float(again[0][1])))
                        return corrections[0]
                    try:
                        fitted = [
                            (model_sse(m), int(m["n"]), difficulty(source.read(*grid.owned(b))))
                            for b, m in done
                        ]
                    except CinrInputError as exc:
                        raise source_failed(exc) from None
                    records = [prior, *(m for _, m in done)]
                    credit = requant_credit(records, REQUANT_SHARE, REQUANT_MAX)
                    rest = corrected_rate(
                        aim,
                        plan.rate_weight,
                        lam,
                        model_sse(prior),
                        int(prior["n"]),
                        measured()[0],
                        fitted,
                        spent=sum(float(m["sse"]) for m in records),
                        credit=credit,
                    )
                    corrections.append((rest, credit))
                    log.info(
                        "%d calibration blocks fitted at rate weight %.3g: the others at %.3g",
                        len(fitted),
                        lam,
                        rest,
                    )
                return corrections[0]

            def calibrated(stage: list[BlockJob]) -> Iterator[list[BlockJob]]:
                """``stage``'s jobs as they run (``warmed``): where there are calibration blocks,
                those first, then the rest at the weight their fits correct the aim's to."""
                sample = set(calibration())
                if not sample:
                    yield warmed(stage)
                    return
                yield warmed([j for j in stage if j.block_id in sample])
                yield warmed([j for j in stage if j.block_id not in sample], corrected_weight()[0])

            def aimed_weight() -> tuple[float | None, bool, float | None, float]:
                """The later blocks' rate weight for the slide's aim (None without an aim), whether
                the slide is at the finer step, the aim, and by how much the blocks' own error is
                aimed lower (``aim.requant_credit``), from the journaled prior (found once)."""
                if not aimed:
                    aimed.append(
                        (None, False, None, 0.0)
                        if plan.slide_psnr is None or plan.prior is None
                        else aim_rate(plan.slide_psnr)
                    )
                return aimed[0]

            def aim_rate(aim: float) -> tuple[float, bool, float, float]:
                """The other blocks' rate weight for the slide's aim (``aim``, or with
                ``plan.auto_aim`` one chosen from the slide's JPEG curve) from the prior's record,
                whether that record is at the finer step, the aim and its credit for re-quantization
                (``aim.requant_credit``); first, where the prior
                predicts the slide under the floor at the level's step, the prior fitted again and
                journaled at it."""
                assert plan.prior is not None
                prior = journal.read(plan.prior).meta
                if prior["kind"] != "model":
                    return plan.rate_weight, False, aim, 0.0
                if progress is not None:
                    progress({"stage": "aim"})
                slide, curve = measured()
                if curve is not None:
                    aim = chosen_aim(*curve)
                    log.info("the slide's JPEG curve puts the aim at %.2f dB over tissue", aim)
                floor = min(aim, SLIDE_PSNR_FLOOR)
                # Re-quantization to a JPEG source's lattice adds to what the blocks' own error
                # gives: that error is aimed ``credit`` dB under the aim, and predicted that much
                # over its own PSNR against the floor.
                credit = requant_credit([prior], REQUANT_SHARE, REQUANT_MAX)
                if credit:
                    log.info(
                        "re-quantization to the source's JPEG lattice: the blocks' own error aimed %.2f dB lower",
                        credit,
                    )
                predicted = predicted_psnr(model_sse(prior), int(prior["n"]), slide) + credit
                # Only while the prior is the one block journaled (a journal of an encoder before
                # the floor may hold later blocks at the level's step: they keep it).
                alone = journal.done == {plan.prior} and not prior.get("finer")
                if plan.finer is not None and alone and predicted < floor:
                    log.info(
                        "the slide is predicted at %.2f dB over tissue, under %.1f: the prior block "
                        "is fitted again at a finer latent step",
                        predicted,
                        floor,
                    )
                    if progress is not None:
                        progress({"stage": "finer"})
                    race(replace(plan.jobs[plan.prior], config=plan.finer[0]), finer=True)
                    prior = journal.read(plan.prior).meta
                lam = aimed_rate(aim - credit, plan.rate_weight, model_sse(prior), int(prior["n"]), slide)
                log.info(
                    "aiming at %.2f dB over tissue: rate weight %.3g (the preset's %.3g; the prior block %.2f dB)",
                    aim,
                    lam,
                    plan.rate_weight,
                    psnr_of(prior["sse"], prior["n"]) or 0.0,
                )
                return lam, bool(prior.get("finer")), aim, credit

            def read_fit_region(job: BlockJob) -> np.ndarray:
                fx0, fy0, fw, fh = grid.fit_region(job.block_id)
                try:
                    return source.read(fx0, fy0, fw, fh)
                except CinrInputError as exc:
                    raise source_failed(
                        CinrInputError(f"{exc} (block {job.block_id + 1} of {grid.n_level_blocks})")
                    ) from None

            def race(job: BlockJob, finer: bool = False) -> None:
                """Fit ``job``'s block from ``plan.prior_candidates`` seeds (at once where workers
                allow) and journal the fit of lowest rate-distortion loss (``finer``: marked as at
                the finer step); a block journaled already (the prior fitted again at the finer
                step) has its record replaced, and is not counted again."""
                candidates = [
                    replace(job, seed=candidate_seed(job.seed, k)) for k in range(plan.prior_candidates)
                ]
                results = _Results()
                if client is not None or pooled:
                    run_elsewhere(candidates, todo_tissue, results, lambda job, meta: None)
                else:
                    pixels = read_fit_region(job)
                    set_threads()
                    for c in candidates:
                        results.append(*encode_block(c, pixels))
                meta, parts = results.best(plan.rate_weight)
                counted = job.block_id in journal.done
                journal.append({**meta, "finer": True} if finer else meta, parts)
                if not counted:
                    block_done(job, meta)

            def tissue_models() -> tuple[dict[int, dict[str, Any]], int, float | None]:
                """The journaled tissue blocks' records that hold models, their values and the
                slide's PSNR over them (what the floor and the trim check)."""
                metas = {b: journal.read(b).meta for b in plan.tissue_blocks}
                models = {b: m for b, m in metas.items() if m["kind"] == "model"}
                values = sum(int(m["n"]) for m in models.values())
                return models, values, psnr_of(sum(float(m["sse"]) for m in models.values()), values)

            def second_pass(
                stage: str, batches: Iterable[list[BlockJob]], total: int, sink: BlockSink
            ) -> None:
                """A pass over ``total`` blocks (``stage``: its progress event), its jobs run batch by
                batch as the first pass runs them, each result to ``sink``."""
                if progress is not None:
                    progress({"stage": stage, "total": total})
                for jobs in batches:
                    if client is not None or pooled:
                        run_elsewhere(jobs, len(jobs), sink=sink)
                        continue
                    for job in jobs:
                        set_threads()
                        meta, parts = encode_block(job, read_fit_region(job))
                        sink.append(meta, parts)
                        block_done(job, meta)

            def first_weights(later: list[int], lam: float, rest: float | None) -> dict[int, float]:
                """The rate weights the ``later`` tissue blocks' first fits had: the aimed one, or the
                calibration's corrected one (``rest``) past the calibration blocks."""
                sample = set(calibration())
                return {b: lam if rest is None or b in sample else rest for b in later}

            def floor_pass(
                lam: float | None, aim: float | None, rest: float | None, credit: float
            ) -> float | None:
                """Where the aimed slide landed under its floor (min(aim, ``SLIDE_PSNR_FLOOR``)) over
                tissue, its later tissue blocks fitted again at the one weight ``aim.floor_rate``
                finds from their measured errors (the floor plus ``FLOOR_MARGIN_DB``; not where no
                weight is predicted to reach it, as after a few steps: the pass would double the
                time for nothing), each journaled with that weight (``FLOOR_KEY``: a resume
                finishes the pass at it) and the calibration's weight and credit
                (``FIRST_PASS_KEY``, which ``corrected_weight`` reads back); returns that weight,
                or None. Not for encodes with a total time budget."""
                if lam is None or aim is None or plan.prior is None or total_time_budget is not None:
                    return None
                models, values, landed = tissue_models()
                if any(TRIM_KEY in m for m in models.values()):
                    return None  # a resume: the trim follows a floor found met
                later = [b for b in models if b != plan.prior]
                tagged = [float(models[b][FLOOR_KEY]) for b in later if FLOOR_KEY in models[b]]
                again: float | None
                if tagged:
                    again = tagged[0]
                else:
                    floor = min(aim, SLIDE_PSNR_FLOOR)
                    if landed is None or landed >= floor or not later:
                        return None
                    kept = float(models[plan.prior]["sse"]) if plan.prior in models else 0.0
                    weights = first_weights(later, lam, rest)
                    fitted = [(float(models[b]["sse"]), weights[b]) for b in later]
                    again = floor_rate(floor + FLOOR_MARGIN_DB, kept, values, fitted)
                    if again is None:  # even the least weight is predicted under it
                        log.info(
                            "the slide landed at %.2f dB over tissue, under %.2f, where no rate weight "
                            "is predicted to reach it: not fitted again",
                            landed,
                            floor,
                        )
                        return None
                    log.info(
                        "the slide landed at %.2f dB over tissue, under %.2f: its %d later blocks are "
                        "fitted again at rate weight %.3g",
                        landed,
                        floor,
                        len(later),
                        again,
                    )
                jobs = warmed([plan.jobs[b] for b in later if FLOOR_KEY not in models[b]], corrected=again)
                tags = {FLOOR_KEY: again, FIRST_PASS_KEY: [rest, credit]}
                second_pass("floor", [jobs] if jobs else [], len(jobs), _Tagged(journal, tags))
                return again

            def trim_pass(
                lam: float | None, aim: float | None, rest: float | None, credit: float, finer: bool
            ) -> float | None:
                """Where the aimed slide landed over its aim by more than ``aim.TRIM_MIN_DB`` over
                tissue (and met its floor), its later tissue blocks' stored fits continued at the
                factor ``aim.trim_factor`` gives times their weights (their latents searched
                again, nothing trained: ``FitSettings.start``); where that stopped short of the aim
                by more than ``aim.TRIM_MIN_DB``, continued once more at the factor its measured
                fall puts at the aim (``aim.retrim_factor``). Each record is journaled with its
                round's factor (``TRIM_KEY``; ``TRIM_ROUND_KEY``, and ``TRIM_LANDED_KEY``: the
                slide's PSNR before the trim; a resume finishes the round at them) and the
                calibration's weight and credit (``FIRST_PASS_KEY``, as ``floor_pass``'s); the
                prior stays, as the aim reads its record. Returns the last round's factor, or None.
                Not for blocks trained fewer than ``aim.TRIM_MIN_STEPS`` steps (the CPU's least:
                the trim would cost a fifth of their fit), nor with a total time budget."""
                steps = plan.block_steps
                if lam is None or aim is None or plan.prior is None or total_time_budget is not None:
                    return None
                if steps is None or steps < TRIM_MIN_STEPS:
                    return None
                models, _, landed = tissue_models()
                if any(FLOOR_KEY in m for m in models.values()):
                    return None  # fitted again for the floor: at the floor's margin already
                later = [b for b in sorted(models) if b != plan.prior]
                requantized = any("raw_sse" in m for m in models.values())
                # A resume: the rounds journaled so far (a record without a round is of the first).
                rounds = {
                    int(models[b].get(TRIM_ROUND_KEY, 1)): models[b] for b in later if TRIM_KEY in models[b]
                }
                if rounds:
                    last = max(rounds)
                    factor, before = float(rounds[last][TRIM_KEY]), rounds[last].get(TRIM_LANDED_KEY)
                else:
                    found = (
                        None
                        if landed is None or not later
                        else trim_factor(landed, aim, SLIDE_PSNR_FLOOR, requantized)
                    )
                    if found is None:
                        return None
                    last, factor, before = 1, found, landed
                    log.info(
                        "the slide landed at %.2f dB over tissue, over its aim of %.2f: its %d later "
                        "blocks' latents are searched again at %.2fx their rate weights",
                        landed,
                        aim,
                        len(later),
                        factor,
                    )
                config = plan.finer[0] if finer and plan.finer is not None else None
                weights = first_weights(later, lam, rest)

                def trim_round(n: int, g: float, current: dict[int, dict[str, Any]]) -> None:
                    """Round ``n`` over the later blocks not yet at it (``current``: their journaled
                    records): each continued from its journaled fit at ``g`` times its first fit's
                    weight."""
                    todo = [
                        b
                        for b in later
                        if int(current[b].get(TRIM_ROUND_KEY, 1 if TRIM_KEY in current[b] else 0)) < n
                    ]

                    def continued(b: int) -> BlockJob:
                        job = plan.jobs[b] if config is None else replace(plan.jobs[b], config=config)
                        start = journal.read(b).parts[0]
                        return replace(job, init=None, start=start, lam=weights[b] * g)

                    tags = {
                        TRIM_KEY: g,
                        TRIM_ROUND_KEY: n,
                        TRIM_LANDED_KEY: before,
                        FIRST_PASS_KEY: [rest, credit],
                    }
                    sink = _Continued(journal, tags, current)
                    # Each job carries its block's payload: a batch at a time, so that memory stays
                    # bounded by the batch, not the slide.
                    batches = (
                        [continued(b) for b in todo[i : i + TRIM_BATCH]]
                        for i in range(0, len(todo), TRIM_BATCH)
                    )
                    second_pass("trim", batches, len(todo), sink)

                trim_round(last, factor, models)
                if last == 1 and before is not None:
                    current, _, after = tissue_models()
                    again = (
                        None
                        if after is None
                        else retrim_factor(before, after, aim, factor, SLIDE_PSNR_FLOOR, requantized)
                    )
                    if again is not None:
                        log.info(
                            "trimmed at %.2fx, the slide fell from %.2f to %.2f dB over tissue: its later "
                            "blocks' latents are searched again at %.2fx their first weights",
                            factor,
                            before,
                            after,
                            again,
                        )
                        trim_round(2, again, current)
                        factor = again
                return factor

            # The prior block first, alone (from several seeds where the representation races
            # them): the others start from its stored networks.
            todo = [j for j in plan.jobs if j.block_id not in done]
            first = [j for j in todo if j.block_id == plan.prior]
            pooled = client is None and processes is not None and processes > 1 and todo_tissue > 1
            # Where the slide's JPEG curve already puts it under the floor, the prior goes to the
            # finer step at once (``aim.finer_at_once``) rather than after a fit at the level's.
            at_once = False
            if first and plan.finer is not None and plan.auto_aim and (curve := measured()[1]) is not None:
                floor = min(AUTO_AIM_RANGE[0], SLIDE_PSNR_FLOOR)  # the chosen aim's floor at least
                at_once = finer_at_once(curve[0], floor)
                if at_once:
                    log.info(
                        "no JPEG quality reaches %.2f dB over the slide's tissue: the prior block is "
                        "fitted at a finer latent step at once",
                        floor - FINER_AT_ONCE_MARGIN,
                    )
            if first and (plan.prior_candidates > 1 or at_once):
                job = first[0]
                if at_once and plan.finer is not None:
                    job = replace(job, config=plan.finer[0])
                race(job, finer=at_once)
                todo_tissue = max(0, todo_tissue - 1)
                todo, first = [j for j in todo if j.block_id != plan.prior], []
            stages = [first, [j for j in todo if j.block_id != plan.prior]] if first else [todo]
            for part in (run for stage in stages for run in calibrated(stage)):
                if not part:
                    continue  # a resume found the calibration blocks journaled
                if client is not None or pooled:
                    run_elsewhere(part, todo_tissue)
                    todo_tissue -= sum(1 for job in part if job.block_id in plan.tissue_blocks)
                    continue
                for job in part:
                    if total_time_budget is not None:
                        left = total_time_budget - (time.perf_counter() - t_start)
                        share = max(1.0, left / max(1, todo_tissue))
                        budget = share if time_budget is None else min(time_budget, share)
                        job = replace(job, time_budget=budget)
                    if job.block_id in plan.tissue_blocks:
                        set_threads()
                    meta, parts = encode_block(job, read_fit_region(job))
                    if meta["kind"] == "model":
                        todo_tissue = max(0, todo_tissue - 1)
                    journal.append(meta, parts)
                    block_done(job, meta)
            # All blocks are in the journal: the floor checked, then the file assembled.
            # (Found already, unless a resume found every block journaled.)
            lam, finer, aim, credit = aimed_weight()
            rest, credit = corrected_weight() if calibration() else (None, credit)
            again = floor_pass(lam, aim, rest, credit)
            trim = trim_pass(lam, aim, rest, credit, finer)
            if progress is not None:
                progress({"stage": "write"})
            summary = assemble(
                path,
                journal,
                grid,
                plan.finer[1] if finer and plan.finer is not None else plan.header,
                source.associated_images(),
                plan.codec,
                labels={"model": model, "preset": preset, "quant": quant},
                tissue_fraction=plan.tissue_fraction,
                mip_avif=plan.mip_avif,
            )
        except BaseException:
            journal.close()
            raise
        journal.delete()
        summary.update(
            source=str(src_path),
            source_bytes=source.source_bytes,
            level=level,
            device=str(dev),
            slide_psnr=plan.slide_psnr if aim is None else aim,
            aim_chosen=plan.auto_aim,
            rate_weight=(plan.rate_weight if lam is None else lam) or None,
            corrected_rate_weight=rest,
            requant_credit=credit,
            floor_rate_weight=again,
            trim_factor=trim,
            finer_step=finer,
            block_steps=plan.block_steps,
        )
    summary["seconds"] = time.perf_counter() - t_start
    summary["compression_ratio"] = summary["source_bytes"] / summary["bytes"] if summary["bytes"] else None
    log.info(
        "%s: %d blocks, %.2f dB over tissue, %d bytes",
        path,
        summary["blocks"],
        summary["psnr"] or 0.0,
        summary["bytes"],
    )
    return summary


class _Results:
    """A race's finished candidates (``BlockSink``), and the best of them."""

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], list[bytes]]] = []

    def append(self, meta: dict[str, Any], parts: list[bytes]) -> None:
        self.items.append((meta, parts))

    def best(self, lam: float) -> tuple[dict[str, Any], list[bytes]]:
        """The candidate of lowest MSE + ``lam`` * bits per pixel (MSE of values in [0, 1], over the
        block's own pixels; bits of its model payload); the first of equals."""

        def loss(item: tuple[dict[str, Any], list[bytes]]) -> float:
            meta, parts = item
            n = max(1, int(meta["n"]))
            bits = 8 * len(parts[0]) if parts else 0
            return float(meta["sse"]) / (n * 255.0**2) + lam * bits / (n / 3)

        return min(self.items, key=loss)


#: The trim hands its jobs, each with its block's stored payload, to the workers this many at a time.
TRIM_BATCH = 64


class _Tagged:
    """A journal whose appended records carry ``tags`` beside their own metadata."""

    def __init__(self, journal: Journal, tags: dict[str, Any]) -> None:
        self.journal, self.tags = journal, tags

    def append(self, meta: dict[str, Any], parts: list[bytes]) -> None:
        self.journal.append({**meta, **self.tags}, parts)


class _Continued(_Tagged):
    """The trim's sink: records tagged as ``_Tagged``'s, each keeping the training steps and
    seconds of the fit it continued (``first``: those fits' records by block; the summary's
    timings count them)."""

    def __init__(self, journal: Journal, tags: dict[str, Any], first: Mapping[int, dict[str, Any]]) -> None:
        super().__init__(journal, tags)
        self.first = first

    def append(self, meta: dict[str, Any], parts: list[bytes]) -> None:
        first = self.first[int(meta["block_id"])]
        spent = {"steps": first["steps"], "seconds": float(first["seconds"]) + float(meta["seconds"])}
        super().append({**meta, **spent}, parts)


def _thread_setter(
    threads: int | str | None, on_cpu: bool, fit_threads: int | None = None
) -> Callable[[], None]:
    """What to call before each fitted block: sets torch's thread count per ``threads``
    (see ``encode_slide``); a fixed count is set once, here. On a CPU, "auto" is the
    representation's ``fit_threads`` where it fixes them."""
    if threads is None:
        return lambda: None
    import torch

    if threads == "auto":
        if not on_cpu:
            return lambda: None
        if fit_threads is not None:
            torch.set_num_threads(fit_threads)
            return lambda: None
        from ..core.threads import CpuMonitor

        monitor = CpuMonitor()

        def auto() -> None:
            n = monitor.threads()
            if n != torch.get_num_threads():
                torch.set_num_threads(n)

        return auto
    torch.set_num_threads(int(threads))  # a positive integer: encode_slide checked it (_check_threads)
    return lambda: None


def _check_threads(threads: int | str | None) -> None:
    """ValueError unless ``threads`` is None, "auto" or a positive integer."""
    if threads is None or threads == "auto":
        return
    if isinstance(threads, str) or isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', not {threads!r}")


@contextlib.contextmanager
def _threads_restored(threads: int | str | None) -> Iterator[None]:
    """Give the caller back torch's thread count after an encode that sets it (``threads`` given)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


#: Quality of associated images (macro, thumbnail) re-encoded as JPEG.
ASSOCIATED_JPEG_QUALITY = 90
#: A label is re-encoded as JPEG of this quality without chroma subsampling (text edges keep their
#: colour) where that takes at most ``LABEL_JPEG_SHARE`` of its lossless PNG's bytes: a photograph
#: of the label, whose PNG stores mostly the camera's noise (the bundled sample's: 102,071 against
#: 280,153 bytes, 39.8 dB; docs/architecture.md, "Twenty-eighth session"). Labels drawn in a few
#: colours (printed text, barcodes) compress far better as PNG and stay exact.
LABEL_JPEG_QUALITY = 95
LABEL_JPEG_SHARE = 0.5


def compact_associated(name: str, png: bytes) -> bytes:
    """The associated image as JPEG (``ASSOCIATED_JPEG_QUALITY``) when smaller; a label as JPEG
    (``LABEL_JPEG_QUALITY``, 4:4:4) only when that is at most ``LABEL_JPEG_SHARE`` of its PNG (a
    photograph), else the PNG."""
    import io

    from PIL import Image

    label = name == "label"
    with Image.open(io.BytesIO(png)) as im:
        buf = io.BytesIO()
        options = (
            {"quality": LABEL_JPEG_QUALITY, "subsampling": 0}
            if label
            else {"quality": ASSOCIATED_JPEG_QUALITY}
        )
        im.convert("RGB").save(buf, format="JPEG", optimize=True, **options)
    jpg = buf.getvalue()
    if label:
        return jpg if len(jpg) <= LABEL_JPEG_SHARE * len(png) else png
    return jpg if len(jpg) < len(png) else png


def derivable(name: str, png: bytes, width: int, height: int) -> tuple[int, int] | None:
    """(width, height) of an associated image that a reader renders from the slide itself
    (``format.header.DERIVABLE_IMAGES``: the thumbnail, the whole slide downsampled), so the file
    need not store it: when it is smaller than the ``width`` x ``height`` slide and of its shape
    (its width within 2 px plus 1 % of the slide's width at its height); None otherwise (it is stored)."""
    import io

    from PIL import Image

    from ..format.header import DERIVABLE_IMAGES, derived_size

    if name not in DERIVABLE_IMAGES:
        return None
    with Image.open(io.BytesIO(png)) as im:
        w, h = im.size
    if not (w < width and h < height) or abs(w - width * h / height) > 2 + 0.01 * w:
        return None
    return derived_size(name, [w, h])


def _source_jpeg_minor(sj: SourceJpeg | None, block_size: int) -> int:
    """The format minor a header's ``slide.source_jpeg`` needs: 1.9, or 1.10 when its tiles do not
    divide the block size or its spread is per coefficient (0 without it)."""
    if sj is None:
        return 0
    if block_size % sj.tile or sj.spread_per_coefficient:
        return MINOR_SOURCE_JPEG_1_10
    return MINOR_SOURCE_JPEG


def assemble(
    path: Path,
    journal: Journal,
    grid: BlockGrid,
    header: dict[str, Any],
    images: Mapping[str, bytes],
    codec: BlockCodec,
    *,
    labels: Mapping[str, Any],
    tissue_fraction: float,
    mip_avif: bool = False,
) -> dict[str, Any]:
    """Write the ``.cinr`` file from the journal's records, in block order; return the summary figures
    (``labels``, e.g. the model and preset, come first). ``mip_avif``: the blocks' mips may be
    AVIF (the file is then format 1.6)."""
    t = SlideTotals()
    jpeg = PyramidTotals()
    # The header's bound on a block's payload: twice the first one's (hash-grid blocks all have
    # the same size), and at least the largest (entropy-coded blocks vary with their content).
    part_sizes = journal.part_sizes()  # model blocks have parts (payload, mips), background blocks none
    sizes = [part_sizes[b][0] for b in sorted(part_sizes) if part_sizes[b]]
    max_raw = min(max([2 * sizes[0], *sizes]) if sizes else 8, 1 << 30)
    compact = codec.compact_json
    # A thumbnail is the slide downsampled: readers render it (7 % of the bundled sample's file
    # was its JPEG; docs/architecture.md, "Twenty-fifth session").
    shapes = {n: derivable(n, data, grid.width, grid.height) for n, data in images.items()}
    derived = {n: wh for n, wh in shapes.items() if wh is not None}
    if derived:
        header = {
            **header,
            "slide": {**header["slide"], "derived_images": {n: list(v) for n, v in derived.items()}},
        }
    minor = max(
        1 if grid.mip_downsamples else 0,
        MINOR_SHORT_AVIF if mip_avif and grid.mip_downsamples else 0,  # AVIF mips, stored short
        codec.minor_version(header),
        MINOR_JSON_ZSTD if compact else 0,
        _source_jpeg_minor(source_jpeg_of(header, str(path)), grid.block_size),
    )
    with CinrWriter(
        path, header, grid.n_blocks, max_block_bytes=max_raw, minor_version=minor, compress_json=compact
    ) as writer:
        for rec in journal.records():
            m = rec.meta
            bid = int(m["block_id"])
            jpeg.add(m)
            t.sse += m["sse"]
            t.n += m["n"]
            if m["kind"] == "background":
                t.background_blocks += 1
                colour = tuple(m["colour"])
                writer.add_background_block(bid, colour)
                for k in range(len(grid.mip_downsamples)):
                    writer.add_background_block(grid.mip_id(bid, k), colour)
                continue
            t.tissue_blocks += 1
            t.model_bytes += writer.add_model_block(bid, rec.parts[0], check=codec.check_payload)
            for k, data in enumerate(rec.parts[1:]):
                t.mip_bytes += writer.add_image_block(grid.mip_id(bid, k), data)
            t.t_sse += m["sse"]
            t.t_n += m["n"]
            t.b_sse += m["border_sse"]
            t.b_n += m["border_n"]
            t.i_sse += m["interior_sse"]
            t.i_n += m["interior_n"]
            t.a_sse += m["adjacent_sse"]
            t.a_n += m["adjacent_n"]
            t.ssim_w += m["ssim"] * m["n"]
            t.steps += m["steps"]
            t.fit_seconds += m["seconds"]
        associated_bytes = 0
        for name, data in sorted(images.items()):
            if name in derived:
                continue
            data = compact_associated(name, data)
            writer.add_associated_image(name, data)
            associated_bytes += len(data)
        writer.commit(slide_footer(t, grid, SEAM_STRIP))
    size = path.stat().st_size
    pixels = grid.width * grid.height
    tissue_pixels = t.t_n // 3
    q = t.quality()
    return {
        "path": str(path),
        "width": grid.width,
        "height": grid.height,
        **labels,
        "block_size": grid.block_size,
        "margin": grid.margin,
        "blocks": grid.n_level_blocks,
        "tissue_blocks": t.tissue_blocks,
        "background_blocks": t.background_blocks,
        "tissue_fraction": tissue_fraction,
        **q,
        "bytes": size,
        "model_bytes": t.model_bytes,
        "mip_bytes": t.mip_bytes,
        "associated_bytes": associated_bytes,
        "derived_images": sorted(derived),
        "bpp": 8.0 * size / pixels,
        "bpp_tissue": 8.0 * size / tissue_pixels if tissue_pixels else None,
        "steps": t.steps,
        "fit_seconds": t.fit_seconds,
        **_against_jpeg(jpeg.summary(q["psnr"]), size),
    }


def _against_jpeg(ref: dict[str, Any] | None, size: int) -> dict[str, Any]:
    """The summary's JPEG-pyramid fields (``encode.reference``) and the file's size against them;
    all None when a block was journaled without the reference."""
    if ref is None:
        ref = {k: None for k in ("jpeg_q80_bytes", "jpeg_q80_psnr", "jpeg_equal_psnr_bytes")}
    equal = ref["jpeg_equal_psnr_bytes"]
    return {**ref, "vs_jpeg_pyramid": size / equal if equal else None}
