"""Write a whole slide as an Aperio-style (SVS layout) pyramidal TIFF, streamed in bounded memory.

OpenSlide (vendor ``aperio``), tiffslide/tifffile and Bio-Formats (hence QuPath) read this layout
with its metadata, which a plain pyramidal TIFF (``generic-tiff``) cannot carry:

========  =====================================================================================
page 0    level 0: tiled 256 x 256, JPEG (YCbCr 4:4:4, quality ``QUALITY``). Its ImageDescription
          is Aperio's: an ``Aperio Image Library ...`` header line, then ``|key = value`` pairs:
          ``AppMag`` (objective power), ``MPP`` (microns per pixel), then the slide's vendor
          properties (``aperio.<key>`` as ``<key>``; other non-``openslide.``/``tiff.`` keys, such
          as ``cinr.psnr``, under their full names). OpenSlide reports them as ``aperio.*`` and
          derives ``openslide.objective-power`` and ``openslide.mpp-x/-y``.
page 1    the thumbnail, stripped (Aperio's second page always is): the slide's own, or else the
          first pyramid level at most ``THUMBNAIL_SIDE`` pixels a side.
pages 2+  levels 1, 2, ...: ``ceil(W / 2**k) x ceil(H / 2**k)`` (``virtual_pyramid``, the
          ``.cinr`` slide's ``level_dimensions``; libvips's own pyramid rounds down), tiled like
          level 0.
last      ``label`` (NewSubfileType 1, LZW: barcodes stay lossless) and ``macro`` (NewSubfileType 9,
          JPEG), stripped, each ImageDescription's second line starting with the name (what
          OpenSlide 3 reads; OpenSlide 4 and tifffile go by the subfile type). Associated images
          of other names have no place in this layout and are not written.
========  =====================================================================================

Every level is read from the slide at its own scale (``read(x, y, w, h, scale / 2**k)``: level k
of the ``.cinr`` slide, edge pixels on the background colour) one tile row at a time, in reads of
at most ``STRIP_PIXELS`` output pixels (8x at scale 1: plain copies of decoded tiles) and about as
many source pixels (the mip a read starts from is taken into account), so memory stays bounded
whatever the slide's size; tiles go to the file as they are compressed. Every level also carries
the TIFF resolution (pixels per centimetre) for readers that ignore the description; ``MPP`` is
the x resolution (Aperio has one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ._version import __version__
from .api import virtual_pyramid

__all__ = ["QUALITY", "STRIP_PIXELS", "THUMBNAIL_SIDE", "TILE", "aperio_description", "write_aperio_tiff"]

#: Tile side of every pyramid level.
TILE = 256
#: JPEG quality of tiles, thumbnail and macro.
QUALITY = 90
#: A made-up thumbnail is the first pyramid level whose larger side is at most this.
THUMBNAIL_SIDE = 1024
#: Most output pixels per read (8x at scale 1, where reads are plain copies of decoded tiles).
STRIP_PIXELS = 1 << 21
#: First line of every page's ImageDescription (OpenSlide needs the ``Aperio`` prefix).
HEADER = f"Aperio Image Library (cinr_codec {__version__})"

#: ``read(x, y, w, h, scale)``: RGB uint8 (round(h*scale), round(w*scale), 3) of a level-0 region.
Read = Callable[..., np.ndarray]
Progress = Callable[[int, int], None]


def _clean(text: str) -> str:
    """A value for the description: no ``|`` (the pair separator) and no line breaks or controls."""
    text = text.replace("|", "/")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _number(v: float) -> str:
    """Ten significant digits, integers without a decimal point (20 * 0.3 reads "6")."""
    return f"{float(v):.10g}"


def aperio_description(
    first_line: str,
    mpp: float | None,
    objective_power: float | None,
    properties: Mapping[str, str],
) -> str:
    """Aperio's ImageDescription: ``HEADER``, ``first_line``, then ``|AppMag = ..|MPP = ..|key = value...``.

    ``aperio.<key>`` properties are written as ``<key>`` (``AppMag`` and ``MPP`` are the arguments'),
    other properties under their full names, except ``openslide.*`` (what a reader derives) and
    ``tiff.*`` (the source file's tags); keys that would not parse back (with ``=``, ``|`` or line
    breaks) are left out, values lose ``|`` and line breaks.
    """
    pairs: list[tuple[str, str]] = []
    if objective_power is not None:
        pairs.append(("AppMag", _number(objective_power)))
    if mpp is not None:
        pairs.append(("MPP", _number(mpp)))
    seen = {k for k, _ in pairs}
    for key, value in properties.items():
        if key.startswith(("openslide.", "tiff.")):
            continue
        name = key[len("aperio.") :] if key.startswith("aperio.") else key
        name = name.strip()
        if not name or name in seen or name in ("AppMag", "MPP") or any(c in name for c in "=|\r\n"):
            continue
        seen.add(name)
        pairs.append((name, _clean(value)))
    return "\r\n".join((HEADER, first_line)) + "".join(f"|{k} = {v}" for k, v in pairs)


def _source_factor(scale: float, mips: Sequence[int]) -> float:
    """Source pixels read per output pixel at ``scale`` (the decoder starts from the coarsest mip <= 1/scale)."""
    if scale >= 1.0:
        return 1.0
    d = max([1, *(m for m in mips if m <= (1.0 / scale) * (1 + 1e-9))])
    return max(1.0, 1.0 / (scale * d)) ** 2


class _Level:
    """One output level: ``width x height`` pixels, read at ``scale`` from level-0 coordinates."""

    def __init__(
        self, read: Read, width: int, height: int, scale: float, mips: Sequence[int], strip_pixels: int
    ) -> None:
        self.read, self.width, self.height, self.scale = read, width, height, scale
        # At scale 1 reads are uint8 copies of decoded tiles: 8x the pixels. Elsewhere a read may
        # take the float path (at the slide's edges always), about 50 bytes per output pixel.
        factor = _source_factor(scale, mips)
        #: Most output pixels per read.
        self.budget = max(1, int(strip_pixels * (8 if scale == 1.0 else 1) / factor))

    def rect(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Output pixels [x0, x0+w) x [y0, y0+h), in reads of at most ``budget`` pixels."""
        rows = max(1, self.budget // w)
        if rows >= h:
            return self._read(x0, y0, w, h)
        out = np.empty((h, w, 3), dtype=np.uint8)
        for r in range(0, h, rows):
            n = min(rows, h - r)
            out[r : r + n] = self._read(x0, y0 + r, w, n)
        return out

    def _read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        s = self.scale
        px = self.read(_exact(x0 / s), _exact(y0 / s), _exact(w / s), _exact(h / s), s)
        if px.shape != (h, w, 3):  # pragma: no cover - the decoder's contract
            raise RuntimeError(f"read returned {px.shape}, expected {(h, w, 3)}")
        return px

    def tiles(self, progress: Callable[[int], None]) -> Iterator[np.ndarray]:
        """The level's TILE x TILE tiles, row by row (edge tiles padded by repeating the edge pixels)."""
        cols = max(TILE, self.budget // TILE // TILE * TILE)
        for y0 in range(0, self.height, TILE):
            th = min(TILE, self.height - y0)
            for x0 in range(0, self.width, cols):
                chunk = self.rect(x0, y0, min(cols, self.width - x0), th)
                if x0 + cols >= self.width:
                    progress(th)  # the row is read (the writer stops asking after the last tile)
                for c in range(0, chunk.shape[1], TILE):
                    tile = chunk[:, c : c + TILE]
                    if tile.shape[:2] != (TILE, TILE):
                        pad = ((0, TILE - tile.shape[0]), (0, TILE - tile.shape[1]), (0, 0))
                        tile = np.pad(tile, pad, mode="edge")
                    yield tile
                del chunk


def _exact(v: float) -> float | int:
    """An integral coordinate as an int (the decoder's fast path)."""
    return int(v) if float(v).is_integer() and abs(v) < 1 << 53 else v


def write_aperio_tiff(
    path: str,
    read: Read,
    width: int,
    height: int,
    scale: float,
    *,
    mpp: tuple[float | None, float | None],
    objective_power: float | None,
    properties: Mapping[str, str],
    associated: Mapping[str, Callable[[], Any]],
    mips: Sequence[int] = (),
    progress: Progress | None = None,
    strip_pixels: int = STRIP_PIXELS,
) -> list[tuple[int, int]]:
    """Write a ``width x height`` slide (the level-0 region ``(0, 0, width/scale, height/scale)`` read at
    ``scale``) to ``path`` in the Aperio layout (module docstring); return the level sizes written.

    ``mpp`` and ``objective_power`` describe the output's level 0; ``properties`` are the slide's
    (see ``aperio_description``); ``associated`` maps each associated image's name to a function
    returning it (a PIL image or an RGB uint8 array); ``mips`` are the decoder's mip downsamples
    (they bound each read's source pixels); ``strip_pixels`` bounds each read's output pixels.
    ``progress(done_rows, total_rows)`` is called after each tile row of every level (rows of all
    levels together). ``OSError`` if the file cannot be written.
    """
    import tifffile

    dims, _ = virtual_pyramid(width, height)
    levels = [_Level(read, w, h, scale / 2**k, mips, strip_pixels) for k, (w, h) in enumerate(dims)]
    total = sum(h for _, h in dims)
    done = [0]

    def advance(rows: int) -> None:
        done[0] += rows
        if progress is not None:
            progress(done[0], total)

    def resolution(k: int) -> dict[str, Any]:
        if not (mpp[0] and mpp[1]):
            return {}
        return {"resolution": (1e4 / (mpp[0] * 2**k), 1e4 / (mpp[1] * 2**k)), "resolutionunit": "CENTIMETER"}

    # Full-resolution chroma (as libvips at this quality): half the error of 4:2:0 on detailed images.
    jpeg: dict[str, Any] = {
        "compression": "jpeg",
        "compressionargs": {"level": QUALITY},
        "subsampling": (1, 1),
    }
    # One thread: tifffile's threads read ahead up to 512 MB of tiles; decoding is the slow part.
    common: dict[str, Any] = {"photometric": "rgb", "metadata": None, "maxworkers": 1}
    size = f"{width}x{height}"
    if "thumbnail" in associated:
        thumbnail = _rgb(associated["thumbnail"]())
    else:
        k = next(i for i, d in enumerate(dims) if max(d) <= THUMBNAIL_SIDE)  # the last level is <= TILE
        thumbnail = levels[k].rect(0, 0, *dims[k])
    order = [n for n in ("label", "macro") if n in associated]

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, level in enumerate(levels):
            w, h = dims[k]
            if k == 0:  # the slide's metadata
                first = f"{size} [0,0 {size}] ({TILE}x{TILE}) JPEG/RGB Q={QUALITY}"
                description = aperio_description(first, mpp[0], objective_power, properties)
            else:
                description = f"{HEADER}\r\n{size} -> {w}x{h} ({TILE}x{TILE}) JPEG/RGB Q={QUALITY}"
            tif.write(
                level.tiles(advance),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                description=description.encode("utf-8"),
                software=f"cinr_codec {__version__}" if k == 0 else None,
                **common,
                **jpeg,
                **resolution(k),
            )
            if k == 0:
                th, tw = thumbnail.shape[:2]
                tif.write(
                    thumbnail,
                    description=f"{HEADER}\n{size} -> {tw}x{th} - ".encode(),
                    **common,
                    **jpeg,
                )
                del thumbnail
        for name in order:
            img = _rgb(associated[name]())
            h, w = img.shape[:2]
            label = name == "label"
            tif.write(
                img,
                description=f"{HEADER}\n{name} {w}x{h}".encode(),
                subfiletype=1 if label else 9,
                **common,
                **({"compression": "lzw"} if label else jpeg),
            )
    return list(dims)


def _rgb(img: Any) -> np.ndarray:
    """An associated image as a C-contiguous RGB uint8 array."""
    if not isinstance(img, np.ndarray):
        img = np.asarray(img.convert("RGB"))
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:  # pragma: no cover - callers' contract
        raise ValueError(f"expected an RGB uint8 image, not {img.shape} {img.dtype}")
    return np.ascontiguousarray(img)
