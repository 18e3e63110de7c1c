"""The ``.cinr`` header and footer (``formats/cinr-v1.md`` §4.2): one schema, built and read here.

The encoder builds the header with ``build_header`` (slide fields, block grid, the block
representation's own fields, encoder, tissue, mips) and the footers with ``image_footer`` /
``slide_footer``. Readers use two views of it:

* ``parse_layout`` -- strict: what decoding depends on (dimensions, grid, mips, the block
  representation and its configuration). Anything malformed raises ``CinrFormatError``.
* ``describe`` -- lenient: what a person or a viewer is told (resolution, vendor, source
  properties, encoder, quality figures). A missing or malformed field reads as ``None``.

Naming: the header's ``grid.halo`` is ``BlockGrid.margin`` in the code (the pixels of context
each block's model is fitted on beyond the pixels it owns); ``model.halo`` elsewhere means a
convolution's reach. The file keeps the v1 spelling (``MARGIN_KEY``).

This module imports neither torch nor openslide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from .._version import __version__
from ..errors import CinrFormatError
from .container.binary import MAX_ASSOCIATED_PIXELS
from .grid import BlockGrid

if TYPE_CHECKING:
    from ..coding.base import BlockCodec
    from .container.reader import CinrReader

#: Largest slide side a header may declare (the single-block encoder's limit too).
MAX_SIDE = 1 << 20
#: Largest pixel count of a single-block image (encoder and decoder).
MAX_PIXELS = 1 << 28
#: Largest output of one read, from a source slide or a ``.cinr`` file (pixels).
MAX_READ_PIXELS = 1 << 28
#: Largest number of mip levels a header may declare.
MAX_MIP_LEVELS = 32
#: The header's name for ``BlockGrid.margin`` (format v1).
MARGIN_KEY = "halo"
#: Largest ``slide.level`` and ``slide.level_downsample`` read from a header (``describe``);
#: others (and a downsample below 1) read as absent.
MAX_LEVEL = 64
MAX_LEVEL_DOWNSAMPLE = float(1 << 20)
#: Background colour when the header names none.
DEFAULT_BACKGROUND = (255, 255, 255)


# -- JSON values --------------------------------------------------------------------------------


def is_int(v: Any) -> TypeGuard[int]:
    """A JSON integer (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> TypeGuard[int | float]:
    """A JSON number that is not a bool, NaN or infinity (ints of any size: no float conversion)."""
    return is_int(v) or (isinstance(v, float) and math.isfinite(v))


def finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (not a bool), else None (lenient reads)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


#: Decimals of the quality figures stored in footers (dB, SSIM, bits per pixel): finer digits
#: are noise and cost bytes in small files.
DB_DECIMALS, SSIM_DECIMALS, BPP_DECIMALS = 4, 6, 6


def finite_or_none(v: float | None, digits: int | None = None) -> float | None:
    """JSON has no infinity: a lossless PSNR (or a missing figure) is stored as null; ``digits``
    rounds the rest to that many decimals."""
    if v is None or not math.isfinite(v):
        return None
    return v if digits is None else round(float(v), digits)


def obj(parent: Any, key: str) -> dict[str, Any]:
    """``parent[key]`` when it is an object, else ``{}`` (lenient reads)."""
    v = parent.get(key) if isinstance(parent, Mapping) else None
    return v if isinstance(v, dict) else {}


def get_object(parent: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """``parent[key]``, which must be an object (CinrFormatError naming ``where``)."""
    value = parent.get(key)
    if not isinstance(value, dict):
        raise CinrFormatError(f"{where}: header field {key!r} is missing or not an object")
    return value


def get_int(obj: Mapping[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    """``obj[key]``, which must be an integer in [lo, hi] (CinrFormatError naming ``where``)."""
    value = obj.get(key)
    if not is_int(value) or not lo <= value <= hi:
        raise CinrFormatError(f"{where}: {key} = {str(value)[:40]!r} is not an integer in [{lo}, {hi}]")
    return int(value)


def psnr_of(sse: float, n: float) -> float | None:
    """PSNR (dB, 8-bit peak) of a squared-error sum over ``n`` samples; None for no samples."""
    if n == 0:
        return None
    m = sse / n
    return math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m)


# -- building -----------------------------------------------------------------------------------


def slide_fields(width: int, height: int, properties: Mapping[str, str] | None) -> dict[str, Any]:
    """The header's ``slide`` object from the image size and the source's properties.

    Raises ValueError when ``properties`` does not map strings to strings.
    """
    props = dict(properties or {})
    for k, v in props.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError("source_properties must map strings to strings")

    def number(key: str) -> float | None:
        try:
            v = float(props[key])
        except (KeyError, ValueError):
            return None
        return v if math.isfinite(v) and v > 0 else None

    return {
        "width": width,
        "height": height,
        "mpp_x": number("openslide.mpp-x"),
        "mpp_y": number("openslide.mpp-y"),
        "objective_power": number("openslide.objective-power"),
        "vendor": props.get("openslide.vendor"),
        "properties": props,
    }


def scale_slide_fields(slide: dict[str, Any], level: int, downsample: float) -> None:
    """Rescale ``slide``'s resolution to an encoded level ``level`` of downsample ``downsample``."""
    if downsample != 1.0:
        for key in ("mpp_x", "mpp_y"):
            if slide[key] is not None:
                slide[key] *= downsample
        if slide["objective_power"] is not None:
            slide["objective_power"] /= downsample
    slide["level"] = level
    slide["level_downsample"] = downsample


def grid_fields(grid: BlockGrid) -> dict[str, int]:
    """The header's ``grid`` object."""
    return {"block_size": grid.block_size, MARGIN_KEY: grid.margin, "cols": grid.cols, "rows": grid.rows}


def build_header(
    *,
    slide: dict[str, Any],
    grid: BlockGrid,
    representation: Mapping[str, Any],
    preset: str,
    tissue: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole header: ``slide``, ``grid``, the representation's fields (``model``, ...),
    ``encoder``, and ``tissue`` and ``mips`` when there are any."""
    model = representation.get("model")
    kind = model.get("kind") if isinstance(model, Mapping) else None
    header: dict[str, Any] = {
        "slide": slide,
        "grid": grid_fields(grid),
        **representation,
        "encoder": {"software": f"cinr_codec {__version__}", "model": kind, "preset": preset},
    }
    if tissue is not None:
        header["tissue"] = tissue
    if grid.mip_downsamples:
        header["mips"] = {
            "downsamples": list(grid.mip_downsamples),
            "first_block": grid.n_level_blocks,
            "filter": "box",
        }
    return header


def image_footer(
    *,
    psnr: float,
    ssim: float,
    pixels: int,
    payload_bytes: int,
    fit: Mapping[str, Any],
) -> dict[str, Any]:
    """The footer of a single-block image file: quality after quantization and fit statistics."""
    return {
        "quality": {
            "region": "whole image",
            "after_quantization": True,
            "psnr_db": finite_or_none(psnr, DB_DECIMALS),
            "ssim": finite_or_none(ssim, SSIM_DECIMALS),
            "pixels": pixels,
            "payload_bytes": payload_bytes,
            "payload_bpp": round(8.0 * payload_bytes / pixels, BPP_DECIMALS),
        },
        "fit": dict(fit),
    }


@dataclass
class SlideTotals:
    """Squared-error sums and counts over a slide's blocks, and what its blocks cost."""

    sse: float = 0.0
    n: int = 0
    t_sse: float = 0.0  # tissue (model) blocks
    t_n: int = 0
    b_sse: float = 0.0  # strips along internal block borders
    b_n: int = 0
    i_sse: float = 0.0  # block interiors
    i_n: int = 0
    a_sse: float = 0.0  # the band next to the border strips
    a_n: int = 0
    ssim_w: float = 0.0
    model_bytes: int = 0
    mip_bytes: int = 0
    steps: int = 0
    fit_seconds: float = 0.0
    tissue_blocks: int = 0
    background_blocks: int = 0

    def quality(self) -> dict[str, float | None]:
        """PSNR over tissue, the slide, border strips, their adjacent band and interiors; SSIM over tissue."""
        return {
            "psnr": psnr_of(self.t_sse, self.t_n),
            "ssim": self.ssim_w / self.t_n if self.t_n else None,
            "psnr_all": psnr_of(self.sse, self.n),
            "psnr_border": psnr_of(self.b_sse, self.b_n),
            "psnr_interior": psnr_of(self.i_sse, self.i_n),
            "psnr_adjacent": psnr_of(self.a_sse, self.a_n),
        }


def slide_footer(totals: SlideTotals, grid: BlockGrid, strip: int) -> dict[str, Any]:
    """The footer of a slide: quality over tissue, the slide, seams; bytes; fit statistics; blocks."""
    q = totals.quality()
    return {
        "quality": {
            "after_quantization": True,
            "psnr_db": finite_or_none(q["psnr"], DB_DECIMALS),
            "ssim": finite_or_none(q["ssim"], SSIM_DECIMALS),
            "region": "tissue blocks",
            "psnr_all_db": finite_or_none(q["psnr_all"], DB_DECIMALS),
            "psnr_border_db": finite_or_none(q["psnr_border"], DB_DECIMALS),
            "psnr_interior_db": finite_or_none(q["psnr_interior"], DB_DECIMALS),
            "psnr_adjacent_db": finite_or_none(q["psnr_adjacent"], DB_DECIMALS),
            "border_strip_px": strip,
            "pixels": grid.width * grid.height,
            "tissue_pixels": totals.t_n // 3,
            "model_bytes": totals.model_bytes,
            "mip_bytes": totals.mip_bytes,
        },
        "fit": {"steps": totals.steps, "seconds": round(totals.fit_seconds, 3)},
        "blocks": {
            "total": grid.n_level_blocks,
            "tissue": totals.tissue_blocks,
            "background": totals.background_blocks,
        },
    }


# -- strict parsing: what decoding depends on ---------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What a header says about the slide and its blocks: size, block grid with its mips, the block
    representation (``codec``) and its configuration, and the background colour."""

    width: int
    height: int
    grid: BlockGrid
    codec: BlockCodec
    config: Any
    background: tuple[int, int, int] = DEFAULT_BACKGROUND

    @property
    def block_size(self) -> int:
        """Side of the blocks in pixels."""
        return self.grid.block_size

    @property
    def margin(self) -> int:
        """Pixels of context each block's model was fitted on beyond its own (``grid.halo``)."""
        return self.grid.margin

    @property
    def cols(self) -> int:
        """Blocks per row."""
        return self.grid.cols

    @property
    def rows(self) -> int:
        """Block rows."""
        return self.grid.rows

    @property
    def n_blocks(self) -> int:
        """Number of level blocks (cols x rows)."""
        return self.grid.n_level_blocks

    @property
    def mips(self) -> tuple[int, ...]:
        """Downsamples of the stored mip levels (() when none)."""
        return self.grid.mip_downsamples


def parse_mips(
    header: Mapping[str, Any], block_size: int, n_level_blocks: int, where: str
) -> tuple[int, ...]:
    """The header's ``mips.downsamples`` (increasing divisors of the block size); () when absent."""
    mips = header.get("mips")
    if mips is None:
        return ()
    if not isinstance(mips, dict):
        raise CinrFormatError(f"{where}: header field 'mips' is not an object")
    ds = mips.get("downsamples")
    if (
        not isinstance(ds, list)
        or not all(is_int(d) and 2 <= d <= block_size and block_size % d == 0 for d in ds)
        or ds != sorted(set(ds))
        or len(ds) > MAX_MIP_LEVELS
    ):
        raise CinrFormatError(f"{where}: mips.downsamples must be increasing divisors of the block size")
    if mips.get("first_block") != n_level_blocks:
        raise CinrFormatError(
            f"{where}: mips.first_block does not match {n_level_blocks} level blocks and {len(ds)} mip levels"
        )
    return tuple(int(d) for d in ds)


def parse_background(header: Mapping[str, Any]) -> tuple[int, int, int]:
    """``slide.background`` as an RGB triple (white when absent or malformed)."""
    bg = obj(header, "slide").get("background")
    if isinstance(bg, list) and len(bg) == 3 and all(is_int(v) and 0 <= v <= 255 for v in bg):
        return (int(bg[0]), int(bg[1]), int(bg[2]))
    return DEFAULT_BACKGROUND


def parse_layout(reader: CinrReader) -> Layout:
    """Validate the header's ``slide``, ``grid``, ``mips`` and ``model`` fields against each other
    and the file's index (``CinrFormatError`` naming the field)."""
    from ..coding.registry import codec_for_header

    where = reader.name
    header = reader.header
    slide = get_object(header, "slide", where)
    width = get_int(slide, "width", 1, MAX_SIDE, f"{where}: slide")
    height = get_int(slide, "height", 1, MAX_SIDE, f"{where}: slide")
    grid = get_object(header, "grid", where)
    block_size = get_int(grid, "block_size", 1, MAX_SIDE, f"{where}: grid")
    margin = get_int(grid, MARGIN_KEY, 0, block_size, f"{where}: grid")
    cols = get_int(grid, "cols", 1, MAX_SIDE, f"{where}: grid")
    rows = get_int(grid, "rows", 1, MAX_SIDE, f"{where}: grid")
    if cols != -(-width // block_size) or rows != -(-height // block_size):
        raise CinrFormatError(
            f"{where}: grid of {cols}x{rows} blocks of {block_size} px does not cover {width}x{height} pixels"
        )
    n_mips = (
        len(header["mips"]["downsamples"])
        if isinstance(header.get("mips"), dict) and isinstance(header["mips"].get("downsamples"), list)
        else 0
    )
    if cols * rows * (1 + n_mips) != reader.n_blocks:
        raise CinrFormatError(
            f"{where}: grid has {cols * rows} blocks and {n_mips} mip levels, the file {reader.n_blocks} blocks"
        )
    codec = codec_for_header(header, where)
    config = codec.parse_config(header, where)
    mips = parse_mips(header, block_size, cols * rows, where)
    if width * height > MAX_SIDE * MAX_SIDE:
        raise CinrFormatError(f"{where}: slide too large")
    return Layout(
        width,
        height,
        BlockGrid(width, height, block_size, margin, mips),
        codec,
        config,
        parse_background(header),
    )


# -- lenient reading: what people and viewers are told ------------------------------------------


@dataclass(frozen=True)
class Description:
    """What a header and footer tell a person: resolution, source, encoder, quality figures.

    Every field is None (or empty) where the file has nothing usable.
    """

    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    vendor: str | None
    properties: dict[str, str]
    level: int | None
    level_downsample: float
    model: str | None
    preset: str | None
    storage: str | None
    software: str | None
    tissue_fraction: Any
    quality: dict[str, Any] = field(default_factory=dict)
    #: Associated images the encoder left to be derived from the slide (``derived_images``).
    derived_images: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def mpp(self) -> tuple[float | None, float | None]:
        """(mpp_x, mpp_y)."""
        return self.mpp_x, self.mpp_y


def header_mpp(header: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(mpp_x, mpp_y) of a header's ``slide`` object, None where absent or not a positive number."""
    slide = obj(header, "slide")
    x, y = finite(slide.get("mpp_x")), finite(slide.get("mpp_y"))
    return (x if x is not None and x > 0 else None, y if y is not None and y > 0 else None)


def _level(v: Any) -> int | None:
    """``slide.level``: an integer in [0, MAX_LEVEL], else None."""
    return int(v) if is_int(v) and 0 <= v <= MAX_LEVEL else None


def _level_downsample(v: Any) -> float:
    """``slide.level_downsample``: a number in [1, MAX_LEVEL_DOWNSAMPLE], else 1.0 (absent)."""
    f = finite(v)
    return f if f is not None and 1.0 <= f <= MAX_LEVEL_DOWNSAMPLE else 1.0


#: Associated images an encoder may leave out and a reader derives from the slide itself
#: (``slide.derived_images``): a thumbnail is the whole slide, downsampled.
DERIVABLE_IMAGES = ("thumbnail",)
#: The largest side of a derived associated image (pixels).
MAX_DERIVED_SIDE = 8192


def derived_size(name: Any, size: Any) -> tuple[int, int] | None:
    """(width, height) of one ``slide.derived_images`` entry when ``name`` is a known derivable
    image and ``size`` two integer sides in [1, ``MAX_DERIVED_SIDE``], at most
    ``MAX_ASSOCIATED_PIXELS`` pixels as a stored one; None otherwise."""
    if (
        name in DERIVABLE_IMAGES
        and isinstance(size, list)
        and len(size) == 2
        and all(is_int(v) and 1 <= v <= MAX_DERIVED_SIDE for v in size)
        and size[0] * size[1] <= MAX_ASSOCIATED_PIXELS
    ):
        return int(size[0]), int(size[1])
    return None


def derived_images(slide: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """``slide.derived_images``: name -> (width, height) of each associated image to render from
    the slide; entries ``derived_size`` does not take are ignored (an old or foreign writer's)."""
    value = slide.get("derived_images")
    out: dict[str, tuple[int, int]] = {}
    if isinstance(value, dict):
        for name, size in value.items():
            if (wh := derived_size(name, size)) is not None:
                out[name] = wh
    return out


def describe(header: Mapping[str, Any], footer: Mapping[str, Any] | None = None) -> Description:
    """The lenient view of a header (and footer): see ``Description``."""
    slide = obj(header, "slide")
    stored = slide.get("properties")
    props = (
        {k: v for k, v in stored.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(stored, dict)
        else {}
    )
    power = finite(slide.get("objective_power"))
    vendor = slide.get("vendor")
    encoder = obj(header, "encoder")

    def text(v: Any) -> str | None:
        return v if isinstance(v, str) else None

    mpp_x, mpp_y = header_mpp(header)
    return Description(
        mpp_x=mpp_x,
        mpp_y=mpp_y,
        objective_power=power if power is not None and power > 0 else None,
        vendor=text(vendor),
        properties=props,
        level=_level(slide.get("level", 0)),
        level_downsample=_level_downsample(slide.get("level_downsample")),
        model=text(obj(header, "model").get("kind")),
        preset=text(encoder.get("preset")),
        storage=text(obj(header, "quantization").get("setting")),
        software=text(encoder.get("software")),
        tissue_fraction=obj(header, "tissue").get("fraction"),
        quality=obj(footer or {}, "quality"),
        derived_images=derived_images(slide),
    )
