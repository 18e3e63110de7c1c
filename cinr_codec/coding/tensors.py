"""safetensors bytes: a validating parser in front of ``safetensors.torch``, and a writer.

The header is checked here (sizes, dtypes, shapes, offsets that tile the data exactly)
before ``safetensors`` sees the bytes, so a hostile header can neither make it allocate
more than the payload holds nor raise anything but ``CinrFormatError``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import CinrFormatError
from ..format.container.binary import MAX_JSON_BYTES, is_uint, loads_json, one_line

#: safetensors dtype name -> (torch dtype, bytes per element).
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
TORCH_TO_ST = {v[0]: k for k, v in DTYPES.items()}
MAX_NDIM = 8
MAX_DIM = 1 << 40
METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: dtype name, shape and byte range in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_safetensors_header(data: bytes, where: str) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Validate a safetensors buffer's header; return its tensor entries and string metadata.

    ``where`` names the buffer in error messages (file, block, offset).
    """
    if len(data) < 8:
        raise CinrFormatError(
            f"{where}: safetensors data is {len(data)} bytes, shorter than its 8-byte header length"
        )
    (n,) = struct.unpack_from("<Q", data, 0)
    if n < 2 or n > len(data) - 8 or n > MAX_JSON_BYTES:
        raise CinrFormatError(
            f"{where}: safetensors header length {n} is invalid for {len(data)} bytes of data (at byte 0)"
        )
    header = loads_json(bytes(data[8 : 8 + n]), f"{where}: safetensors header")
    if not isinstance(header, dict):
        raise CinrFormatError(f"{where}: safetensors header is not a JSON object")
    data_len = len(data) - 8 - n
    metadata: dict[str, str] = {}
    entries: dict[str, TensorEntry] = {}
    for name, spec in header.items():
        if name == METADATA_KEY:
            if spec is None:
                continue
            if not isinstance(spec, dict) or not all(isinstance(v, str) for v in spec.values()):
                raise CinrFormatError(f"{where}: safetensors __metadata__ is not an object of strings")
            metadata = spec
            continue
        entries[name] = _entry(name, spec, data_len, where)
    pos = 0
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if e.begin != pos:
            raise CinrFormatError(
                f"{where}: safetensors tensor {e.name!r} starts at data byte {e.begin}, expected {pos} "
                "(tensors must tile the data section)"
            )
        pos = e.end
    if pos != data_len:
        raise CinrFormatError(f"{where}: safetensors tensors cover {pos} of {data_len} data bytes")
    return entries, metadata


def _entry(name: str, spec: object, data_len: int, where: str) -> TensorEntry:
    bad = f"{where}: safetensors tensor {name!r}"
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise CinrFormatError(f"{bad} has a malformed entry")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CinrFormatError(f"{bad} has unsupported dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(is_uint(d, MAX_DIM) for d in shape):
        raise CinrFormatError(f"{bad} has an invalid shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_uint(o, data_len) for o in offsets):
        raise CinrFormatError(f"{bad} has data offsets outside the {data_len}-byte data section")
    begin, end = offsets
    nbytes = DTYPES[dtype][1] * math.prod(shape)  # at most 8 dims of <= 2**40: a small Python int
    if begin > end or end - begin != nbytes:
        raise CinrFormatError(
            f"{bad}: data offsets [{begin}, {end}] do not match dtype {dtype} and shape {shape}"
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def load_safetensors(data: bytes, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validated tensors and metadata of a safetensors buffer (CPU tensors)."""
    entries, metadata = parse_safetensors_header(data, where)
    from safetensors.torch import load

    try:
        tensors = load(bytes(data))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own and generic errors
        raise CinrFormatError(
            f"{where}: safetensors rejected the data ({exc.__class__.__name__}: {one_line(exc)})"
        ) from None
    for name, e in entries.items():
        t = tensors.get(name)
        if t is None or t.dtype != DTYPES[e.dtype][0] or tuple(t.shape) != e.shape:
            raise CinrFormatError(f"{where}: safetensors tensor {name!r} did not load as declared")
    return tensors, metadata


def save_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """safetensors bytes of CPU tensors (copied to contiguous memory)."""
    from safetensors.torch import save

    for name, t in tensors.items():
        if t.dtype not in TORCH_TO_ST:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be stored")
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return save(clean, metadata=dict(metadata) if metadata else None)
