"""Rate-distortion benchmark, conventional codecs: JPEG, JPEG 2000, JPEG XL, AVIF and WebP via imagecodecs.

Each codec has a base sweep of settings (a shorter one for ``--quick``) and extra lower/higher-rate
settings that ``sweep`` adds while the codec's bpp or PSNR range does not cover cinr's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cinr_codec.core.metrics import psnr, ssim

__all__ = ["CODECS", "Codec", "image_metrics", "make_codecs", "measure_codec", "sweep"]

CODECS = ("jpeg", "jpeg2000", "jpegxl", "avif", "webp")


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


def image_metrics(decoded: np.ndarray, region: np.ndarray) -> tuple[float | None, float]:
    """PSNR (None when lossless) and SSIM of a decoded image (grey or RGBA made RGB) against ``region``."""
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
    p, s = image_metrics(np.asarray(codec.decode(data)), region)
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
