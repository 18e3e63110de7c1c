"""cinr: a neural codec for pathology whole-slide images (hash-grid coordinate networks)."""

from __future__ import annotations

from .api import CinrSlide, open_cinr
from .container import CinrReader, CinrWriter, dequantize_tensors, quantize_tensors
from .decoding import SlideDecoder, decode_image
from .encoding import DEFAULT_QUANT, QUANT_SETTINGS, encode_image, encode_slide, write_fitted
from .errors import (
    CinrChecksumError,
    CinrError,
    CinrFormatError,
    CinrInputError,
    CinrIOError,
    CinrTruncatedError,
    CinrVersionError,
)
from .fitting import FitResult, fit_image, render
from .hashgrid import HashGrid, HashGridConfig, make_hashgrid
from .models import CINR, NGP, ModelConfig, build_model
from .presets import PRESETS, get_preset

__version__ = "0.1.0"

__all__ = [
    "CINR",
    "DEFAULT_QUANT",
    "QUANT_SETTINGS",
    "NGP",
    "PRESETS",
    "CinrChecksumError",
    "CinrSlide",
    "SlideDecoder",
    "encode_slide",
    "open_cinr",
    "CinrError",
    "CinrFormatError",
    "CinrIOError",
    "CinrInputError",
    "CinrReader",
    "CinrTruncatedError",
    "CinrVersionError",
    "CinrWriter",
    "dequantize_tensors",
    "quantize_tensors",
    "FitResult",
    "HashGrid",
    "HashGridConfig",
    "ModelConfig",
    "build_model",
    "decode_image",
    "encode_image",
    "fit_image",
    "get_preset",
    "make_hashgrid",
    "render",
    "write_fitted",
    "__version__",
]
