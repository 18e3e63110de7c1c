"""Quantization of named tensors: exactness, error bounds, options, and hostile tensor payloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cinr_container_helpers import fitted_state
from hypothesis import given, settings
from hypothesis import strategies as st

from cinr_codec.coding.quant import STORAGE_DTYPES, dequantize_tensors, describe, quantize_tensors
from cinr_codec.coding.tensors import save_safetensors
from cinr_codec.errors import CinrError, CinrFormatError, CinrVersionError


def test_float32_is_exact_and_keeps_non_float_tensors() -> None:
    t = {
        "a": torch.randn(5, 3),
        "b64": torch.randn(4, dtype=torch.float64),
        "i": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "m": torch.tensor([True, False]),
        "np": np.linspace(0, 1, 7, dtype=np.float32),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    for dtype in STORAGE_DTYPES:
        out = dequantize_tensors(quantize_tensors(t, dtype))
        assert out["i"].dtype == torch.int32 and torch.equal(out["i"], t["i"])
        assert torch.equal(out["m"], t["m"])
        assert (
            out["b64"].dtype == torch.float64 and out["scalar"].shape == () and out["empty"].shape == (0, 4)
        )
    out = dequantize_tensors(quantize_tensors(t, "float32"))
    assert torch.equal(out["a"], t["a"]) and torch.equal(out["np"], torch.from_numpy(t["np"]))  # type: ignore[arg-type]


def test_half_precision_error_bounds_on_real_weights() -> None:
    state, _, _ = fitted_state()
    for dtype, rel in (("float16", 2.0**-11), ("bfloat16", 2.0**-8)):
        out = dequantize_tensors(quantize_tensors(state, dtype))
        for k, v in state.items():
            tiny = 6.2e-5 if dtype == "float16" else 1e-38  # float16 subnormal spacing
            assert bool(((out[k] - v).abs() <= v.abs() * rel + tiny).all()), (dtype, k)


def test_int8_error_bound_per_level_on_a_real_hash_table() -> None:
    state, levels, _ = fitted_state()
    table = state["grid.table"]
    data = quantize_tensors(state, "int8", groups={"grid.table": levels})
    out = dequantize_tensors(data)["grid.table"]
    info = describe(data)["tensors"]["grid.table"]
    assert info == {"scheme": "int8", "dtype": "float32", "groups": levels}
    start = 0
    for n in levels:
        x, y = table[start : start + n], out[start : start + n]
        scale = float(x.max() - x.min()) / 255
        assert float((x - y).abs().max()) <= scale / 2 * (1 + 1e-4) + 1e-7
        start += n
    # Per-level scales are no worse than one scale for the whole table.
    whole = dequantize_tensors(quantize_tensors(state, "int8"))["grid.table"]
    assert float((out - table).abs().max()) <= float((whole - table).abs().max()) + 1e-7


def test_int8_per_row_groups_and_per_tensor_overrides() -> None:
    w = torch.randn(6, 4) * torch.logspace(-3, 1, 6)[:, None]
    t = {"w": w, "b": torch.randn(6)}
    data = quantize_tensors(t, "int8", dtypes={"b": "float16"}, groups={"w": [1] * 6})
    out = dequantize_tensors(data)
    assert describe(data)["tensors"]["b"]["scheme"] == "float16"
    for r in range(6):
        scale = float(w[r].max() - w[r].min()) / 255
        assert float((out["w"][r] - w[r]).abs().max()) <= scale / 2 * (1 + 1e-4) + 1e-9
    const = dequantize_tensors(quantize_tensors({"c": torch.full((3, 3), 0.25)}, "int8"))["c"]
    assert torch.equal(const, torch.full((3, 3), 0.25))


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=64),
    st.integers(1, 4),
)
@settings(max_examples=60, deadline=None)
def test_int8_error_bound_property(values: list[float], n_groups: int) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    n_groups = min(n_groups, len(values))
    groups = [len(values) // n_groups] * n_groups
    groups[-1] += len(values) - sum(groups)
    y = dequantize_tensors(quantize_tensors({"x": x}, "int8", groups={"x": groups}))["x"]
    start = 0
    for n in groups:
        a, b = x[start : start + n].double(), y[start : start + n].double()
        scale = float(a.max() - a.min()) / 255
        bound = scale / 2 * (1 + 1e-4) + float(a.abs().max()) * 2e-7 + 1e-30
        assert float((a - b).abs().max()) <= bound
        start += n


def test_quantize_argument_errors() -> None:
    with pytest.raises(ValueError, match="storage dtype"):
        quantize_tensors({"a": torch.ones(2)}, "int4")
    with pytest.raises(ValueError, match="reserved"):
        quantize_tensors({"a::min": torch.ones(2)})
    with pytest.raises(ValueError, match="groups"):
        quantize_tensors({"a": torch.ones(4)}, "int8", groups={"a": [1, 2]})
    with pytest.raises(ValueError, match="groups apply"):
        quantize_tensors({"a": torch.ones(4)}, "float16", groups={"a": [4]})
    with pytest.raises(ValueError, match="not given"):
        quantize_tensors({"a": torch.ones(4)}, dtypes={"b": "int8"})
    with pytest.raises(ValueError, match="finite"):
        quantize_tensors({"a": torch.tensor([1.0, float("inf")])}, "int8")
    with pytest.raises(ValueError, match="overflow"):
        quantize_tensors({"a": torch.tensor([1e6])}, "float16")
    with pytest.raises(ValueError, match="cannot be stored"):
        quantize_tensors({"a": torch.ones(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="reserved"):
        quantize_tensors({"a": torch.ones(2)}, metadata={"cinr.quant": "x"})


# --- hostile tensor payloads ------------------------------------------------------------------


def _with_meta(tensors: dict[str, torch.Tensor], meta: object) -> bytes:
    return save_safetensors(tensors, {"cinr.quant": json.dumps(meta)})


@pytest.mark.parametrize(
    ("tensors", "meta", "match"),
    [
        ({"a": torch.ones(2)}, None, "invalid JSON|not an object"),
        ({"a": torch.ones(2)}, {"version": 1, "tensors": {}}, "not described"),
        ({"a": torch.ones(2)}, {"version": 1, "tensors": {"a": {"scheme": "raw"}}}, "raw"),
        (
            {"a": torch.ones(2)},
            {"version": 1, "tensors": {"a": {"scheme": "float16", "dtype": "float32"}}},
            "expected",
        ),
        (
            {"a": torch.ones(2)},
            {"version": 1, "tensors": {"a": {"scheme": "float32", "dtype": [1]}}},
            "dtype",
        ),
        (
            {"a": torch.ones(2)},
            {"version": 1, "tensors": {"b": {"scheme": "float32", "dtype": "float32"}}},
            "not stored",
        ),
        (
            {"a": torch.ones(2, dtype=torch.int8)},
            {"version": 1, "tensors": {"a": {"scheme": "int8", "dtype": "float32", "groups": [2]}}},
            "min tensor",
        ),
        (
            {
                "a": torch.ones(2, dtype=torch.int8),
                "a::min": torch.zeros(1),
                "a::scale": torch.tensor([-1.0]),
            },
            {"version": 1, "tensors": {"a": {"scheme": "int8", "dtype": "float32", "groups": [2]}}},
            "non-negative",
        ),
        (
            {"a": torch.ones(2, dtype=torch.int8), "a::min": torch.zeros(1), "a::scale": torch.ones(1)},
            {"version": 1, "tensors": {"a": {"scheme": "int8", "dtype": "float32", "groups": [2**40]}}},
            "groups",
        ),
        ({"a": torch.ones(2)}, {"version": 9, "tensors": {}}, "newer"),
        (
            {"a": torch.ones(2)},
            {"version": 1, "tensors": {"a": {"scheme": "int3", "dtype": "float32"}}},
            "unknown",
        ),
    ],
)
def test_hostile_quantization_metadata(tensors: dict[str, torch.Tensor], meta: object, match: str) -> None:
    with pytest.raises(CinrFormatError, match=match):
        dequantize_tensors(_with_meta(tensors, meta), where="block 3")


def test_version_errors_are_version_errors() -> None:
    with pytest.raises(CinrVersionError):
        dequantize_tensors(_with_meta({"a": torch.ones(2)}, {"version": 2, "tensors": {}}))


def _raw_safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return (len(h) if length is None else length).to_bytes(8, "little") + h + data


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00" * 7,
        _raw_safetensors({}, length=2**63),
        _raw_safetensors({}, length=2**64 - 1),
        _raw_safetensors(b"{" * 5000),
        _raw_safetensors(b"\xff\xfe{}"),
        _raw_safetensors([1, 2]),
        _raw_safetensors({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8)),
        _raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 2**62]}}, bytes(8)),
        _raw_safetensors({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
        _raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)),
        _raw_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
        _raw_safetensors({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)),
        _raw_safetensors({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)),
        _raw_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, bytes(4)),
        _raw_safetensors({"__metadata__": {"cinr.quant": 5}}),
        _raw_safetensors({"__metadata__": {"cinr.quant": "[" * 100 + "]" * 100}}),
        _raw_safetensors({"__metadata__": {"cinr.quant": '{"version": 1, "tensors": {}, "a": NaN}'}}),
        _raw_safetensors(b'{"a": 1, "a": 2}'),
    ],
)
def test_hostile_safetensors_bytes(payload: bytes) -> None:
    with pytest.raises(CinrFormatError):
        dequantize_tensors(payload)


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_random_bytes_never_escape_the_error_family(data: bytes) -> None:
    try:
        dequantize_tensors(data)
    except CinrError:
        pass


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["a", "a::min", "a::scale", "b", "__metadata__"]),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "I8", "F16", "BF16", "U8", "X"]) | json_values,
                "shape": st.lists(st.integers(-2, 2**33), max_size=3) | json_values,
                "data_offsets": st.lists(st.integers(-2, 2**33), min_size=2, max_size=2) | json_values,
            }
        )
        | json_values,
        max_size=4,
    ),
    st.binary(max_size=64),
    json_values,
)
@settings(max_examples=300, deadline=None)
def test_random_safetensors_headers_only_raise_cinr_errors(header: dict, data: bytes, meta: object) -> None:
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = {"cinr.quant": json.dumps(meta)}
    try:
        dequantize_tensors(_raw_safetensors(header, data))
    except CinrError:
        pass
