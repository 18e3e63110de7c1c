"""``open_cinr()``: a ``.cinr`` slide behind OpenSlide's interface.

``CinrSlide`` is an ``openslide.AbstractSlide``, so code written for OpenSlide -- including
``openslide.deepzoom.DeepZoomGenerator`` -- reads a ``.cinr`` file unchanged::

    from cinr_codec.api import open_cinr

    with open_cinr("slide.cinr") as slide:
        tile = slide.read_region((1000, 2000), 1, (512, 512))  # RGBA PIL image, OpenSlide rules
        rgb = slide.read(1000.5, 2000, 300, 200, scale=0.25)      # numpy uint8, any region, any scale

A ``.cinr`` file stores one level; any scale can be decoded from it (``SlideDecoder``), so the
pyramid OpenSlide clients see is virtual: level 0, then downsamples of exactly 2, 4, 8, ...
(level ``k`` is ``ceil(W / 2**k) x ceil(H / 2**k)``) until the level fits one 256-pixel tile.
Reads at level ``k`` are box-filtered means of the level-0 pixels (served from the file's
stored mip images where it has them), exactly what ``read(..., scale=2**-k)`` returns.

Conventions (where OpenSlide leaves a choice):

* ``read_region`` returns RGBA, not premultiplied; alpha is the fraction of each pixel inside
  the slide (0 outside, partial along the right/bottom edge of a level whose size is not a
  multiple of its downsample), RGB the mean of the part inside; ``(0, 0, 0, 0)`` outside.
  Locations may be fractional (OpenSlide's are integers). A size of 0 gives an empty image
  (as OpenSlide); a negative size, a bad level or a non-number raises ``SlideRequestError``,
  which is both a ``ValueError`` (cinr's convention) and an ``openslide.OpenSlideError``
  (OpenSlide's).
* ``read`` (beyond OpenSlide) returns RGB on the slide's background colour; its bad arguments
  raise ``CinrRequestError`` (a ``ValueError``).
* Every read is bounded (``formats/cinr-v1.md`` §12): at most 2^26 output pixels, and a read that
  would decode too many blocks or source pixels (a coarse read of a huge slide without mips) is
  refused with ``CinrRequestError`` (``SlideRequestError`` from ``read_region``) before anything
  is decoded. Reads coarser than 1/4 of a file without a usable mip sample its models once per
  cell of the largest power of two <= 1/scale pixels instead of decoding every pixel, so
  ``get_thumbnail`` costs what the thumbnail needs, whatever the mips.
* Using a closed slide raises ``SlideRequestError`` (a ``ValueError``, as OpenSlide-Python's
  "Passing closed slide object"); ``close()`` is idempotent.
* ``get_best_level_for_downsample`` follows OpenSlide 4's C code exactly: the largest level
  whose downsample is <= the request (no tolerance; ours are exact powers of two).
* ``set_cache(cache)`` takes an ``openslide.OpenSlideCache`` and resizes this slide's own
  decoded-pixel cache to its capacity (caches are not shared between slides).
* ``color_profile`` is None: the encoder does not store the source's ICC profile.

Properties: see ``CinrSlide.properties``.
"""

from __future__ import annotations

import math
import os
import re
import types
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import openslide
from PIL import Image

from .coding.images import decode_associated_image
from .decode.decoder import DEFAULT_CACHE_BYTES, TILE, SlideDecoder, finite_number
from .errors import CinrRequestError
from .format.container import MAGIC
from .format.header import Description, describe, finite, header_mpp

__all__ = ["PYRAMID_TILE", "CinrSlide", "SlideRequestError", "open_cinr", "virtual_pyramid"]

#: The virtual pyramid stops at the first level that fits one tile of this side.
PYRAMID_TILE = 256
#: Tile size advertised in ``openslide.level[k].tile-width/height``: the decoder's default tile
#: (the hash grids'; a 256-px read on this lattice is four of a ccinr block's 128-px tiles).
ADVERTISED_TILE = TILE

# Stored ``openslide.*`` properties that describe the *source* file's pyramid, resolution or
# colour profile; they are recomputed for the .cinr slide and the originals kept under
# ``cinr.source.<key>``.
_REPLACED = re.compile(
    r"^openslide\.(level-count|level\[\d+\]\..*|bounds-(x|y|width|height)|mpp-x|mpp-y|"
    r"objective-power|background-color|quickhash-1|icc-size|associated\.[^.]+\.icc-size)$"
)
_BOUNDS = ("x", "y", "width", "height")


class SlideRequestError(CinrRequestError, openslide.OpenSlideError):
    """A bad argument to a ``CinrSlide`` method, use of a closed slide, or a read beyond the limits.

    A ``CinrRequestError`` (so a ``CinrError`` and a ``ValueError``: what cinr raises for bad
    arguments) and an ``openslide.OpenSlideError`` (what OpenSlide raises), so handlers written
    for either catch it.
    """


def _fmt_number(v: float) -> str:
    """A property value: integers without a decimal point (OpenSlide's style), others shortest-repr."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def virtual_pyramid(width: int, height: int) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    """(level dimensions, level downsamples): level k is (ceil(width / 2**k), ceil(height / 2**k)),
    down to the first level whose larger side is at most ``PYRAMID_TILE``."""
    dims = [(width, height)]
    ds = [1]
    while max(dims[-1]) > PYRAMID_TILE:
        d = ds[-1] * 2
        ds.append(d)
        dims.append((-(-width // d), -(-height // d)))
    return tuple(dims), tuple(float(d) for d in ds)


class _AssociatedImages(Mapping[str, Image.Image]):
    """name -> RGB PIL image, each decoded from its stored PNG/JPEG when asked for, or, for one the
    encoder left to be derived (the thumbnail: ``slide.derived_images``), rendered from the slide
    at its recorded size."""

    def __init__(self, slide: CinrSlide, derived: Mapping[str, tuple[int, int]]) -> None:
        self._slide = slide
        stored = tuple(slide._decoder.reader.associated_images)
        self._derived = {n: size for n, size in derived.items() if n not in stored}
        self._names = tuple(sorted((*stored, *self._derived)))

    def __getitem__(self, name: str) -> Image.Image:
        self._slide._check_open()
        if name not in self._names:
            raise KeyError(name)
        if name in self._derived:
            size = self._derived[name]
            img = self._slide.get_thumbnail(size).convert("RGB")
            return img if img.size == size else img.resize(size, Image.Resampling.BOX)
        reader = self._slide._decoder.reader
        data = reader.read_associated_image(name)
        return decode_associated_image(data, f"{reader.name}: associated image {name!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"<associated images {list(self._names)!r}>"


class CinrSlide(openslide.AbstractSlide):
    """An open ``.cinr`` slide with OpenSlide's interface (see the module docstring).

    Thread-safe: ``read``/``read_region`` may be called from several threads at once (the
    decoder's caches are locked); ``close()`` must not race with reads.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_block_bytes: int | None = None,
        device: str = "cpu",
        remote: Mapping[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self._path = os.fspath(path)
        self._closed = True
        self._decoder = SlideDecoder(
            path,
            cache_bytes=cache_bytes,
            max_block_bytes=max_block_bytes,
            device=device,
            remote=remote,
            threads=threads,
        )
        try:
            dims, ds = virtual_pyramid(self._decoder.width, self._decoder.height)
            self._level_dimensions: tuple[tuple[int, int], ...] = dims
            self._level_downsamples: tuple[float, ...] = ds
            info = describe(self._decoder.reader.header, self._decoder.reader.footer)
            self._properties = types.MappingProxyType(self._build_properties(info))
            self._associated = _AssociatedImages(self, info.derived_images)
        except BaseException:
            self._decoder.close()
            raise
        self._closed = False

    # -- metadata ---------------------------------------------------------------------------------

    def _build_properties(self, info: Description) -> dict[str, str]:
        dec = self._decoder
        reader = dec.reader
        stored = info.properties
        props: dict[str, str] = {}
        for key, text in stored.items():
            if _REPLACED.match(key):
                props[f"cinr.source.{key}"] = text
                continue
            m = re.match(r"^openslide\.associated\.([^.]+)\.", key)
            if m and m.group(1) not in reader.associated_images and m.group(1) not in info.derived_images:
                continue  # the image was neither stored nor left to be derived
            props[key] = text

        level_ds = info.level_downsample
        W, H = dec.width, dec.height
        # Resolution of this slide's level 0 (the header's, already scaled to the encoded level).
        for value, name in (
            (info.mpp_x, "mpp-x"),
            (info.mpp_y, "mpp-y"),
            (info.objective_power, "objective-power"),
        ):
            if value is not None:
                original = stored.get(f"openslide.{name}")
                if level_ds == 1.0 and isinstance(original, str) and _safe_float(original) == value:
                    props[f"openslide.{name}"] = original  # the source's own string
                else:
                    props[f"openslide.{name}"] = _fmt_number(value)
        # Bounds of the non-empty region, rescaled from the source's level 0 to this slide's.
        try:
            b = [float(stored[f"openslide.bounds-{n}"]) for n in _BOUNDS]
        except (KeyError, ValueError):
            b = []
        # Edges in this slide's pixels, each clamped to the slide before rounding (no float can
        # overflow an int here: a bound of 1e308 or a sum that is infinite just clamps).
        edges = [b[0], b[1], b[0] + b[2], b[1] + b[3]] if len(b) == 4 else []
        if edges and all(math.isfinite(v) for v in b + edges):
            ex0, ey0, ex1, ey1 = (v / level_ds for v in edges)
            x0 = math.floor(min(W, max(0.0, ex0)))
            y0 = math.floor(min(H, max(0.0, ey0)))
            x1 = max(x0, math.ceil(min(W, max(0.0, ex1))))
            y1 = max(y0, math.ceil(min(H, max(0.0, ey1))))
            for n, bound in zip(_BOUNDS, (x0, y0, x1 - x0, y1 - y0), strict=True):
                props[f"openslide.bounds-{n}"] = str(bound)
        if "openslide.vendor" not in props:
            props["openslide.vendor"] = info.vendor or "cinr"
        props["openslide.background-color"] = "{:02X}{:02X}{:02X}".format(*dec.background)

        props["openslide.level-count"] = str(len(self._level_dimensions))
        for k, ((lw, lh), d) in enumerate(zip(self._level_dimensions, self._level_downsamples, strict=True)):
            props[f"openslide.level[{k}].width"] = str(lw)
            props[f"openslide.level[{k}].height"] = str(lh)
            props[f"openslide.level[{k}].downsample"] = _fmt_number(d)
            props[f"openslide.level[{k}].tile-width"] = str(ADVERTISED_TILE)
            props[f"openslide.level[{k}].tile-height"] = str(ADVERTISED_TILE)

        # What the encoder did and measured.
        grid = dec.grid
        counts = dec.block_counts()  # numpy over the index: no per-block objects
        quality = info.quality
        cinr: dict[str, Any] = {
            "format-version": f"{reader.version[0]}.{reader.version[1]}",
            "encoder": info.software,
            "model": info.model,
            "preset": info.preset,
            "quantization": info.storage,
            "block-size": grid.block_size,
            "margin": grid.margin,
            "blocks": grid.n_level_blocks,
            "model-blocks": counts["model"],
            "background-blocks": counts["background"],
            "mip-downsamples": ",".join(str(d) for d in grid.mip_downsamples) or None,
            "level": info.level,
            "level-downsample": level_ds,
            "source-vendor": info.vendor,
            "tissue-fraction": info.tissue_fraction,
            "quality-region": quality.get("region"),
            "psnr": quality.get("psnr_db"),
            "ssim": quality.get("ssim"),
            "psnr-all": quality.get("psnr_all_db"),
            "psnr-border": quality.get("psnr_border_db"),
            "psnr-interior": quality.get("psnr_interior_db"),
            "bytes": reader.file_size,
        }
        for name, v in cinr.items():
            if isinstance(v, str) and v:
                props[f"cinr.{name}"] = v
            elif finite(v) is not None:
                props[f"cinr.{name}"] = _fmt_number(v)
        return props

    @classmethod
    def detect_format(cls, filename: str | bytes | os.PathLike[Any]) -> str | None:
        """ "cinr" if the file starts with the .cinr magic, else None (also for unreadable files)."""
        try:
            with open(filename, "rb") as fh:
                return "cinr" if fh.read(len(MAGIC)) == MAGIC else None
        except OSError:
            return None

    @property
    def path(self) -> str:
        """The file's path."""
        return self._path

    @property
    def decoder(self) -> SlideDecoder:
        """The underlying ``SlideDecoder``."""
        self._check_open()
        return self._decoder

    @property
    def level_count(self) -> int:
        """Levels of the virtual pyramid."""
        self._check_open()
        return len(self._level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level: level k is (ceil(W / 2**k), ceil(H / 2**k))."""
        self._check_open()
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """1, 2, 4, ... (exact powers of two)."""
        self._check_open()
        return self._level_downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        """Metadata, read-only. Built at open time as follows:

        * The source's stored properties (vendor ``aperio.*``, ``tiff.*``, ... and ``openslide.*``)
          verbatim, except the ``openslide.*`` keys about the source's pyramid, resolution, bounds,
          background, quick hash and ICC profile, whose originals move to ``cinr.source.<key>``
          (and ``openslide.associated.<name>.*`` of images that were not stored, which are dropped).
          When the encoded level was not the source's level 0 the vendor keys (``aperio.MPP``...)
          therefore still describe the source's level 0, while the ``openslide.*`` keys below
          describe this slide.
        * ``openslide.mpp-x``/``mpp-y``/``objective-power``: the header's, i.e. of the encoded level
          (the stored strings verbatim when the level was the source's level 0); absent if unknown.
        * ``openslide.bounds-*``: the source's, divided by the encoded level's downsample.
        * ``openslide.vendor``: the source's vendor, or "cinr" when it had none.
        * ``openslide.background-color``: the colour ``read`` uses outside the slide (hex RRGGBB).
        * ``openslide.level-count`` and ``openslide.level[k].*``: the virtual pyramid.
        * ``cinr.*``: ``format-version``, ``encoder``, ``model``, ``preset``, ``quantization``,
          ``block-size``, ``margin``, ``blocks``, ``model-blocks``, ``background-blocks``,
          ``mip-downsamples``, ``level`` (source level encoded), ``level-downsample``,
          ``source-vendor``, ``tissue-fraction``, the quality measured at encode time after
          quantization (``quality-region``, ``psnr`` in dB, ``ssim``, ``psnr-all``, ``psnr-border``,
          ``psnr-interior``) and ``bytes`` (file size); each only when the file records it.
        """
        self._check_open()
        return self._properties

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        """name -> RGB PIL image (label, macro, thumbnail...), decoded on access."""
        self._check_open()
        return self._associated

    @property
    def mpp(self) -> tuple[float | None, float | None]:
        """(microns per pixel along x, along y) of level 0, None where unknown."""
        self._check_open()
        return header_mpp(self._decoder.reader.header)

    @property
    def background(self) -> tuple[int, int, int]:
        """RGB colour of everything outside the slide."""
        return self._decoder.background

    # -- reads ------------------------------------------------------------------------------------

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The largest level whose downsample is <= ``downsample`` (OpenSlide's rule); 0 below 1."""
        self._check_open()
        d = _number(downsample, "downsample")
        ds = self._level_downsamples
        if d < ds[0]:
            return 0
        for i in range(1, len(ds)):
            if d < ds[i]:
                return i - 1
        return len(ds) - 1

    def read_region(self, location: tuple[float, float], level: int, size: tuple[int, int]) -> Image.Image:
        """RGBA PIL image of ``size`` (w, h) pixels of ``level``, top-left at ``location`` (level-0 pixels)."""
        self._check_open()
        x, y = _pair(location, "location")
        x, y = _number(x, "location x"), _number(y, "location y")
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
            raise SlideRequestError(f"level must be an integer, not {type(level).__name__}")
        if not 0 <= level < len(self._level_downsamples):
            raise SlideRequestError(
                f"level {level} does not exist (levels 0 to {len(self._level_downsamples) - 1})"
            )
        w, h = _pair(size, "size")
        for name, v in (("width", w), ("height", h)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise SlideRequestError(f"region {name} must be an integer, not {type(v).__name__}")
        w, h = int(w), int(h)
        if w < 0 or h < 0:
            raise SlideRequestError(f"negative width ({w}) or negative height ({h}) not allowed")
        if w == 0 or h == 0:
            return Image.new("RGBA", (w, h))
        d = self._level_downsamples[int(level)]
        try:
            rgba = self._decoder.read_rgba(x, y, w * d, h * d, 1.0 / d)
        except ValueError as exc:
            raise SlideRequestError(str(exc)) from None
        return Image.fromarray(rgba)

    def read(self, x: float, y: float, w: float, h: float, scale: float = 1.0) -> np.ndarray:
        """RGB uint8 (round(h*scale), round(w*scale), 3) of the level-0 region (x, y, w, h) at ``scale``.

        Coordinates may be fractional; ``scale`` is in (0, 4] (below 1: box-filtered means, above 1:
        bilinear). Pixels outside the slide take the background colour. Bad arguments: ValueError.
        """
        self._check_open()
        return self._decoder.read(x, y, w, h, scale)

    def set_cache(self, cache: openslide.OpenSlideCache) -> None:
        """Resize this slide's decoded-pixel cache to ``cache``'s capacity (caches are not shared)."""
        self._check_open()
        capacity = getattr(cache, "_capacity", None)
        if not isinstance(cache, openslide.OpenSlideCache) or not isinstance(capacity, int):
            raise TypeError("Not a cache object")
        self._decoder.cache_capacity = capacity

    # -- lifetime ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SlideRequestError(f"{self._path}: attempt to use a closed slide")

    def close(self) -> None:
        """Close the file and drop the caches (idempotent)."""
        if not self._closed:
            self._closed = True
            self._decoder.close()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self._path!r})"


def _safe_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _pair(v: Any, name: str) -> tuple[Any, Any]:
    try:
        a, b = v
    except (TypeError, ValueError):
        raise SlideRequestError(f"{name} must be a pair of numbers, not {str(v)[:40]!r}") from None
    return a, b


def _number(v: Any, name: str) -> float:
    return finite_number(v, name, SlideRequestError)


def open_cinr(
    path: str | os.PathLike[str],
    *,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    max_block_bytes: int | None = None,
    device: str = "cpu",
    remote: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> CinrSlide:
    """Open a ``.cinr`` slide (``CinrError`` if the file is missing, not a .cinr file, or corrupt).

    ``path`` may be an fsspec URL (``https://``, ``s3://``, ``gs://``, ``file://``): the header,
    the index and then only the blocks a read touches are fetched, by ranged requests;
    ``remote`` sets their ``timeout`` (seconds, default 30), ``retries`` (default 2) and fsspec
    ``storage_options``. ``cache_bytes`` bounds the decoded-pixel cache; ``max_block_bytes`` lowers
    the decompressed block size accepted (see ``CinrReader``); ``device`` runs the block models
    there ("cpu", "cuda" or "auto"; see ``SlideDecoder``); ``threads`` fixes the torch CPU threads
    of each render (default: the cores other processes leave free, re-measured as reads go).
    """
    return CinrSlide(
        path,
        cache_bytes=cache_bytes,
        max_block_bytes=max_block_bytes,
        device=device,
        remote=remote,
        threads=threads,
    )
