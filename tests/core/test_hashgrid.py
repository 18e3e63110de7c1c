"""The hash grid against a slow, obviously correct per-point reference."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from cinr_codec.core import native
from cinr_codec.core.hashgrid import HashGrid, HashGridConfig, make_hashgrid, naive_hashgrid, tcnn_available


@pytest.fixture(params=["native", "torch"])
def path(request: pytest.FixtureRequest):
    """Run a test on the compiled kernels and on the pure-PyTorch path."""
    if request.param == "native":
        if not native.available():
            pytest.skip("no C compiler: the native kernels are not built")
        yield "native"
    else:
        with native.disabled():
            yield "torch"


def reference(x: float, y: float, table: torch.Tensor, cfg: HashGridConfig) -> list[float]:
    """One point, plain Python: the formula of the docstring, level by level, corner by corner."""
    out: list[float] = []
    start = 0
    for lvl in range(cfg.n_levels):
        n = math.floor(cfg.base_resolution * cfg.per_level_scale**lvl + 1e-9)
        dense = (n + 1) ** 2 <= 2**cfg.log2_table_size
        size = (n + 1) ** 2 if dense else 2**cfg.log2_table_size
        px = min(max(x * n, 0.0), n)
        py = min(max(y * n, 0.0), n)
        cx = min(math.floor(px), n - 1)
        cy = min(math.floor(py), n - 1)
        feats = [0.0] * cfg.n_features
        for dx in (0, 1):
            for dy in (0, 1):
                ix, iy = cx + dx, cy + dy
                if dense:
                    index = ix + iy * (n + 1)
                else:
                    index = (ix ^ (iy * 2654435761)) % 2**cfg.log2_table_size
                wx = (px - cx) if dx else 1.0 - (px - cx)
                wy = (py - cy) if dy else 1.0 - (py - cy)
                for f in range(cfg.n_features):
                    feats[f] += wx * wy * float(table[start + index, f])
        out.extend(feats)
        start += size
    return out


CONFIGS = [
    HashGridConfig(6, 2, 8, 2, 2.0),  # levels 2,4,8 dense (<= 256 entries), 16,32,64 hashed
    HashGridConfig(4, 3, 10, 5, 1.7),
    HashGridConfig(3, 1, 12, 60, 1.0),  # all dense, equal resolutions
]


def _points(cfg: HashGridConfig, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    pts = [torch.rand(n, 2, generator=g)]
    res = cfg.resolutions()
    # Exactly on cell edges of a fine and a coarse level, and on the image border and corners.
    for r in (res[0], res[-1]):
        k = torch.randint(0, r + 1, (n, 2), generator=g).float() / r
        pts.append(k)
    pts.append(torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.5, 1.0], [1.0, 0.3]]))
    # Outside [0, 1] (convolution halos): clamped to the border.
    pts.append(torch.tensor([[-0.01, 0.5], [1.02, 0.5], [0.5, -0.3], [1.5, 1.5]]))
    return torch.cat(pts)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_reference(cfg: HashGridConfig, path: str) -> None:
    assert any(cfg.is_dense())
    grid = HashGrid(cfg)
    with torch.no_grad():
        grid.table.uniform_(-1, 1)
    pts = _points(cfg, 40)
    got = grid(pts)
    for p, row in zip(pts.tolist(), got):
        ref = reference(p[0], p[1], grid.table.detach(), cfg)
        assert torch.allclose(row, torch.tensor(ref), atol=1e-5), p


def test_has_hashed_and_dense_levels() -> None:
    cfg = CONFIGS[0]
    assert cfg.resolutions() == [2, 4, 8, 16, 32, 64]
    assert cfg.is_dense() == [True, True, True, False, False, False]
    assert cfg.table_sizes() == [9, 25, 81, 256, 256, 256]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_grid_path_matches_points(cfg: HashGridConfig, path: str) -> None:
    grid = HashGrid(cfg)
    with torch.no_grad():
        grid.table.uniform_(-1, 1)
    g = torch.Generator().manual_seed(2)
    # Three patches: one fine (pixel spacing 1/500), one coarse (1/7), one hanging off the border.
    xs = torch.stack([0.3 + torch.arange(9) / 500, torch.arange(9) / 7, 0.95 + torch.arange(9) / 50])
    ys = torch.stack([0.6 + torch.arange(5) / 500, torch.arange(5) / 7, -0.05 + torch.arange(5) / 50])
    xs = xs + torch.rand(3, 1, generator=g) * 1e-3
    out = grid.forward_grid(xs, ys)
    pts = torch.stack(torch.broadcast_tensors(xs.unsqueeze(1), ys.unsqueeze(2)), dim=-1)
    assert torch.allclose(out, grid(pts), atol=1e-6)
    assert torch.allclose(
        out.reshape(-1, cfg.out_dim), naive_hashgrid(pts.reshape(-1, 2), grid.table.detach(), cfg), atol=1e-6
    )


def test_gradients_against_finite_differences() -> None:
    from cinr_codec.core.hashgrid import weighted_gather

    cfg = HashGridConfig(4, 2, 6, 2, 2.0)  # hashed from level 3 (N=16 > 7)
    grid = HashGrid(cfg)
    assert not all(cfg.is_dense())
    pts = _points(cfg, 6)
    xs = torch.tensor([[0.11, 0.2, 0.52, 0.9]])
    ys = torch.tensor([[0.05, 0.33, 0.71]])
    idx, w = grid._indices_weights(pts)
    t = torch.rand(grid.table.shape, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda tab: weighted_gather(tab, idx, w.double()), (t,), atol=1e-6)
    assert torch.autograd.gradcheck(lambda tab: grid.encode_grid_with(tab, xs, ys), (t,), atol=1e-6)


@pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")
@pytest.mark.parametrize("cfg", [*CONFIGS, HashGridConfig(16, 2, 15, 8, 1.26)], ids=str)
def test_native_matches_torch_values_and_gradients(cfg: HashGridConfig) -> None:
    """Points and grid paths: forward and table gradient of the kernels equal pure PyTorch's."""
    grid = HashGrid(cfg)
    with torch.no_grad():
        grid.table.uniform_(-1, 1)
    pts = torch.cat([_points(cfg, 500), torch.tensor([[float("nan"), 0.5]])])
    g = torch.Generator().manual_seed(3)
    xs = torch.sort(torch.rand(2, 37, generator=g) * 1.1 - 0.05, dim=1).values
    ys = torch.sort(torch.rand(2, 23, generator=g) * 1.1 - 0.05, dim=1).values
    results = []
    for ctx in (contextlib.nullcontext(), native.disabled()):
        with ctx:
            grid.table.grad = None
            out = grid(pts[:-1])
            (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
            gp = grid.table.grad.clone()
            grid.table.grad = None
            og = grid.forward_grid(xs, ys)
            og.square().sum().backward()
            results.append((out.detach(), gp, og.detach(), grid.table.grad.clone()))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # A NaN coordinate reads the border cell instead of indexing out of the table.
    assert torch.isfinite(grid(pts[-1:])).all()


@pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels are not built")
def test_native_gather_backward_rejects_out_of_range_indices() -> None:
    grad = torch.ones(1, 2)
    ok = native.wgather_backward(grad, torch.tensor([[0, 9]]), torch.tensor([[0.5, 2.0]]), 10)
    assert ok[0].tolist() == [0.5, 0.5] and ok[9].tolist() == [2.0, 2.0]
    for bad in (10, -1):
        with pytest.raises(IndexError):
            native.wgather_backward(grad, torch.tensor([[0, bad]]), torch.ones(1, 2), 10)


def test_without_a_compiler_the_torch_path_is_used(tmp_path) -> None:
    """No compiler (or CINR_NATIVE=0): no build, no error, same features."""
    import os
    import subprocess
    import sys

    code = (
        "import torch; from cinr_codec.core import native; from cinr_codec.core.hashgrid import HashGrid, HashGridConfig;"
        "assert not native.available();"
        "g = HashGrid(HashGridConfig(4, 2, 8, 4, 2.0)); print(float(g(torch.rand(5, 2)).abs().sum()) >= 0)"
    )
    for env in ({"CC": str(tmp_path / "no-such-cc")}, {"CINR_NATIVE": "0"}):
        full = {**os.environ, "CINR_CACHE_DIR": str(tmp_path / "cache"), **env}
        proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "True"
        assert not any((tmp_path / "cache").glob("*.so"))


def test_initialisation_range_and_param_count() -> None:
    cfg = HashGridConfig(8, 2, 10, 4, 1.5)
    grid = HashGrid(cfg)
    assert grid.table.abs().max() <= 1e-4
    assert grid.table.numel() == cfg.n_params()
    assert grid.out_dim == 16


def test_from_max_resolution() -> None:
    cfg = HashGridConfig.from_max_resolution(5, 2, 12, 8, 128)
    assert cfg.resolutions() == [8, 16, 32, 64, 128]


def test_bad_config() -> None:
    with pytest.raises(ValueError):
        HashGridConfig(0, 2, 10, 4, 1.5)
    with pytest.raises(ValueError):
        make_hashgrid(HashGridConfig(), backend="magic")


def test_auto_backend_is_torch_on_cpu() -> None:
    assert isinstance(make_hashgrid(HashGridConfig(2, 2, 8, 4, 2.0), device="cpu"), HashGrid)


@pytest.mark.gpu
@pytest.mark.skipif(not tcnn_available(), reason="needs tinycudann and a CUDA GPU")
def test_tcnn_backend_agrees_in_kind() -> None:  # pragma: no cover - needs a GPU
    """Both backends: same output width, and both fit the same signal to similar error."""
    cfg = HashGridConfig(8, 2, 14, 4, 1.5)
    torch.manual_seed(0)
    pts = torch.rand(4096, 2, device="cuda")
    target = torch.sin(pts[:, :1] * 20) * torch.cos(pts[:, 1:] * 13)
    errs = []
    for backend in ("torch", "tcnn"):
        grid = make_hashgrid(cfg, backend=backend, device="cuda").cuda()
        head = torch.nn.Linear(cfg.out_dim, 1).cuda()
        opt = torch.optim.Adam(list(grid.parameters()) + list(head.parameters()), lr=1e-2)
        for _ in range(300):
            loss = torch.nn.functional.mse_loss(head(grid(pts).float()), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        errs.append(float(loss))
    assert errs[1] < 3 * errs[0] + 1e-4 and errs[0] < 3 * errs[1] + 1e-4
