"""Storage quantization of named tensors: float32, float16, bfloat16, or int8 with per-group affine scales.

``quantize_tensors`` turns a dict of tensors into safetensors bytes; ``dequantize_tensors``
turns them back. The scheme of every tensor is recorded in the safetensors metadata under
``cinr.quant`` (a JSON string)::

    {"version": 1, "tensors": {"grid.table": {"scheme": "int8", "dtype": "float32",
                                              "groups": [81, 289, ...]}, ...}}

* ``float32`` / ``float16`` / ``bfloat16``: the tensor is stored cast to that type
  (round to nearest even); decoded by casting back to ``dtype``.
* ``int8``: rows (axis 0) are split into consecutive groups (for a hash table, one group
  per level); each group ``g`` has ``lo_g = min`` and ``scale_g = (max - min) / 255`` stored
  as float32 tensors ``NAME::min`` and ``NAME::scale`` of shape ``(G,)``; a value ``x`` is
  stored as ``q = round((x - lo_g) / scale_g) - 128`` (int8) and decoded as
  ``(q + 128) * scale_g + lo_g``, so the error is at most ``scale_g / 2`` (plus float32
  rounding).
* ``raw``: integer and bool tensors are stored unchanged whatever the setting.

The names ``NAME::min`` / ``NAME::scale`` are reserved: input names may not contain ``::``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import CinrFormatError, CinrVersionError
from ..format.container.binary import dumps_json, is_uint, loads_json
from .tensors import TORCH_TO_ST, load_safetensors, parse_safetensors_header, save_safetensors

log = logging.getLogger(__name__)

STORAGE_DTYPES = ("float32", "float16", "bfloat16", "int8")
QUANT_METADATA_KEY = "cinr.quant"
QUANT_VERSION = 1
AUX_SEPARATOR = "::"

_FLOAT_STORAGE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ORIG_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_ORIG_NAMES = {v: k for k, v in _ORIG_DTYPES.items()}

TensorLike = torch.Tensor | np.ndarray


def _as_tensor(name: str, value: TensorLike) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"tensor {name!r}: expected a torch.Tensor or numpy array, got {type(value).__name__}"
        )
    t = value.detach().to("cpu")
    if t.dtype not in TORCH_TO_ST:
        raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be stored")
    return t


def _rows(t: torch.Tensor) -> int:
    return int(t.shape[0]) if t.dim() >= 1 else 1


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """2-D view (rows, everything else) of a tensor (a 0-d tensor is one row)."""
    return t.reshape(_rows(t), math.prod(t.shape[1:]) if t.dim() >= 1 else 1)


def _check_groups(name: str, groups: Sequence[int], rows: int) -> list[int]:
    out = [int(g) for g in groups]
    if any(g <= 0 for g in out) or sum(out) != rows:
        raise ValueError(
            f"tensor {name!r}: groups {out[:8]}... must be positive row counts summing to {rows}"
        )
    return out


def quantize_tensors(
    tensors: Mapping[str, TensorLike],
    dtype: str = "float32",
    *,
    dtypes: Mapping[str, str] | None = None,
    groups: Mapping[str, Sequence[int]] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """safetensors bytes of ``tensors`` with floating tensors stored as ``dtype``.

    ``dtypes`` overrides the storage type per tensor name; ``groups`` gives, per tensor, the
    row counts of its int8 groups along axis 0 (default: one group for the whole tensor);
    ``metadata`` adds string metadata (the key ``cinr.quant`` is reserved).
    """
    dtypes = dict(dtypes or {})
    groups = dict(groups or {})
    for key, what in ((dtypes, "dtypes"), (groups, "groups")):
        unknown = set(key) - set(tensors)
        if unknown:
            raise ValueError(f"{what} names tensors that are not given: {sorted(unknown)[:5]}")
    out: dict[str, torch.Tensor] = {}
    spec: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or AUX_SEPARATOR in name:
            raise ValueError(f"tensor name {name!r} is empty or contains the reserved {AUX_SEPARATOR!r}")
        t = _as_tensor(name, value)
        storage = dtypes.get(name, dtype)
        if storage not in STORAGE_DTYPES:
            raise ValueError(f"tensor {name!r}: storage dtype {storage!r} is not one of {STORAGE_DTYPES}")
        if t.dtype not in _ORIG_NAMES:
            if name in groups:
                raise ValueError(f"tensor {name!r}: groups given for a non-floating tensor")
            out[name] = t
            spec[name] = {"scheme": "raw"}
            continue
        orig = _ORIG_NAMES[t.dtype]
        if storage in _FLOAT_STORAGE:
            if name in groups:
                raise ValueError(f"tensor {name!r}: groups apply to int8 storage only")
            st = t.to(_FLOAT_STORAGE[storage])
            if bool((torch.isfinite(t) & ~torch.isfinite(st)).any()):
                raise ValueError(f"tensor {name!r}: values overflow {storage}")
            out[name] = st
            spec[name] = {"scheme": storage, "dtype": orig}
            continue
        rows = _rows(t)
        g = _check_groups(name, groups.get(name, [rows] if rows else []), rows)
        q, lo, scale = _quantize_int8(name, t, g)
        out[name] = q
        out[name + AUX_SEPARATOR + "min"] = lo
        out[name + AUX_SEPARATOR + "scale"] = scale
        spec[name] = {"scheme": "int8", "dtype": orig, "groups": g}
    meta = dict(metadata or {})
    if QUANT_METADATA_KEY in meta:
        raise ValueError(f"metadata key {QUANT_METADATA_KEY!r} is reserved")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("metadata must map strings to strings")
    meta[QUANT_METADATA_KEY] = dumps_json(
        {"version": QUANT_VERSION, "tensors": spec}, "quantization metadata"
    ).decode()
    return save_safetensors(out, meta)


def _quantize_int8(
    name: str, t: torch.Tensor, groups: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = _as_rows(t.to(torch.float64))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"tensor {name!r}: int8 quantization needs finite values")
    lo = torch.empty(len(groups), dtype=torch.float32)
    scale = torch.empty(len(groups), dtype=torch.float32)
    q = torch.empty(x.shape, dtype=torch.int8)
    start = 0
    for i, n in enumerate(groups):
        part = x[start : start + n]
        if part.numel():
            lo_g = torch.tensor(part.min().item(), dtype=torch.float32)
            hi_g = torch.tensor(part.max().item(), dtype=torch.float32)
        else:
            lo_g = hi_g = torch.tensor(0.0)
        s = (hi_g.double() - lo_g.double()) / 255.0
        s32 = torch.tensor(s.item(), dtype=torch.float32)
        lo[i], scale[i] = lo_g, s32
        # Quantize against the float32 parameters the decoder will use.
        denom = s32.double().item() or 1.0
        code = torch.round((part - lo_g.double()) / denom).clamp_(0, 255) - 128
        q[start : start + n] = code.to(torch.int8)
        start += n
    return q.reshape(t.shape), lo, scale


def dequantize_tensors(
    data: bytes,
    *,
    where: str = "tensor data",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Decode ``quantize_tensors`` bytes into tensors of their original dtypes.

    With ``shapes`` (name -> shape of every tensor a model expects), the stored tensors' names
    and shapes are compared with it from the safetensors header, before any tensor is loaded
    or dequantized (a block then costs no more than the model it must hold). Every
    malformation raises ``CinrFormatError`` naming ``where``; a quantization scheme newer than
    this code raises ``CinrVersionError``.
    """
    return _dequantize(data, where, shapes, decode=True)


def _dequantize(
    data: bytes, where: str, shapes: Mapping[str, tuple[int, ...]] | None, *, decode: bool
) -> dict[str, torch.Tensor]:
    """``dequantize_tensors``; with ``decode=False`` everything is checked but the float tensors
    are not computed (the stored tensors are returned)."""
    if shapes is not None:
        entries, _ = parse_safetensors_header(data, where)
        found = {k: tuple(e.shape) for k, e in entries.items() if AUX_SEPARATOR not in k}
        check_shapes(found, shapes, where)
    stored, metadata = load_safetensors(data, where)
    raw = metadata.get(QUANT_METADATA_KEY)
    if raw is None:
        raise CinrFormatError(f"{where}: safetensors metadata lacks {QUANT_METADATA_KEY!r}")
    info = loads_json(raw.encode("utf-8", "surrogatepass"), f"{where}: {QUANT_METADATA_KEY}")
    if not isinstance(info, dict) or not isinstance(info.get("tensors"), dict):
        raise CinrFormatError(f"{where}: {QUANT_METADATA_KEY} is not an object with 'tensors'")
    version = info.get("version")
    if not is_uint(version, 2**31):
        raise CinrFormatError(f"{where}: {QUANT_METADATA_KEY} has an invalid version")
    if version > QUANT_VERSION:
        raise CinrVersionError(
            f"{where}: quantization metadata version {version} is newer than {QUANT_VERSION}"
        )
    spec: dict[str, Any] = info["tensors"]
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, s in spec.items():
        bad = f"{where}: tensor {name!r}"
        if AUX_SEPARATOR in name or not isinstance(s, dict) or not isinstance(s.get("scheme"), str):
            raise CinrFormatError(f"{bad}: malformed quantization entry")
        t = stored.get(name)
        if t is None:
            raise CinrFormatError(f"{bad} is described in {QUANT_METADATA_KEY} but not stored")
        used.add(name)
        scheme = s["scheme"]
        if scheme == "raw":
            if t.dtype in _ORIG_NAMES:
                raise CinrFormatError(f"{bad}: 'raw' scheme on a floating tensor")
            out[name] = t
            continue
        orig_name = s.get("dtype")
        orig = _ORIG_DTYPES.get(orig_name) if isinstance(orig_name, str) else None
        if orig is None:
            raise CinrFormatError(f"{bad}: unknown original dtype {str(s.get('dtype'))[:20]!r}")
        if scheme in _FLOAT_STORAGE:
            if t.dtype != _FLOAT_STORAGE[scheme]:
                raise CinrFormatError(f"{bad}: stored as {t.dtype}, expected {scheme}")
            out[name] = t.to(orig) if decode else t
        elif scheme == "int8":
            x = _dequantize_int8(name, bad, t, s, stored, used, decode)
            out[name] = x.to(orig) if decode else x
        else:
            raise CinrVersionError(f"{bad}: unknown quantization scheme {scheme[:20]!r} (newer writer?)")
    extra = set(stored) - used
    if extra:
        raise CinrFormatError(
            f"{where}: stored tensors not described in {QUANT_METADATA_KEY}: {sorted(extra)[:5]}"
        )
    return out


def check_shapes(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], where: str
) -> None:
    """``CinrFormatError`` naming ``where`` unless the stored tensors' names and shapes are the expected ones."""
    if dict(found) == dict(expected):
        return
    missing = sorted(set(expected) - set(found))[:3]
    extra = sorted(set(found) - set(expected))[:3]
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))[:3]
    detail = "; ".join(
        part
        for part in (
            f"missing {missing}" if missing else "",
            f"unexpected {extra}" if extra else "",
            ", ".join(f"{k} is {tuple(found[k])}, expected {tuple(expected[k])}" for k in wrong),
        )
        if part
    )
    raise CinrFormatError(f"{where}: tensors do not match the model in the header ({detail})")


def _dequantize_int8(
    name: str,
    bad: str,
    q: torch.Tensor,
    s: dict[str, Any],
    stored: dict[str, torch.Tensor],
    used: set[str],
    decode: bool = True,
) -> torch.Tensor:
    if q.dtype != torch.int8:
        raise CinrFormatError(f"{bad}: stored as {q.dtype}, expected int8")
    rows = _rows(q)
    groups = s.get("groups")
    if (
        not isinstance(groups, list)
        or not all(is_uint(g, rows) and g > 0 for g in groups)
        or sum(groups) != rows
    ):
        raise CinrFormatError(f"{bad}: int8 groups are not positive row counts summing to {rows}")
    params = []
    for suffix in ("min", "scale"):
        key = name + AUX_SEPARATOR + suffix
        p = stored.get(key)
        if p is None or p.dtype != torch.float32 or tuple(p.shape) != (len(groups),):
            raise CinrFormatError(
                f"{bad}: int8 {suffix} tensor missing or not float32 of shape ({len(groups)},)"
            )
        if not bool(torch.isfinite(p).all()) or (suffix == "scale" and bool((p < 0).any())):
            raise CinrFormatError(f"{bad}: int8 {suffix} values are not finite (and non-negative)")
        used.add(key)
        params.append(p)
    if not decode:
        return q
    lo, scale = params
    # np.repeat: torch.repeat_interleave costs ~1 ms per call on CPU.
    lo_rows = torch.from_numpy(np.repeat(lo.numpy(), groups))
    scale_rows = torch.from_numpy(np.repeat(scale.numpy(), groups))
    # In place: one float32 copy of the int8 tensor, no temporaries of its size.
    x = _as_rows(q).to(torch.float32)
    x.add_(128.0).mul_(scale_rows[:, None]).add_(lo_rows[:, None])
    return x.reshape(q.shape)


def check_tensors(data: bytes, where: str) -> None:
    """Raise ``CinrError`` unless ``data`` is a format-v1 tensor payload (``dequantize_tensors`` reads it).

    Checks everything ``dequantize_tensors`` does without computing the float tensors."""
    _dequantize(data, where, None, decode=False)


def describe(data: bytes, *, where: str = "tensor data") -> dict[str, Any]:
    """The parsed ``cinr.quant`` metadata of quantized bytes ({} if absent), for inspection tools."""
    _, metadata = parse_safetensors_header(data, where)
    raw = metadata.get(QUANT_METADATA_KEY)
    if raw is None:
        return {}
    value = loads_json(raw.encode("utf-8", "surrogatepass"), f"{where}: {QUANT_METADATA_KEY}")
    return value if isinstance(value, dict) else {}
