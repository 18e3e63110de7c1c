"""The hash-grid block representation (NGP, ENGP, CINR): a ``BlockCodec`` over ``core.models``.

A block's payload is its model's state dict, quantized per tensor (``coding.quant``) under a
storage setting:

====================  ======================  =================================
setting               hash table              network weights and biases
====================  ======================  =================================
``float32``           float32                 float32
``float16``           float16                 float16
``bfloat16``          bfloat16                bfloat16
``int8``              int8, one range/level   int8, one range per output row
                                              (biases and 1-D tensors: one range)
``int8+float16``      int8, one range/level   float16
====================  ======================  =================================

``DEFAULT_QUANT`` was chosen by ``python -m benchmarks.quant`` (``benchmarks/results/quant.md``):
the smallest setting that loses at most 0.1 dB of PSNR against float32 on every test image.

Decoding builds the model on PyTorch's ``meta`` device first (no memory) and compares its
tensor names and shapes with the payload's, which the container bounds, so a hand-made file
cannot make the decoder allocate more than its payload justifies. torch is imported when a
method needs it, never by importing this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.config import MODEL_KINDS, HashGridConfig, ModelConfig, int_ranges, macs_per_pixel
from ..errors import CinrFormatError
from ..format.header import get_int, get_object, is_number
from .base import BlockCodec, BlockModel, FitSettings, FittedBlock, check_decode_cost

if TYPE_CHECKING:
    import torch

    from ..core.models import ImageModel

#: Storage settings: name -> (hash-table storage, network storage).
QUANT_SETTINGS: dict[str, tuple[str, str]] = {
    "float32": ("float32", "float32"),
    "float16": ("float16", "float16"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "int8": ("int8", "int8"),
    "int8+float16": ("int8", "float16"),
}

#: Default storage: the smallest setting within 0.1 dB of float32 on every image of
#: ``benchmarks/results/quant.md``.
DEFAULT_QUANT = "int8+float16"

_BOOL_FIELDS = ("bias", "residual")
#: Hash-grid backends a file may name (files must decode on a CPU).
_BACKENDS = ("torch",)
#: Largest finest-level grid resolution accepted.
_MAX_RESOLUTION = 1 << 30


def check_quant(quant: str) -> None:
    """ValueError naming the settings when ``quant`` is not one of ``QUANT_SETTINGS``."""
    if quant not in QUANT_SETTINGS:
        raise ValueError(f"unknown storage setting {quant!r}; choose one of {', '.join(QUANT_SETTINGS)}")


def storage_plan(
    state: Mapping[str, torch.Tensor], table_names: list[str], table_sizes: list[int], quant: str
) -> tuple[str, dict[str, str], dict[str, list[int]]]:
    """``(dtype, dtypes, groups)`` arguments of ``quantize_tensors`` for a state dict and a setting.

    The hash tables' (``table_names``) int8 groups are their levels (``table_sizes``); other
    int8 tensors of two or more dimensions get one group per row (output channel), 1-D tensors
    one group.
    """
    check_quant(quant)
    table_dtype, net_dtype = QUANT_SETTINGS[quant]
    dtypes: dict[str, str] = {}
    groups: dict[str, list[int]] = {}
    for name, t in state.items():
        is_table = name in table_names
        storage = table_dtype if is_table else net_dtype
        dtypes[name] = storage
        if storage != "int8" or not t.is_floating_point():
            continue
        if is_table:
            if sum(table_sizes) != t.shape[0]:
                raise ValueError(f"table sizes sum to {sum(table_sizes)}, the table has {t.shape[0]} rows")
            groups[name] = list(table_sizes)
        elif t.dim() >= 2 and t.shape[0] > 0:
            groups[name] = [1] * int(t.shape[0])
    return net_dtype, dtypes, groups


def quantize_model(model: ImageModel, quant: str) -> bytes:
    """The payload of a model under storage setting ``quant`` (``quantize_tensors`` bytes)."""
    from .quant import quantize_tensors

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    dtype, dtypes, groups = storage_plan(state, model.table_names(), model.config.hash.table_sizes(), quant)
    return quantize_tensors(state, dtype, dtypes=dtypes, groups=groups)


def parse_model_config(value: Any, where: str) -> ModelConfig:
    """A ``ModelConfig`` from the header's ``model`` object, every field checked (CinrFormatError)."""
    if not isinstance(value, dict):
        raise CinrFormatError(f"{where}: header field 'model' is missing or not an object")
    where = f"{where}: model"
    unknown = sorted(set(value) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise CinrFormatError(f"{where}: unknown configuration keys {unknown[:5]} (newer encoder?)")
    if value.get("kind") not in MODEL_KINDS:
        raise CinrFormatError(f"{where}: kind {str(value.get('kind'))[:40]!r} is not one of {MODEL_KINDS}")
    for key, (lo, hi) in int_ranges(ModelConfig).items():
        if key in value:
            get_int(value, key, lo, hi, where)
    for key in _BOOL_FIELDS:
        if key in value and not isinstance(value[key], bool):
            raise CinrFormatError(f"{where}: {key} is not a boolean")
    if "w0" in value and not (is_number(value["w0"]) and abs(value["w0"]) <= 1e6):
        raise CinrFormatError(f"{where}: w0 is not a finite number")
    if "activation" in value and not isinstance(value["activation"], str):
        raise CinrFormatError(f"{where}: activation is not a string")
    if value.get("backend", "torch") not in _BACKENDS:
        raise CinrFormatError(
            f"{where}: backend {str(value.get('backend'))[:40]!r} cannot be decoded here (only {_BACKENDS})"
        )
    h = get_object(value, "hash", where)
    unknown = sorted(set(h) - set(HashGridConfig.__dataclass_fields__))
    if unknown:
        raise CinrFormatError(f"{where}.hash: unknown keys {unknown[:5]} (newer encoder?)")
    for key, (lo, hi) in int_ranges(HashGridConfig).items():
        get_int(h, key, lo, hi, f"{where}.hash")
    scale = h.get("per_level_scale")
    if not (is_number(scale) and 1.0 <= scale <= 1e3):
        raise CinrFormatError(f"{where}.hash: per_level_scale is not a number in [1, 1000]")
    finest = h["base_resolution"] * float(scale) ** (h["n_levels"] - 1)
    if not finest <= _MAX_RESOLUTION:
        raise CinrFormatError(f"{where}.hash: finest resolution {finest:.3g} is over {_MAX_RESOLUTION}")
    try:
        config = ModelConfig.from_dict(value)
    except (ValueError, TypeError) as exc:
        raise CinrFormatError(f"{where}: invalid configuration: {exc}") from None
    check_decode_cost(macs_per_pixel(config), where)
    return config


def load_model(payload: bytes, config: ModelConfig, where: str) -> ImageModel:
    """Rebuild a model on the CPU from its payload (CinrFormatError on any mismatch)."""
    import torch

    from ..core.models import build_model
    from .quant import dequantize_tensors

    try:
        with torch.device("meta"):  # every tensor, even those created on the CPU first, costs nothing
            skeleton = build_model(config, "meta")
    except (ValueError, RuntimeError) as exc:
        raise CinrFormatError(f"{where}: cannot build the model in the header: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    # Shapes checked against the model before anything is loaded or dequantized.
    tensors = dequantize_tensors(payload, where=where, shapes=expected)
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise CinrFormatError(f"{where}: tensor {name!r} is {t.dtype}, expected a floating type")
        if not bool(torch.isfinite(t).all()):
            raise CinrFormatError(f"{where}: tensor {name!r} holds non-finite values")
    model = build_model(config, "cpu")
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CinrFormatError(
            f"{where}: tensors do not fit the model: {' '.join(str(exc).split())[:200]}"
        ) from None
    model.eval()
    return model


class HashGridBlock:
    """A decoded hash-grid block (``BlockModel``): renders through ``core.render``."""

    def __init__(self, model: ImageModel) -> None:
        self.model = model

    def render(self, height: int, width: int, side: float, *, x0: int = 0, y0: int = 0) -> np.ndarray:
        """See ``BlockModel.render``; tiles of 256 px with halos of real features."""
        import torch

        from ..core.render import render

        with torch.inference_mode():
            return render(self.model, height, width, side, x0=x0, y0=y0)

    def render_coarse(
        self, height: int, width: int, side: float, *, x0: int = 0, y0: int = 0, stride: int = 1
    ) -> np.ndarray:
        """One sample per ``stride`` x ``stride`` cell: the model at the centre of the frame pixels
        ``[x0 + stride*j, +stride) x [y0 + stride*i, +stride)``, as uint8 (height, width, 3).

        What the decoder reads a coarse scale from when the file has no mip for it: the model is a
        function of coordinates, so it can be evaluated on a coarser lattice (the convolutions of a
        CINR then see neighbours ``stride`` pixels apart: an approximation of the box mean).
        """
        import torch

        from ..core.render import render

        with torch.inference_mode():
            return render(self.model, height, width, side / stride, x0=x0 / stride, y0=y0 / stride)


class HashGridCodec(BlockCodec):
    """NGP, ENGP and CINR blocks: a hash grid and a network, stored as quantized tensors."""

    name = "hashgrid"
    kinds = MODEL_KINDS
    storages = tuple(QUANT_SETTINGS)
    default_storage = DEFAULT_QUANT
    default_preset = "fast"

    def header_fields(self, config: ModelConfig, storage: str) -> dict[str, Any]:
        """``model`` (the configuration) and ``quantization`` (the storage setting, described)."""
        check_quant(storage)
        table_dtype, net_dtype = QUANT_SETTINGS[storage]
        return {
            "model": config.to_dict(),
            "quantization": {
                "setting": storage,
                "hash_table": table_dtype + (" (one range per level)" if table_dtype == "int8" else ""),
                "network": net_dtype + (" (one range per output row)" if net_dtype == "int8" else ""),
            },
        }

    def parse_config(self, header: Mapping[str, Any], where: str) -> ModelConfig:
        return parse_model_config(header.get("model"), where)

    def load(self, payload: bytes, config: ModelConfig, where: str, device: str = "cpu") -> BlockModel:
        from ..core.render import resolve_device

        return HashGridBlock(load_model(payload, config, where).to(resolve_device(device)))

    def check_payload(self, payload: bytes, where: str) -> None:
        from .quant import check_tensors

        check_tensors(payload, where)

    def config_for(self, kind: str, preset: str, height: int, width: int) -> ModelConfig:
        from ..encode.train.presets import get_preset

        cfg = get_preset(kind, preset).model_config(height, width)
        self._check_storable(cfg)
        return cfg

    def recipe(self, kind: str, preset: str) -> dict[str, Any]:
        from ..encode.train.presets import get_preset

        train = get_preset(kind, preset).train
        return {k: list(v) if isinstance(v, tuple) else v for k, v in train.items()}

    def check_storage(self, storage: str) -> None:
        check_quant(storage)

    def fit(
        self, pixels: np.ndarray, config: ModelConfig, kind: str, preset: str, settings: FitSettings
    ) -> FittedBlock:
        from ..encode.train.fit import fit_image

        if settings.start is not None:
            raise ValueError("hash-grid blocks are fitted anew: they cannot continue a stored payload")
        result = fit_image(
            pixels,
            model=kind,
            preset=preset,
            steps=settings.steps,
            time_budget=settings.time_budget,
            target_psnr=settings.target_psnr,
            device=settings.device,
            seed=settings.seed,
            hash_config=config.hash,
            frame=settings.frame,
            measure=settings.measure,
            progress=settings.progress,
        )
        if result.config != config:
            raise RuntimeError("block model configuration differs from the header's")
        return result

    def serialize(self, fitted: FittedBlock, storage: str) -> bytes:
        self._check_storable(fitted.config)
        model = getattr(fitted, "model", None)
        if model is None:
            raise ValueError("the fitted block has no model to store")
        return quantize_model(model, storage)

    @staticmethod
    def _check_storable(config: ModelConfig) -> None:
        if config.backend != "torch":
            raise ValueError(
                f"a model with the {config.backend!r} hash-grid backend cannot be stored: "
                "files must decode on a CPU"
            )


#: The codec ``coding.registry`` hands out for ``ngp``, ``engp`` and ``cinr``.
CODEC = HashGridCodec()

__all__ = [
    "CODEC",
    "DEFAULT_QUANT",
    "QUANT_SETTINGS",
    "HashGridBlock",
    "HashGridCodec",
    "check_quant",
    "load_model",
    "parse_model_config",
    "quantize_model",
    "storage_plan",
]
