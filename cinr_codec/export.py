"""Write a region of a ``.cinr`` slide, at any scale, as a PNG, JPEG, TIFF or WebP image.

``export_region(slide, "out.tif")`` decodes through ``CinrSlide.read`` / ``SlideDecoder.read``
and saves through libvips (whole-slide TIFFs through tifffile), choosing the format by the
output's extension:

=================  =====================================================================
``.png``           lossless
``.jpg``/``.jpeg`` JPEG, quality 90
``.webp``          WebP, quality 90 (at most 16383 pixels a side)
``.tif``/``.tiff`` always a tiled (256 x 256), pyramidal BigTIFF with JPEG tiles (quality 90),
                   whatever its size. A region is a plain pyramidal TIFF (libvips; OpenSlide's
                   ``generic-tiff``). The whole slide (no region) is written in Aperio's SVS
                   layout (``cinr_codec.aperio``) so that OpenSlide (``aperio``), tiffslide and
                   QuPath see what the ``.cinr`` slide has: its levels exactly (``ceil`` halving,
                   ``level_dimensions``; libvips's pyramid rounds down), the objective power,
                   mpp and vendor properties in an Aperio ImageDescription, and the thumbnail,
                   label and macro as extra pages
=================  =====================================================================

Small outputs (at most ``STREAM_PIXELS`` pixels, region given) are decoded with one read and
saved from memory. Whole-slide TIFFs are decoded level by level, one 256-row tile row at a
time, straight into the file (``cinr_codec.aperio``). Other whole-slide exports (no region) and
large outputs are *streamed*: decoded in strips of at most 1024 output rows (fewer for wide
outputs: ``STRIP_PIXELS`` per strip, 8x that at scale 1 on integer coordinates, where reads are
plain copies of decoded tiles) into a raw memory-mapped temporary file beside the output, then
saved from that file by libvips, which reads it lazily; disk use is 3 bytes per output pixel
until the save ends. Either way memory stays bounded by the strip. The resolution is recorded
when the slide's is known (pixels per millimetre ``1000 * scale / mpp``). Writes are atomic: a
temporary file in the destination folder is renamed over the output only when complete; on any
error, and on SIGTERM or SIGINT, the temporaries are deleted and an existing output is left untouched
(the signal then ends the process as it would have).

Whole-slide exports cover the slide with ``ceil(W * scale) x ceil(H * scale)`` pixels (the
virtual pyramid's level size when ``scale`` is ``2**-k``); pixels beyond the slide take the
background colour.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image

from .api import CinrSlide
from .decode.decoder import MAX_READ_OUTPUT, MAX_SCALE, SlideDecoder, finite_number
from .errors import CinrError, CinrIOError
from .format.header import describe, header_mpp

__all__ = ["FORMATS", "export_region"]

#: Extension -> libvips saver.
FORMATS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".webp": "webp",
}
#: Largest side each format can hold.
MAX_SIDES = {"png": 1 << 31, "jpeg": 65535, "webp": 16383, "tiff": 1 << 31}
#: Outputs above this many pixels are streamed (whole-slide exports always are).
STREAM_PIXELS = 4096 * 4096
#: Most output rows, and most output pixels, decoded per strip when streaming.
STRIP_ROWS = 1024
STRIP_PIXELS = 1 << 21
#: JPEG/WebP quality (also the TIFF tiles').
QUALITY = 90

Progress = Callable[[int, int], None]


def _check_output(out_path: str | os.PathLike[str]) -> tuple[str, str, str]:
    """(absolute path, folder, format) of a writable output path, or ValueError."""
    out = os.path.abspath(os.fspath(out_path))
    ext = os.path.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise ValueError(
            f"{out_path}: unknown output type {ext or '(none)'!r}; use one of {', '.join(FORMATS)}"
        )
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise ValueError(f"{out_path}: folder {folder} does not exist")
    if os.path.isdir(out):
        raise ValueError(f"{out_path}: is a directory")
    return out, folder, FORMATS[ext]


def _slide_info(
    slide: CinrSlide | SlideDecoder,
) -> tuple[Callable[..., np.ndarray], int, int, tuple[float | None, float | None]]:
    """(read, width, height, (mpp_x, mpp_y)) of a CinrSlide or SlideDecoder."""
    if isinstance(slide, CinrSlide):
        w, h = slide.dimensions
        return slide.read, w, h, slide.mpp
    if isinstance(slide, SlideDecoder):
        return slide.read, slide.width, slide.height, header_mpp(slide.reader.header)
    raise TypeError(f"expected a CinrSlide or SlideDecoder, not {type(slide).__name__}")


def _exact(v: float) -> float | int:
    """An integral coordinate as an int (the decoder's fast path at scale 1)."""
    return int(v) if float(v).is_integer() and abs(v) < 1 << 53 else v


def _make_temp(folder: str, suffix: str, temps: list[str]) -> str:
    """Create an empty temporary file in ``folder`` with the umask's permissions (unlike mkstemp's 0600),
    its name appended to ``temps`` before it exists (so a signal cannot leave it behind unlisted)."""
    for _ in range(100):
        path = os.path.join(folder, f".cinr-export-{secrets.token_hex(6)}{suffix}")
        temps.append(path)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:  # pragma: no cover - 48 random bits
            temps.remove(path)
            continue
        except OSError as exc:
            temps.remove(path)
            raise CinrIOError(f"{path}: cannot create a temporary file: {exc.strerror or exc}") from None
        return path
    raise CinrIOError(f"{folder}: cannot create a temporary file")  # pragma: no cover


class _Terminated(BaseException):
    """SIGTERM (or an unhandled SIGINT) during an export: unwinds it so that its temporaries go."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """During an export, SIGTERM -- and SIGINT when Python does not handle it already (its default
    handler raises KeyboardInterrupt, which unwinds the same way) -- raise ``_Terminated`` in the main
    thread, so that the export's ``finally`` deletes its temporary files; then the signal is
    delivered again under the previous handler, so the process ends as it would have. Handlers the
    application installed itself, ignored signals and other threads are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated(signum)

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old = signal.getsignal(sig)
        if old == signal.SIG_DFL:
            previous[sig] = old
            signal.signal(sig, handler)
    try:
        yield
    except _Terminated as exc:
        for signum, before in previous.items():
            signal.signal(signum, before)
        previous.clear()
        signal.raise_signal(exc.signum)
        raise  # pragma: no cover - the default action ended the process
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def _stderr_progress() -> Progress:
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = int(100 * done / max(1, total))
        if pct != last[0]:
            last[0] = pct
            sys.stderr.write(f"\rdecoding: {pct:3d}%" + ("\n" if done >= total else ""))
            sys.stderr.flush()

    return report


def _save(img: Any, path: str, fmt: str) -> None:
    if fmt == "png":
        img.pngsave(path)
    elif fmt == "jpeg":
        img.jpegsave(path, Q=QUALITY)
    elif fmt == "webp":
        img.webpsave(path, Q=QUALITY)
    else:
        img.tiffsave(
            path,
            tile=True,
            pyramid=True,
            compression="jpeg",
            Q=QUALITY,
            tile_width=256,
            tile_height=256,
            bigtiff=True,
            resunit="cm",
        )


def _slide_metadata(
    slide: CinrSlide | SlideDecoder,
) -> tuple[Mapping[str, str], float | None, tuple[int, ...], dict[str, Callable[[], Image.Image]]]:
    """(properties, objective power of level 0, mip downsamples, name -> associated image getter)."""
    if isinstance(slide, CinrSlide):
        dec = slide.decoder
        images = slide.associated_images
        props: Mapping[str, str] = slide.properties
        getters: dict[str, Callable[[], Image.Image]] = {
            name: functools.partial(images.__getitem__, name) for name in images
        }
    else:
        dec = slide
        props = describe(dec.reader.header, dec.reader.footer).properties
        getters = {
            name: functools.partial(_associated_image, dec, name) for name in dec.reader.associated_images
        }
    power = describe(dec.reader.header).objective_power
    return props, power, tuple(dec.grid.mip_downsamples), getters


def _associated_image(dec: SlideDecoder, name: str) -> Image.Image:
    """A SlideDecoder's associated image as an RGB PIL image (``CinrSlide.associated_images``'s rule)."""
    from .coding.images import decode_associated_image

    data = dec.reader.read_associated_image(name)
    return decode_associated_image(data, f"{dec.reader.name}: associated image {name!r}")


def _save_slide_tiff(
    slide: CinrSlide | SlideDecoder,
    path: str,
    read: Callable[..., np.ndarray],
    width: int,
    height: int,
    scale: float,
    mpp: tuple[float | None, float | None],
    progress: Progress | None,
    out_path: str | os.PathLike[str],
) -> None:
    """A whole slide at ``scale`` as an Aperio-layout TIFF (``cinr_codec.aperio``), or CinrIOError."""
    from .aperio import write_aperio_tiff

    props, power, mips, associated = _slide_metadata(slide)
    try:
        write_aperio_tiff(
            path,
            read,
            width,
            height,
            scale,
            mpp=mpp,
            objective_power=power * scale if power else None,
            properties=props,
            associated=associated,
            mips=mips,
            progress=progress,
            strip_pixels=STRIP_PIXELS,
        )
    except CinrError:
        raise
    except OSError as exc:
        raise CinrIOError(f"{out_path}: cannot write: {exc.strerror or exc}") from None


def export_region(
    slide: CinrSlide | SlideDecoder,
    out_path: str | os.PathLike[str],
    region: tuple[float, float, float, float] | None = None,
    scale: float = 1.0,
    *,
    quiet: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Decode ``region`` (x, y, w, h in level-0 pixels; None: the whole slide) at ``scale`` into ``out_path``.

    The format follows the extension (see the module docstring). ``progress(done_rows, total_rows)``
    is called after each decoded strip; with ``quiet=False`` and no ``progress`` a percentage
    is printed on stderr. Returns a summary: ``path``, ``format``, ``width``/``height`` (output
    pixels), ``region``, ``scale``, ``streamed``, ``mpp`` (of the output pixels, or None),
    ``bytes``, ``seconds``. Bad arguments, an unknown extension or a missing folder raise
    ``ValueError`` before anything is decoded; ``CinrError`` for a bad file or a failed write.
    """
    import pyvips

    t0 = time.perf_counter()
    out, folder, fmt = _check_output(out_path)
    read, W, H, mpp = _slide_info(slide)
    s = finite_number(scale, "scale")
    if not 0 < s <= MAX_SCALE:
        raise ValueError(f"scale must be in (0, {MAX_SCALE}], not {scale}")
    whole = region is None
    if region is None:
        ow, oh = max(1, math.ceil(W * s - 1e-9)), max(1, math.ceil(H * s - 1e-9))
        x, y, w, h = 0.0, 0.0, ow / s, oh / s
    else:
        try:
            rx, ry, rw, rh = region
        except (TypeError, ValueError):
            raise ValueError(f"region must be (x, y, w, h), not {str(region)[:60]}") from None
        x, y = finite_number(rx, "region x"), finite_number(ry, "region y")
        w, h = finite_number(rw, "region width"), finite_number(rh, "region height")
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, not {rw} x {rh}")
        if not (math.isfinite(w * s) and math.isfinite(h * s)):
            raise ValueError(f"a {rw} x {rh} region at scale {s} is too large")
        ow, oh = int(round(w * s)), int(round(h * s))
        if ow < 1 or oh < 1:
            raise ValueError(f"a {rw} x {rh} region at scale {s} has no output pixels")
    if max(ow, oh) > MAX_SIDES[fmt]:
        raise ValueError(
            f"{out_path}: a {ow} x {oh} image is too large for {fmt.upper()} (at most {MAX_SIDES[fmt]} "
            "pixels a side); use .tif"
        )
    aperio = whole and fmt == "tiff"  # the whole slide: Aperio layout, written level by level
    streamed = whole or ow * oh > STREAM_PIXELS
    if not streamed and ow * oh > MAX_READ_OUTPUT:  # pragma: no cover - STREAM_PIXELS < MAX_READ_OUTPUT
        streamed = True
    if progress is None and not quiet:
        progress = _stderr_progress()
    out_mpp = (mpp[0] / s if mpp[0] else None, mpp[1] / s if mpp[1] else None)

    temps: list[str] = []  # every temporary file, named before it is created
    with _signals_raise():
        try:
            tmp = _make_temp(folder, os.path.splitext(out)[1], temps)
            if aperio:
                _save_slide_tiff(slide, tmp, read, ow, oh, s, out_mpp, progress, out_path)
            elif not streamed:
                pixels = np.ascontiguousarray(read(_exact(x), _exact(y), _exact(w), _exact(h), s))
                if pixels.shape != (oh, ow, 3):  # pragma: no cover - the decoder's contract
                    raise RuntimeError(f"read returned {pixels.shape}, expected {(oh, ow, 3)}")
                img = pyvips.Image.new_from_memory(pixels.data, ow, oh, 3, "uchar")
                if progress is not None:
                    progress(oh, oh)
            else:
                need = ow * oh * 3
                free = shutil.disk_usage(folder).free
                if need > free:
                    raise CinrIOError(
                        f"{out_path}: streaming a {ow} x {oh} image needs {need / 1e9:.1f} GB of temporary "
                        f"disk space in {folder}, only {free / 1e9:.1f} GB is free"
                    )
                raw = _make_temp(folder, ".raw", temps)
                buf = np.memmap(raw, dtype=np.uint8, mode="w+", shape=(oh, ow, 3))
                try:
                    # At scale 1 on integer coordinates reads are uint8 copies of decoded tiles: 8x the strip.
                    fast = s == 1.0 and float(x).is_integer() and float(y).is_integer()
                    rows = max(1, min(STRIP_ROWS, STRIP_PIXELS * (8 if fast else 1) // ow))
                    if rows >= 256:
                        rows -= rows % 256  # whole 256-row decode tiles per strip when aligned
                    for r0 in range(0, oh, rows):
                        r1 = min(oh, r0 + rows)
                        strip = read(_exact(x), _exact(y + r0 / s), _exact(w), _exact((r1 - r0) / s), s)
                        if strip.shape != (r1 - r0, ow, 3):  # pragma: no cover - the decoder's contract
                            raise RuntimeError(f"read returned {strip.shape}, expected {(r1 - r0, ow, 3)}")
                        buf[r0:r1] = strip
                        if progress is not None:
                            progress(r1, oh)
                    buf.flush()
                finally:
                    del buf
                img = pyvips.Image.rawload(raw, ow, oh, 3)
            if not aperio:
                changes: dict[str, Any] = {"interpretation": "srgb"}
                if out_mpp[0] and out_mpp[1]:
                    changes.update(xres=1000.0 / out_mpp[0], yres=1000.0 / out_mpp[1])
                img = img.copy(**changes)
                try:
                    _save(img, tmp, fmt)
                except pyvips.Error as exc:
                    raise CinrIOError(
                        f"{out_path}: cannot write: {' '.join(str(exc).split())[:200]}"
                    ) from None
                del img
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, out)
            temps.remove(tmp)
        finally:  # on any exception, SIGTERM and SIGINT included; the raw pixels also on success
            for path in temps:
                with contextlib.suppress(OSError):
                    os.unlink(path)
    return {
        "path": out,
        "format": fmt,
        "width": ow,
        "height": oh,
        "region": [x, y, w, h],
        "scale": s,
        "streamed": streamed,
        "mpp": list(out_mpp) if out_mpp[0] or out_mpp[1] else None,
        "bytes": os.path.getsize(out),
        "seconds": time.perf_counter() - t0,
    }
