"""Decode a ``.cinr`` file written by ``cinr_codec.encoding`` back to RGB pixels.

The header's application fields (``formats/cinr-v1.md`` §4.2) are validated before they
are used, so a malformed or hand-crafted file raises ``CinrFormatError`` naming the file,
never ``KeyError``/``TypeError``, and never allocates more than its payload justifies:
the model is first built on PyTorch's ``meta`` device (no memory) and its tensor names
and shapes compared with the block's payload, which the container bounds.

This first decoder reads single-block files (a 1 x 1 grid, margin 0); the layout and model
parsing are already per grid and per block for the slide decoder that follows.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import torch

from .container import CinrReader
from .errors import CinrFormatError
from .fitting import render
from .hashgrid import HashGridConfig
from .models import MODEL_KINDS, ImageModel, ModelConfig, build_model

log = logging.getLogger(__name__)

#: Largest slide side a header may declare (the single-block encoder's limit too).
MAX_SIDE = 1 << 20
#: Largest pixel count of a single block this decoder renders.
MAX_PIXELS = 1 << 28

# Bounds on the model configuration read from a file: generous for real models, tight enough
# that no field can make the decoder compute with absurd numbers before the shape check.
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "mlp_width": (1, 4096),
    "mlp_depth": (0, 64),
    "conv_width": (1, 4096),
    "mlp2_depth": (0, 64),
    "conv_a_depth": (0, 64),
    "conv_c_depth": (0, 64),
}
_HASH_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "n_levels": (1, 64),
    "n_features": (1, 64),
    "log2_table_size": (1, 30),
    "base_resolution": (1, 1 << 24),
}
_BOOL_FIELDS = ("bias", "residual")
_BACKENDS = ("torch",)
#: Largest finest-level grid resolution accepted.
_MAX_RESOLUTION = 1 << 30


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> TypeGuard[int | float]:
    """A JSON number that is not a bool, NaN or infinity (ints of any size: no float conversion)."""
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _get_object(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise CinrFormatError(f"{where}: header field {key!r} is missing or not an object")
    return value


def _get_int(obj: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    value = obj.get(key)
    if not _is_int(value) or not lo <= value <= hi:
        raise CinrFormatError(f"{where}: {key} = {str(value)[:40]!r} is not an integer in [{lo}, {hi}]")
    return int(value)


@dataclass(frozen=True)
class Layout:
    """What a header says about the slide and its blocks: size, block grid, model configuration."""

    width: int
    height: int
    block_size: int
    halo: int
    cols: int
    rows: int
    config: ModelConfig

    @property
    def n_blocks(self) -> int:
        """Number of blocks (cols x rows)."""
        return self.cols * self.rows


def parse_model_config(value: Any, where: str) -> ModelConfig:
    """A ``ModelConfig`` from the header's ``model`` object, every field checked (CinrFormatError)."""
    if not isinstance(value, dict):
        raise CinrFormatError(f"{where}: header field 'model' is missing or not an object")
    where = f"{where}: model"
    known = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise CinrFormatError(f"{where}: unknown configuration keys {unknown[:5]} (newer encoder?)")
    if value.get("kind") not in MODEL_KINDS:
        raise CinrFormatError(f"{where}: kind {str(value.get('kind'))[:40]!r} is not one of {MODEL_KINDS}")
    for key, (lo, hi) in _INT_BOUNDS.items():
        if key in value:
            _get_int(value, key, lo, hi, where)
    for key in _BOOL_FIELDS:
        if key in value and not isinstance(value[key], bool):
            raise CinrFormatError(f"{where}: {key} is not a boolean")
    if "w0" in value and not (_is_number(value["w0"]) and abs(value["w0"]) <= 1e6):
        raise CinrFormatError(f"{where}: w0 is not a finite number")
    if "activation" in value and not isinstance(value["activation"], str):
        raise CinrFormatError(f"{where}: activation is not a string")
    if value.get("backend", "torch") not in _BACKENDS:
        raise CinrFormatError(
            f"{where}: backend {str(value.get('backend'))[:40]!r} cannot be decoded here (only {_BACKENDS})"
        )
    h = _get_object(value, "hash", where)
    unknown = sorted(set(h) - set(HashGridConfig.__dataclass_fields__))
    if unknown:
        raise CinrFormatError(f"{where}.hash: unknown keys {unknown[:5]} (newer encoder?)")
    for key, (lo, hi) in _HASH_INT_BOUNDS.items():
        _get_int(h, key, lo, hi, f"{where}.hash")
    scale = h.get("per_level_scale")
    if not (_is_number(scale) and 1.0 <= scale <= 1e3):
        raise CinrFormatError(f"{where}.hash: per_level_scale is not a number in [1, 1000]")
    finest = h["base_resolution"] * float(scale) ** (h["n_levels"] - 1)
    if not finest <= _MAX_RESOLUTION:
        raise CinrFormatError(f"{where}.hash: finest resolution {finest:.3g} is over {_MAX_RESOLUTION}")
    try:
        return ModelConfig.from_dict(value)
    except (ValueError, TypeError) as exc:
        raise CinrFormatError(f"{where}: invalid configuration: {exc}") from None


def parse_layout(reader: CinrReader) -> Layout:
    """Validate the header's ``slide``, ``grid`` and ``model`` fields against each other and the index."""
    where = reader.name
    header = reader.header
    slide = _get_object(header, "slide", where)
    width = _get_int(slide, "width", 1, MAX_SIDE, f"{where}: slide")
    height = _get_int(slide, "height", 1, MAX_SIDE, f"{where}: slide")
    grid = _get_object(header, "grid", where)
    block_size = _get_int(grid, "block_size", 1, MAX_SIDE, f"{where}: grid")
    halo = _get_int(grid, "halo", 0, block_size, f"{where}: grid")
    cols = _get_int(grid, "cols", 1, MAX_SIDE, f"{where}: grid")
    rows = _get_int(grid, "rows", 1, MAX_SIDE, f"{where}: grid")
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
    config = parse_model_config(header.get("model"), where)
    return Layout(width, height, block_size, halo, cols, rows, config)


def load_block_model(reader: CinrReader, block_id: int, config: ModelConfig) -> ImageModel:
    """Rebuild model block ``block_id`` on the CPU from its payload (CinrFormatError on any mismatch)."""
    where = f"{reader.name}: block {block_id}"
    try:
        with torch.device("meta"):  # every tensor, even those created on the CPU first, costs nothing
            skeleton = build_model(config, "meta")
    except (ValueError, RuntimeError) as exc:
        raise CinrFormatError(f"{where}: cannot build the model in the header: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    tensors = reader.read_tensors(block_id)
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])[:3]
        detail = "; ".join(
            part
            for part in (
                f"missing {missing}" if missing else "",
                f"unexpected {extra}" if extra else "",
                ", ".join(f"{k} is {found[k]}, expected {expected[k]}" for k in wrong),
            )
            if part
        )
        raise CinrFormatError(f"{where}: tensors do not match the model in the header ({detail})")
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise CinrFormatError(f"{where}: tensor {name!r} is {t.dtype}, expected a floating type")
        if not bool(torch.isfinite(t).all()):
            raise CinrFormatError(f"{where}: tensor {name!r} holds non-finite values")
    model = build_model(config, "cpu")
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CinrFormatError(
            f"{where}: tensors do not fit the model: {' '.join(str(exc).split())[:200]}"
        ) from None
    model.eval()
    return model


def decode_image(path: str | os.PathLike[str], *, max_block_bytes: int | None = None) -> np.ndarray:
    """Decode a single-block ``.cinr`` file to RGB uint8 (H, W, 3), on the CPU (deterministic).

    ``max_block_bytes`` lowers the decompressed payload size accepted (see ``CinrReader``).
    """
    with CinrReader(path, max_block_bytes=max_block_bytes) as reader:
        layout = parse_layout(reader)
        where = reader.name
        if layout.n_blocks != 1 or layout.block_size != max(layout.width, layout.height):
            raise CinrFormatError(
                f"{where}: a grid of {layout.cols}x{layout.rows} blocks of {layout.block_size} px; this "
                "decoder reads single-block files only (block_size = max(width, height))"
            )
        if layout.halo != 0:
            raise CinrFormatError(f"{where}: a single-block file must have grid.halo = 0, not {layout.halo}")
        if layout.width * layout.height > MAX_PIXELS:
            raise CinrFormatError(
                f"{where}: {layout.width}x{layout.height} pixels is over {MAX_PIXELS} for one block"
            )
        info = reader.block_info(0)
        if info.kind == "background":
            assert info.colour is not None
            return np.full((layout.height, layout.width, 3), info.colour, dtype=np.uint8)
        model = load_block_model(reader, 0, layout.config)
    log.debug("%s: decoding %dx%d", where, layout.width, layout.height)
    return render(model, layout.height, layout.width)


# -- whole slides: any region at any scale ------------------------------------------------------

#: Side of the decode tiles inside a block (the unit of work and of the pixel cache).
TILE = 256
#: Largest output a single read may produce (pixels); beyond it a read is refused.
MAX_READ_PIXELS = 1 << 28
#: Largest scale a read accepts (bilinear interpolation of level pixels above 1).
MAX_SCALE = 4.0
#: Default size of the decoded-pixel cache.
DEFAULT_CACHE_BYTES = 256 << 20
#: Models kept loaded.
MODEL_CACHE = 16


def parse_mips(reader: CinrReader, layout: Layout) -> tuple[int, ...]:
    """The header's ``mips.downsamples`` (validated against the grid and the index); () when absent."""
    where = reader.name
    mips = reader.header.get("mips")
    if mips is None:
        return ()
    if not isinstance(mips, dict):
        raise CinrFormatError(f"{where}: header field 'mips' is not an object")
    ds = mips.get("downsamples")
    n = layout.n_blocks
    if (
        not isinstance(ds, list)
        or not all(_is_int(d) and 2 <= d <= layout.block_size and layout.block_size % d == 0 for d in ds)
        or ds != sorted(set(ds))
        or len(ds) > 32
    ):
        raise CinrFormatError(f"{where}: mips.downsamples must be increasing divisors of the block size")
    if mips.get("first_block") != n or reader.n_blocks != n * (1 + len(ds)):
        raise CinrFormatError(
            f"{where}: {reader.n_blocks} blocks do not match {n} level blocks and {len(ds)} mip levels"
        )
    return tuple(int(d) for d in ds)


def _slide_background(reader: CinrReader) -> tuple[int, int, int]:
    bg = reader.header.get("slide", {}).get("background")
    if isinstance(bg, list) and len(bg) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in bg):
        return (int(bg[0]), int(bg[1]), int(bg[2]))
    return (255, 255, 255)


def finite_number(v: Any, name: str, error: type[ValueError] = ValueError) -> float:
    """``v`` as a float when it is a real number (not a bool) and finite; else ``error`` naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise error(f"{name} must be a number, not {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:  # an int beyond the float range
        f = math.inf
    if not math.isfinite(f):
        raise error(f"{name} must be finite, not {str(v)[:40]}")
    return f


def tune_allocator(keep_bytes: int = 256 << 20) -> bool:
    """Let glibc's malloc keep up to ``keep_bytes`` of freed memory for reuse (Linux; else a no-op).

    Each network layer allocates fresh multi-megabyte tensors; by default glibc maps every one
    with mmap and returns it on free, so the next layer page-faults the same memory back in. With
    this, a 256^2 CINR tile decodes 1.4-1.9x faster on CPU, at the price of a higher resident
    memory (an encode peaked at 1.4 GB instead of 0.7 GB per 1024-px block; docs/architecture.md).
    It changes a process-wide setting, so the library never calls it by itself: ``cinr decode``
    does, and long-running viewers or servers may. Returns whether the setting was applied.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, keep_bytes) and libc.mallopt(m_trim_threshold, keep_bytes)
    except (OSError, AttributeError):
        return False
    return bool(ok)


class _LRU:
    """A thread-safe LRU map bounded by total cost."""

    def __init__(self, capacity: int) -> None:
        import collections
        import threading

        self.capacity = capacity
        self.cost = 0
        self._d: collections.OrderedDict[Any, tuple[Any, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            item = self._d.get(key)
            if item is None:
                return None
            self._d.move_to_end(key)
            return item[0]

    def put(self, key: Any, value: Any, cost: int) -> None:
        with self._lock:
            if key in self._d:
                return
            self._d[key] = (value, cost)
            self.cost += cost
            while self.cost > self.capacity and len(self._d) > 1:
                _, (_, c) = self._d.popitem(last=False)
                self.cost -= c

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.cost = 0


def _axis_box(
    start: float, step: float, n_out: int, length: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area weights along one axis: output i covers [start + i*step, +step) of source pixels [p, p+1) ∩ [0, length).

    Returns (indices (n_out, K) clipped to valid pixels, weights (n_out, K) in source-pixel units,
    coverage (n_out,) = fraction of each output box inside [0, length)).
    """
    i = np.arange(n_out, dtype=np.float64)
    a = start + i * step
    b = a + step
    k = int(math.ceil(step)) + 1
    p0 = np.floor(np.clip(a, 0.0, max(length - 1e-9, 0.0)))
    idx = p0[:, None] + np.arange(k)[None, :]
    lo = np.maximum(a[:, None], idx)
    hi = np.minimum(np.minimum(b[:, None], idx + 1.0), length)
    w = np.clip(hi - lo, 0.0, None)
    n_src = max(1, int(math.ceil(length)))
    cov = w.sum(axis=1) / step
    return np.clip(idx, 0, n_src - 1).astype(np.int64), w, np.clip(cov, 0.0, 1.0)


def _axis_bilinear(
    start: float, step: float, n_out: int, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear weights between level-pixel centres (edges replicated); coverage 1 inside the level, else 0."""
    u = start + (np.arange(n_out, dtype=np.float64) + 0.5) * step
    p = np.clip(u - 0.5, 0.0, length - 1.0)
    i0 = np.floor(p)
    f = p - i0
    idx = np.stack((i0, np.minimum(i0 + 1, length - 1)), axis=1).astype(np.int64)
    w = np.stack((1.0 - f, f), axis=1)
    cov = ((u >= 0) & (u < length)).astype(np.float64)
    return idx, w * cov[:, None], cov


class SlideDecoder:
    """Decode any region of a ``.cinr`` slide at any scale; thread-safe, with an LRU pixel cache.

    Level pixels come from the blocks' models in fixed ``TILE`` x ``TILE`` tiles (so a pixel's
    value never depends on the region asked for); scales below 1 start from the coarsest stored
    mip at least as fine as the output and average it over each output pixel's box; scales above
    1 interpolate level pixels bilinearly. ``device`` runs the models on a GPU ("cuda"; "auto"
    picks it when present); pixels may then differ from a CPU decode by a rounding step.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_block_bytes: int | None = None,
        device: str = "cpu",
    ) -> None:
        from .blocks import BlockGrid
        from .fitting import resolve_device

        self.device = resolve_device(device)

        self.reader = CinrReader(path, max_block_bytes=max_block_bytes)
        try:
            self.layout = parse_layout(self.reader)
            mips = parse_mips(self.reader, self.layout)
            lay = self.layout
            if lay.width * lay.height > MAX_SIDE * MAX_SIDE:
                raise CinrFormatError(f"{self.reader.name}: slide too large")
            self.grid = BlockGrid(lay.width, lay.height, lay.block_size, lay.halo, mips)
            self.background = _slide_background(self.reader)
            self._kinds = [self.reader.block_info(i).kind for i in range(self.reader.n_blocks)]
        except BaseException:
            self.reader.close()
            raise
        self._pixels = _LRU(cache_bytes)
        self._models = _LRU(MODEL_CACHE)
        self._closed = False

    @property
    def width(self) -> int:
        """Level width in pixels."""
        return self.layout.width

    @property
    def height(self) -> int:
        """Level height in pixels."""
        return self.layout.height

    # -- sources ---------------------------------------------------------------------------------

    def _model(self, block_id: int) -> ImageModel:
        m = self._models.get(block_id)
        if m is None:
            m = load_block_model(self.reader, block_id, self.layout.config).to(self.device)
            self._models.put(block_id, m, 1)
        return m  # type: ignore[no-any-return]

    def _tile(self, block_id: int, tx: int, ty: int) -> np.ndarray:
        """Decoded level pixels of one tile of a model block (tile origin (tx, ty) in level pixels)."""
        key = ("t", block_id, tx, ty)
        t = self._pixels.get(key)
        if t is not None:
            return t  # type: ignore[no-any-return]
        x, y, w, h = self.grid.owned(block_id)
        tw, th = min(TILE, x + w - tx), min(TILE, y + h - ty)
        ox, oy = self.grid.frame_origin(block_id)
        with torch.inference_mode():
            t = render(
                self._model(block_id), th, tw, float(self.grid.side), tile=TILE, x0=tx - ox, y0=ty - oy
            )
        self._pixels.put(key, t, t.nbytes)
        return t

    def _mip(self, block_id: int, k: int) -> np.ndarray:
        from .mips import decode_image_bytes

        key = ("m", block_id, k)
        t = self._pixels.get(key)
        if t is not None:
            return t  # type: ignore[no-any-return]
        mid = self.grid.mip_id(block_id, k)
        w, h = self.grid.mip_size(block_id, k)
        if self._kinds[mid] != "image":
            raise CinrFormatError(
                f"{self.reader.name}: block {mid} (mip of block {block_id}) is not an image block"
            )
        t = decode_image_bytes(self.reader.read_image_block(mid), f"{self.reader.name}: block {mid}")
        if t.shape != (h, w, 3):
            raise CinrFormatError(
                f"{self.reader.name}: block {mid} is {t.shape[1]}x{t.shape[0]}, expected {w}x{h}"
            )
        self._pixels.put(key, t, t.nbytes)
        return t

    def level_region(self, x0: int, y0: int, w: int, h: int, k: int = -1) -> np.ndarray:
        """Pixels [x0, x0+w) x [y0, y0+h) of the level (k = -1) or of mip level k, all inside the image."""
        self._check_open()
        out = np.empty((h, w, 3), dtype=np.uint8)
        d = 1 if k < 0 else self.grid.mip_downsamples[k]
        for bid in self.grid.overlapping(x0 * d, y0 * d, (x0 + w) * d, (y0 + h) * d):
            bx, by, bw, bh = self.grid.owned(bid)
            # This block's extent in this level's pixels.
            ex0, ey0 = bx // d, by // d
            ex1, ey1 = ex0 + -(-bw // d), ey0 + -(-bh // d)
            ix0, iy0 = max(x0, ex0), max(y0, ey0)
            ix1, iy1 = min(x0 + w, ex1), min(y0 + h, ey1)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            kind = self._kinds[bid]
            dst = out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            if kind == "background":
                colour = self.reader.block_info(bid).colour
                assert colour is not None
                dst[...] = colour
            elif k >= 0:
                m = self._mip(bid, k)
                dst[...] = m[iy0 - ey0 : iy1 - ey0, ix0 - ex0 : ix1 - ex0]
            else:
                # Tiles on a TILE lattice from the block origin.
                for ty in range(by + (iy0 - by) // TILE * TILE, iy1, TILE):
                    for tx in range(bx + (ix0 - bx) // TILE * TILE, ix1, TILE):
                        t = self._tile(bid, tx, ty)
                        sx0, sy0 = max(ix0, tx), max(iy0, ty)
                        sx1, sy1 = min(ix1, tx + t.shape[1]), min(iy1, ty + t.shape[0])
                        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = t[
                            sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx
                        ]
        return out

    # -- reads -----------------------------------------------------------------------------------

    def _check_read(
        self, x: float, y: float, w: float, h: float, scale: float
    ) -> tuple[float, float, float, float, float, int, int]:
        """Validated (x, y, w, h, scale) as floats and the output size (ValueError naming the problem)."""
        self._check_open()
        x, y, w, h, scale = (
            finite_number(v, name) for name, v in (("x", x), ("y", y), ("w", w), ("h", h), ("scale", scale))
        )
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, not {w} x {h}")
        if not 0 < scale <= MAX_SCALE:
            raise ValueError(f"scale must be in (0, {MAX_SCALE}], not {scale}")
        if not (math.isfinite(w * scale) and math.isfinite(h * scale)):  # round(inf): OverflowError
            raise ValueError(f"a {w} x {h} region at scale {scale} is too large")
        ow, oh = int(round(w * scale)), int(round(h * scale))
        if ow < 1 or oh < 1:
            raise ValueError(f"a {w} x {h} region at scale {scale} has no output pixels")
        if ow * oh > MAX_READ_PIXELS:
            raise ValueError(
                f"{ow} x {oh} output pixels is over the {MAX_READ_PIXELS}-pixel limit of one read"
            )
        return x, y, w, h, scale, ow, oh

    def read_with_coverage(
        self, x: float, y: float, w: float, h: float, scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(RGB float64 mean over the part of each output box inside the slide, coverage in [0, 1])."""
        return self._resample(*self._check_read(x, y, w, h, scale))

    def _resample(
        self, x: float, y: float, w: float, h: float, scale: float, ow: int, oh: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``read_with_coverage`` for values that ``_check_read`` returned."""
        step = 1.0 / scale
        W, H = self.width, self.height
        if scale > 1.0:
            k = -1
            iy, wy, cy = _axis_bilinear(y, step, oh, H)
            ix, wx, cx = _axis_bilinear(x, step, ow, W)
            norm = 1.0
        else:
            k = self._source_level(scale)
            d = 1 if k < 0 else self.grid.mip_downsamples[k]
            iy, wy, cy = _axis_box(y / d, step / d, oh, H / d)
            ix, wx, cx = _axis_box(x / d, step / d, ow, W / d)
            norm = (step / d) ** 2
        cov = cy[:, None] * cx[None, :]
        mean = np.zeros((oh, ow, 3), dtype=np.float64)
        rows, cols = np.flatnonzero(cy > 0), np.flatnonzero(cx > 0)
        if rows.size == 0 or cols.size == 0:
            return mean, cov
        # Only the output pixels that overlap the slide (a contiguous block) are resampled.
        o0, o1, p0, p1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        iy, wy, ix, wx = iy[o0:o1], wy[o0:o1], ix[p0:p1], wx[p0:p1]
        ry0, ry1 = int(iy.min()), int(iy.max()) + 1
        rx0, rx1 = int(ix.min()), int(ix.max()) + 1
        src = self.level_region(rx0, ry0, rx1 - rx0, ry1 - ry0, k).astype(np.float32)
        tmp = np.zeros((o1 - o0, rx1 - rx0, 3), dtype=np.float64)
        for j in range(iy.shape[1]):
            tmp += wy[:, j, None, None] * src[iy[:, j] - ry0]
        num = np.zeros((o1 - o0, p1 - p0, 3), dtype=np.float64)
        for j in range(ix.shape[1]):
            num += wx[None, :, j, None] * tmp[:, ix[:, j] - rx0]
        sub = cov[o0:o1, p0:p1]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean[o0:o1, p0:p1] = np.where(
                sub[..., None] > 0, num / (norm * np.maximum(sub, 1e-300))[..., None], 0.0
            )
        return mean, cov

    def _source_level(self, scale: float) -> int:
        """Index of the coarsest mip whose downsample d <= 1/scale (-1: the level itself)."""
        k = -1
        for i, d in enumerate(self.grid.mip_downsamples):
            if d <= (1.0 / scale) * (1 + 1e-9):
                k = i
        return k

    def _aligned(self, xf: float, yf: float, sf: float, ow: int, oh: int) -> np.ndarray | None:
        """The read's pixels without resampling, when every output box is f x f whole source pixels.

        That is the case for power-of-two scales at positions on the source's pixel lattice, inside
        the slide (what viewers ask for): the box means are then source pixels (f = 1) or plain
        f x f averages. Takes ``_check_read``'s values; None when the general (area-weighted) path
        is needed.
        """
        if sf > 1:
            return None
        k = self._source_level(sf)
        d = 1 if k < 0 else self.grid.mip_downsamples[k]
        f = 1.0 / (sf * d)
        fi = int(round(f))
        sx, sy = xf / d, yf / d
        if abs(f - fi) > 1e-9 or sx != int(sx) or sy != int(sy) or sx < 0 or sy < 0:
            return None
        if xf + ow * fi * d > self.width or yf + oh * fi * d > self.height:
            return None  # boxes reach outside the slide: coverage < 1 somewhere
        src = self.level_region(int(sx), int(sy), ow * fi, oh * fi, k)
        if fi == 1:
            return src
        means = src.reshape(oh, fi, ow, fi, 3).astype(np.float32).mean(axis=(1, 3))
        return np.clip(np.rint(means), 0, 255).astype(np.uint8)

    def read(self, x: float, y: float, w: float, h: float, scale: float = 1.0) -> np.ndarray:
        """RGB uint8 (round(h*scale), round(w*scale), 3) of the region at level coordinates (x, y, w, h).

        Pixels outside the slide take the slide's background colour.
        """
        x, y, w, h, scale, ow, oh = self._check_read(x, y, w, h, scale)
        fast = self._aligned(x, y, scale, ow, oh)
        if fast is not None:
            return fast
        mean, cov = self._resample(x, y, w, h, scale, ow, oh)
        bg = np.asarray(self.background, dtype=np.float64)
        rgb = mean * cov[..., None] + bg * (1.0 - cov[..., None])
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    def read_rgba(self, x: float, y: float, w: float, h: float, scale: float = 1.0) -> np.ndarray:
        """RGBA uint8: the region's pixels, alpha = the fraction of each pixel inside the slide (0 outside)."""
        x, y, w, h, scale, ow, oh = self._check_read(x, y, w, h, scale)
        fast = self._aligned(x, y, scale, ow, oh)
        if fast is not None:
            out = np.empty(fast.shape[:2] + (4,), dtype=np.uint8)
            out[..., :3] = fast
            out[..., 3] = 255
            return out
        mean, cov = self._resample(x, y, w, h, scale, ow, oh)
        out = np.zeros(mean.shape[:2] + (4,), dtype=np.uint8)
        out[..., :3] = np.clip(np.rint(mean), 0, 255)
        out[..., 3] = np.clip(np.rint(cov * 255.0), 0, 255)
        out[out[..., 3] == 0] = 0
        return out

    # -- lifetime --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.reader.name}: the slide is closed")

    def clear_cache(self) -> None:
        """Drop decoded pixels and loaded models."""
        self._pixels.clear()
        self._models.clear()

    def close(self) -> None:
        """Close the file and drop the caches."""
        self._closed = True
        self.clear_cache()
        self.reader.close()

    def __enter__(self) -> SlideDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
