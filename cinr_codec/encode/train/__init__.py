"""Training of the hash-grid models: ``fit_image`` (``fit``) and the named recipes (``presets``)."""

from __future__ import annotations

from .fit import FitResult, fit_image
from .presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "FitResult", "Preset", "fit_image", "get_preset"]
