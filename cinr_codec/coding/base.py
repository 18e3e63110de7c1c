"""The block-representation seam: what the encoder and the decoder ask of a kind of block model.

A ``BlockCodec`` knows one representation (the hash-grid models today; entropy-coded latent
grids next): its header fields, how to fit a block, how to turn the fitted block into the
payload bytes the container stores, and how to rebuild a renderable ``BlockModel`` from
those bytes. The slide encoder (``encode.slide``, ``encode.block``), the journal, the
container and the decoder (``decode.decoder``) only talk to this interface; they never name
hash tables, tensors or learning rates.

Decode-side methods (``parse_config``, ``load``, ``check_payload``) never import training
code; encode-side methods (``config_for``, ``fit``, ``serialize``) import it when called.
New representations are registered in ``coding.registry``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from ..core.config import MAX_MACS_PER_PIXEL
from ..errors import CinrFormatError

#: ``progress(step, seconds, estimated_psnr)`` during a fit.
FitProgress = Callable[[int, float, float], None]


class BlockModel(Protocol):
    """A decoded block: renders any rectangle of its frame to RGB uint8."""

    def render(self, height: int, width: int, side: float, *, x0: int = 0, y0: int = 0) -> np.ndarray:
        """Pixels ``[x0, x0+width) x [y0, y0+height)`` of the block's frame (of side ``side``),
        as uint8 (height, width, 3). The same rectangle always gives the same pixels; another one
        may give a pixel that differs by a rounding step (the compiled ccinr synthesis computes a
        window's columns past its last multiple of 16 in another order), so decoders render fixed
        tiles (``SlideDecoder``)."""
        ...


def check_fit_limits(steps: int | None, time_budget: float | None) -> None:
    """ValueError for a negative step count or a time budget that is not positive."""
    if steps is not None and steps < 0:
        raise ValueError("steps must be >= 0")
    if time_budget is not None and not time_budget > 0:
        raise ValueError("time budget must be > 0 seconds")


@dataclass(frozen=True)
class FitSettings:
    """How long and how to fit one block (the same for every representation); the limits are
    checked on creation (``check_fit_limits``)."""

    steps: int | None = None
    time_budget: float | None = None
    target_psnr: float | None = None
    device: str = "cpu"
    seed: int = 0
    #: (x0, y0, side): the fitted pixels' origin in the block's frame and the frame's side.
    frame: tuple[int, int, float] | None = None
    progress: FitProgress | None = None
    #: Measure PSNR/SSIM of the fitted (unstored) model at the end.
    measure: bool = True
    #: A stored payload of the same representation and configuration whose networks start this
    #: fit (``encode.slide``: a slide's prior block for its other blocks); representations that
    #: cannot start from one ignore it (``BlockCodec.warm_starts``).
    init: bytes | None = None
    #: The rate weight lambda of the fit, instead of the preset's (``encode.slide``: one weight
    #: for a whole slide, aimed at a PSNR); representations without a rate term ignore it.
    lam: float | None = None
    #: A stored payload of this block (same representation, configuration and pixels) to
    #: continue instead of fitting anew: its latents are searched again at ``lam``, nothing is
    #: trained (``encode.slide``'s trim of a slide that landed over its aim); representations
    #: that cannot refuse it (``BlockCodec.fit``).
    start: bytes | None = None

    def __post_init__(self) -> None:
        check_fit_limits(self.steps, self.time_budget)
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"the rate weight must be a positive number, not {self.lam!r}")


class FittedBlock(Protocol):
    """A fitted block before storage, and how the fit went (``encode.train.FitResult`` is one)."""

    config: Any
    steps: int
    seconds: float
    device: str
    psnr: float
    ssim: float


class BlockCodec(ABC):
    """One block representation (see the module docstring)."""

    #: Short name (``coding.registry``).
    name: ClassVar[str]
    #: Header ``model.kind`` values (and ``--model`` names) this codec reads and writes.
    kinds: ClassVar[tuple[str, ...]]
    #: Storage settings (``--quant``) and the default one.
    storages: ClassVar[tuple[str, ...]]
    default_storage: ClassVar[str]
    #: The preset (``--preset``; for ccinr the quality level) encoders use unless told otherwise.
    default_preset: ClassVar[str]
    #: Lowest container minor version that may hold this representation's blocks.
    format_minor: ClassVar[int] = 0
    #: Whether encoders store this representation's files with compressed header and footer JSON
    #: (format 1.5): worth it for small, compact files, where the JSON would be 5-10 % of the bytes.
    compact_json: ClassVar[bool] = False
    #: The finest mip downsample encoders store for this representation: reads at finer scales
    #: box-filter the decoded level (so they are never worse than it), which costs up to
    #: first_mip^2 decoded pixels per output pixel instead of the mips' bytes.
    first_mip: ClassVar[int] = 2
    #: The ratio of successive stored mip downsamples (2 or 4): with 4, a read between two mips
    #: box-filters the finer one (up to 16 of its pixels per output pixel), never worse than it.
    mip_step: ClassVar[int] = 2
    #: The block side (pixels) encoders use unless told otherwise.
    block_size: ClassVar[int] = 1024
    #: Side of the tiles a decoder renders a block in (its unit of work and of the pixel cache).
    decode_tile: ClassVar[int] = 256
    #: Torch threads of this representation's fits when the encode's threads are "auto" (None:
    #: the cores other processes leave free, re-measured before each block).
    fit_threads: ClassVar[int | None] = None

    def minor_version(self, header: Mapping[str, Any]) -> int:
        """Lowest container minor version for a file with this header (``format_minor`` unless a
        configuration needs a later one)."""
        return self.format_minor

    # -- both sides ------------------------------------------------------------------------------

    @abstractmethod
    def header_fields(self, config: Any, storage: str) -> dict[str, Any]:
        """The header objects this representation writes (``model`` and its own), as JSON."""

    @abstractmethod
    def parse_config(self, header: Mapping[str, Any], where: str) -> Any:
        """The configuration in a header, every field validated (``CinrFormatError``)."""

    # -- decoder side ----------------------------------------------------------------------------

    @abstractmethod
    def load(self, payload: bytes, config: Any, where: str, device: str = "cpu") -> BlockModel:
        """Rebuild one block from its payload (``CinrFormatError`` on anything a file could get wrong)."""

    @abstractmethod
    def check_payload(self, payload: bytes, where: str) -> None:
        """Raise ``CinrError`` when a reader would refuse ``payload`` (the writer checks every block)."""

    def payload_bits(self, payload: bytes) -> int:
        """Bits this block costs before the container's compression."""
        return 8 * len(payload)

    # -- encoder side ----------------------------------------------------------------------------

    @abstractmethod
    def config_for(self, kind: str, preset: str, height: int, width: int) -> Any:
        """The configuration of preset ``preset`` of ``kind`` for a frame of this size."""

    @abstractmethod
    def recipe(self, kind: str, preset: str) -> dict[str, Any]:
        """The training settings of a preset, as JSON (a resumed encode must train the same way)."""

    def default_steps(self, device: str, tissue_pixels: int | None = None) -> int | None:
        """Training steps of a block on ``device`` when the encode names none (None: the preset's),
        for a slide whose tissue blocks hold ``tissue_pixels`` pixels (None: one block)."""
        return None

    def warm_starts(self, steps: int | None, target_psnr: float | None) -> bool:
        """Whether fits of this many steps start from a prior block's networks (``FitSettings.init``)."""
        return False

    def finer_config(self, config: Any) -> Any | None:
        """The configuration that stores the same representation at a finer quantization step, for
        slides that a short fit of ``config`` leaves under the PSNR floor (``encode.aim``); None:
        none finer."""
        return None

    @abstractmethod
    def check_storage(self, storage: str) -> None:
        """Raise ValueError when ``storage`` is not one of ``storages``."""

    @abstractmethod
    def fit(
        self, pixels: np.ndarray, config: Any, kind: str, preset: str, settings: FitSettings
    ) -> FittedBlock:
        """Fit one block's representation to RGB uint8 ``pixels`` (or continue
        ``settings.start``: a ValueError where the representation cannot)."""

    @abstractmethod
    def serialize(self, fitted: FittedBlock, storage: str) -> bytes:
        """The payload the container stores for a fitted block under ``storage``."""


def check_decode_cost(macs: float, where: str) -> None:
    """CinrFormatError (naming ``where``, the file and block) when a model's decoding costs more
    than ``MAX_MACS_PER_PIXEL`` multiply-adds per pixel (``formats/cinr-v1.md`` §12)."""
    if not macs <= MAX_MACS_PER_PIXEL:
        raise CinrFormatError(
            f"{where}: decoding costs {macs:,.0f} multiply-adds per pixel, over the limit of "
            f"{MAX_MACS_PER_PIXEL:,}"
        )
