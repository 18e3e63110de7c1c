"""CUDA paths: encode on the GPU, decode on the CPU (and on the GPU). Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(
    ("settings", "tolerance"),
    [
        ({"model": "cinr", "margin": 8, "steps": 200}, 1),
        # ccinr's long fits (over RECIPE["short_fit_steps"], as a GPU's 2400): no warm start.
        ({"model": "ccinr", "preset": "q4", "steps": 700}, 2),
        # Short fits: the prior raced from two seeds, warm starts, the default aim (and its floor).
        ({"model": "ccinr", "steps": 40}, 2),
    ],
    ids=["cinr", "ccinr-level", "ccinr-aimed"],
)
def test_encode_on_gpu_decodes_on_cpu(
    tissue_crop: np.ndarray, tmp_path: Path, settings: dict[str, Any], tolerance: int
) -> None:
    src = tmp_path / "t.png"
    Image.fromarray(tissue_crop).save(src)
    out = tmp_path / "t.cinr"
    s = encode_slide(src, out, block_size=64, device="cuda", tissue_mask=False, **settings)
    assert s["device"].startswith("cuda") and s["tissue_blocks"] >= 2
    h, w = tissue_crop.shape[:2]
    with SlideDecoder(out) as cpu:
        decoded = cpu.read(0, 0, w, h)
    # The encoder measures quality on a CPU decode, exactly what any reader gets.
    assert psnr(decoded, tissue_crop) == pytest.approx(s["psnr_all"], abs=1e-6)
    assert s["psnr"] > 25
    with SlideDecoder(out, device="cuda") as gpu:
        on_gpu = gpu.read(0, 0, w, h)
    assert np.abs(on_gpu.astype(int) - decoded.astype(int)).max() <= tolerance
