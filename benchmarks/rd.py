"""Rate-distortion: cinr against JPEG, JPEG 2000, JPEG XL, AVIF and WebP on real H&E regions.

python -m benchmarks.rd [--quick] [--json] [--image PATH ...] [--size N] [--steps N | PRESET=N,...]
                        [--region saturated|centre] [--out NAME] [--results DIR] [--quiet]

Regions. For each image (default: the three real slides in ../shared/data; ``--quick``: the
first only, 256 px) one ``--size`` x ``--size`` region (default 1000) is read at level 0,
composited on white. ``--region saturated`` (default) takes the window with the highest mean
HSV saturation on a <= 1024 px thumbnail (tissue-rich, stained), ``centre`` the centred crop.
The region's coordinates are in the output.

cinr. For each preset (``fast``, ``default``) the ``cinr`` model is fitted ONCE to the region
(``fit_cinr``) and stored at every storage precision of ``cinr_codec.QUANT_SETTINGS``
(``store_cinr``, i.e. ``write_fitted``); bpp = whole ``.cinr`` file bytes * 8 / pixels, and
PSNR/SSIM are those of the decoded file (measured after quantization).

Codecs (imagecodecs): JPEG (libjpeg-turbo, 4:2:0, quality), JPEG 2000 (OpenJPEG, ``level`` =
target PSNR in dB), JPEG XL (libjxl, effort 7, butteraugli distance), AVIF (libavif, speed 6,
quality), WebP (libwebp lossy, method 4, quality). Each codec runs a base sweep, then extra
lower/higher-rate settings while its bpp or PSNR range does not cover cinr's. Missing
encoders are skipped with a note. Lossless results (infinite PSNR) are listed, not plotted.

BD-rate (``benchmarks.bdrate``): Bjøntegaard delta rate with PCHIP interpolation of log-rate
against PSNR over the overlapping PSNR interval, in percent, of cinr against each codec
(negative: cinr needs fewer bits). The cinr curve is the rate-distortion front of ALL cinr
points of the image (both presets, every precision; dominated points dropped); the
``default``-preset-only figure is reported too. ``None`` when curves do not overlap or a
curve has fewer than two points. Averaged over images (mean of the defined per-image values).

Also reported: the bytes of the source slide's own level-0 tiles that cover the region (read
from the TIFF tile tables; an untiled file is estimated pro rata by area) and of a
JPEG-tiled pyramid of the region written by libvips (256 px tiles, Q 80 and 90), split into
level 0 and the down-sampled levels, which cinr does not need to store.

Writes ``rd_<name>.md``, ``rd_<name>.png`` and ``rd_<name>.json`` to ``--results``
(default ``benchmarks/results``); ``<name>`` is ``quick``, ``full`` or ``--out``.
``--json`` prints one JSON object on stdout; progress and logs go to stderr.
MS-SSIM is not reported.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import struct
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cinr_codec import QUANT_SETTINGS, encode_image, fit_image, write_fitted
from cinr_codec.errors import CinrError
from cinr_codec.fitting import FitResult, resolve_device
from cinr_codec.metrics import psnr, ssim
from cinr_codec.presets import get_preset
from cinr_codec.slide import SlideReader

from .bdrate import bd_rate, rate_at, rd_front
from .common import RESULTS, NullSink, header, machine

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_IMAGES = [
    SHARED / "he-prostate-2500.jpeg",
    SHARED / "CMU-1-Small-Region.svs",
    SHARED / "TCGA-CR-7395-01A-01-TS1.svs",
]
CODECS = ("jpeg", "jpeg2000", "jpegxl", "avif", "webp")
PRESETS = ("fast", "default")
QUICK_QUANTS = ("int8+float16", "int8", "float16")
QUICK_STEPS = 300
PYRAMID_QUALITIES = (80, 90)
PYRAMID_TILE = 256


# --------------------------------------------------------------------------------------------
# cinr: the one place that encodes with cinr (to be switched to the whole-slide encoder)
# --------------------------------------------------------------------------------------------


def fit_cinr(
    region: np.ndarray,
    preset: str,
    steps: int | None,
    *,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Fit the ``cinr`` model with ``preset`` to ``region`` (``steps=None``: the preset's steps)."""
    return fit_image(
        region, model="cinr", preset=preset, steps=steps, device=device, seed=seed, progress=progress
    )


def store_cinr(result: FitResult, region: np.ndarray, path: Path, quant: str) -> dict[str, Any]:
    """Write a fitted model as ``path`` at storage precision ``quant``.

    Returns ``{"bytes": file size, "psnr", "ssim"}`` (of the decoded file, after quantization)
    plus ``payload_bytes``.
    """
    s = write_fitted(result, region, path, quant=quant)
    return {
        "bytes": int(s["bytes"]),
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "payload_bytes": s["payload_bytes"],
    }


def encode_cinr(region: np.ndarray, path: Path, preset: str, quant: str, steps: int | None) -> dict[str, Any]:
    """Fit and store in one call (``cinr_codec.encode_image``); same result dict as ``store_cinr``.

    The benchmark itself fits once per preset (``fit_cinr``) and stores every precision
    (``store_cinr``); this is the single-call form, bit-identical for the same seed on a CPU.
    """
    s = encode_image(region, path, preset=preset, quant=quant, steps=steps, device="auto")
    return {
        "bytes": int(s["bytes"]),
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "payload_bytes": s["payload_bytes"],
    }


# --------------------------------------------------------------------------------------------
# Conventional codecs
# --------------------------------------------------------------------------------------------


@dataclass
class Codec:
    """A conventional codec: how to encode at a setting, decode, and which settings to sweep."""

    name: str
    label: str
    imagecodecs_name: str
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    fmt: Callable[[float], str]
    base: list[float]  # ordered from low to high rate
    quick: list[float]
    low: list[float] = field(default_factory=list)  # extra settings, ever lower rate
    high: list[float] = field(default_factory=list)  # extra settings, ever higher rate


def make_codecs() -> tuple[dict[str, Codec], dict[str, str]]:
    """The available codecs, and a reason for each one that is not."""
    try:
        import imagecodecs as ic
    except ImportError:
        return {}, {name: "imagecodecs is not installed" for name in CODECS}
    codecs = [
        Codec(
            "jpeg",
            "JPEG (libjpeg-turbo, 4:2:0, quality q)",
            "JPEG8",
            lambda a, q: ic.jpeg8_encode(a, level=int(q)),
            ic.jpeg8_decode,
            lambda q: f"q={q:g}",
            [30, 40, 50, 60, 70, 75, 80, 85, 90, 95],
            [30, 50, 75, 90, 95],
            low=[20, 10, 5],
            high=[97, 98, 99, 100],
        ),
        Codec(
            "jpeg2000",
            "JPEG 2000 (OpenJPEG, level = target PSNR in dB)",
            "JPEG2K",
            lambda a, q: ic.jpeg2k_encode(a, level=q),
            ic.jpeg2k_decode,
            lambda q: f"psnr={q:g}",
            [28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 50],
            [30, 35, 40, 45, 50],
            low=[26, 24, 22, 20],
            high=[52, 54, 56, 58],
        ),
        Codec(
            "jpegxl",
            "JPEG XL (libjxl, effort 7, distance d)",
            "JPEGXL",
            lambda a, d: ic.jpegxl_encode(a, distance=d, effort=7),
            ic.jpegxl_decode,
            lambda d: f"d={d:g}",
            [6, 4, 3, 2, 1.5, 1, 0.7, 0.5, 0.3, 0.2],
            [4, 2, 1, 0.5, 0.2],
            low=[8, 11, 15],
            high=[0.1, 0.05],
        ),
        Codec(
            "avif",
            "AVIF (libavif, speed 6, quality q)",
            "AVIF",
            lambda a, q: ic.avif_encode(a, level=int(q), speed=6),
            ic.avif_decode,
            lambda q: f"q={q:g}",
            [30, 40, 50, 60, 70, 80, 85, 90, 95],
            [30, 50, 70, 90],
            low=[20, 10],
            high=[97, 98, 99],
        ),
        Codec(
            "webp",
            "WebP (libwebp lossy, method 4, quality q)",
            "WEBP",
            lambda a, q: ic.webp_encode(a, level=int(q), lossless=False, method=4),
            ic.webp_decode,
            lambda q: f"q={q:g}",
            [30, 40, 50, 60, 70, 80, 85, 90, 95, 100],
            [30, 50, 75, 90, 100],
            low=[20, 10, 5],
        ),
    ]
    out: dict[str, Codec] = {}
    missing: dict[str, str] = {}
    for c in codecs:
        feature = getattr(ic, c.imagecodecs_name, None)
        if feature is not None and getattr(feature, "available", False):
            out[c.name] = c
        else:
            missing[c.name] = f"imagecodecs {ic.__version__} has no {c.imagecodecs_name} codec"
    return out, missing


def library_versions() -> dict[str, str]:
    """Versions of the image libraries, for the result header."""
    out: dict[str, str] = {}
    try:
        import imagecodecs as ic

        out["imagecodecs"] = ic.__version__
        libs = dict(
            item.split("-", 1)
            for item in ic.version().split(", ")
            if "-" in item and not item.endswith("n/a")
        )
        out["codec libraries"] = ", ".join(
            f"{k} {libs[k]}"
            for k in ("libjpeg_turbo", "openjpeg", "libjxl", "libavif", "libwebp")
            if k in libs
        )
    except ImportError:
        out["imagecodecs"] = "not installed"
    try:
        import PIL

        out["pillow"] = PIL.__version__
    except ImportError:
        pass
    try:
        import pyvips

        out["pyvips"] = (
            f"{pyvips.__version__} (libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)})"
        )
    except Exception:  # noqa: BLE001 - a broken libvips must not stop the benchmark
        out["pyvips"] = "not available"
    try:
        import openslide

        out["openslide"] = f"{openslide.__version__} (library {openslide.__library_version__})"
    except Exception:  # noqa: BLE001
        pass
    return out


def _metrics(decoded: np.ndarray, region: np.ndarray) -> tuple[float | None, float]:
    if decoded.ndim == 2:
        decoded = np.repeat(decoded[..., None], 3, axis=2)
    decoded = np.ascontiguousarray(decoded[..., :3])
    p = psnr(decoded, region)
    return (p if math.isfinite(p) else None), ssim(decoded, region)


def measure_codec(codec: Codec, region: np.ndarray, setting: float) -> dict[str, Any]:
    """Encode ``region`` at ``setting``, decode, measure."""
    t0 = time.perf_counter()
    data = codec.encode(region, setting)
    seconds = time.perf_counter() - t0
    p, s = _metrics(np.asarray(codec.decode(data)), region)
    n = region.shape[0] * region.shape[1]
    return {
        "codec": codec.name,
        "setting": codec.fmt(setting),
        "bytes": len(data),
        "bpp": 8.0 * len(data) / n,
        "psnr": p,
        "ssim": s,
        "lossless": p is None,
        "seconds": round(seconds, 3),
    }


def sweep(
    codec: Codec,
    region: np.ndarray,
    settings: Sequence[float],
    target: dict[str, float] | None,
    step: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Base settings, then extra ones while the codec's bpp/PSNR range does not cover ``target``.

    ``step(label)`` is called once per setting, tried or skipped (len(settings) + extras calls).
    """
    rows = []
    for s in settings:
        rows.append(measure_codec(codec, region, s))
        step(f"{codec.name} {codec.fmt(s)}")

    def lo_bpp() -> float:
        return min(r["bpp"] for r in rows)

    def hi_bpp() -> float:
        return max(r["bpp"] for r in rows)

    def lo_psnr() -> float:
        return min(math.inf if r["psnr"] is None else r["psnr"] for r in rows)

    def hi_psnr() -> float:
        return max(math.inf if r["psnr"] is None else r["psnr"] for r in rows)

    for extras, lower in ((codec.low, True), (codec.high, False)):
        for s in extras:
            if target is None:
                need = False
            elif lower:
                need = lo_bpp() > target["bpp_min"] or lo_psnr() > target["psnr_min"]
            else:
                need = hi_bpp() < target["bpp_max"] or hi_psnr() < target["psnr_max"]
            if need:
                rows.append(measure_codec(codec, region, s))
            step(f"{codec.name} {codec.fmt(s)}" + ("" if need else " (not needed)"))
    rows.sort(key=lambda r: r["bpp"])
    coverage = {}
    if target is not None:
        coverage = {
            "bpp": [lo_bpp(), hi_bpp()],
            "psnr": [lo_psnr(), hi_psnr()],
            "covers_cinr_bpp": lo_bpp() <= target["bpp_min"] and hi_bpp() >= target["bpp_max"],
            "covers_cinr_psnr": lo_psnr() <= target["psnr_min"] and hi_psnr() >= target["psnr_max"],
        }
        coverage["psnr"] = [None if not math.isfinite(v) else v for v in coverage["psnr"]]
    return rows, coverage


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------


def saturated_window(path: Path, width: int, height: int, w: int, h: int) -> tuple[int, int]:
    """Level-0 (x, y) of the w x h window with the highest mean HSV saturation on a thumbnail.

    Ties go to the window nearest the centre.
    """
    import openslide

    from .quant import saturation

    with openslide.open_slide(str(path)) as slide:
        thumb = np.asarray(slide.get_thumbnail((1024, 1024)).convert("RGB"))
    th, tw = thumb.shape[:2]
    sx, sy = width / tw, height / th
    ww, wh = max(1, round(w / sx)), max(1, round(h / sy))
    if ww >= tw and wh >= th:
        return (width - w) // 2, (height - h) // 2
    ww, wh = min(ww, tw), min(wh, th)
    s = saturation(thumb).astype(np.float64)
    ii = np.zeros((th + 1, tw + 1))
    ii[1:, 1:] = s.cumsum(0).cumsum(1)
    sums = ii[wh:, ww:] - ii[:-wh, ww:] - ii[wh:, :-ww] + ii[:-wh, :-ww]  # (th-wh+1, tw-ww+1)
    ys, xs = np.mgrid[0 : sums.shape[0], 0 : sums.shape[1]]
    dist = np.hypot(xs - (tw - ww) / 2, ys - (th - wh) / 2)
    best = np.lexsort((dist.ravel(), -np.round(sums.ravel(), 6)))[0]
    ty, tx = divmod(int(best), sums.shape[1])
    x = min(max(int(round(tx * sx)), 0), width - w)
    y = min(max(int(round(ty * sy)), 0), height - h)
    return x, y


def read_region(path: Path, size: int, how: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The size x size region (smaller if the image is) chosen by ``how``: RGB uint8 and where it is."""
    with SlideReader(path) as r:
        w, h = min(size, r.width), min(size, r.height)
        if how == "centre":
            x, y = (r.width - w) // 2, (r.height - h) // 2
        else:
            x, y = saturated_window(path, r.width, r.height, w, h)
        pixels = r.read(x, y, w, h)
        return pixels, {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "how": "most saturated window of a thumbnail" if how == "saturated" else "centred crop",
            "image_width": r.width,
            "image_height": r.height,
        }


# --------------------------------------------------------------------------------------------
# TIFF tile tables: the source's own tiles and the JPEG pyramid's levels
# --------------------------------------------------------------------------------------------

#: TIFF field type -> (struct format of one value, "" when not decoded; bytes per value).
_TIFF_TYPES = {
    1: ("B", 1),
    2: ("B", 1),
    3: ("H", 2),
    4: ("I", 4),
    5: ("", 8),
    6: ("b", 1),
    7: ("B", 1),
    8: ("h", 2),
    9: ("i", 4),
    10: ("", 8),
    11: ("", 4),
    12: ("", 8),
    13: ("I", 4),
    16: ("Q", 8),
    17: ("q", 8),
    18: ("Q", 8),
}
_COMPRESSION = {
    1: "none",
    5: "LZW",
    7: "JPEG",
    8: "deflate",
    33003: "JPEG 2000 (Aperio YCbCr)",
    33005: "JPEG 2000 (Aperio RGB)",
    34712: "JPEG 2000",
    50001: "WebP",
    50002: "JPEG XL",
}
_WANTED = {256, 257, 259, 270, 322, 323, 324, 325, 347}


def tiff_ifds(f: BinaryIO, max_ifds: int = 64) -> list[dict[int, Any]]:
    """The image file directories of a classic or Big TIFF: {tag: ints (tuple) or bytes} (a few tags)."""
    f.seek(0)
    head = f.read(16)
    if head[:2] not in (b"II", b"MM"):
        raise ValueError("not a TIFF file")
    e = "<" if head[:2] == b"II" else ">"
    (version,) = struct.unpack(e + "H", head[2:4])
    if version == 42:
        big, (offset,) = False, struct.unpack(e + "I", head[4:8])
    elif version == 43:
        big, (offset,) = True, struct.unpack(e + "Q", head[8:16])
    else:
        raise ValueError("not a TIFF file")
    count_fmt, entry_size, next_fmt, inline = ("Q", 20, "Q", 8) if big else ("H", 12, "I", 4)
    ifds: list[dict[int, Any]] = []
    seen = set()
    while offset and offset not in seen and len(ifds) < max_ifds:
        seen.add(offset)
        f.seek(offset)
        (n,) = struct.unpack(e + count_fmt, f.read(struct.calcsize(count_fmt)))
        if n > 4096:
            raise ValueError("implausible TIFF directory")
        raw = f.read(n * entry_size)
        (offset,) = struct.unpack(e + next_fmt, f.read(struct.calcsize(next_fmt)))
        tags: dict[int, Any] = {}
        for i in range(n):
            entry = raw[i * entry_size : (i + 1) * entry_size]
            if big:
                tag, typ, cnt = struct.unpack(e + "HHQ", entry[:12])
                value = entry[12:20]
            else:
                tag, typ, cnt = struct.unpack(e + "HHI", entry[:8])
                value = entry[8:12]
            if tag not in _WANTED or typ not in _TIFF_TYPES or cnt > 1 << 24:
                continue
            fmt, item = _TIFF_TYPES[typ]
            size = item * cnt
            if size > inline:
                (where,) = struct.unpack(e + ("Q" if big else "I"), value)
                pos = f.tell()
                f.seek(where)
                value = f.read(size)
                f.seek(pos)
            data = value[:size]
            if typ in (2, 7):
                tags[tag] = bytes(data)
            elif fmt:
                tags[tag] = struct.unpack(e + fmt * cnt, data)
        ifds.append(tags)
    return ifds


def _tiled(ifd: dict[int, Any]) -> bool:
    return all(t in ifd for t in (256, 257, 322, 323, 324, 325))


def tile_bytes(ifd: dict[int, Any], x: int, y: int, w: int, h: int) -> dict[str, Any]:
    """Bytes of the tiles of a tiled IFD that intersect the region (plus shared JPEG tables, once)."""
    width, height = ifd[256][0], ifd[257][0]
    tw, th = ifd[322][0], ifd[323][0]
    across = -(-width // tw)
    counts = ifd[325]
    total, n, area = 0, 0, 0
    for row in range(y // th, (y + h - 1) // th + 1):
        for col in range(x // tw, (x + w - 1) // tw + 1):
            total += int(counts[row * across + col])
            n += 1
            area += (min(tw, width - col * tw)) * (min(th, height - row * th))
    tables = len(ifd.get(347, b""))
    return {
        "tiles": n,
        "tile_size": [tw, th],
        "tile_bytes": total,
        "jpeg_tables_bytes": tables,
        "bytes": total + tables,
        "covered_pixels": area,
    }


def source_tiles(path: Path, region: dict[str, Any]) -> dict[str, Any]:
    """The source's own compressed bytes for the region: exact for a tiled TIFF, else pro rata by area."""
    x, y, w, h = region["x"], region["y"], region["width"], region["height"]
    n = w * h
    try:
        with open(path, "rb") as f:
            tiled = [d for d in tiff_ifds(f) if _tiled(d)]
    except (OSError, ValueError, struct.error):
        tiled = []
    if tiled:
        ifd = max(tiled, key=lambda d: d[256][0])  # level 0
        if (ifd[256][0], ifd[257][0]) == (region["image_width"], region["image_height"]):
            out = tile_bytes(ifd, x, y, w, h)
            desc = ifd.get(270, b"").decode("latin-1", "replace")
            q = re.search(r"\bQ=(\d+)", desc)
            comp = ifd.get(259, (0,))[0]
            out.update(
                exact=True,
                how="level-0 tiles intersecting the region (TIFF TileByteCounts"
                + (", plus the shared JPEGTables once)" if out["jpeg_tables_bytes"] else ")"),
                compression=_COMPRESSION.get(comp, str(comp)),
                quality=int(q.group(1)) if q else None,
                bpp_region=8.0 * out["bytes"] / n,
                bpp_covered=8.0 * out["bytes"] / out["covered_pixels"],
            )
            return out
    size = path.stat().st_size
    try:
        from PIL import Image

        with Image.open(path) as im:
            fmt = im.format or path.suffix
    except Exception:  # noqa: BLE001
        fmt = path.suffix.lstrip(".") or "file"
    est = size * n / (region["image_width"] * region["image_height"])
    return {
        "exact": False,
        "how": f"estimate: untiled {fmt} file ({size:,} B for the whole image) pro rata by area",
        "compression": fmt,
        "quality": None,
        "bytes": int(round(est)),
        "bpp_region": 8.0 * est / n,
        "bpp_covered": 8.0 * est / n,
    }


def jpeg_pyramid(region: np.ndarray, quality: int) -> dict[str, Any]:
    """A JPEG-tiled pyramidal TIFF of the region (libvips): bytes per level, level-0 quality."""
    import pyvips

    h, w = region.shape[:2]
    im = pyvips.Image.new_from_memory(np.ascontiguousarray(region).tobytes(), w, h, 3, "uchar")
    buf = im.tiffsave_buffer(
        tile=True,
        pyramid=True,
        compression="jpeg",
        Q=quality,
        tile_width=PYRAMID_TILE,
        tile_height=PYRAMID_TILE,
    )
    levels = []
    for ifd in tiff_ifds(io.BytesIO(buf)):
        if _tiled(ifd):
            lw, lh = ifd[256][0], ifd[257][0]
            t = tile_bytes(ifd, 0, 0, lw, lh)
            levels.append({"width": lw, "height": lh, "bytes": t["bytes"], "tiles": t["tiles"]})
    dec = pyvips.Image.new_from_buffer(buf, "", page=0)
    decoded = np.ndarray(
        buffer=dec.write_to_memory(), dtype=np.uint8, shape=(dec.height, dec.width, dec.bands)
    )
    p, s = _metrics(decoded, region)
    n = w * h
    lower = sum(lv["bytes"] for lv in levels[1:])
    return {
        "quality": quality,
        "levels": levels,
        "level0_bytes": levels[0]["bytes"],
        "lower_levels_bytes": lower,
        "file_bytes": len(buf),
        "level0_bpp": 8.0 * levels[0]["bytes"] / n,
        "lower_levels_bpp": 8.0 * lower / n,
        "file_bpp": 8.0 * len(buf) / n,
        "level0_psnr": p,
        "level0_ssim": s,
    }


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def cinr_target(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """The bpp and PSNR range of the cinr rows (what the codec sweeps should cover)."""
    pts = [r for r in rows if r["psnr"] is not None]
    if not pts:
        return None
    return {
        "bpp_min": min(r["bpp"] for r in pts),
        "bpp_max": max(r["bpp"] for r in pts),
        "psnr_min": min(r["psnr"] for r in pts),
        "psnr_max": max(r["psnr"] for r in pts),
    }


def bd_rates(
    rows: list[dict[str, Any]], codecs: Sequence[str], preset: str | None = None
) -> dict[str, float | None]:
    """BD-rate (%) of cinr (all presets, or one) against each codec, from one image's rows."""
    cinr = [r for r in rows if r["codec"] == "cinr" and (preset is None or r["preset"] == preset)]
    out: dict[str, float | None] = {}
    for c in codecs:
        anchor = [r for r in rows if r["codec"] == c]
        out[c] = bd_rate(
            [r["bpp"] for r in anchor],
            [r["psnr"] for r in anchor],
            [r["bpp"] for r in cinr],
            [r["psnr"] for r in cinr],
        )
    return out


def equal_psnr(rows: list[dict[str, Any]], codecs: Sequence[str]) -> list[dict[str, Any]]:
    """For each cinr point: the bpp each codec needs for the same PSNR (None outside its range)."""
    out = []
    for r in rows:
        if r["codec"] != "cinr" or r["psnr"] is None:
            continue
        entry = {"setting": r["setting"], "bpp": r["bpp"], "psnr": r["psnr"], "codecs": {}}
        for c in codecs:
            pts = [q for q in rows if q["codec"] == c]
            entry["codecs"][c] = rate_at([q["bpp"] for q in pts], [q["psnr"] for q in pts], r["psnr"])
        out.append(entry)
    return out


@dataclass
class Config:
    """What to run."""

    size: int
    region: str
    presets: list[str]
    quants: list[str]
    steps: dict[str, int | None]
    codecs: dict[str, Codec]
    quick: bool
    device: str
    seed: int
    pyramid: bool = True


def planned_work(cfg: Config) -> int:
    """Progress-bar units for one image: cinr fits and stores, codec settings, pyramids."""
    n = len(cfg.presets) * (1 + len(cfg.quants))
    for c in cfg.codecs.values():
        n += len(c.quick if cfg.quick else c.base) + len(c.low) + len(c.high)
    return n + (len(PYRAMID_QUALITIES) if cfg.pyramid else 0)


def run_image(path: Path, label: str, cfg: Config, bar: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Everything for one image: region, cinr fits and stores, codec sweeps, source and pyramid sizes."""
    t_image = time.perf_counter()
    region, where = read_region(path, cfg.size, cfg.region)
    h, w = region.shape[:2]
    n = w * h
    log(f"{label}: {w}x{h} region at ({where['x']}, {where['y']}), {where['how']}")
    rows: list[dict[str, Any]] = []
    fits = []

    def step(what: str) -> None:
        bar.label = f"{label}: {what}"
        bar.update(1)
        log(f"  {what}")

    with tempfile.TemporaryDirectory() as tmp:
        for preset in cfg.presets:
            steps = cfg.steps.get(preset)
            total = steps if steps is not None else int(get_preset("cinr", preset).train["steps"])
            bar.label = f"{label}: fitting cinr/{preset}"
            bar.update(0)

            def progress(
                step_i: int, seconds: float, est: float, preset: str = preset, total: int = total
            ) -> None:
                if step_i % 50 == 0:
                    bar.label = f"{label}: fitting cinr/{preset} step {step_i}/{total}, ~{est:.1f} dB"
                    bar.update(0)

            fit = fit_cinr(region, preset, steps, device=cfg.device, seed=cfg.seed, progress=progress)
            fits.append(
                {
                    "preset": preset,
                    "steps": fit.steps,
                    "seconds": round(fit.seconds, 2),
                    "fit_psnr": fit.psnr,
                    "n_params": fit.n_params,
                    "device": fit.device,
                }
            )
            step(
                f"fit cinr/{preset}: {fit.steps} steps, {fit.seconds:.1f} s, {fit.psnr:.2f} dB before storage"
            )
            for quant in cfg.quants:
                t0 = time.perf_counter()
                s = store_cinr(fit, region, Path(tmp) / f"{preset}-{quant}.cinr", quant)
                p = s["psnr"] if math.isfinite(s["psnr"]) else None
                rows.append(
                    {
                        "codec": "cinr",
                        "setting": f"{preset}/{quant}",
                        "preset": preset,
                        "quant": quant,
                        "bytes": s["bytes"],
                        "payload_bytes": s["payload_bytes"],
                        "bpp": 8.0 * s["bytes"] / n,
                        "psnr": p,
                        "ssim": s["ssim"],
                        "lossless": p is None,
                        "steps": fit.steps,
                        "seconds": round(fit.seconds + time.perf_counter() - t0, 3),
                    }
                )
                step(f"cinr {preset}/{quant}: {8.0 * s['bytes'] / n:.3f} bpp, {s['psnr']:.2f} dB")
    target = cinr_target(rows)
    coverage = {}
    for name, codec in cfg.codecs.items():
        codec_rows, coverage[name] = sweep(
            codec, region, codec.quick if cfg.quick else codec.base, target, step
        )
        rows += codec_rows
    pyramids = []
    if cfg.pyramid:
        for q in PYRAMID_QUALITIES:
            try:
                pyramids.append(jpeg_pyramid(region, q))
            except Exception as exc:  # noqa: BLE001 - libvips problems skip this part only
                log(f"  JPEG pyramid Q{q} skipped: {exc.__class__.__name__}: {exc}")
            step(f"JPEG pyramid Q{q}")
    for r in rows:
        r["image"] = label
    names = list(cfg.codecs)
    return {
        "image": label,
        "path": str(path),
        "region": where,
        "pixels": n,
        "source_tiles": source_tiles(path, where),
        "pyramid": pyramids,
        "cinr_fits": fits,
        "coverage": coverage,
        "rows": rows,
        "bd_rate": bd_rates(rows, names),
        "bd_rate_default_preset": bd_rates(rows, names, "default") if "default" in cfg.presets else {},
        "equal_psnr": equal_psnr(rows, names),
        "seconds": round(time.perf_counter() - t_image, 1),
    }


def mean_bd(images: list[dict[str, Any]], key: str, codecs: Sequence[str]) -> dict[str, float | None]:
    """Mean over images of the defined per-image BD-rates."""
    out: dict[str, float | None] = {}
    for c in codecs:
        vals = [im[key][c] for im in images if im[key].get(c) is not None]
        out[c] = float(np.mean(vals)) if vals else None
    return out


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _f(v: float | None, fmt: str = ".3f", none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f}%"


def report(result: dict[str, Any], extra: dict[str, str], png_name: str | None) -> str:
    """Markdown: header, method, per image (region, source tiles, pyramid, rows, equal-PSNR), BD-rates."""
    codecs = result["codecs"]
    lines = [header("Rate-distortion: cinr against JPEG, JPEG 2000, JPEG XL, AVIF, WebP", extra)]
    s = result["settings"]
    steps = ", ".join(f"{p}: {'preset default' if v is None else v}" for p, v in s["steps"].items())
    lines.append(
        f"Regions: {s['size']} px side, {s['region_how']}. cinr: presets {', '.join(s['presets'])} "
        f"(steps {steps}; fitted once per preset), stored at {', '.join(s['quants'])}; bpp = whole `.cinr` "
        "file bytes × 8 / region pixels, PSNR/SSIM of the decoded file (after quantization). Codecs: "
        + "; ".join(result["codec_labels"][c] for c in codecs)
        + ". PSNR on 8-bit RGB (data range 255), SSIM as `cinr_codec.metrics.ssim`. "
        "BD-rate: Bjøntegaard delta rate, PCHIP of log-rate against PSNR over the overlapping PSNR "
        "interval (`benchmarks/bdrate.py`), of cinr against each codec; negative = cinr needs fewer bits. "
        "The cinr curve is the rate-distortion front of all cinr points of an image (both presets, every "
        "precision; dominated points dropped); *default preset* uses only that preset's points. "
        "n/a: the curves do not overlap in PSNR or a curve has < 2 points.\n"
    )
    if result["skipped"]:
        lines.append("Skipped: " + "; ".join(f"{c} ({why})" for c, why in result["skipped"].items()) + ".\n")
    lines.append("## BD-rate of cinr against each codec\n")
    lines.append("| image | cinr curve | " + " | ".join(codecs) + " |")
    lines.append("|---|---|" + "---:|" * len(codecs))
    for im in result["images"]:
        lines.append(
            f"| {im['image']} | all points | " + " | ".join(_pct(im["bd_rate"][c]) for c in codecs) + " |"
        )
        if im["bd_rate_default_preset"]:
            lines.append(
                f"| {im['image']} | default preset | "
                + " | ".join(_pct(im["bd_rate_default_preset"][c]) for c in codecs)
                + " |"
            )
    lines.append("| **mean** | all points | " + " | ".join(_pct(result["bd_rate"][c]) for c in codecs) + " |")
    if result["bd_rate_default_preset"]:
        lines.append(
            "| **mean** | default preset | "
            + " | ".join(_pct(result["bd_rate_default_preset"][c]) for c in codecs)
            + " |"
        )
    lines.append("")
    if png_name:
        lines.append(f"![PSNR against bpp]({png_name})\n")
    for im in result["images"]:
        rg = im["region"]
        lines.append(f"## {im['image']}\n")
        lines.append(
            f"Region {rg['width']}x{rg['height']} at ({rg['x']}, {rg['y']}) of {rg['image_width']}x"
            f"{rg['image_height']} ({rg['how']}); {im['seconds']:.0f} s for this image. cinr fits: "
            + "; ".join(
                f"{f['preset']} {f['steps']} steps in {f['seconds']:.1f} s on {f['device']}, "
                f"{f['fit_psnr']:.2f} dB before storage, {f['n_params']:,} parameters"
                for f in im["cinr_fits"]
            )
            + ".\n"
        )
        st = im["source_tiles"]
        q = f", Q={st['quality']}" if st.get("quality") is not None else ""
        if st["exact"]:
            lines.append(
                f"Source's own storage: {st['tiles']} level-0 tiles of {st['tile_size'][0]}x{st['tile_size'][1]} "
                f"({st['compression']}{q}) cover the region: {st['bytes']:,} B ({st['how']}), "
                f"{st['bpp_region']:.3f} bpp over the region's pixels, {st['bpp_covered']:.3f} bpp over the "
                f"{st['covered_pixels']:,} pixels the tiles cover.\n"
            )
        else:
            lines.append(
                f"Source's own storage: {st['bytes']:,} B, {st['bpp_region']:.3f} bpp ({st['how']}).\n"
            )
        if im["pyramid"]:
            lines.append(
                f"JPEG-tiled pyramid of the region (libvips `tiffsave`, {PYRAMID_TILE} px tiles, halved "
                "until a level fits one tile; level 0 PSNR/SSIM against the region):\n"
            )
            lines.append(
                "| Q | levels | level 0 (B) | level 0 bpp | lower levels (B) | lower levels bpp | file (B) "
                "| file bpp | level 0 PSNR | level 0 SSIM |"
            )
            lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for p in im["pyramid"]:
                lv = ", ".join(f"{x['width']}x{x['height']}" for x in p["levels"])
                lines.append(
                    f"| {p['quality']} | {lv} | {p['level0_bytes']:,} | {p['level0_bpp']:.3f} | "
                    f"{p['lower_levels_bytes']:,} | {p['lower_levels_bpp']:.3f} | {p['file_bytes']:,} | "
                    f"{p['file_bpp']:.3f} | {_f(p['level0_psnr'], '.2f', 'inf')} | {p['level0_ssim']:.4f} |"
                )
            lines.append("")
        lines.append(
            "Rate needed for cinr's PSNR (PCHIP of log-rate on PSNR; – outside the codec's range):\n"
        )
        lines.append("| cinr setting | cinr bpp | PSNR | " + " | ".join(f"{c} bpp" for c in codecs) + " |")
        lines.append("|---|---:|---:|" + "---:|" * len(codecs))
        for e in im["equal_psnr"]:
            lines.append(
                f"| {e['setting']} | {e['bpp']:.3f} | {e['psnr']:.2f} | "
                + " | ".join(_f(e["codecs"][c]) for c in codecs)
                + " |"
            )
        lines.append("")
        lines.append("| codec | setting | bytes | bpp | PSNR (dB) | SSIM | encode s |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for r in im["rows"]:
            lines.append(
                f"| {r['codec']} | {r['setting']} | {r['bytes']:,} | {r['bpp']:.3f} | "
                f"{_f(r['psnr'], '.2f', 'lossless')} | {r['ssim']:.4f} | {r['seconds']:.2f} |"
            )
        cov = [
            f"{c} (bpp {v['bpp'][0]:.2f}–{v['bpp'][1]:.2f})"
            for c, v in im["coverage"].items()
            if v and not v["covers_cinr_bpp"]
        ]
        if cov:
            lines.append(
                "\nNot covering cinr's bpp range even with the extra settings: " + ", ".join(cov) + "."
            )
        lines.append("")
    lines.append(f"Total wall time: {result['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path, extra: dict[str, str]) -> bool:
    """PSNR against bpp (log x), one panel per image, one curve per codec, cinr points marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    images = result["images"]
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(max(6.5, 5.2 * n), 5.6), dpi=120, squeeze=False)
    colours = dict(zip(CODECS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for ax, im in zip(axes[0], images):
        for c in result["codecs"]:
            pts = [r for r in im["rows"] if r["codec"] == c and r["psnr"] is not None]
            if pts:
                ax.plot(
                    [r["bpp"] for r in pts],
                    [r["psnr"] for r in pts],
                    marker=".",
                    ms=4,
                    lw=1,
                    color=colours.get(c),
                    label=c,
                )
        cinr = [r for r in im["rows"] if r["codec"] == "cinr" and r["psnr"] is not None]
        fr, fp = rd_front([r["bpp"] for r in cinr], [r["psnr"] for r in cinr])
        if len(fr):
            ax.plot(fr, fp, color="black", lw=2, label="cinr (front)")
        for preset, marker in (("fast", "^"), ("default", "*")):
            pts = [r for r in cinr if r["preset"] == preset]
            if pts:
                ax.scatter(
                    [r["bpp"] for r in pts],
                    [r["psnr"] for r in pts],
                    marker=marker,
                    s=70,
                    color="black",
                    zorder=5,
                    label=f"cinr {preset}",
                )
                for r in pts:
                    ax.annotate(
                        r["quant"],
                        (r["bpp"], r["psnr"]),
                        fontsize=6,
                        xytext=(3, -8),
                        textcoords="offset points",
                    )
        for p in im["pyramid"]:
            if p["level0_psnr"] is not None:
                ax.scatter([p["file_bpp"]], [p["level0_psnr"]], marker="x", color="grey", zorder=4)
                ax.annotate(
                    f"JPEG pyramid Q{p['quality']}",
                    (p["file_bpp"], p["level0_psnr"]),
                    fontsize=6,
                    color="grey",
                )
        rg = im["region"]
        ax.set_title(f"{im['image']}\n{rg['width']}x{rg['height']} at ({rg['x']}, {rg['y']})", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR (dB, RGB)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    text = header("cinr rate-distortion: PSNR against bits per pixel", extra).splitlines()
    info = " | ".join(ln[2:] for ln in text if ln.startswith("- "))
    wrapped = textwrap.wrap(info, width=int(fig.get_figwidth() * 18))
    top = 1 - 0.022 * (len(wrapped) + 1)
    fig.text(
        0.01, 0.995, "\n".join([text[0].lstrip("# "), *wrapped]), fontsize=6, va="top", family="monospace"
    )
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, metadata={"Description": "\n".join(text)})
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_steps(text: str | None, presets: Sequence[str], quick: bool) -> dict[str, int | None]:
    """``N`` (every preset) or ``PRESET=N,...`` (the others keep their default)."""
    out: dict[str, int | None] = {p: (QUICK_STEPS if quick else None) for p in presets}
    if text is None:
        return out
    try:
        if "=" not in text:
            out = {p: int(text) for p in presets}
        else:
            for item in text.split(","):
                k, v = item.split("=", 1)
                if k.strip() not in out:
                    raise ValueError(f"--steps: preset {k.strip()!r} is not among --presets")
                out[k.strip()] = int(v)
    except ValueError as exc:
        if "--steps" in str(exc):
            raise
        raise ValueError(f"--steps: expected N or PRESET=N,...; got {text!r}") from None
    if any(v is not None and v < 1 for v in out.values()):
        raise ValueError("--steps must be >= 1")
    return out


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--image", action="append", help="slide or image (repeatable; default: the shared slides)"
    )
    ap.add_argument(
        "--size", type=int, default=None, help="region side in pixels (default 1000; --quick 256)"
    )
    ap.add_argument("--region", choices=("saturated", "centre"), default="saturated")
    ap.add_argument("--quick", action="store_true", help="256 px, one image, fewer settings, 300 cinr steps")
    ap.add_argument("--presets", default=",".join(PRESETS), help="cinr presets (default fast,default)")
    ap.add_argument(
        "--quants", default=None, help="storage precisions (default: all; --quick: int8+float16,int8,float16)"
    )
    ap.add_argument("--steps", default=None, help="cinr steps: N for every preset, or PRESET=N,...")
    ap.add_argument("--codecs", default=",".join(CODECS), help="conventional codecs to compare")
    ap.add_argument("--no-pyramid", action="store_true", help="skip the JPEG pyramid sizes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is much faster on a busy 2-core machine)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    ap.add_argument(
        "--out", default=None, help="result name: rd_<NAME>.md/.png/.json (default quick or full)"
    )
    ap.add_argument(
        "--results", default=None, help="folder for the result files (default benchmarks/results)"
    )
    args = ap.parse_args(argv)

    try:
        images = [Path(p) for p in (args.image or [])]
        if not images:
            images = [p for p in DEFAULT_IMAGES if p.exists()]
            if not images:
                raise ValueError(f"no --image given and no default images in {SHARED}")
            if args.quick:
                images = images[:1]
        for p in images:
            if not p.is_file():
                raise ValueError(f"{p}: no such file")
        size = args.size if args.size is not None else (256 if args.quick else 1000)
        if size < 16:
            raise ValueError("--size must be >= 16")
        presets = _csv(args.presets)
        for p in presets:
            get_preset("cinr", p)
        if not presets:
            raise ValueError("--presets: give at least one cinr preset")
        quants = _csv(args.quants) if args.quants else list(QUICK_QUANTS if args.quick else QUANT_SETTINGS)
        unknown = [q for q in quants if q not in QUANT_SETTINGS]
        if unknown or not quants:
            raise ValueError(f"unknown storage settings {unknown}; choose from {', '.join(QUANT_SETTINGS)}")
        wanted = _csv(args.codecs)
        bad = [c for c in wanted if c not in CODECS]
        if bad:
            raise ValueError(f"unknown codecs {bad}; choose from {', '.join(CODECS)}")
        steps = parse_steps(args.steps, presets, args.quick)
        resolve_device(args.device)
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError("--threads must be >= 1")
            import torch

            torch.set_num_threads(args.threads)
        available, skipped = make_codecs()
        codecs = {c: available[c] for c in CODECS if c in wanted and c in available}
        skipped = {c: why for c, why in skipped.items() if c in wanted}
        cfg = Config(
            size=size,
            region=args.region,
            presets=presets,
            quants=quants,
            steps=steps,
            codecs=codecs,
            quick=args.quick,
            device=args.device,
            seed=args.seed,
            pyramid=not args.no_pyramid,
        )
        name = args.out or ("quick" if args.quick else "full")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"--out: {name!r} is not a plain file-name part")
        out_dir = Path(args.results) if args.results else RESULTS
        out_dir.mkdir(parents=True, exist_ok=True)

        labels: list[str] = []
        for p in images:
            label = p.name
            k = 2
            while label in labels:
                label, k = f"{p.name}#{k}", k + 1
            labels.append(label)

        import click

        quiet = args.quiet
        interactive = sys.stderr.isatty()

        def log(msg: str) -> None:
            if not quiet and not interactive:
                print(msg, file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        results = []
        with click.progressbar(
            length=planned_work(cfg) * len(images),
            label="rd",
            file=NullSink() if quiet or not interactive else sys.stderr,  # type: ignore[arg-type]
            show_pos=True,
            show_eta=True,
        ) as bar:
            for p, label in zip(images, labels):
                results.append(run_image(p, label, cfg, bar, log))
    except (ValueError, CinrError, OSError) as exc:
        print(f"benchmarks.rd: error: {exc}", file=sys.stderr)
        sys.exit(2)

    names = list(codecs)
    extra = library_versions()
    result: dict[str, Any] = {
        "rows": [r for im in results for r in im["rows"]],
        "bd_rate": mean_bd(results, "bd_rate", names),
        "bd_rate_per_image": {im["image"]: im["bd_rate"] for im in results},
        "bd_rate_cinr_curve": "rate-distortion front of all cinr points of an image (every preset and precision)",
        "bd_rate_default_preset": mean_bd(results, "bd_rate_default_preset", names)
        if "default" in presets
        else {},
        "codecs": names,
        "codec_labels": {c: codecs[c].label for c in names},
        "skipped": skipped,
        "settings": {
            "size": size,
            "region": args.region,
            "region_how": "most saturated window of a thumbnail"
            if args.region == "saturated"
            else "centred crop",
            "presets": presets,
            "quants": quants,
            "steps": steps,
            "quick": args.quick,
            "device": args.device,
            "seed": args.seed,
            "torch_threads": args.threads,
        },
        "machine": machine(extra),
        "images": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    md = out_dir / f"rd_{name}.md"
    png = out_dir / f"rd_{name}.png"
    has_png = plot(result, png, extra)
    text = report(result, extra, png.name if has_png else None)
    md.write_text(text)
    payload = {k: v for k, v in result.items() if k != "images"}
    payload["images"] = [{k: v for k, v in im.items() if k != "rows"} for im in result["images"]]
    (out_dir / f"rd_{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    if args.json:
        print(json.dumps(payload))
    elif not quiet:
        print(text)
    if not quiet:
        print(f"wrote {md}" + (f", {png.name}" if has_png else "") + f" and rd_{name}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
