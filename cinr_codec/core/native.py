"""Optional compiled CPU kernels, built on first use, each with a pure-Python fallback.

``_native.c`` (the hash grid), ``_synthesis.c`` (the compressive synthesis), ``_requant.c``
(re-quantization to a JPEG source's lattice), ``coding/_latent.c`` (latent decoding), ``encode/train/_rate.c`` and ``_synthesis_grad.c`` (the
training step's rate and synthesis) are plain C (no Python or torch headers), so building one
takes about a second with the system C compiler
(``$CC``, else ``cc``). Each shared library is cached per user under ``$CINR_CACHE_DIR`` or
``~/.cache/cinr_codec``, named by a hash of its source, the package headers it includes
(``core/_kernels.h``, ``encode/train/_tiles.h``) and the compiler, and written
atomically, so concurrent processes can share it. Without a compiler, or with
``CINR_NATIVE=0``, everything runs on the Python paths, which define the semantics; the
kernels compute the same values (tests compare both).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("_native.c")
_lock = threading.Lock()
_disabled = 0

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


def _cache_dir() -> Path:
    env = os.environ.get("CINR_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cinr_codec"


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return cc if shutil.which(cc.split()[0]) else None


_LOCAL_INCLUDE = re.compile(rb'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def _sources(source: Path) -> list[Path]:
    """``source`` and the package headers it includes by relative path (``#include "x.h"``),
    recursively, each once: what a compiled library depends on."""
    seen: list[Path] = []
    todo = [source.resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        todo += [(path.parent / m.decode()).resolve() for m in _LOCAL_INCLUDE.findall(path.read_bytes())]
    return seen


def _build(cc: str, source: Path) -> Path:
    """Compile C ``source`` into the cache (atomic rename); returns the library's path. The
    cache key covers the source, the headers it includes from the package, and the compiler."""
    digest = hashlib.sha256(cc.encode() + sys.platform.encode())
    for path in _sources(source):
        digest.update(path.read_bytes())
    key = digest.hexdigest()[:16]
    out_dir = _cache_dir()
    lib_path = out_dir / f"native-{key}.so"
    if lib_path.is_file():
        return lib_path
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".native-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        cmd = [*cc.split(), "-O3", "-shared", "-fPIC", "-o", tmp, str(source), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
        os.replace(tmp, lib_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib_path


_libs: dict[Path, ctypes.CDLL | None] = {}


def compiled(source: Path, what: str, setup: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """The C file ``source`` built and loaded (once per process), ``setup`` declaring its functions;
    None when disabled (``CINR_NATIVE=0``), without a compiler, or when the build failed (logged once,
    naming ``what`` runs on its Python path instead)."""
    if source in _libs:
        return _libs[source]
    with _lock:
        if source in _libs:
            return _libs[source]
        lib: ctypes.CDLL | None = None
        cc = _compiler()
        if os.environ.get("CINR_NATIVE", "1") == "0":
            log.info("native kernels disabled by CINR_NATIVE=0: %s runs on its Python path", what)
        elif cc is None:
            log.info("no C compiler found: %s runs on its Python path", what)
        else:
            try:
                lib = ctypes.CDLL(str(_build(cc, source)))
                setup(lib)
            except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as exc:
                log.warning("could not build the native kernels for %s (%s); using Python", what, exc)
                lib = None
        _libs[source] = lib
        return lib


def _setup_hashgrid(lib: ctypes.CDLL) -> None:
    for name in ("cinr_hg_points_fwd", "cinr_hg_points_bwd"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [_ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _ptr]
    lib.cinr_wgather_bwd.restype = ctypes.c_int
    lib.cinr_wgather_bwd.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _ptr]


def _load() -> ctypes.CDLL | None:
    """The compiled hash-grid kernels, or None (disabled, no compiler, or the build failed)."""
    return compiled(_SOURCE, "the hash grid", _setup_hashgrid)


def enabled() -> bool:
    """False inside ``disabled()``: callers then take their Python paths."""
    return not _disabled


def available() -> bool:
    """True when the compiled kernels are loaded (building them on first call)."""
    return _load() is not None


def usable(*tensors: torch.Tensor) -> bool:
    """True when the kernels can serve these tensors (all on the CPU, native build present)."""
    return not _disabled and all(t.device.type == "cpu" for t in tensors) and _load() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the Python paths inside the block (tests and benchmarks compare them with the kernels)."""
    global _disabled
    _disabled += 1
    try:
        yield
    finally:
        _disabled -= 1


def raise_for(rc: int, what: str) -> None:
    """The kernels' return codes as errors: 0 fine, 3 ``MemoryError``, anything else
    ``ValueError`` (arguments the kernel refused), each naming ``what`` ran."""
    if rc == 3:
        raise MemoryError(f"{what}: out of memory")
    if rc != 0:
        raise ValueError(f"{what}: the kernel refused its arguments (code {rc})")


def _check(rc: int) -> None:
    if rc != 0:
        raise IndexError("hash-grid index out of range of the table")


class LevelPlan:
    """Per-level constants of a hash grid in the form the kernels take."""

    def __init__(
        self, resolutions: list[int], offsets: list[int], sizes: list[int], n_dense: int, log2_t: int
    ):
        self.res = torch.tensor(resolutions, dtype=torch.float32)
        self.res_i = torch.tensor(resolutions, dtype=torch.int64)
        self.off = torch.tensor(offsets, dtype=torch.int64)
        self.size = torch.tensor(sizes, dtype=torch.int64)
        self.n_levels = len(resolutions)
        self.n_dense = n_dense
        self.log2_t = log2_t

    def run(self, name: str, pts: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n_feat: int) -> None:
        """Call kernel ``name`` (points forward or backward) on points (P, 2), ``src`` -> ``dst``."""
        lib = _load()
        assert lib is not None
        _check(
            getattr(lib, name)(
                pts.data_ptr(), pts.shape[0], src.data_ptr(), self.res.data_ptr(), self.res_i.data_ptr(),
                self.off.data_ptr(), self.size.data_ptr(), self.n_levels, n_feat, self.n_dense, self.log2_t,
                dst.data_ptr(),
            )
        )  # fmt: skip


def points_forward(plan: LevelPlan, pts: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Features (P, L*F) of points (P, 2) float32: the fused encode."""
    n_feat = table.shape[1]
    out = torch.empty(pts.shape[0], plan.n_levels * n_feat, dtype=torch.float32)
    plan.run("cinr_hg_points_fwd", pts, table, out, n_feat)
    return out


def points_backward(plan: LevelPlan, pts: torch.Tensor, grad: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Table gradient (rows, F) of :func:`points_forward` for the output gradient (P, L*F)."""
    n_feat = grad.shape[1] // plan.n_levels
    grad_table = torch.zeros(n_rows, n_feat, dtype=torch.float32)
    plan.run("cinr_hg_points_bwd", pts, grad, grad_table, n_feat)
    return grad_table


def wgather_backward(grad: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Table gradient of ``out[m] = sum_k w[m, k] * table[idx[m, k]]`` (one thread, in order: deterministic)."""
    lib = _load()
    assert lib is not None
    m, k = idx.shape
    grad_table = torch.zeros(n_rows, grad.shape[1], dtype=torch.float32)
    _check(
        lib.cinr_wgather_bwd(
            grad.data_ptr(), n_rows, grad.shape[1], idx.data_ptr(), w.data_ptr(), m, k, grad_table.data_ptr()
        )
    )
    return grad_table
