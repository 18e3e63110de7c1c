"""Which ``BlockCodec`` reads and writes each kind of block model.

Each entry maps a header ``model.kind`` (also the encoder's ``--model`` name) to the module
that defines its codec (as ``CODEC``), imported on first use so that reading a header needs
neither torch nor the codec's dependencies. A new representation adds its kinds here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..errors import CinrFormatError, CinrVersionError
from .base import BlockCodec

#: model kind -> module defining ``CODEC``.
CODECS: dict[str, str] = {
    "ngp": "cinr_codec.coding.hashgrid",
    "engp": "cinr_codec.coding.hashgrid",
    "cinr": "cinr_codec.coding.hashgrid",
    "ccinr": "cinr_codec.coding.latent",
}


#: The model kind encoders use unless told otherwise: the compressive representation, whose files
#: need 40-53 % fewer bits than JPEG at equal PSNR (benchmarks/results/rd_quick*.md).
DEFAULT_MODEL = "ccinr"


def model_kinds() -> tuple[str, ...]:
    """Every model kind a file may hold and the encoder may write."""
    return tuple(CODECS)


def get_codec(kind: str) -> BlockCodec:
    """The codec of model kind ``kind`` (ValueError naming the known kinds)."""
    module = CODECS.get(kind)
    if module is None:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(CODECS)}")
    codec = importlib.import_module(module).CODEC
    assert isinstance(codec, BlockCodec)
    return codec


def codec_for_header(header: Mapping[str, Any], where: str) -> BlockCodec:
    """The codec of a header's ``model.kind`` (``CinrFormatError`` when absent or unknown)."""
    model = header.get("model")
    if not isinstance(model, dict):
        raise CinrFormatError(f"{where}: header field 'model' is missing or not an object")
    kind = model.get("kind")
    if not isinstance(kind, str):
        raise CinrFormatError(f"{where}: model: kind {str(kind)[:40]!r} is not one of {model_kinds()}")
    if kind not in CODECS:  # a representation from a newer encoder, or garbage
        raise CinrVersionError(
            f"{where}: model: kind {kind[:40]!r} is not one of {model_kinds()} (newer encoder?)"
        )
    return get_codec(kind)


def storage_settings() -> tuple[str, ...]:
    """Every storage setting (``--quant``) of the registered representations, without repeats."""
    out: dict[str, None] = {}
    for kind in CODECS:
        out.update(dict.fromkeys(get_codec(kind).storages))
    return tuple(out)
