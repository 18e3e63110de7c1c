"""``coding.entropy``: the fixed-point context model and the range-coded latent stream."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cinr_codec.coding import entropy as E
from cinr_codec.errors import CinrFormatError


def _model(seed: int = 0, n: int = 12, width: int = 8) -> E.IntContextModel:
    rng = np.random.default_rng(seed)
    h1 = E.IntLayer(rng.integers(-300, 300, (width, n)), rng.integers(-200, 200, width), 10, 8)
    h2 = E.IntLayer(rng.integers(-300, 300, (width, width)), rng.integers(-200, 200, width), 10, 8)
    out = E.IntLayer(rng.integers(-400, 400, (2, width)), np.array([0, -300]), 10, 8)
    return E.IntContextModel(tuple(E.causal_offsets(n)), (h1, h2), out)


def _grids(seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(-1, 2, (40, 37)), axis=1) // 3
    return [
        smooth,
        rng.laplace(0, 2, (20, 19)).round().astype(np.int64),
        np.zeros((3, 1), dtype=np.int64),
        np.array([[400, -300], [0, 2]], dtype=np.int64),  # escapes
    ]


def test_table_rows_are_distributions() -> None:
    t = E.pmf_table()
    assert t.shape == (E.N_SCALES, E.MEAN_STEPS, E.ALPHABET)
    assert np.allclose(t.sum(axis=2), 1.0, atol=1e-12) and (t >= 0).all()
    # Narrow scales put the mass at the mean's bin; the mean offset moves it.
    assert t[0, 0, E.RADIUS + 1] > 0.99 and t[-1, 0, E.RADIUS + 1] < 0.05
    assert t[20, 7, E.RADIUS + 2] > t[20, 7, E.RADIUS]


def test_round_trip_and_estimate() -> None:
    model, grids = _model(), _grids()
    data = E.encode_grids(grids, model)
    out = E.decode_grids(data, [g.shape for g in grids], model, "t")
    for a, b in zip(grids, out, strict=True):
        assert np.array_equal(a, b)
    est = E.estimated_bits(grids, model)
    assert abs(8 * len(data) - est) < 0.05 * est + 64


def test_probabilities_do_not_depend_on_the_batch() -> None:
    model = _model(3)
    rng = np.random.default_rng(0)
    ctx = rng.integers(-50, 50, (500, 12))
    s_all, m_all = model.params(ctx)
    s_one, m_one = zip(*(model.params(ctx[i : i + 1]) for i in range(0, 500, 37)), strict=True)
    assert np.array_equal(s_all[::37], np.concatenate(s_one)) and np.array_equal(
        m_all[::37], np.concatenate(m_one)
    )


def test_values_too_far_from_the_mean_are_refused() -> None:
    with pytest.raises(ValueError, match="more than"):
        E.encode_grids([np.array([[10**6]])], _model())


@pytest.mark.parametrize("seed", range(6))
def test_garbage_streams_fail_cleanly_in_bounded_time(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, 4 * int(rng.integers(1, 50)), dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    try:
        grids = E.decode_grids(data, [(30, 30), (15, 15)], _model(seed), "garbage")
    except CinrFormatError:
        pass
    else:  # a stream that decodes is still bounded: the grids have the shapes asked for
        assert [g.shape for g in grids] == [(30, 30), (15, 15)]
    assert time.perf_counter() - t0 < 30
    with pytest.raises(CinrFormatError, match="32-bit words"):
        E.decode_grids(b"abc", [(2, 2)], _model(), "odd")


def test_context_model_rejects_absurd_exponents() -> None:
    layer = E.IntLayer(np.zeros((2, 1), dtype=np.int64), np.zeros(2, dtype=np.int64), 99, 0)
    with pytest.raises(CinrFormatError):
        E.IntContextModel(((0, -1),), (), layer)


def test_weight_table_rows_are_distributions() -> None:
    t = E.weight_pmf_table()
    assert t.shape == (E.N_SCALES, E.W_ALPHABET)
    assert np.allclose(t.sum(axis=1), 1.0, atol=1e-12) and (t >= 0).all()
    # The same Laplace as the latents' table, over a wider alphabet.
    lat = E.pmf_table()[:, 0]
    mid = slice(E.W_RADIUS + 1 - E.RADIUS, E.W_RADIUS + 2 + E.RADIUS)
    assert np.allclose(t[:, mid], lat[:, 1:-1], rtol=1e-12, atol=1e-300)


def test_weights_round_trip_and_cost() -> None:
    rng = np.random.default_rng(0)
    tensors = [
        (rng.laplace(0, 6, (24, 7)).round().astype(np.int64), 6),
        (np.zeros(5, dtype=np.int64), 0),
        (np.array([32767, -32767, 300, -256, 255]), 14),  # escapes
        (np.zeros((0, 3), dtype=np.int64), 4),  # empty tensor
        (rng.laplace(0, 40, 300).round().astype(np.int64), 9),
    ]
    data = E.encode_weights(tensors)
    out = E.decode_weights(data, [t.shape for t, _ in tensors], "t")
    for (a, k), (b, kb) in zip(tensors, out, strict=True):
        assert np.array_equal(a, b) and a.shape == b.shape and k == kb
    est = sum(E.laplace_weight_bits(t) for t, _ in tensors)
    assert abs(8 * len(data) - est) < 64 + 0.02 * est
    # A Laplace-shaped tensor costs fewer bits than Exp-Golomb's best order.
    from cinr_codec.coding.latent import best_order

    assert E.laplace_weight_bits(tensors[4][0]) < best_order(tensors[4][0])[0]


@pytest.mark.parametrize("seed", range(6))
def test_garbage_weight_streams_fail_cleanly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shapes = [(24, 7), (24,), (3, 32)]
    data = rng.integers(0, 256, 6 + 4 * int(rng.integers(0, 60)), dtype=np.uint8).tobytes()
    data = bytes([rng.integers(0, 25), rng.integers(0, 64)] * 3) + data[6:]  # valid k and scale
    t0 = time.perf_counter()
    try:
        out = E.decode_weights(data, shapes, "garbage")
    except CinrFormatError:
        pass
    else:
        assert [t.shape for t, _ in out] == shapes and all(np.abs(t).max() < 1 << 15 for t, _ in out)
    assert time.perf_counter() - t0 < 10
    for bad in (b"", b"\x05\x05\x05", bytes([25, 0] * 3) + b"\0" * 8, bytes([4, 64] * 3) + b"\0" * 8):
        with pytest.raises(CinrFormatError):
            E.decode_weights(bad, shapes, "bad")


# -- the compiled decoder (``_latent.c``) against the numpy one ------------------------------------

needs_kernel = pytest.mark.skipif(
    E._latent_lib() is None, reason="needs a C compiler (compiled latent decoder)"
)


def _both(data: bytes, shapes: list[tuple[int, int]], model: E.IntContextModel) -> list[object]:
    """What the compiled and the numpy decoders make of ``data``: grids, or the error's class."""
    from cinr_codec.core import native

    out: list[object] = []
    for off in (False, True):
        try:
            if off:
                with native.disabled():
                    out.append(E.decode_grids(data, shapes, model, "t"))
            else:
                out.append(E.decode_grids(data, shapes, model, "t"))
        except CinrFormatError as exc:
            out.append(type(exc))
    return out


@needs_kernel
@pytest.mark.parametrize("seed", range(4))
def test_compiled_decoder_matches_numpy_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = _model(seed, n=int(rng.choice([1, 4, 12, 16])), width=int(rng.choice([2, 8, 16, 24])))
    grids = [
        *_grids(seed),
        rng.laplace(0, 8, (33, 2)).round().astype(np.int64),  # narrower than the wavefront slope
        np.full((1, 1), -4000, dtype=np.int64),  # a large escape
    ]
    data = E.encode_grids(grids, model)
    fast, slow = _both(data, [g.shape for g in grids], model)
    assert isinstance(fast, list) and isinstance(slow, list)
    for a, b, c in zip(grids, fast, slow, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


@needs_kernel
def test_decode_timing_splits_the_compiled_decoders_time() -> None:
    model, grids = _model(), _grids()
    grids[0] = np.random.default_rng(5).laplace(0, 3, (200, 180)).round().astype(np.int64)
    data = E.encode_grids(grids, model)
    shapes = [g.shape for g in grids]
    t = time.perf_counter()
    with E.decode_timing() as parts:
        out = E.decode_grids(data, shapes, model, "t")
        assert parts == {"context_model": 0.0, "range_decoder": 0.0}  # filled on exit
        with pytest.raises(RuntimeError, match="already active"), E.decode_timing():
            pass
    wall = time.perf_counter() - t
    assert all(np.array_equal(a, b) for a, b in zip(grids, out, strict=True))  # the same grids
    assert parts["context_model"] > 0 and parts["range_decoder"] > 0
    assert parts["context_model"] + parts["range_decoder"] <= wall
    with E.decode_timing() as again:  # inactive between: nothing was added meanwhile
        pass
    assert again == {"context_model": 0.0, "range_decoder": 0.0}
    E.decode_grids(data, shapes, model, "t")  # and no clock is read outside one
    assert E._timing is None


@needs_kernel
@pytest.mark.parametrize("seed", range(8))
def test_compiled_decoder_reads_garbage_as_numpy_does(seed: int) -> None:
    # The same grids or the same error (a corrupt stream, or data past the last latent).
    rng = np.random.default_rng(100 + seed)
    data = rng.integers(0, 256, 4 * int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
    model = _model(seed)
    shapes = [(int(rng.integers(1, 40)), int(rng.integers(1, 40))), (7, 3)]
    fast, slow = _both(data, shapes, model)
    if isinstance(fast, list) and isinstance(slow, list):
        assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
    else:
        assert fast is slow


@needs_kernel
@pytest.mark.parametrize("case", ["wide activations", "huge bias"])
def test_compiled_decoder_falls_back_exactly_on_extreme_models(case: str) -> None:
    """Activations past 2**31 (the grouped double path hands those latents to the int64 path) and
    biases past 2**40 (the grouped path is not used) decode as numpy does, bit for bit."""
    rng = np.random.default_rng(7)
    big = (1 << 15) - 1
    # A context of about 20 or more pushes the second layer past 2**31; the small output weights keep
    # the predicted means near the latents, so the grids can be coded.
    h1 = E.IntLayer(rng.choice([-big, big], (8, 12)), rng.integers(-200, 200, 8), 8, 8)
    h2 = E.IntLayer(rng.choice([-big, big], (8, 8)), rng.integers(-200, 200, 8), 8, 8)
    out = E.IntLayer(rng.integers(-1, 2, (2, 8)), np.array([0, -300]), 24, 8)
    if case == "huge bias":
        h1 = E.IntLayer(rng.integers(-300, 300, (8, 12)), np.full(8, 1 << 25), 10, 0)  # 2**41 shifted
    model = E.IntContextModel(tuple(E.causal_offsets(12)), (h1, h2), out)
    spikes = np.zeros((14, 13), dtype=np.int64)
    spikes[[2, 5, 5, 9, 12], [3, 5, 10, 1, 7]] = [25, 30, -27, 28, -23]
    grids = [spikes] if case == "wide activations" else _grids(3)
    fast, slow = _both(E.encode_grids(grids, model), [g.shape for g in grids], model)
    assert isinstance(fast, list) and isinstance(slow, list)
    assert all(
        np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(grids, fast, slow, strict=True)
    )
    for seed in range(4):
        data = np.random.default_rng(seed).integers(0, 256, 4 * 30, dtype=np.uint8).tobytes()
        fast, slow = _both(data, [(20, 17), (9, 4)], model)
        if isinstance(fast, list) and isinstance(slow, list):
            assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
        else:
            assert fast is slow


@needs_kernel
@pytest.mark.parametrize("sign", [-1, 1])
def test_compiled_decoder_is_exact_on_sums_past_2_50(sign: int) -> None:
    """A first layer whose sums pass 2**50 (24 contexts of about 2**31 times weights of 2**15;
    the grouped path's vector floor is exact below 2**51), positive (past the activations' bound:
    the int64 path) or negative (zero after the ReLU): bit for bit as numpy."""
    big = (1 << 15) - 1
    n = 24
    h1 = E.IntLayer(np.full((16, n), sign * big), np.zeros(16, dtype=np.int64), 0, 0)
    h2 = E.IntLayer(np.zeros((16, 16), dtype=np.int64), np.zeros(16, dtype=np.int64), 0, 0)
    value = (1 << 15) - 1  # times 2**FRAC_BITS: just inside the inputs' bound of 2**31
    out = E.IntLayer(np.zeros((2, 16), dtype=np.int64), np.array([value, -2]), 0, 0)
    model = E.IntContextModel(tuple(E.causal_offsets(n)), (h1, h2), out)
    rng = np.random.default_rng(3)
    grids = [value - rng.integers(0, 5, (12, 23)), np.full((5, 40), value, dtype=np.int64)]
    fast, slow = _both(E.encode_grids(grids, model), [g.shape for g in grids], model)
    assert isinstance(fast, list) and isinstance(slow, list)
    assert all(
        np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(grids, fast, slow, strict=True)
    )


def test_cdf_table_is_constrictions_quantization() -> None:
    # Symbols coded by constriction decode with the table's integer CDF (the compiled decoder's
    # model), so the table is the quantization constriction applies to pmf_table's rows.
    import constriction

    rng = np.random.default_rng(0)
    rows = rng.integers(0, E.N_SCALES * E.MEAN_STEPS, 400)
    probs = E.pmf_table().reshape(-1, E.ALPHABET)[rows]
    sym = np.array([rng.choice(E.ALPHABET, p=p / p.sum()) for p in probs], dtype=np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(sym, constriction.stream.model.Categorical(perfect=False), probs)
    words = [int(w) for w in enc.get_compressed()]
    cdf = E.cdf_table()
    assert (np.diff(cdf.astype(np.int64), axis=1) >= 1).all() and (cdf[:, -1] == 1 << E.PRECISION).all()
    lower, rng_, point, pos = 0, (1 << 64) - 1, (words[0] << 32) | words[1], 2
    for r, s in zip(rows, sym, strict=True):  # constriction's range decoder, in Python integers
        scale = rng_ >> E.PRECISION
        q = ((point - lower) % (1 << 64)) // scale
        got = int(np.searchsorted(cdf[r], q, side="right")) - 1
        assert got == s
        lower, rng_ = (
            (lower + scale * int(cdf[r, got])) % (1 << 64),
            scale * int(cdf[r, got + 1] - cdf[r, got]),
        )
        if rng_ < 1 << 32:
            lower, rng_ = (lower << 32) % (1 << 64), rng_ << 32
            point = ((point << 32) % (1 << 64)) | (words[pos] if pos < len(words) else 0)
            pos += 1


def test_context_models_beyond_the_kernel_decode_on_numpy() -> None:
    model = _model(1, n=12, width=80)
    assert not E._kernel_takes(model)
    grids = _grids(2)
    out = E.decode_grids(E.encode_grids(grids, model), [g.shape for g in grids], model, "wide")
    assert all(np.array_equal(a, b) for a, b in zip(grids, out, strict=True))
