"""Decode a single-block ``.cinr`` file (``encode.image.encode_image``'s output) to RGB pixels."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..errors import CinrFormatError
from ..format.container import CinrReader
from ..format.header import MAX_PIXELS, parse_layout

log = logging.getLogger(__name__)


def decode_image(path: str | os.PathLike[str], *, max_block_bytes: int | None = None) -> np.ndarray:
    """Decode a single-block ``.cinr`` file to RGB uint8 (H, W, 3), on the CPU (deterministic).

    ``max_block_bytes`` lowers the decompressed payload size accepted (see ``CinrReader``).
    """
    with CinrReader(path, max_block_bytes=max_block_bytes) as reader:
        layout = parse_layout(reader)
        where = reader.name
        if layout.n_blocks != 1 or layout.block_size != max(layout.width, layout.height):
            raise CinrFormatError(
                f"{where}: a grid of {layout.cols}x{layout.rows} blocks of {layout.block_size} px; this "
                "decoder reads single-block files only (block_size = max(width, height))"
            )
        if layout.margin != 0:
            raise CinrFormatError(
                f"{where}: a single-block file must have grid.halo = 0, not {layout.margin}"
            )
        if layout.width * layout.height > MAX_PIXELS:
            raise CinrFormatError(
                f"{where}: {layout.width}x{layout.height} pixels is over {MAX_PIXELS} for one block"
            )
        info = reader.block_info(0)
        if info.kind == "background":
            assert info.colour is not None
            return np.full((layout.height, layout.width, 3), info.colour, dtype=np.uint8)
        block = layout.codec.load(
            reader.read_payload(0), layout.config, f"{where}: block 0 (at offset {info.offset})"
        )
    log.debug("%s: decoding %dx%d", where, layout.width, layout.height)
    return block.render(layout.height, layout.width, float(max(layout.width, layout.height)))
