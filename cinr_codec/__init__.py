"""cinr: a neural codec for pathology whole-slide images (hash-grid coordinate networks)."""

from __future__ import annotations

from .errors import CinrChecksumError, CinrError, CinrFormatError, CinrInputError, CinrVersionError
from .fitting import FitResult, fit_image, render
from .hashgrid import HashGrid, HashGridConfig, make_hashgrid
from .models import CINR, NGP, ModelConfig, build_model
from .presets import PRESETS, get_preset

__version__ = "0.1.0"

__all__ = [
    "CINR",
    "NGP",
    "PRESETS",
    "CinrChecksumError",
    "CinrError",
    "CinrFormatError",
    "CinrInputError",
    "CinrVersionError",
    "FitResult",
    "HashGrid",
    "HashGridConfig",
    "ModelConfig",
    "build_model",
    "fit_image",
    "get_preset",
    "make_hashgrid",
    "render",
    "__version__",
]
