"""The block grid of a slide: which pixels each block owns, its model's coordinate frame, mip ids.

A level of ``width`` x ``height`` pixels is cut into ``cols`` x ``rows`` square blocks of
``block_size`` pixels (the last column and row may be narrower). Block ``(r, c)`` has id
``r * cols + c`` and *owns* the pixels ``[c*B, (c+1)*B) x [r*B, (r+1)*B)`` clipped to the level:
every pixel is decoded by exactly one block's model. Each model is fitted on its block grown by
``margin`` pixels on every side (clipped to the level), so that pixels along block borders are
interior pixels of their model and blocks join without seams.

A block's model works in its own frame: the frame's origin is level pixel ``(c*B - margin,
r*B - margin)`` and its side ``S = B + 2*margin``; level pixel ``(X, Y)`` has model coordinates
``((X - ox + 0.5) / S, (Y - oy + 0.5) / S)``. A single-block file (``cinr_codec.encode.image.encode_image``)
is the case ``cols = rows = 1``, ``margin = 0``, ``B = max(width, height)``.

Mip levels: for each downsample ``d`` in ``mip_downsamples`` every block also has an image block
holding the box-filtered (mean of the level pixels it covers) picture of the pixels it owns, at
``ceil(w / d) x ceil(h / d)``; its id is ``n_level_blocks * (1 + k) + block_id`` for the k-th
downsample. They make reads at coarse scales cost in proportion to the output pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

#: Smallest mip side kept: coarser reads are box-filtered from the coarsest stored mip.
MIN_MIP_SIDE = 16
#: Largest mip downsample stored.
MAX_MIP_DOWNSAMPLE = 64


def default_mip_downsamples(block_size: int, first: int = 2, step: int = 2) -> tuple[int, ...]:
    """Downsamples d = first, first * step, ... with block_size / d >= MIN_MIP_SIDE and
    d <= MAX_MIP_DOWNSAMPLE (reads between two box-filter the finer one; coarser reads without a
    mip box-filter the decoded level, or the coarsest mip). ``first`` and ``step`` are powers of two
    (``first`` >= 2, ``step`` 2 or 4)."""
    if first < 2 or first & (first - 1):
        raise ValueError(f"the first mip downsample must be a power of two >= 2, not {first}")
    if step not in (2, 4):
        raise ValueError(f"the mip step must be 2 or 4, not {step}")
    out = []
    d = first
    while block_size // d >= MIN_MIP_SIDE and d <= MAX_MIP_DOWNSAMPLE and block_size % d == 0:
        out.append(d)
        d *= step
    return tuple(out)


@dataclass(frozen=True)
class BlockGrid:
    """Geometry of a slide level cut into blocks (see the module docstring)."""

    width: int
    height: int
    block_size: int
    margin: int = 0
    mip_downsamples: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError("width and height must be >= 1")
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if not 0 <= self.margin <= self.block_size:
            raise ValueError("margin must be in [0, block_size]")
        for d in self.mip_downsamples:
            if d < 2 or self.block_size % d:
                raise ValueError(f"mip downsample {d} must be >= 2 and divide the block size")
        if list(self.mip_downsamples) != sorted(set(self.mip_downsamples)):
            raise ValueError("mip downsamples must be increasing")

    @property
    def cols(self) -> int:
        """Blocks per row."""
        return -(-self.width // self.block_size)

    @property
    def rows(self) -> int:
        """Blocks per column."""
        return -(-self.height // self.block_size)

    @property
    def n_level_blocks(self) -> int:
        """Number of level blocks (models or background)."""
        return self.cols * self.rows

    @property
    def n_blocks(self) -> int:
        """Number of container blocks: level blocks, then one image block per block and mip level."""
        return self.n_level_blocks * (1 + len(self.mip_downsamples))

    @property
    def side(self) -> int:
        """Side of every block's coordinate frame, ``block_size + 2 * margin``."""
        return self.block_size + 2 * self.margin

    def position(self, block_id: int) -> tuple[int, int]:
        """(row, col) of a level block."""
        if not 0 <= block_id < self.n_level_blocks:
            raise IndexError(f"block id {block_id} is not in [0, {self.n_level_blocks})")
        return divmod(block_id, self.cols)

    def owned(self, block_id: int) -> tuple[int, int, int, int]:
        """(x, y, w, h): the level pixels the block decodes."""
        r, c = self.position(block_id)
        b = self.block_size
        x, y = c * b, r * b
        return x, y, min(b, self.width - x), min(b, self.height - y)

    def fit_region(self, block_id: int) -> tuple[int, int, int, int]:
        """(x, y, w, h): the pixels its model is fitted on (owned pixels grown by the margin, clipped)."""
        x, y, w, h = self.owned(block_id)
        m = self.margin
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(self.width, x + w + m), min(self.height, y + h + m)
        return x0, y0, x1 - x0, y1 - y0

    def frame_origin(self, block_id: int) -> tuple[int, int]:
        """Level pixel at the origin of the block's model frame."""
        x, y, _, _ = self.owned(block_id)
        return x - self.margin, y - self.margin

    def mip_id(self, block_id: int, k: int) -> int:
        """Container id of the image block of level block ``block_id`` at ``mip_downsamples[k]``."""
        return self.n_level_blocks * (1 + k) + block_id

    def mip_size(self, block_id: int, k: int) -> tuple[int, int]:
        """(w, h) of a block's mip at ``mip_downsamples[k]``."""
        _, _, w, h = self.owned(block_id)
        d = self.mip_downsamples[k]
        return -(-w // d), -(-h // d)

    def overlapping(self, x0: int, y0: int, x1: int, y1: int) -> Iterator[int]:
        """Ids of the level blocks that own pixels of [x0, x1) x [y0, y1), row-major."""
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(self.width, x1), min(self.height, y1)
        if x1 <= x0 or y1 <= y0:
            return
        b = self.block_size
        for r in range(y0 // b, (y1 - 1) // b + 1):
            for c in range(x0 // b, (x1 - 1) // b + 1):
                yield r * self.cols + c

    def internal_edges(self, block_id: int) -> tuple[bool, bool, bool, bool]:
        """Whether the block's left, top, right, bottom edges border another block (not the level edge)."""
        x, y, w, h = self.owned(block_id)
        return x > 0, y > 0, x + w < self.width, y + h < self.height
