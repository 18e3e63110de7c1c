"""cinr: a neural codec for pathology whole-slide images.

The public names below are imported on first use (PEP 562), so ``import cinr_codec`` costs
neither torch nor openslide; ``cinr info`` and ``cinr --help`` never load them.

Where things live (``docs/architecture.md`` has the map)::

    core/     the networks: hash grid, models, inference (render), metrics
    format/   the .cinr file: container (bytes), header (the one JSON schema), block grid
    coding/   block representations behind one seam (BlockCodec), tensor storage, image blocks
    encode/   slide reading, tissue, mips, journal, per-block and whole-slide encoding, train/
    decode/   the slide decoder: tiles, caches, resampling; single-block images
    api.py    open_cinr / CinrSlide (OpenSlide's interface);  export.py  regions to images
    cli/      the ``cinr`` command
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    CinrChecksumError,
    CinrError,
    CinrFormatError,
    CinrInputError,
    CinrIOError,
    CinrRequestError,
    CinrTruncatedError,
    CinrVersionError,
    CinrWorkerError,
)

#: public name -> module that defines it (imported when the name is first used).
_LAZY: dict[str, str] = {
    "CinrSlide": "cinr_codec.api",
    "open_cinr": "cinr_codec.api",
    "CinrReader": "cinr_codec.format.container",
    "CinrWriter": "cinr_codec.format.container",
    "dequantize_tensors": "cinr_codec.coding.quant",
    "quantize_tensors": "cinr_codec.coding.quant",
    "SlideDecoder": "cinr_codec.decode.decoder",
    "decode_image": "cinr_codec.decode.image",
    "DEFAULT_QUANT": "cinr_codec.coding.hashgrid",
    "QUANT_SETTINGS": "cinr_codec.coding.hashgrid",
    "encode_image": "cinr_codec.encode.image",
    "write_fitted": "cinr_codec.encode.image",
    "encode_slide": "cinr_codec.encode.slide",
    "FitResult": "cinr_codec.encode.train.fit",
    "fit_image": "cinr_codec.encode.train.fit",
    "render": "cinr_codec.core.render",
    "HashGrid": "cinr_codec.core.hashgrid",
    "make_hashgrid": "cinr_codec.core.hashgrid",
    "HashGridConfig": "cinr_codec.core.config",
    "ModelConfig": "cinr_codec.core.config",
    "CINR": "cinr_codec.core.models",
    "NGP": "cinr_codec.core.models",
    "build_model": "cinr_codec.core.models",
    "PRESETS": "cinr_codec.encode.train.presets",
    "get_preset": "cinr_codec.encode.train.presets",
}

__all__ = [
    "CINR",
    "CinrChecksumError",
    "CinrError",
    "CinrFormatError",
    "CinrIOError",
    "CinrInputError",
    "CinrReader",
    "CinrRequestError",
    "CinrSlide",
    "CinrTruncatedError",
    "CinrVersionError",
    "CinrWorkerError",
    "CinrWriter",
    "DEFAULT_QUANT",
    "FitResult",
    "HashGrid",
    "HashGridConfig",
    "ModelConfig",
    "NGP",
    "PRESETS",
    "QUANT_SETTINGS",
    "SlideDecoder",
    "__version__",
    "build_model",
    "decode_image",
    "dequantize_tensors",
    "encode_image",
    "encode_slide",
    "fit_image",
    "get_preset",
    "make_hashgrid",
    "open_cinr",
    "quantize_tensors",
    "render",
    "write_fitted",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cinr_codec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .api import CinrSlide, open_cinr
    from .coding.hashgrid import DEFAULT_QUANT, QUANT_SETTINGS
    from .coding.quant import dequantize_tensors, quantize_tensors
    from .core.config import HashGridConfig, ModelConfig
    from .core.hashgrid import HashGrid, make_hashgrid
    from .core.models import CINR, NGP, build_model
    from .core.render import render
    from .decode.decoder import SlideDecoder
    from .decode.image import decode_image
    from .encode.image import encode_image, write_fitted
    from .encode.slide import encode_slide
    from .encode.train.fit import FitResult, fit_image
    from .encode.train.presets import PRESETS, get_preset
    from .format.container import CinrReader, CinrWriter
