"""CUDA paths: encode on the GPU, decode on the CPU (and on the GPU). Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cinr_codec.core.metrics import psnr
from cinr_codec.decode import SlideDecoder
from cinr_codec.encode.slide import encode_slide

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_encode_on_gpu_decodes_on_cpu(tissue_crop: np.ndarray, tmp_path: Path) -> None:
    src = tmp_path / "t.png"
    Image.fromarray(tissue_crop).save(src)
    out = tmp_path / "t.cinr"
    s = encode_slide(
        src, out, model="cinr", block_size=64, margin=8, steps=200, device="cuda", tissue_mask=False
    )
    assert s["device"].startswith("cuda")
    h, w = tissue_crop.shape[:2]
    with SlideDecoder(out) as cpu:
        decoded = cpu.read(0, 0, w, h)
    # The encoder measures quality on a CPU decode, exactly what any reader gets.
    assert psnr(decoded, tissue_crop) == pytest.approx(s["psnr_all"], abs=1e-6)
    assert s["psnr"] > 25
    with SlideDecoder(out, device="cuda") as gpu:
        on_gpu = gpu.read(0, 0, w, h)
    assert np.abs(on_gpu.astype(int) - decoded.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "settings",
    [
        # The long-fit path of a GPU encode: no warm start, the prior fitted only to aim.
        {"preset": "q4", "steps": 200},
        # Short fits: the prior raced from two seeds, warm starts, the default aim (and its floor).
        {"steps": 40},
    ],
    ids=["level", "aimed"],
)
def test_ccinr_encode_on_gpu_decodes_on_cpu(
    tissue_crop: np.ndarray, tmp_path: Path, settings: dict[str, object]
) -> None:
    src = tmp_path / "t.png"
    Image.fromarray(tissue_crop).save(src)
    out = tmp_path / "t.cinr"
    s = encode_slide(src, out, model="ccinr", block_size=64, device="cuda", tissue_mask=False, **settings)
    assert s["device"].startswith("cuda") and s["tissue_blocks"] >= 2
    h, w = tissue_crop.shape[:2]
    with SlideDecoder(out) as cpu:
        decoded = cpu.read(0, 0, w, h)
    assert psnr(decoded, tissue_crop) == pytest.approx(s["psnr_all"], abs=1e-6)
    assert s["psnr"] > 25
    with SlideDecoder(out, device="cuda") as gpu:
        on_gpu = gpu.read(0, 0, w, h)
    assert np.abs(on_gpu.astype(int) - decoded.astype(int)).max() <= 2
