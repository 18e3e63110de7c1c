"""Streaming region reads from slides (OpenSlide) and plain images (pyvips), RGB uint8 on white.

`SlideSource` opens one level of a whole-slide image or a plain PNG/JPEG/TIFF and reads
rectangular regions of it; it never holds more of the image in Python memory than one read
(or, for `thumbnail`, one tile plus the reduced image).
"""

from __future__ import annotations

import errno
import io
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..core.resample import AreaAccumulator
from ..errors import CinrInputError
from ..format.header import MAX_READ_PIXELS

log = logging.getLogger(__name__)

SAMPLE_NAME = "CMU-1-Small-Region.svs"

#: Associated images larger than this many pixels are skipped (with a warning).
MAX_ASSOCIATED_PIXELS = 1 << 26
#: OpenSlide reads larger than this many pixels are split into horizontal stripes (level 0 only).
_STRIPE_PIXELS = 1 << 24
#: Side of the tiles `thumbnail` reads from a slide level.
_THUMB_TILE = 1024

#: Most pixels a level may have by default (``max_pixels``; ``cinr encode --max-pixels``): 2^36,
#: about 69 gigapixels (262144 x 262144), several times the largest slides scanners make.
DEFAULT_MAX_PIXELS = 1 << 36
#: Plausibility of a declared size against the file's bytes (only with the default ``max_pixels``):
#: level 0 may have at most max(PLAUSIBLE_FREE_PIXELS, PLAUSIBLE_PIXELS_PER_BYTE x bytes) pixels.
#: JPEG-compressed slides take 1-2 bits a pixel (4-8 pixels a byte; the samples: 3.4 to 4.9),
#: a blank JPEG region at least ~0.05 bit (~170 pixels a byte); 1024 pixels a byte (0.008 bit
#: a pixel) is beyond any real scan, while a header claiming 10^12 pixels in 186 bytes, or a
#: 437 KB PNG of 60000^2 (8,000 pixels a byte), is refused before a pixel is read.
PLAUSIBLE_PIXELS_PER_BYTE = 1024
#: Any image up to this many pixels (16384^2) passes the plausibility rule, whatever its size on disk.
PLAUSIBLE_FREE_PIXELS = 1 << 28

# pyvips loaders accepted for plain images (others, such as csv, matrix, svg or pdf, are refused).
_PLAIN_LOADERS = {
    "jpegload": "image/jpeg",
    "pngload": "image/png",
    "tiffload": "image/tiff",
    "webpload": "image/webp",
    "jp2kload": "image/jp2",
    "jxlload": "image/jxl",
    "heifload": "image/heif",
    "gifload": "image/gif",
    "ppmload": "image/x-portable-anymap",
}


def sample_slide_path() -> Path:
    """Path of the bundled sample slide (CMU-1-Small-Region.svs, CC0)."""
    return Path(str(resources.files("cinr_codec") / "data" / SAMPLE_NAME))


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (libvips messages span several)."""
    text = " ".join(str(exc).split())
    return text or exc.__class__.__name__


def _composite_rgba(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) uint8 non-premultiplied RGBA over white -> (h, w, 3) uint8, exactly rounded."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if bool((alpha == 255).all()):
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    # round((c * a + 255 * (255 - a)) / 255); the sum is at most 65025, so uint16 holds it.
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _thumb_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size (w, h) of a thumbnail with longest side <= max_side (the level's own size if smaller)."""
    scale = min(1.0, max_side / max(width, height))
    tw = min(max_side, max(1, round(width * scale)))
    th = min(max_side, max(1, round(height * scale)))
    return tw, th


def _vips_to_rgb8(img: Any) -> np.ndarray:
    """A pyvips image -> (h, w, 3) uint8 sRGB: 16-bit to 8-bit, CMYK/Lab to sRGB, alpha flattened on white."""
    if img.interpretation in ("cmyk", "lab", "labq", "labs", "lch", "cmc", "xyz", "yxy", "scrgb", "hsv"):
        img = img.colourspace("srgb")
    alpha = bool(img.hasalpha())
    fmt = img.format
    if fmt == "ushort":
        img = (img / 257.0).rint().cast("uchar")
    elif fmt == "uint":
        img = (img / 16843009.0).rint().cast("uchar")
    elif fmt != "uchar":
        # signed or float data: values taken to be on 0..255, clamped.
        img = (img > 255).ifthenelse(255, (img < 0).ifthenelse(0, img)).rint().cast("uchar")
    if alpha:
        img = img.flatten(background=[255.0] * (img.bands - 1), max_alpha=255.0).cast("uchar")
    if img.bands < 3:
        img = img[0].bandjoin([img[0], img[0]])
    elif img.bands > 3:
        img = img.extract_band(0, n=3)
    buf = img.write_to_memory()
    return np.frombuffer(buf, dtype=np.uint8).reshape(img.height, img.width, 3).copy()


class SlideSource:
    """A slide or plain image opened for streaming region reads at one level (RGB uint8 out)."""

    path: Path
    level: int
    width: int
    height: int
    downsample: float
    level_count: int
    format: str

    def __init__(
        self, path: str | os.PathLike[str], level: int = 0, *, max_pixels: int | None = None
    ) -> None:
        """Open level ``level`` of ``path``; only the header is read (CinrInputError on bad input).

        ``max_pixels``: the most pixels the level may have. None (the default) refuses a level of
        more than `DEFAULT_MAX_PIXELS` pixels, or a level 0 of more than
        max(`PLAUSIBLE_FREE_PIXELS`, `PLAUSIBLE_PIXELS_PER_BYTE` x the file's bytes) pixels (a
        declared size absurd for the file, such as a forged header); a number replaces both rules.
        """
        p = Path(path)
        self.path = p
        self._slide: Any = None
        self._vips: Any = None
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {max_pixels}")
        try:
            st = os.stat(p)
        except OSError as exc:
            raise CinrInputError(_stat_error(p, exc)) from None
        if p.is_dir():
            raise CinrInputError(f"{p}: is a directory, not a slide or image")
        try:
            size = st.st_size
            with open(p, "rb"):
                pass
        except OSError as exc:
            raise CinrInputError(f"{p}: cannot open ({exc.strerror or _one_line(exc)})") from None
        if size == 0:
            raise CinrInputError(f"{p}: is empty (0 bytes), not a slide or image")
        fmt = self._detect_openslide(p)
        if fmt is not None:
            self._open_openslide(p, fmt, level)
        else:
            self._open_vips(p, level)
        self.level = level
        try:
            self._check_size(max_pixels)
        except BaseException:
            self.close()
            raise

    def _check_size(self, max_pixels: int | None) -> None:
        """Refuse a level too large for ``max_pixels`` or (by default) absurd for the file's bytes."""
        pixels = self.width * self.height
        what = f"level {self.level} is {self.width}x{self.height} ({pixels:,} pixels)"
        if max_pixels is not None:
            if pixels > max_pixels:
                raise CinrInputError(
                    f"{self.path}: {what}, more than the limit of {max_pixels:,} (--max-pixels)"
                )
            return
        if pixels > DEFAULT_MAX_PIXELS:
            raise CinrInputError(
                f"{self.path}: {what}, more than the limit of {DEFAULT_MAX_PIXELS:,}; "
                "pass --max-pixels to raise it"
            )
        if self._slide is not None:
            w0, h0 = (int(v) for v in self._slide.level_dimensions[0])
        else:
            w0, h0 = self.width, self.height
        nbytes = self.source_bytes
        allowed = max(PLAUSIBLE_FREE_PIXELS, PLAUSIBLE_PIXELS_PER_BYTE * nbytes)
        if w0 * h0 > allowed:
            raise CinrInputError(
                f"{self.path}: declares {w0}x{h0} pixels in {nbytes:,} bytes, implausible for an image "
                f"(more than {PLAUSIBLE_PIXELS_PER_BYTE} pixels a byte); pass --max-pixels to read it anyway"
            )

    # -- opening ---------------------------------------------------------------------------

    @staticmethod
    def _detect_openslide(p: Path) -> str | None:
        """OpenSlide's format name for the file, or None when OpenSlide does not recognise it."""
        import openslide

        try:
            fmt = openslide.OpenSlide.detect_format(str(p))
        except Exception:  # noqa: BLE001 - an unrecognised file is simply not a slide
            return None
        return str(fmt) if fmt else None

    def _open_openslide(self, p: Path, fmt: str, level: int) -> None:
        import openslide

        try:
            slide = openslide.OpenSlide(str(p))
        except Exception as exc:  # noqa: BLE001 - OpenSlideError, OSError, ...
            message = f"{p}: not a readable slide or image ({fmt}: {_one_line(exc)})"
            if fmt == "generic-tiff":
                # A tiled TIFF that OpenSlide cannot decode (16-bit, unusual compression) may still be
                # a plain image libvips reads.
                try:
                    self._open_vips(p, level)
                except CinrInputError:
                    raise CinrInputError(message) from None
                return
            raise CinrInputError(message) from None
        self._slide = slide
        self.format = fmt
        self.level_count = int(slide.level_count)
        if not 0 <= level < self.level_count:
            self.close()
            raise CinrInputError(
                f"{p}: level {level} does not exist (the slide has {self.level_count} levels, 0 to {self.level_count - 1})"
            )
        self.width, self.height = (int(v) for v in slide.level_dimensions[level])
        self.downsample = float(slide.level_downsamples[level])

    def _open_vips(self, p: Path, level: int) -> None:
        import pyvips

        try:
            img = pyvips.Image.new_from_file(str(p), access="random", fail_on="truncated")
            loader = str(img.get("vips-loader"))
        except pyvips.Error:
            raise CinrInputError(f"{p}: not a readable slide or image") from None
        if loader not in _PLAIN_LOADERS:
            raise CinrInputError(f"{p}: not a readable slide or image (unsupported format {loader})")
        if level != 0:
            raise CinrInputError(f"{p}: level {level} does not exist (a plain image has 1 level, 0)")
        self._vips = img
        self.format = _PLAIN_LOADERS[loader]
        self.level_count = 1
        self.width = int(img.width)
        self.height = int(img.height)
        self.downsample = 1.0

    # -- metadata --------------------------------------------------------------------------

    @property
    def properties(self) -> dict[str, str]:
        """OpenSlide and vendor properties verbatim; for plain images only the real level geometry keys."""
        if self._slide is not None:
            try:
                return {str(k): str(v) for k, v in self._slide.properties.items()}
            except Exception as exc:  # noqa: BLE001 - latched OpenSlide errors
                raise CinrInputError(f"{self.path}: cannot read properties: {_one_line(exc)}") from None
        return {
            "openslide.level-count": "1",
            "openslide.level[0].width": str(self.width),
            "openslide.level[0].height": str(self.height),
            "openslide.level[0].downsample": "1",
        }

    @property
    def source_bytes(self) -> int:
        """Bytes of the source on disk (MIRAX: the .mrxs plus its data folder; DICOM: the series' folder)."""
        total = self.path.stat().st_size
        if self.format == "mirax":
            data_dir = self.path.with_suffix("")
            if data_dir.is_dir():
                total += sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
        elif self.format == "dicom":
            # OpenSlide reads every file of the series in the slide's folder; count the DICOM files there
            # (an over-count if the folder holds several series).
            total = 0
            for f in self.path.parent.iterdir():
                if f.is_file() and _is_dicom(f):
                    total += f.stat().st_size
            total = max(total, self.path.stat().st_size)
        elif self.format == "hamamatsu" and self.path.suffix.lower() in (".vms", ".vmu"):
            total += _vms_companions_bytes(self.path)
        return total

    # -- reads -----------------------------------------------------------------------------

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the region at (x, y) in this level's pixels, on white (white outside)."""
        x, y, w, h = int(x), int(y), int(w), int(h)
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        if w * h > MAX_READ_PIXELS:
            raise ValueError(f"region {w}x{h} is larger than {MAX_READ_PIXELS} pixels; read it in pieces")
        if self._slide is not None:
            return self._read_openslide(self.level, self.downsample, x, y, w, h)
        return self._read_vips(x, y, w, h)

    def _read_openslide(self, level: int, ds: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Region of `level` (downsample ds) at (x, y) in that level's pixels, composited on white."""
        self._check_open()
        # Stripe only at level 0: at other levels OpenSlide renders at the sub-pixel position x0 / ds,
        # so stripes could differ from one read by a fraction of a pixel.
        rows = h if level > 0 else max(1, min(h, _STRIPE_PIXELS // w))
        out = np.empty((h, w, 3), dtype=np.uint8) if rows < h else None
        for r in range(0, h, rows):
            n = min(rows, h - r)
            x0 = int(round(x * ds))
            y0 = int(round((y + r) * ds))
            try:
                rgba = np.asarray(self._slide.read_region((x0, y0), level, (w, n)), dtype=np.uint8)
            except Exception as exc:  # noqa: BLE001 - OpenSlideError, OSError, PIL errors
                raise CinrInputError(
                    f"{self.path}: read error at ({x}, {y + r}) in the {w}x{n} region of level {level}: {_one_line(exc)}"
                ) from None
            rgb = _composite_rgba(rgba)
            if out is None:
                return rgb
            out[r : r + n] = rgb
        assert out is not None
        return out

    def _read_vips(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Region of a plain image; the parts outside the image are white."""
        import pyvips

        self._check_open()
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        inside = x0 < x1 and y0 < y1
        if inside and (x0, y0, x1, y1) == (x, y, x + w, y + h):
            out = None
        else:
            out = np.full((h, w, 3), 255, dtype=np.uint8)
        if not inside:
            assert out is not None
            return out
        try:
            region = _vips_to_rgb8(self._vips.crop(x0, y0, x1 - x0, y1 - y0))
        except pyvips.Error as exc:
            raise CinrInputError(
                f"{self.path}: read error at ({x}, {y}) in the {w}x{h} region: {_one_line(exc)}"
            ) from None
        if out is None:
            return region
        out[y0 - y : y1 - y, x0 - x : x1 - x] = region
        return out

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole level box-downsampled to longest side <= max_side, RGB uint8 on white."""
        if max_side <= 0:
            raise ValueError(f"max_side must be positive, got {max_side}")
        if self._slide is not None:
            return self._thumbnail_openslide(max_side)
        return self._thumbnail_vips(max_side)

    def _thumbnail_openslide(self, max_side: int) -> np.ndarray:
        """Exact area average of the best pyramid level for the target scale, read tile by tile."""
        self._check_open()
        tw, th = _thumb_size(self.width, self.height, max_side)
        if (tw, th) == (self.width, self.height):
            return self.read(0, 0, self.width, self.height)
        factor = max(self.width / tw, self.height / th)
        try:
            src = int(self._slide.get_best_level_for_downsample(self.downsample * factor))
            src = max(src, self.level)
            sw, sh = (int(v) for v in self._slide.level_dimensions[src])
            sds = float(self._slide.level_downsamples[src])
        except Exception as exc:  # noqa: BLE001 - latched OpenSlide errors
            raise CinrInputError(f"{self.path}: read error in thumbnail: {_one_line(exc)}") from None
        acc = AreaAccumulator(sw, sh, tw, th)
        for ty in range(0, sh, _THUMB_TILE):
            for tx in range(0, sw, _THUMB_TILE):
                tile = self._read_openslide(
                    src, sds, tx, ty, min(_THUMB_TILE, sw - tx), min(_THUMB_TILE, sh - ty)
                )
                acc.add(tile, tx, ty)
        return acc.result()

    def _thumbnail_vips(self, max_side: int) -> np.ndarray:
        """libvips' thumbnail (shrink-on-load where the format allows, then area reduction)."""
        import pyvips

        tw, th = _thumb_size(self.width, self.height, max_side)
        if (tw, th) == (self.width, self.height):
            return self.read(0, 0, self.width, self.height)
        try:
            img = pyvips.Image.thumbnail(
                str(self.path), tw, height=th, size="force", no_rotate=True, fail_on="truncated"
            )
            return _vips_to_rgb8(img)
        except pyvips.Error as exc:
            raise CinrInputError(f"{self.path}: read error in thumbnail: {_one_line(exc)}") from None

    def associated_images(self) -> dict[str, bytes]:
        """Associated images (label, macro, thumbnail...) as PNG bytes, on white; {} for plain images."""
        from PIL import Image

        if self._slide is None:
            return {}
        self._check_open()
        props = self.properties
        out: dict[str, bytes] = {}
        for name in list(self._slide.associated_images.keys()):
            try:
                w = int(props[f"openslide.associated.{name}.width"])
                h = int(props[f"openslide.associated.{name}.height"])
            except (KeyError, ValueError):
                w = h = -1
            if w * h > MAX_ASSOCIATED_PIXELS:
                log.warning("%s: associated image %r (%dx%d) is too large, skipped", self.path, name, w, h)
                continue
            try:
                img = self._slide.associated_images[name]
            except Exception as exc:  # noqa: BLE001 - OpenSlideError and friends
                raise CinrInputError(
                    f"{self.path}: read error in associated image {name!r}: {_one_line(exc)}"
                ) from None
            if img.width * img.height > MAX_ASSOCIATED_PIXELS:
                log.warning("%s: associated image %r is too large, skipped", self.path, name)
                continue
            rgb = _composite_rgba(np.asarray(img.convert("RGBA"), dtype=np.uint8))
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            out[str(name)] = buf.getvalue()
        return out

    # -- lifetime --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._slide is None and self._vips is None:
            raise CinrInputError(f"{self.path}: the source is closed")

    def close(self) -> None:
        """Release the slide or image (idempotent)."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None
        self._vips = None

    def __enter__(self) -> SlideSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SlideSource({str(self.path)!r}, level={self.level}, {self.width}x{self.height}, {self.format})"
        )


def _stat_error(p: Path, exc: OSError) -> str:
    """A one-line message for a path that cannot be stat'ed (missing, symlink loop, not a folder...)."""
    if exc.errno == errno.ENOENT:
        if os.path.islink(p):
            return f"{p}: is a broken symbolic link (its target {os.readlink(p)} does not exist)"
        return f"{p}: no such file"
    if exc.errno == errno.ELOOP:
        return f"{p}: symbolic link loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOTDIR:
        return f"{p}: no such file (a part of the path before the name is a file, not a folder)"
    return f"{p}: cannot open ({exc.strerror or _one_line(exc)})"


def _is_dicom(f: Path) -> bool:
    """True when the file has the DICOM preamble magic ('DICM' at offset 128)."""
    try:
        with open(f, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _vms_companions_bytes(p: Path) -> int:
    """Bytes of the image, map and optimisation files a Hamamatsu .vms/.vmu names (same folder)."""
    total = 0
    seen: set[Path] = set()
    try:
        text = p.read_text(encoding="latin-1")
    except OSError:
        return 0
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.startswith(("ImageFile", "MapFile", "OptimisationFile", "MacroImage")):
            continue
        f = p.parent / value.strip()
        if f not in seen and f.is_file():
            seen.add(f)
            total += f.stat().st_size
    return total


def read_crop(path: str | os.PathLike[str], size: int, level: int = 0) -> np.ndarray:
    """A centred size x size crop (smaller if the image is) of a slide or image, RGB uint8."""
    with SlideSource(path, level) as r:
        w = min(size, r.width)
        h = min(size, r.height)
        return r.read((r.width - w) // 2, (r.height - h) // 2, w, h)
