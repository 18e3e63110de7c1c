"""Reused buffers for CPU inference of the hash-grid models (``core.render``).

A 256-px tile of a hash-grid CINR passes tensors of several megabytes between its layers. With
glibc's default malloc every such tensor is fresh memory: the heap returns it to the system on
free and the next tile pays a page fault per 4 kB touched (a 512² read: 67,000-122,000 faults
across the presets and 1.3-1.5x the time it takes with ``decode.tune_allocator``; after: under
1,400 faults and 0.98-1.02x, ``benchmarks/results/decode_allocator*.md``). Renders instead
write those tensors into buffers kept here, so the library's decode speed does not depend on a
process-wide malloc setting. One workspace per render running at a time; a few are kept for reuse.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Workspaces kept between renders (a render running while all are taken makes a new one).
KEEP = max(1, min(4, os.cpu_count() or 1))
#: A workspace larger than this is dropped after its render, not kept (the presets' 256-px tiles
#: need 25-137 MiB; a file with far wider networks should not leave gigabytes resident).
KEEP_BYTES = 256 << 20


class Workspace:
    """Named CPU float32 buffers, each grown to the largest size asked for and then reused."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, *shape: int) -> torch.Tensor:
        """A contiguous float32 tensor of ``shape`` over buffer ``name`` (contents undefined).

        Two names never share memory; a name returns the same memory every time, unless a larger
        shape than before grows it.
        """
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n:
            # A normal tensor even under inference mode: renders run under either that or no_grad,
            # and an inference tensor may not be written outside inference mode.
            with torch.inference_mode(False):
                buf = torch.empty(n, dtype=torch.float32)
            self._buffers[name] = buf
        return buf[:n].view(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held by this workspace's buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


_free: list[Workspace] = []
_lock = threading.Lock()


@contextmanager
def workspace() -> Iterator[Workspace]:
    """A workspace for the caller alone until the block ends (then kept for the next render)."""
    with _lock:
        ws = _free.pop() if _free else Workspace()
    try:
        yield ws
    finally:
        with _lock:
            if len(_free) < KEEP and ws.nbytes <= KEEP_BYTES:
                _free.append(ws)


def release() -> int:
    """Drop the kept workspaces (their memory goes back to the allocator); returns the bytes freed."""
    with _lock:
        freed = sum(ws.nbytes for ws in _free)
        _free.clear()
    return freed
