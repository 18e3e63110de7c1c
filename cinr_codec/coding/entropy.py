"""Entropy coding of integer latent grids: a fixed-point context model and a range coder.

Each latent ``x`` of a grid is coded, in raster order, given its causal neighbours: a small
network (``ContextModel``) predicts a Laplace mean and scale from them. For the decoder to
rebuild exactly the probabilities the encoder used, on any machine:

* the network runs in integer arithmetic (``IntContextModel``: weights are integers times
  ``2**-k``, activations fixed point with ``FRAC_BITS`` fractional bits, numpy int64), so
  its outputs are the same bits everywhere;
* the mean is snapped to ``1 / MEAN_STEPS`` and the log-scale to one of ``N_SCALES``
  values, and the probabilities of each (scale, mean offset) pair come from ``pmf_table()``,
  computed with Python's ``decimal`` (software arithmetic, correctly rounded exp): no libm,
  no SIMD, no platform in the loop;
* the symbols are coded with constriction's range coder (``Categorical`` with the table's
  rows, which it quantizes with plain float arithmetic).

A symbol is ``x - floor(mean)`` in ``[-RADIUS, RADIUS]``; values beyond are an escape
symbol followed by the excess, uniform over ``[0, MAX_EXCESS)``.

Decoding is sequential in principle (each latent needs its left neighbour); it runs on
anti-diagonal wavefronts, all latents of one wavefront at once, so its cost is
``rows * (max column offset + 1) + cols`` vectorised steps per grid.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

import numpy as np

from ..core.config import causal_offsets, context_border
from ..errors import CinrFormatError

#: Fractional bits of the context model's fixed-point activations.
FRAC_BITS = 16
#: The mean is snapped to multiples of 1 / MEAN_STEPS.
MEAN_STEPS = 8
#: Log-scales: N_SCALES values from LOG_SCALE_MIN in steps of LOG_SCALE_STEP (b from 0.01 to ~150).
N_SCALES = 64
LOG_SCALE_MIN = Decimal("-4.6")
LOG_SCALE_STEP = Decimal("0.15")
#: Symbols x - floor(mean) in [-RADIUS, RADIUS] are coded directly; beyond, an escape.
RADIUS = 24
#: An escaped value's excess beyond RADIUS is below this (the encoder refuses larger ones).
MAX_EXCESS = 1 << 12
#: Symbols of the alphabet: escape-low, -RADIUS..RADIUS, escape-high.
ALPHABET = 2 * RADIUS + 3


def log_scale_table() -> np.ndarray:
    """The N_SCALES log-scales (float64) the coder snaps to."""
    return np.array([float(LOG_SCALE_MIN + i * LOG_SCALE_STEP) for i in range(N_SCALES)])


@functools.lru_cache(maxsize=1)
def pmf_table() -> np.ndarray:
    """(N_SCALES, MEAN_STEPS, ALPHABET) float64 probabilities, identical on every machine.

    Row (s, f) is a Laplace of scale ``b = exp(LOG_SCALE_MIN + s * LOG_SCALE_STEP)`` and mean
    ``m = f / MEAN_STEPS``, integrated over the unit bins of ``-RADIUS..RADIUS`` and the two
    tails (``_laplace_rows``).
    """
    out = _laplace_rows(RADIUS, MEAN_STEPS)
    out.setflags(write=False)
    return out


def _laplace_rows(radius: int, mean_steps: int) -> np.ndarray:
    """(N_SCALES, mean_steps, 2 * radius + 3) float64: the Laplace of each table scale and mean
    f / mean_steps over the bins of ``-radius..radius`` and the two tails. Bin edges t = r - 1/2
    have ``exp((t - m) / b) = exp(-1/(2b)) exp(-m/b) exp(1/b)**r``, so each row takes a few
    ``Decimal.exp`` and products, all in software decimal arithmetic."""
    out = np.empty((N_SCALES, mean_steps, 2 * radius + 3), dtype=np.float64)
    with localcontext() as ctx:
        ctx.prec = 28
        half = Decimal("0.5")
        for s in range(N_SCALES):
            b = (LOG_SCALE_MIN + s * LOG_SCALE_STEP).exp()
            q = (-1 / b).exp()  # exp(-1/b)
            eh = (-half / b).exp()  # exp(-1/(2b))
            pw = [Decimal(1)]
            for _ in range(radius + 2):
                pw.append(pw[-1] * q)  # q**k
            for f in range(mean_steps):
                m = Decimal(f) / mean_steps
                ef = (-m / b).exp()  # exp(-m/b)
                edges = []
                for r in range(-radius, radius + 2):  # t = r - 1/2
                    if r - half < m:  # 0.5 exp((t - m)/b) = 0.5 eh ef q**(-r)
                        up = pw[-r] if r <= 0 else 1 / pw[r]
                        edges.append(half * eh * ef * up)
                    else:  # 1 - 0.5 exp(-(t - m)/b) = 1 - 0.5 q**r / (eh ef)
                        edges.append(1 - half * pw[r] / (eh * ef))
                row = [edges[0]] + [edges[i + 1] - edges[i] for i in range(2 * radius + 1)] + [1 - edges[-1]]
                out[s, f] = [float(v) for v in row]
    return out


@dataclass(frozen=True)
class IntLayer:
    """One linear layer in fixed point: ``weight * 2**-w_shift``, ``bias * 2**-b_shift`` (int64)."""

    weight: np.ndarray  # (out, in)
    bias: np.ndarray  # (out,)
    w_shift: int
    b_shift: int


@dataclass(frozen=True)
class IntContextModel:
    """The context model in integer arithmetic: hidden layers (ReLU, residual after the first)
    and an output layer giving (mean, log-scale) in fixed point."""

    offsets: tuple[tuple[int, int], ...]
    hidden: tuple[IntLayer, ...]
    out: IntLayer

    def __post_init__(self) -> None:
        for layer in (*self.hidden, self.out):
            if not (0 <= layer.w_shift <= FRAC_BITS + 8 and 0 <= layer.b_shift <= FRAC_BITS):
                raise CinrFormatError("context model: weight exponent out of range")

    def params(self, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scale index, mean numerator) for contexts ``ctx`` (n, len(offsets)) of integers.

        The mean is ``numerator / MEAN_STEPS``; every operation is on int64, so the result is
        the same on any machine and for any batch.
        """
        h = ctx.astype(np.int64) << FRAC_BITS
        for i, layer in enumerate(self.hidden):
            z = np.maximum(_linear(h, layer), 0)
            h = h + z if i > 0 else z
        o = _linear(h, self.out)
        mean_num = _round_shift(o[:, 0] * MEAN_STEPS, FRAC_BITS)
        # log-scale index: round((s - LOG_SCALE_MIN) / LOG_SCALE_STEP), in fixed point.
        step = int(LOG_SCALE_STEP * (1 << FRAC_BITS))
        lo = int(LOG_SCALE_MIN * (1 << FRAC_BITS))
        s_idx = np.minimum(np.maximum((o[:, 1] - lo + step // 2) // step, 0), N_SCALES - 1)
        return s_idx.astype(np.int64), mean_num.astype(np.int64)

    def n_macs(self) -> int:
        """Multiply-adds per latent."""
        return sum(int(layer.weight.size) for layer in (*self.hidden, self.out))


def _round_shift(v: np.ndarray, s: int) -> np.ndarray:
    return (v + (1 << (s - 1))) >> s if s > 0 else v


def _linear(h: np.ndarray, layer: IntLayer) -> np.ndarray:
    """``h`` (fixed point, FRAC_BITS) times the layer: fixed point out (int64, exact)."""
    acc = h @ layer.weight.T.astype(np.int64)  # integer matmul: exact (no float)
    acc = _round_shift(acc, layer.w_shift)
    return acc + (layer.bias.astype(np.int64) << (FRAC_BITS - layer.b_shift))


def _slope(offsets: Sequence[tuple[int, int]]) -> int:
    """The wavefront slope a: t = a * row + col is a valid decoding order when every neighbour
    (di < 0, dj) has a * di + dj < 0."""
    return 1 + max([dj for di, dj in offsets if di < 0] + [0])


class _Padded:
    """A grid with a zero border wide enough for every causal neighbour: contexts are one gather."""

    def __init__(
        self, h: int, w: int, offsets: Sequence[tuple[int, int]], grid: np.ndarray | None = None
    ) -> None:
        self.p = context_border(offsets)
        self.w2 = w + 2 * self.p
        self.flat = np.zeros((h + self.p) * self.w2, dtype=np.int64)
        self.rel = np.array([di * self.w2 + dj for di, dj in offsets], dtype=np.int64)
        self.h, self.w = h, w
        if grid is not None:
            self.view()[...] = grid

    def view(self) -> np.ndarray:
        """The grid itself, (h, w), a view into the padded array."""
        return self.flat.reshape(self.h + self.p, self.w2)[self.p :, self.p : self.p + self.w]

    def index(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Flat indices of (rows, cols)."""
        return (rows + self.p) * self.w2 + cols + self.p

    def context(self, idx: np.ndarray) -> np.ndarray:
        """Neighbours of the positions at flat indices ``idx``: (n, len(offsets)) int64."""
        return self.flat[idx[:, None] + self.rel[None, :]]


def _symbols(x: np.ndarray, mean_num: np.ndarray, radius: int = RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """(symbol, excess) of values x for snapped means mean_num / MEAN_STEPS: ``d = x - floor(mean)``
    is the symbol ``d + radius + 1`` for |d| <= radius, else escape 0 (below) or ``2 radius + 2``
    (above) with the excess ``|d| - radius - 1``."""
    d = x - np.floor_divide(mean_num, MEAN_STEPS)
    sym = np.clip(d + radius + 1, 0, 2 * radius + 2)
    excess = np.where(d < -radius, -radius - 1 - d, np.where(d > radius, d - radius - 1, 0))
    return sym.astype(np.int32), excess.astype(np.int32)


def _values(sym: np.ndarray, excess: np.ndarray, mean_num: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """Inverse of ``_symbols``."""
    d = sym.astype(np.int64) - radius - 1
    d = np.where(sym == 0, -radius - 1 - excess, np.where(sym == 2 * radius + 2, radius + 1 + excess, d))
    return d + np.floor_divide(mean_num, MEAN_STEPS)


def _encode_symbols(
    enc: Any, model: Any, uniform: Any, sym: np.ndarray, excess: np.ndarray, alphabet: int, probs: Any = None
) -> None:
    """Code ``sym`` (under the family ``model`` with rows of ``probs`` their probabilities, or
    under the fixed ``model`` when ``probs`` is None), then the escapes' excesses (symbols 0 and
    ``alphabet - 1``): what ``_decode_symbols`` reads back."""
    if len(sym):
        enc.encode(sym, model) if probs is None else enc.encode(sym, model, probs)
    esc = (sym == 0) | (sym == alphabet - 1)
    if esc.any():
        enc.encode(excess[esc], uniform)


def _decode_symbols(
    dec: Any, model: Any, uniform: Any, count: int, alphabet: int, probs: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(symbol, excess) of ``count`` symbols (under the family ``model`` with rows of ``probs``,
    or the fixed ``model``; escapes at both ends of the alphabet), the escapes' excesses after
    them (``uniform``). Raises what constriction raises on a corrupt stream."""
    if not count:
        sym = np.zeros(0, dtype=np.int64)
    elif probs is None:
        sym = np.asarray(dec.decode(model, count), dtype=np.int64)
    else:
        sym = np.asarray(dec.decode(model, probs), dtype=np.int64)
    excess = np.zeros_like(sym)
    esc = (sym == 0) | (sym == alphabet - 1)
    if esc.any():
        excess[esc] = np.asarray(dec.decode(uniform, int(esc.sum())), dtype=np.int64)
    return sym, excess


def _wavefronts(h: int, w: int, offsets: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Groups of positions that can be decoded together, in a valid order (raster-causal contexts)."""
    a = _slope(offsets)
    rows, cols = np.divmod(np.arange(h * w), w)
    t = a * rows + cols
    order = np.argsort(t, kind="stable")
    bounds = np.flatnonzero(np.diff(t[order])) + 1
    return [(rows[g], cols[g]) for g in np.split(order, bounds)]


def _grid_symbols(grid: np.ndarray, model: IntContextModel) -> tuple[np.ndarray, ...]:
    """(scale index, mean numerator, symbol, excess) of every latent of a known grid, raster order."""
    g = np.asarray(grid, dtype=np.int64)
    h, w = g.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    pad = _Padded(h, w, model.offsets, g)
    s_idx, mean_num = model.params(pad.context(pad.index(rows, cols)))
    sym, excess = _symbols(g.ravel(), mean_num)
    return s_idx, mean_num, sym, excess


def encode_grids(grids: Sequence[np.ndarray], model: IntContextModel) -> bytes:
    """Range-code integer grids (each (h, w)) with the context model; the bytes ``decode_grids`` reads."""
    import constriction

    table = pmf_table()
    family = constriction.stream.model.Categorical(perfect=False)
    uniform = constriction.stream.model.Uniform(MAX_EXCESS)
    enc = constriction.stream.queue.RangeEncoder()
    for grid in grids:
        h, w = np.shape(grid)
        s_idx, mean_num, sym, excess = _grid_symbols(grid, model)
        if int(excess.max(initial=0)) >= MAX_EXCESS:
            raise ValueError(f"a latent is more than {RADIUS + MAX_EXCESS} from its predicted mean")
        probs = table[s_idx, np.mod(mean_num, MEAN_STEPS)]
        # Same order as the decoder: wavefront by wavefront, escapes' excess after each wavefront.
        for r, c in _wavefronts(h, w, model.offsets):
            i = r * w + c
            _encode_symbols(enc, family, uniform, sym[i], excess[i], ALPHABET, probs[i])
    return enc.get_compressed().tobytes()


def decode_grids(
    data: bytes, shapes: Sequence[tuple[int, int]], model: IntContextModel, where: str
) -> list[np.ndarray]:
    """Inverse of ``encode_grids`` (CinrFormatError when the data is not such a stream).

    Runs the compiled decoder (``_latent.c``) when it is built, else the numpy one; both give
    the same grids bit for bit."""
    if len(data) % 4:
        raise CinrFormatError(f"{where}: latent stream of {len(data)} bytes is not whole 32-bit words")
    from ..core import native  # imports torch: not at module level (cinr info stays light)

    words = np.frombuffer(data, dtype=np.uint32).copy()
    lib = _latent_lib() if native.enabled() and _kernel_takes(model) else None
    if lib is not None:
        return _decode_grids_native(lib, words, shapes, model, where)
    return _decode_grids_numpy(words, shapes, model, where)


def _decode_grids_numpy(
    words: np.ndarray, shapes: Sequence[tuple[int, int]], model: IntContextModel, where: str
) -> list[np.ndarray]:
    """``decode_grids`` with numpy and constriction, one wavefront at a time."""
    import constriction

    table = pmf_table()
    family = constriction.stream.model.Categorical(perfect=False)
    uniform = constriction.stream.model.Uniform(MAX_EXCESS)
    dec = constriction.stream.queue.RangeDecoder(words)
    out = []
    for h, w in shapes:
        pad = _Padded(h, w, model.offsets)
        for r, c in _wavefronts(h, w, model.offsets):
            idx = pad.index(r, c)
            s_idx, mean_num = model.params(pad.context(idx))
            try:
                sym, excess = _decode_symbols(
                    dec, family, uniform, len(idx), ALPHABET, table[s_idx, np.mod(mean_num, MEAN_STEPS)]
                )
            except (ValueError, RuntimeError, AssertionError) as exc:
                raise CinrFormatError(f"{where}: latent stream is corrupt ({exc})") from None
            pad.flat[idx] = _values(sym, excess, mean_num)
        out.append(pad.view().copy())
    if not dec.maybe_exhausted():
        raise CinrFormatError(f"{where}: latent stream has data past its last latent")
    return out


# -- the compiled decoder (``_latent.c``) --------------------------------------------------------

#: constriction's probability precision (its default categorical and uniform models).
PRECISION = 24


@functools.lru_cache(maxsize=1)
def cdf_table() -> np.ndarray:
    """(N_SCALES * MEAN_STEPS, ALPHABET + 1) uint32: the integer CDF constriction's range coder uses
    for each ``pmf_table`` row (its "fast" leaky quantization, ``perfect=False``).

    Entry i < ALPHABET is ``trunc(c_i * (2**24 - ALPHABET) / total) + i``, where ``c_i`` sums the
    row's first i probabilities left to right in float64 and ``total`` sums all of them the same
    way; the last entry is 2**24. Every symbol keeps a probability of at least 2**-24.
    """
    rows = pmf_table().reshape(N_SCALES * MEAN_STEPS, ALPHABET)
    out = np.empty((rows.shape[0], ALPHABET + 1), dtype=np.uint32)
    for n, row in enumerate(rows):
        total = 0.0
        for v in row:  # left to right, as constriction sums
            total += float(v)
        scale = float((1 << PRECISION) - ALPHABET) / total
        cum = 0.0
        for i, v in enumerate(row):
            out[n, i] = int(cum * scale) + i
            cum += float(v)
        out[n, ALPHABET] = 1 << PRECISION
    out.setflags(write=False)
    return out


def _setup_latent(lib: Any) -> None:
    import ctypes

    p, i = ctypes.c_void_p, ctypes.c_int64
    fn = lib.cinr_latent_decode_grid
    fn.restype = ctypes.c_int
    fn.argtypes = [p, i, p, i, i, p, i, i, i, i, p, p, p, p, p, p, p]


#: Seconds the compiled decoder spent in the context model and in the range decoder, summed over
#: threads, while ``decode_timing`` is active (None otherwise: the decoder then reads no clock).
_timing: list[float] | None = None
_timing_lock = threading.Lock()


@contextlib.contextmanager
def decode_timing() -> Iterator[dict[str, float]]:
    """While active, the compiled latent decoder adds the seconds of its two parts, summed over
    the threads that decode, to the yielded dict's ``context_model`` and ``range_decoder``
    (filled on exit; the numpy path adds nothing). For benchmarks: one active at a time."""
    global _timing
    out = {"context_model": 0.0, "range_decoder": 0.0}
    with _timing_lock:
        if _timing is not None:
            raise RuntimeError("decode_timing is already active")
        _timing = [0.0, 0.0]
    try:
        yield out
    finally:
        with _timing_lock:
            assert _timing is not None
            out["context_model"], out["range_decoder"] = _timing
            _timing = None


#: Limits of the compiled decoder (``_latent.c``: MAX_WIDTH, MAX_LAYERS, MAX_CTX; weights below
#: 2**15); a context model beyond them decodes on the numpy path.
KERNEL_MAX_WIDTH = 64
KERNEL_MAX_LAYERS = 8


def _kernel_takes(model: IntContextModel) -> bool:
    """True when the compiled decoder accepts this context model's shape and weights."""
    layers = (*model.hidden, model.out)
    return (
        0 < len(model.offsets) <= KERNEL_MAX_WIDTH
        and len(layers) <= KERNEL_MAX_LAYERS
        and all(max(layer.weight.shape) <= KERNEL_MAX_WIDTH for layer in layers)
        and all(int(np.abs(layer.weight).max(initial=0)) < 1 << 15 for layer in layers)
    )


def _latent_lib() -> Any:
    """The compiled latent decoder, or None (no compiler, ``CINR_NATIVE=0``, or the build failed)."""
    from pathlib import Path

    from ..core import native

    return native.compiled(Path(__file__).with_name("_latent.c"), "latent decoding", _setup_latent)


def _decode_grids_native(
    lib: Any, words: np.ndarray, shapes: Sequence[tuple[int, int]], model: IntContextModel, where: str
) -> list[np.ndarray]:
    """``decode_grids`` through ``cinr_latent_decode_grid``, one call per grid."""
    layers = (*model.hidden, model.out)
    dims = np.array([d for layer in layers for d in layer.weight.shape[::-1]], dtype=np.int64)
    shifts = np.array([s for layer in layers for s in (layer.w_shift, layer.b_shift)], dtype=np.int64)
    params = np.concatenate(
        [
            np.concatenate([layer.weight.astype(np.int64).ravel(), layer.bias.astype(np.int64).ravel()])
            for layer in layers
        ]
    )
    offsets = np.array(model.offsets, dtype=np.int64).reshape(-1)
    a, pad = _slope(model.offsets), context_border(model.offsets)
    step = int(LOG_SCALE_STEP * (1 << FRAC_BITS))
    lo = int(LOG_SCALE_MIN * (1 << FRAC_BITS))
    consts = np.array([FRAC_BITS, MEAN_STEPS, N_SCALES, RADIUS, lo, step, MAX_EXCESS], dtype=np.int64)
    cdf = cdf_table()
    # The range decoder's state (lower, range, point, next word), as constriction starts it.
    point = 0
    for k in range(min(2, len(words))):
        point = (point << 32) | int(words[k])
    if len(words) == 1:
        point <<= 32
    state = np.array([0, (1 << 64) - 1, point, min(2, len(words))], dtype=np.uint64)
    timing = np.zeros(2) if _timing is not None else None
    out = []
    for h, w in shapes:
        grid = np.empty((h, w), dtype=np.int64)
        rc = lib.cinr_latent_decode_grid(
            words.ctypes.data, len(words), state.ctypes.data, h, w, offsets.ctypes.data, len(model.offsets),
            a, pad, len(layers), dims.ctypes.data, shifts.ctypes.data, params.ctypes.data, cdf.ctypes.data,
            consts.ctypes.data, grid.ctypes.data, None if timing is None else timing.ctypes.data,
        )  # fmt: skip
        if timing is not None:
            with _timing_lock:
                if _timing is not None:
                    _timing[0] += float(timing[0])
                    _timing[1] += float(timing[1])
            timing[:] = 0.0
        if rc == 1:
            raise CinrFormatError(
                f"{where}: latent stream is corrupt (Tried to decode invalid compressed data.)"
            )
        if rc != 0:
            raise CinrFormatError(f"{where}: the context model does not fit the compiled decoder (code {rc})")
        out.append(grid)
    lower, rng, point, pos = (int(v) for v in state)
    # constriction's maybe_exhausted(): every word read and the point within 2**33 - 1 of lower.
    if pos < len(words) or not (rng == (1 << 64) - 1 or (point - lower) % (1 << 64) < (1 << 33) - 1):
        raise CinrFormatError(f"{where}: latent stream has data past its last latent")
    return out


def estimated_bits(grids: Sequence[np.ndarray], model: IntContextModel) -> float:
    """Bits the coder will spend (the table's -log2 probabilities), without coding."""
    table = pmf_table()
    total = 0.0
    for grid in grids:
        s_idx, mean_num, sym, _ = _grid_symbols(grid, model)
        p = table[s_idx, np.mod(mean_num, MEAN_STEPS), sym]
        total += float(-np.log2(np.maximum(p, 2.0**-24)).sum())
        esc = (sym == 0) | (sym == ALPHABET - 1)
        total += float(esc.sum()) * math.log2(MAX_EXCESS)
    return total


# -- network weights under a per-tensor Laplace (format 1.5, ``weight_coding = "laplace"``) -------

#: Weights -W_RADIUS..W_RADIUS are coded directly (zero-mean rows of the table's scales); beyond,
#: an escape symbol and the excess, uniform over [0, W_MAX_EXCESS) (stored weights are < 2**15).
W_RADIUS = 255
W_MAX_EXCESS = 1 << 15
W_ALPHABET = 2 * W_RADIUS + 3


@functools.lru_cache(maxsize=1)
def weight_pmf_table() -> np.ndarray:
    """(N_SCALES, W_ALPHABET) float64: zero-mean Laplace rows for the weights, like ``pmf_table``."""
    out = _laplace_rows(W_RADIUS, 1)[:, 0]
    out.setflags(write=False)
    return out


def _weight_symbols(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(symbol, excess) of integer weights: ``_symbols`` about a zero mean over -W_RADIUS..W_RADIUS."""
    d = np.asarray(v, dtype=np.int64).ravel()
    return _symbols(d, np.zeros_like(d), W_RADIUS)


def _weight_costs(v: np.ndarray) -> np.ndarray:
    """Bits of the integers ``v`` under each of the table's zero-mean Laplace rows (N_SCALES,)."""
    sym, _ = _weight_symbols(v)
    counts = np.bincount(sym, minlength=W_ALPHABET).astype(np.float64)
    logp = -np.log2(np.maximum(weight_pmf_table(), 2.0**-24))
    n_esc = counts[0] + counts[-1]
    return logp @ counts + n_esc * math.log2(W_MAX_EXCESS)


def laplace_weight_bits(v: np.ndarray) -> int:
    """Bits ``encode_weights`` spends on one tensor's integers ``v``, its 16 header bits included
    (the cost the networks' quantizer weighs)."""
    return int(math.ceil(float(_weight_costs(v).min()))) + 16


def encode_weights(tensors: Sequence[tuple[np.ndarray, int]]) -> bytes:
    """Integer tensors with their exponents -> u8 exponent and u8 scale index per tensor, then
    one range-coded stream of every tensor's integers (zero-mean Laplace of that scale; values
    beyond W_RADIUS escape)."""
    import constriction

    uniform = constriction.stream.model.Uniform(W_MAX_EXCESS)
    enc = constriction.stream.queue.RangeEncoder()
    head = bytearray()
    for ints, k in tensors:
        v = np.asarray(ints, dtype=np.int64).ravel()
        s_idx = int(np.argmin(_weight_costs(v)))
        head += bytes([k, s_idx])
        sym, excess = _weight_symbols(v)
        if int(excess.max(initial=0)) >= W_MAX_EXCESS:
            raise ValueError(f"a network weight is beyond {W_RADIUS + W_MAX_EXCESS}")
        _encode_symbols(enc, _weight_model(s_idx), uniform, sym, excess, W_ALPHABET)
    return bytes(head) + enc.get_compressed().tobytes()


@functools.cache
def _weight_model(s_idx: int) -> Any:
    """Constriction's categorical model of weight table row ``s_idx``, quantized once (the same
    leaky quantization as a row handed to ``Categorical(perfect=False)`` per symbol, which costs a
    513-entry row per weight: 3.8 against 0.9 ms a block's weights; identical integers on 272
    stored blocks)."""
    import constriction

    return constriction.stream.model.Categorical(weight_pmf_table()[s_idx], perfect=False)


def decode_weights(
    data: bytes, shapes: Sequence[tuple[int, ...]], where: str
) -> list[tuple[np.ndarray, int]]:
    """Inverse of ``encode_weights`` for tensors of the given shapes (CinrFormatError when malformed)."""
    import constriction

    n = len(shapes)
    if len(data) < 2 * n or (len(data) - 2 * n) % 4:
        raise CinrFormatError(f"{where}: weight section of {len(data)} bytes does not fit {n} tensors")
    head, stream = data[: 2 * n], np.frombuffer(data[2 * n :], dtype=np.uint32).copy()
    uniform = constriction.stream.model.Uniform(W_MAX_EXCESS)
    dec = constriction.stream.queue.RangeDecoder(stream)
    out = []
    for i, shape in enumerate(shapes):
        k, s_idx = head[2 * i], head[2 * i + 1]
        if k > 24 or s_idx >= N_SCALES:
            raise CinrFormatError(f"{where}: weight exponent {k} or scale index {s_idx} out of range")
        size = int(np.prod(shape))
        try:
            sym, excess = _decode_symbols(dec, _weight_model(s_idx), uniform, size, W_ALPHABET)
        except (ValueError, RuntimeError, AssertionError) as exc:
            raise CinrFormatError(f"{where}: weight stream is corrupt ({exc})") from None
        ints = _values(sym, excess, np.zeros_like(sym), W_RADIUS).reshape(shape)
        if np.abs(ints).max(initial=0) >= 1 << 15:
            raise CinrFormatError(f"{where}: a network weight is out of range")
        out.append((ints, k))
    if not dec.maybe_exhausted():
        raise CinrFormatError(f"{where}: weight stream has data past its last tensor")
    return out


__all__ = [
    "IntContextModel",
    "IntLayer",
    "causal_offsets",
    "decode_grids",
    "decode_weights",
    "encode_grids",
    "encode_weights",
    "estimated_bits",
    "laplace_weight_bits",
    "pmf_table",
    "weight_pmf_table",
]
