"""Compressive CINR blocks (model kind ``ccinr``): entropy-coded integer latent grids and a small
CINR synthesis, every bit counted (``formats/cinr-v1.md`` §5.4 has the payload to the byte).

Payload (little-endian)::

    magic  b"CCB1"
    u16    width, height      the latent domain: the block's fitted pixels
    u16    x0, y0             the domain's origin in the block's frame
    u32    weight_bytes       then that many bytes: every network tensor, in state-dict order,
                              as u8 exponent k, u8 Exp-Golomb order g, then its integers
                              (zigzag, Exp-Golomb order g, MSB first); value = integer * 2**-k.
                              With ``weight_coding = "laplace"`` (format 1.5): u8 k and u8 scale
                              index per tensor, then one range-coded stream of all the integers
                              (``coding.entropy.encode_weights``)
    u32    latent_bytes       then the latent grids' range-coded stream (``coding.entropy``);
                              with ``latent_tile`` (format 1.8) and a first grid of more than one
                              tile: u32 bytes of each of its tiles' streams, then those streams
                              (each tile coded alone, zero outside it), then one stream of the
                              other grids

Decoding cost is bounded by the payload: a grid area may be at most ``LATENT_AREA_PER_BIT``
latents per coded bit (plus a small floor), and never more than the block frame.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..core.config import LATENT_KINDS, LatentConfig, causal_offsets, int_ranges, latent_macs_per_pixel
from ..errors import CinrFormatError
from ..format.header import get_int, get_object
from .base import BlockCodec, BlockModel, FitSettings, FittedBlock, check_decode_cost
from .entropy import (
    IntContextModel,
    IntLayer,
    decode_grids,
    decode_weights,
    encode_grids,
    encode_weights,
    laplace_weight_bits,
)

if TYPE_CHECKING:
    from ..encode.train.latent import LatentFit

MAGIC = b"CCB1"
_HEAD = struct.Struct("<4sHHHHI")
#: At most this many latents per bit of latent stream (and at least LATENT_AREA_FLOOR), so a
#: small hand-made payload cannot ask for a huge decode.
LATENT_AREA_PER_BIT = 4096
LATENT_AREA_FLOOR = 1 << 16
#: Side of the first grid's independently coded tiles that new files use when a block's frame is
#: larger (``LatentConfig.latent_tile``, format 1.8). A cold 256^2 read of a 512^2 block decodes one
#: to four of its four tiles, on as many cores, instead of the whole grid; re-coding the latents of
#: a q3 prostate encode so costs 0.29 % more block bytes (128-px tiles: 0.85 %).
LATENT_TILE = 256


# -- weights: Exp-Golomb ------------------------------------------------------------------------


def _zigzag(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0, 2 * v - 1, -2 * v).astype(np.int64)


def expgolomb_bits(v: np.ndarray, g: int) -> int:
    """Bits of the signed integers ``v`` in Exp-Golomb order ``g`` (zigzag mapped)."""
    u = _zigzag(np.asarray(v, dtype=np.int64))
    m = (u >> g) + 1
    return int(np.sum(2 * (np.floor(np.log2(m)).astype(np.int64)) + 1 + g))


def best_order(v: np.ndarray) -> tuple[int, int]:
    """(bits, order) of the cheapest Exp-Golomb order for ``v`` (orders 0..15), plus 16 bits of header."""
    bits, g = min((expgolomb_bits(v, g), g) for g in range(16))
    return bits + 16, g


def _write_expgolomb(bits: list[int], v: np.ndarray, g: int) -> None:
    for u in _zigzag(v).tolist():
        m = (u >> g) + 1
        n = m.bit_length() - 1
        bits.extend([0] * n)
        bits.extend(int(c) for c in format(m, "b"))
        if g:
            bits.extend(int(c) for c in format(u & ((1 << g) - 1), f"0{g}b"))


class _BitReader:
    def __init__(self, data: bytes, where: str) -> None:
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.pos = 0
        self.where = where

    def read(self, n: int) -> int:
        if self.pos + n > self.bits.size:
            raise CinrFormatError(f"{self.where}: network weights end early")
        v = 0
        for b in self.bits[self.pos : self.pos + n].tolist():
            v = (v << 1) | b
        self.pos += n
        return v

    def expgolomb(self, count: int, g: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            n = 0
            while True:
                if self.pos >= self.bits.size:
                    raise CinrFormatError(f"{self.where}: network weights end early")
                if self.bits[self.pos]:
                    break
                n += 1
                self.pos += 1
                if n > 40:
                    raise CinrFormatError(f"{self.where}: network weight code too long")
            m = self.read(n + 1)
            u = ((m - 1) << g) | (self.read(g) if g else 0)
            out[i] = (u + 1) // 2 if u % 2 else -(u // 2)
        return out


def pack_weights(tensors: list[tuple[np.ndarray, int]]) -> bytes:
    """Integer tensors with their exponents -> the payload's weight section."""
    bits: list[int] = []
    for ints, k in tensors:
        _, g = best_order(ints)
        bits.extend(int(c) for c in format(k, "08b"))
        bits.extend(int(c) for c in format(g, "08b"))
        _write_expgolomb(bits, ints.ravel(), g)
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()


def unpack_weights(data: bytes, shapes: list[tuple[int, ...]], where: str) -> list[tuple[np.ndarray, int]]:
    """Inverse of ``pack_weights`` for tensors of the given shapes (CinrFormatError when malformed)."""
    reader = _BitReader(data, where)
    out = []
    for shape in shapes:
        k, g = reader.read(8), reader.read(8)
        if k > 24 or g > 15:
            raise CinrFormatError(f"{where}: weight exponent {k} or code order {g} out of range")
        ints = reader.expgolomb(int(np.prod(shape)), g).reshape(shape)
        if np.abs(ints).max(initial=0) >= 1 << 15:
            raise CinrFormatError(f"{where}: a network weight is out of range")
        out.append((ints, k))
    if len(data) * 8 - reader.pos >= 8:
        raise CinrFormatError(f"{where}: weight section has data past its last tensor")
    return out


# -- the codec ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _state_shapes(config: LatentConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Names and shapes of the stored network tensors, in order (built on the meta device once
    per configuration: building the module took about 3 ms of a 512^2 block's 33 ms load)."""
    import torch

    from ..core.synthesis import LatentImage

    with torch.device("meta"):
        m = LatentImage(config, 1, 1)
    return tuple((n, tuple(p.shape)) for n, p in m.named_parameters() if not n.startswith("latents."))


def _network_ints(weights: bytes, config: LatentConfig, where: str) -> dict[str, tuple[np.ndarray, int]]:
    """The weights section decoded: each network tensor's integers and step exponent k (value =
    integer * 2**-k), by ``LatentImage`` state-dict name."""
    names = _state_shapes(config)
    shapes = [s for _, s in names]
    if config.weight_coding == "laplace":
        ints = decode_weights(weights, shapes, where)
    else:
        ints = unpack_weights(weights, shapes, where)
    return {n: t for (n, _), t in zip(names, ints, strict=True)}


def _dequantized(tensors: Mapping[str, tuple[np.ndarray, int]], prefix: str = "") -> dict[str, Any]:
    """The stored network tensors (integers, step exponent k) whose names start with ``prefix``,
    as float32 torch tensors by name less the prefix."""
    import torch

    return {
        n[len(prefix) :]: torch.from_numpy(v.astype(np.float32) * np.float32(2.0**-k))
        for n, (v, k) in tensors.items()
        if n.startswith(prefix)
    }


def int_context_model(config: LatentConfig, tensors: Mapping[str, tuple[np.ndarray, int]]) -> IntContextModel:
    """The fixed-point context model from the stored ``arm.*`` tensors."""
    hidden = []
    for i in range(config.arm_layers):
        w, kw = tensors[f"arm.hidden.{i}.weight"]
        b, kb = tensors[f"arm.hidden.{i}.bias"]
        hidden.append(IntLayer(w, b, kw, kb))
    w, kw = tensors["arm.out.weight"]
    b, kb = tensors["arm.out.bias"]
    return IntContextModel(tuple(causal_offsets(config.context)), tuple(hidden), IntLayer(w, b, kw, kb))


def _sections(payload: bytes, where: str) -> tuple[int, int, int, int, bytes, bytes]:
    """(width, height, x0, y0, weight section, latent stream) of a payload whose magic, non-empty
    domain and section lengths (ending the payload exactly, whole 32-bit words of latents) are
    right; CinrFormatError otherwise."""
    if len(payload) < _HEAD.size + 4:
        raise CinrFormatError(f"{where}: payload of {len(payload)} bytes is too short")
    magic, w, h, x0, y0, n_weights = _HEAD.unpack_from(payload)
    if magic != MAGIC:
        raise CinrFormatError(f"{where}: not a compressive CINR payload")
    if w < 1 or h < 1:
        raise CinrFormatError(f"{where}: empty {w}x{h} domain")
    pos = _HEAD.size
    if pos + n_weights + 4 > len(payload):
        raise CinrFormatError(f"{where}: weight section runs past the payload")
    weights = payload[pos : pos + n_weights]
    pos += n_weights
    (n_latents,) = struct.unpack_from("<I", payload, pos)
    pos += 4
    if pos + n_latents != len(payload) or n_latents % 4:
        raise CinrFormatError(
            f"{where}: latent stream of {n_latents} bytes does not end the payload in whole 32-bit words"
        )
    return w, h, x0, y0, weights, payload[pos:]


def _split_streams(section: bytes, n: int, where: str) -> list[bytes]:
    """The ``n`` streams of a tiled latent section (u32 lengths of the first n - 1, then the
    streams, the last one ending the section), each whole 32-bit words; CinrFormatError otherwise."""
    head = 4 * (n - 1)
    if head > len(section):
        raise CinrFormatError(
            f"{where}: latent section of {len(section)} bytes cannot hold {n - 1} tile lengths"
        )
    lengths = struct.unpack_from(f"<{n - 1}I", section)
    out, pos = [], head
    for k, length in enumerate(lengths):
        if length % 4 or length > len(section) - pos:
            raise CinrFormatError(
                f"{where}: latent tile {k}'s stream of {length} bytes is not whole 32-bit words inside the section"
            )
        out.append(section[pos : pos + length])
        pos += length
    out.append(section[pos:])
    return out


class _TiledGrids:
    """The latent grids of a tiled payload (format 1.8), decoded as renders need them: each tile
    of the first grid, and the stream of the other grids, is a piece that decodes once, on
    whichever thread asks first; threads that need the same pieces share them out."""

    def __init__(
        self,
        shapes: list[tuple[int, int]],
        tiles: list[tuple[int, int, int, int]],
        streams: list[bytes],
        model: IntContextModel,
        where: str,
    ) -> None:
        #: The grids as float32 (what the synthesis reads); zero where nothing is decoded yet.
        self.values = [np.zeros(shape, dtype=np.float32) for shape in shapes]
        self.tiles = tiles
        # Pieces 0 .. n-1: the first grid's tiles; piece n: the other grids.
        self._streams: list[bytes | None] = list(streams)
        self._shapes, self._model, self._where = shapes, model, where
        self._locks = [threading.Lock() for _ in streams]

    def _needed(self, r0: int, r1: int, c0: int, c1: int) -> list[int]:
        """The pieces that rows [r0, r1) and columns [c0, c1) read: the other grids, then the
        first grid's tiles that meet them."""
        return [len(self.tiles)] + [
            k for k, (a, b, c, d) in enumerate(self.tiles) if a < r1 and r0 < b and c < c1 and c0 < d
        ]

    def ensure(self, r0: int, r1: int, c0: int, c1: int) -> None:
        """Decode the other grids and the first grid's tiles that meet rows [r0, r1) and columns
        [c0, c1) (CinrFormatError on a corrupt stream). Pieces another thread is decoding are
        waited for last, after those no one has taken."""
        busy = []
        for k in self._needed(r0, r1, c0, c1):
            if self._streams[k] is None:
                continue
            if self._locks[k].acquire(blocking=False):
                try:
                    self._decode(k)
                finally:
                    self._locks[k].release()
            else:
                busy.append(k)
        for k in busy:
            self.decode_piece(k)

    def pending(self, r0: int, r1: int, c0: int, c1: int) -> list[tuple[int, int]]:
        """The pieces ``ensure`` of the same rows and columns would decode and that are not decoded
        yet, each as (piece, latents in it)."""
        other = sum(h * w for h, w in self._shapes[1:])
        sizes = [(b - a) * (d - c) for a, b, c, d in self.tiles] + [other]
        return [(k, sizes[k]) for k in self._needed(r0, r1, c0, c1) if self._streams[k] is not None]

    def decode_piece(self, k: int) -> None:
        """Decode piece ``k`` (a first-grid tile, or ``len(tiles)``: the other grids) unless it is
        decoded; a thread decoding it meanwhile is waited for."""
        with self._locks[k]:
            self._decode(k)

    def done(self) -> list[bool]:
        """Per piece (the first grid's tiles, then the other grids): decoded yet?"""
        return [s is None for s in self._streams]

    def _decode(self, k: int) -> None:
        """Decode piece ``k`` unless it is (its lock held)."""
        stream = self._streams[k]
        if stream is None:  # decoded meanwhile
            return
        if k == len(self.tiles):
            for v, g in zip(
                self.values[1:], decode_grids(stream, self._shapes[1:], self._model, self._where)
            ):
                v[...] = g
        else:
            a, b, c, d = self.tiles[k]
            where = f"{self._where}: latent tile {k}"
            self.values[0][a:b, c:d] = decode_grids(stream, [(b - a, d - c)], self._model, where)[0]
        self._streams[k] = None


class LatentBlock:
    """A decoded compressive CINR block (``BlockModel``).

    A rectangle of at most ``WINDOW_FRACTION`` of the domain renders from windows of the grids
    (learned upsampling, ``Synthesis.window_features``) plus the synthesis' halo, at a cost
    proportional to its area; a larger one renders the whole domain once and keeps its pixels.
    """

    #: Rectangles up to this share of the domain render alone (a cold tile need not pay the block).
    WINDOW_FRACTION = 0.25

    def __init__(
        self,
        synthesis: Any,
        grids: list[np.ndarray],
        width: int,
        height: int,
        x0: int,
        y0: int,
        where: str = "ccinr block",
        tiled: _TiledGrids | None = None,
    ) -> None:
        self.synthesis = synthesis
        #: The decoded latents (int64), until the first render: then only their float32 tensors
        #: are kept (half the memory of a cached block; ``None`` from then on). Empty with
        #: ``tiled``: grids decoded piece by piece as renders need them (on the CPU only).
        self.grids: list[np.ndarray] | None = grids
        self.width, self.height, self.x0, self.y0 = width, height, x0, y0
        self.where = where  # names the file and block in errors
        self._tiled = tiled
        self._pixels: np.ndarray | None = None
        self._tensors: list[Any] | None = None
        self._tensor_lock = threading.Lock()

    def _grid_tensors(self) -> list[Any]:
        """The grids as float32 tensors (1, h, w) on the synthesis' device (made once; a tiled
        block's tensors share its arrays' memory, so pieces decoded later appear in them)."""
        with self._tensor_lock:
            if self._tensors is None:
                import torch

                if self._tiled is not None:
                    self._tensors = [torch.from_numpy(v)[None] for v in self._tiled.values]
                else:
                    assert self.grids is not None
                    dev = next(self.synthesis.parameters()).device
                    self._tensors = [torch.from_numpy(g.astype(np.float32))[None].to(dev) for g in self.grids]
                self.grids = None
            return self._tensors

    def _ensure(self, r0: int, r1: int, c0: int, c1: int) -> None:
        """Decode what a tiled block's render of first-grid rows [r0, r1) and columns [c0, c1) reads."""
        if self._tiled is not None:
            self._tiled.ensure(r0, r1, c0, c1)

    def latent_grids(self) -> list[np.ndarray]:
        """Every latent grid as int64, level by level (decodes whatever is not decoded yet)."""
        if self._tiled is not None:
            self._tiled.ensure(0, self.height, 0, self.width)
            return [v.astype(np.int64) for v in self._tiled.values]
        if self.grids is not None:
            return [g.copy() for g in self.grids]
        return [t[0].cpu().numpy().astype(np.int64) for t in self._grid_tensors()]

    def _render_all(self) -> np.ndarray:
        if self._pixels is None:
            import torch

            self._ensure(0, self.height, 0, self.width)
            with torch.inference_mode():
                f = self.synthesis.features(self._grid_tensors(), self.height, self.width)
                self._pixels = self.synthesis.pixels(f)
        return self._pixels

    def _render_window(self, dy: int, dx: int, height: int, width: int) -> np.ndarray | None:
        """Rows dy:dy+height, columns dx:dx+width of the domain from windows of the grids (None
        when the configuration has no windowed upsampling)."""
        import torch

        r0, r1, c0, c1 = self._window(dy, dx, height, width)
        grids = self._grid_tensors()
        if grids[0].shape[-2:] != (self.height, self.width):
            return None
        self._ensure(r0, r1, c0, c1)  # the first grid is at full resolution: it is read only there
        with torch.inference_mode():
            f = self.synthesis.window_features(grids, (r0, r1), (c0, c1))
            if f is None:
                return None
            pixels = self.synthesis.pixels(f)
        return pixels[dy - r0 : dy - r0 + height, dx - c0 : dx - c0 + width]

    def _window(self, dy: int, dx: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Rows [r0, r1) and columns [c0, c1) of the domain that rendering rows dy:dy+height,
        columns dx:dx+width from windows reads: the rectangle and the synthesis' halo."""
        halo = self.synthesis.halo
        r0, r1 = max(0, dy - halo), min(self.height, dy + height + halo)
        c0, c1 = max(0, dx - halo), min(self.width, dx + width + halo)
        return r0, r1, c0, c1

    def _windowed(self, height: int, width: int) -> bool:
        """Whether ``render`` of a rectangle this size renders it alone, from windows of the grids."""
        return self._pixels is None and height * width <= self.WINDOW_FRACTION * self.height * self.width

    def pieces(self, height: int, width: int, *, x0: int = 0, y0: int = 0) -> list[tuple[int, int]]:
        """What ``render`` of this frame rectangle would entropy-decode and is not decoded yet: the
        pieces of a tiled block's latents (``decode_piece``), each with its number of latents;
        empty for an untiled block (its latents are decoded on load) or a rendered one."""
        if self._tiled is None or self._pixels is not None:
            return []
        if not self._windowed(height, width):
            return self._tiled.pending(0, self.height, 0, self.width)
        return self._tiled.pending(*self._window(y0 - self.y0, x0 - self.x0, height, width))

    def decode_piece(self, k: int) -> None:
        """Entropy-decode piece ``k`` of ``pieces`` now (a read's threads share its pieces out
        before they render; a render decodes whatever is still missing itself)."""
        if self._tiled is not None:
            self._tiled.decode_piece(k)

    def render(self, height: int, width: int, side: float, *, x0: int = 0, y0: int = 0) -> np.ndarray:
        """Pixels of the frame rectangle; it must lie inside the fitted domain."""
        dx, dy = x0 - self.x0, y0 - self.y0
        if dx < 0 or dy < 0 or dx + width > self.width or dy + height > self.height:
            raise CinrFormatError(
                f"{self.where}: rectangle ({x0}, {y0}, {width}, {height}) lies outside the block's "
                f"fitted {self.width}x{self.height} pixels at ({self.x0}, {self.y0})"
            )
        if self._windowed(height, width):
            out = self._render_window(dy, dx, height, width)
            if out is not None:
                return out
        return self._render_all()[dy : dy + height, dx : dx + width]


class LatentCodec(BlockCodec):
    """Compressive CINR: entropy-coded integer latent grids and a small CINR synthesis."""

    name = "latent"
    kinds = LATENT_KINDS
    storages = ("entropy",)
    default_storage = "entropy"
    # q4: 37 dB on the H&E crops (TYPICAL_PSNR), above a scanner's JPEG q80 (about 36 dB).
    default_preset = "q4"
    format_minor = 2
    compact_json = True
    # Mips at 1/2 and 1/4 must match the level's PSNR and so cost about as much per pixel as the
    # level: 39 % of a 1024^2 q4 file. The level box-filtered is at least as good for no bytes
    # (docs/architecture.md, "Mips of a compressive file").
    first_mip = 8
    # Then every fourth downsample (8, 32): a read at 1/16 box-filters the 1/8 mip, never worse
    # than it, so the 1/16 mips' bytes (1.9 % of the prostate image's default file) buy only
    # decoding speed at a scale where a block's mip is 64^2 pixels (docs/architecture.md,
    # "Mips of a compressive file").
    mip_step = 4
    # One torch thread per fit: the training kernels run on one thread whatever torch's setting,
    # and a payload depends on the thread count (a 256^2 fit gave different bytes with one and
    # two), so with "auto" threads an encode's files changed with the machine's load.
    fit_threads = 1
    # 512^2 blocks: a cold tile entropy-decodes a quarter of the latents. On the sample (q4, 20
    # steps, A/B under equal load) cold tiles 349-388 ms against 606-900 at 1024^2, the DeepZoom
    # pattern 1.8-2.2 s against 3.0-3.6; a 1024^2 prostate crop at 600 steps per block 0.711x the
    # JPEG pyramid against 0.714x (docs/architecture.md).
    block_size = 512
    # 128-px decode tiles: a read at a random position renders about 0.6x the pixels of 256-px
    # tiles (9 of 128^2 against 4 of 256^2, each with its halo). Sample at q4, 20 steps, A B A B
    # (`benchmarks.viewer_speed`'s `measure`, 7 reads): cold 256^2 tile 50-51 against 58-66 ms,
    # DeepZoom pattern 232-235 against 244-249 ms, zoomed-out 1/2 131-136 against 142-147 ms.
    decode_tile = 128

    def minor_version(self, header: Mapping[str, Any]) -> int:
        model = header.get("model")
        if not isinstance(model, Mapping):
            return self.format_minor
        if model.get("latent_tile"):
            return 8  # 1.8 added independently coded tiles of the first latent grid
        if model.get("stabiliser"):
            return 7  # 1.7 added the synthesis' stabiliser (the head reads the latents too)
        if model.get("weight_coding") == "laplace" or model.get("latent_shift", 0):
            return 5  # 1.5 added Laplace-coded weights and the latent step
        if model.get("activation") == "leaky_relu":
            return 4  # 1.4 added leaky ReLU
        return 3 if model.get("upsampling") == "learned" else self.format_minor  # 1.3: learned upsampling

    def header_fields(self, config: LatentConfig, storage: str) -> dict[str, Any]:
        self.check_storage(storage)
        return {"model": config.to_dict()}

    def parse_config(self, header: Mapping[str, Any], where: str) -> LatentConfig:
        value = get_object(header, "model", where)
        where = f"{where}: model"
        unknown = sorted(set(value) - set(LatentConfig.__dataclass_fields__))
        if unknown:
            raise CinrFormatError(f"{where}: unknown configuration keys {unknown[:5]} (newer encoder?)")
        for key, (lo, hi) in int_ranges(LatentConfig).items():
            if key in value:
                get_int(value, key, lo, hi, where)
        mlp = value.get("mlp", [24, 24])
        if not (isinstance(mlp, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in mlp)):
            raise CinrFormatError(f"{where}: mlp is not a list of integers")
        if not isinstance(value.get("stabiliser", False), bool):
            raise CinrFormatError(f"{where}: stabiliser is not true or false")
        try:
            config = LatentConfig.from_dict(value)
        except (ValueError, TypeError) as exc:
            raise CinrFormatError(f"{where}: invalid configuration: {exc}") from None
        check_decode_cost(latent_macs_per_pixel(config), where)
        return config

    def _parse(self, payload: bytes, config: LatentConfig, where: str) -> tuple[Any, ...]:
        """``_sections`` plus the checks against the header's configuration."""
        w, h, x0, y0, weights, latents = _sections(payload, where)
        if not (w <= config.side and h <= config.side and x0 + w <= config.side and y0 + h <= config.side):
            raise CinrFormatError(
                f"{where}: a {w}x{h} domain at ({x0}, {y0}) does not fit a {config.side} px block"
            )
        area = sum(a * b for a, b in config.grid_shapes(h, w))
        if area > LATENT_AREA_FLOOR + LATENT_AREA_PER_BIT * 8 * len(latents):
            raise CinrFormatError(f"{where}: {area} latents from a {len(latents)}-byte stream")
        return w, h, x0, y0, weights, latents

    def load(self, payload: bytes, config: LatentConfig, where: str, device: str = "cpu") -> BlockModel:
        from ..core.render import resolve_device
        from ..core.synthesis import Synthesis

        w, h, x0, y0, weights, latents = self._parse(payload, config, where)
        tensors = _network_ints(weights, config, where)
        grid_shapes, model = config.grid_shapes(h, w), int_context_model(config, tensors)
        tiles = config.latent_tiles(h, w)
        tiled = None
        grids: list[np.ndarray] = []
        if tiles:
            tiled = _TiledGrids(
                grid_shapes, tiles, _split_streams(latents, len(tiles) + 1, where), model, where
            )
            if resolve_device(device).type != "cpu":  # pieces decode into host memory: all of them now
                tiled.ensure(0, h, 0, w)
                grids, tiled = [v.astype(np.int64) for v in tiled.values], None
        else:
            grids = decode_grids(latents, grid_shapes, model, where)
        synthesis = Synthesis(config)
        state = _dequantized(tensors, "synthesis.")
        synthesis.load_state_dict(state, strict=True)
        synthesis.eval()
        return LatentBlock(synthesis.to(resolve_device(device)), grids, w, h, x0, y0, where, tiled)

    def check_payload(self, payload: bytes, where: str) -> None:
        """The payload's structure (``_sections``); weights and latents are checked against the
        header when decoded."""
        _sections(payload, where)

    def config_for(self, kind: str, preset: str, height: int, width: int) -> LatentConfig:
        from ..encode.train.latent import PRESET_ARCH, latent_shift_of

        shift = latent_shift_of(preset)  # ValueError for an unknown preset
        side = max(height, width)
        tile = LATENT_TILE if side > LATENT_TILE else 0
        return LatentConfig(
            kind=kind, side=side, **{"latent_shift": shift, "latent_tile": tile, **PRESET_ARCH}
        )

    def finer_config(self, config: LatentConfig) -> LatentConfig | None:
        """``config`` with the next finer latent step of the quality ladder (a unit step -> 1/4)."""
        from ..encode.train.latent import QUALITY_LATENT_SHIFT

        finer = sorted(s for s in set(QUALITY_LATENT_SHIFT.values()) if s > config.latent_shift)
        return replace(config, latent_shift=finer[0]) if finer else None

    def recipe(self, kind: str, preset: str) -> dict[str, Any]:
        from ..encode.train.latent import RECIPE, lambda_of

        return {**RECIPE, "lambda": lambda_of(preset)}

    def default_steps(self, device: str, tissue_pixels: int | None = None) -> int | None:
        from ..core.render import resolve_device
        from ..encode.train.latent import default_steps

        return default_steps(str(resolve_device(device)), tissue_pixels)

    def check_storage(self, storage: str) -> None:
        if storage not in self.storages:
            raise ValueError(f"unknown storage setting {storage!r} for ccinr; choose entropy")

    def warm_starts(self, steps: int | None, target_psnr: float | None) -> bool:
        from ..encode.train.latent import RECIPE

        short = steps is not None and steps <= int(RECIPE["short_fit_steps"])
        return bool(RECIPE["warm_start"]) and short and target_psnr is None

    def networks(self, payload: bytes, config: LatentConfig, where: str) -> dict[str, Any]:
        """The stored networks of a payload (synthesis, context model), dequantized: float32
        tensors by ``LatentImage`` state-dict name."""
        return _dequantized(_network_ints(self._parse(payload, config, where)[4], config, where))

    @functools.lru_cache(maxsize=2)  # noqa: B019 - the codec is a module singleton; a slide's blocks share one prior
    def latent_map(self, payload: bytes, config: LatentConfig) -> tuple[np.ndarray | None, ...]:
        """The map from pixels to latents (``encode.train.latent_start``) fitted on a stored
        block (a slide's prior): its decoded pixels and its stored latent grids."""
        from ..encode.train.latent_start import latent_map

        b = cast("LatentBlock", self.load(payload, config, "the prior block's payload"))
        decoded = b.render(b.height, b.width, float(max(b.height, b.width)), x0=b.x0, y0=b.y0)
        return tuple(latent_map(decoded, b.latent_grids()))

    def stored_fit(
        self, payload: bytes, pixels: np.ndarray, config: LatentConfig, lam: float, device: str = "cpu"
    ) -> LatentFit:
        """A stored payload as a fit at rate weight ``lam`` (networks at their stored steps,
        latents the stored integers), for ``fit`` to continue; the payload's domain must be the
        size of ``pixels``."""
        import torch

        from ..core.synthesis import LatentImage
        from ..encode.train.latent import LatentFit

        where = "the block's stored payload"
        w, h, x0, y0, weights, _ = self._parse(payload, config, where)
        if (h, w) != tuple(pixels.shape[:2]):
            raise ValueError(f"{where}: a {w}x{h} domain for {pixels.shape[1]}x{pixels.shape[0]} pixels")
        t0 = time.perf_counter()
        tensors = _network_ints(weights, config, where)
        grids = cast("LatentBlock", self.load(payload, config, where)).latent_grids()
        state = _dequantized(tensors)
        state.update(
            {f"latents.{i}": torch.from_numpy(g.astype(np.float32))[None] for i, g in enumerate(grids)}
        )
        model = LatentImage(config, h, w)
        model.load_state_dict(state, strict=True)
        dev = torch.device(device)
        return LatentFit(
            model=model.to(dev),
            config=config,
            lam=lam,
            steps=0,
            seconds=time.perf_counter() - t0,
            device=str(dev),
            exponents={n: k for n, (_, k) in tensors.items()},
            origin=(x0, y0),
        )

    def fit(
        self, pixels: np.ndarray, config: LatentConfig, kind: str, preset: str, settings: FitSettings
    ) -> FittedBlock:
        from ..core.render import resolve_device
        from ..encode.train.latent import (
            RECIPE,
            fit_latents,
            fit_latents_to_psnr,
            lambda_of,
            quantize_networks,
        )
        from ..encode.train.rdo import refine_latents

        device = str(resolve_device(settings.device))
        steps = self.default_steps(device) if settings.steps is None else settings.steps
        init = start = None
        if settings.init is not None and self.warm_starts(steps, settings.target_psnr):
            init = self.networks(settings.init, config, "the prior block's payload")
            if RECIPE["warm_latents"]:
                from ..encode.train.latent_start import predicted_latents

                h, w = pixels.shape[:2]
                start = predicted_latents(
                    pixels, self.latent_map(settings.init, config), config.grid_shapes(h, w)
                )
        if settings.start is not None:
            # A stored fit continued: its latents searched again at the new weight (below).
            if settings.lam is None or settings.target_psnr is not None:
                raise ValueError("a stored payload is continued at a given rate weight, not a target PSNR")
            fitted = self.stored_fit(settings.start, pixels, config, settings.lam, device)
        elif settings.target_psnr is not None:
            # The quality level's lambda is the first guess; the search moves it per block.
            fitted = fit_latents_to_psnr(
                pixels,
                config,
                settings.target_psnr,
                lambda_of(preset),
                steps=steps,
                seed=settings.seed,
                device=device,
                progress=settings.progress,
            )
        else:
            fitted = fit_latents(
                pixels,
                config,
                lambda_of(preset) if settings.lam is None else settings.lam,
                steps=steps,
                time_budget=settings.time_budget,
                seed=settings.seed,
                device=device,
                progress=settings.progress,
                init_networks=init,
                init_latents=start,
            )
        bits = laplace_weight_bits if config.weight_coding == "laplace" else (lambda v: best_order(v)[0])
        with _full_float32():
            if settings.start is None:  # a continued fit keeps its stored networks
                quantize_networks(fitted, pixels, bits)
            if RECIPE["rdo_sweeps"]:
                refine_latents(
                    fitted.model,
                    pixels,
                    fitted.lam,
                    sweeps=int(RECIPE["rdo_sweeps"]),
                    levels=int(RECIPE["rdo_levels"]),
                    later_levels=int(RECIPE["rdo_later_levels"]),
                    sign=str(RECIPE["rdo_sign"]),
                )
        if settings.measure:
            from ..core.metrics import psnr, ssim
            from ..encode.train.latent import render_latents

            out = render_latents(fitted.model)
            fitted.psnr, fitted.ssim = psnr(out, pixels), ssim(out, pixels)
        if settings.frame is not None:
            fitted.origin = (int(settings.frame[0]), int(settings.frame[1]))
        return fitted

    def serialize(self, fitted: FittedBlock, storage: str) -> bytes:
        self.check_storage(storage)
        fit = cast("LatentFit", fitted)
        model = fit.model
        stored: dict[str, tuple[np.ndarray, int]] = {}
        for name, p in model.named_parameters():
            if not name.startswith("latents."):
                k = fit.exponents[name]
                stored[name] = (
                    np.rint(p.detach().cpu().numpy().astype(np.float64) * 2.0**k).astype(np.int64),
                    k,
                )
        if model.config.weight_coding == "laplace":
            weights = encode_weights(list(stored.values()))
        else:
            weights = pack_weights(list(stored.values()))
        grids = [np.rint(g.detach().cpu().numpy()[0]).astype(np.int64) for g in model.latents]
        context = int_context_model(model.config, stored)
        tiles = model.config.latent_tiles(model.height, model.width)
        if tiles:
            streams = [encode_grids([grids[0][a:b, c:d]], context) for a, b, c, d in tiles]
            stream = b"".join(
                [
                    struct.pack(f"<{len(streams)}I", *map(len, streams)),
                    *streams,
                    encode_grids(grids[1:], context),
                ]
            )
        else:
            stream = encode_grids(grids, context)
        head = _HEAD.pack(MAGIC, model.width, model.height, fit.origin[0], fit.origin[1], len(weights))
        return head + weights + struct.pack("<I", len(stream)) + stream


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """No TF32 in GPU convolutions and matrix products meanwhile: the weights' steps and the
    latents' search decide on renders, which should be the float32 of the CPU decoder's."""
    import torch

    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


#: The codec ``coding.registry`` hands out for ``ccinr``.
CODEC = LatentCodec()
