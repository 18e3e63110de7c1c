"""Model wiring: shapes, halos, configuration round-trips, presets."""

from __future__ import annotations

import pytest
import torch

from cinr_codec.core.hashgrid import HashGridConfig
from cinr_codec.core.models import CINR, NGP, ModelConfig, build_model
from cinr_codec.encode.train.presets import PRESETS, get_preset

SMALL_HASH = HashGridConfig(4, 2, 10, 4, 2.0)


def _grid(b: int, h: int, w: int) -> torch.Tensor:
    xs = (torch.arange(w) + 0.5) / 64
    ys = (torch.arange(h) + 0.5) / 64
    g = torch.stack(torch.broadcast_tensors(xs.unsqueeze(0), ys.unsqueeze(1)), dim=-1)
    return g.unsqueeze(0).expand(b, h, w, 2) + torch.rand(b, 1, 1, 2) * 0.2


@pytest.mark.parametrize("kind", ["ngp", "engp", "cinr"])
def test_shapes(kind: str) -> None:
    cfg = get_preset(kind, "fast").model_config(64, 64, SMALL_HASH)
    model = build_model(cfg)
    out = model(_grid(2, 7, 9))
    assert out.shape == (2, 3, 7, 9)
    assert torch.isfinite(out).all()


def test_paper_architecture_is_the_notebook() -> None:
    pre = get_preset("cinr", "paper")
    assert pre.hash == {
        "n_levels": 24,
        "n_features": 2,
        "log2_table_size": 24,
        "base_resolution": 4,
        "per_level_scale": 1.5,
    }
    cfg = pre.model_config(64, 64, SMALL_HASH)  # the paper's network on a small grid
    model = build_model(cfg)
    assert isinstance(model, CINR)
    z = SMALL_HASH.out_dim
    assert [c.weight.shape[:2] for c in model.cnn_a] == [(128, z), (128, 128)]
    assert [c.weight.shape[:2] for c in model.cnn_c] == [(128, 256), (128, 128)]
    assert model.out.weight.shape[:2] == (3, 256)
    assert all(m.bias is None for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    linears = [m for m in model.mlp_b if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(128, z), (128, 128), (128, 128)]
    assert pre.train["lr_net"] == 1e-5 and pre.train["batch_patches"] == 100 and pre.train["patch"] == 128
    # SIREN: the first layer's weights lie in +-1/fan_in, later ones in +-sqrt(6/fan_in)/30.
    w = model.cnn_a[1].weight
    assert w.abs().max() <= (6 / w[0].numel()) ** 0.5 / 30


def test_ngp_presets_match_the_paper() -> None:
    ngp = build_model(get_preset("ngp").model_config(64, 64, SMALL_HASH))
    engp = build_model(get_preset("engp").model_config(64, 64, SMALL_HASH))
    assert isinstance(ngp, NGP)
    assert sum(isinstance(m, torch.nn.Linear) for m in ngp.mlp) == 5  # 4 x 128 hidden + output
    assert ngp.mlp[0].out_features == 128
    assert sum(isinstance(m, torch.nn.Linear) for m in engp.mlp) == 9
    assert engp.mlp[0].out_features == 256


def test_cinr_output_depends_only_on_its_neighbourhood() -> None:
    """Changing features 6+ pixels away must not change a pixel (halo = 5)."""
    torch.manual_seed(0)
    cfg = get_preset("cinr", "paper").model_config(64, 64, HashGridConfig(2, 2, 16, 64, 1.0))
    model = build_model(cfg)
    assert model.halo == 5
    with torch.no_grad():
        model.grid.table.uniform_(-1, 1)
    h = model.halo
    xs = ((torch.arange(20 + 2 * h) + 0.5) / 64).unsqueeze(0)
    ys = ((torch.arange(8 + 2 * h) + 0.5) / 64).unsqueeze(0)
    base = model.forward_grid(xs, ys)
    assert base.shape == (1, 3, 8, 20)
    far = xs.clone()
    far[:, h + 11 :] += 0.3  # move the coordinates of output columns >= 11 (and the right halo)
    out = model.forward_grid(far, ys)
    assert torch.equal(out[..., :6], base[..., :6])  # 11 - 5 = 6 columns are out of reach
    assert not torch.equal(out[..., 6:11], base[..., 6:11])  # these see the change


def test_config_round_trip() -> None:
    cfg = get_preset("cinr", "default").model_config(300, 200)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_presets_resolve_against_image_size() -> None:
    pre = get_preset("cinr")
    cfg = pre.resolve_hash(512, 400)
    assert cfg.resolutions()[-1] in (255, 256)  # max_resolution = 0.5 x longest side
    for kind, presets in PRESETS.items():
        for name in presets:
            assert get_preset(kind, name).kind == kind


def test_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        get_preset("nerf")
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("cinr", "ultra")
    with pytest.raises(ValueError):
        build_model(ModelConfig(kind="cinr", hash=SMALL_HASH, activation="tanhh"))


def test_rejects_non_grid_coordinates() -> None:
    model = build_model(get_preset("ngp", "fast").model_config(64, 64, SMALL_HASH))
    g = _grid(1, 4, 4)
    g[0, 1, 2, 0] += 0.01
    with pytest.raises(ValueError, match="grid"):
        model(g)


@pytest.mark.parametrize("kind", ["ngp", "engp", "cinr"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sine", "silu", "gelu"])
def test_inference_into_a_workspace_gives_the_same_values(kind: str, activation: str) -> None:
    """``forward_grid`` with a workspace (tensors in reused buffers) equals it without, bit for bit, on a
    workspace used before for a larger and a smaller tile."""
    from cinr_codec.core.render import axis_coords
    from cinr_codec.core.workspace import Workspace

    torch.manual_seed(0)
    cfg = get_preset(kind, "fast").model_config(300, 300, arch={"activation": activation})
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # every unit active somewhere, every level's features non-zero
    ws = Workspace()
    h = model.halo
    with torch.inference_mode():
        for w, ht in ((90, 70), (40, 33), (64, 51)):
            xs = axis_coords(17 - h, w + 2 * h, 300.0).unsqueeze(0)
            ys = axis_coords(5 - h, ht + 2 * h, 300.0).unsqueeze(0)
            ref = model.forward_grid(xs, ys)
            got = model.forward_grid(xs, ys, ws)
            assert got.shape == ref.shape == (1, 3, ht, w)
            assert torch.equal(got, ref)


def test_renders_reuse_their_workspace_and_release_gives_it_back() -> None:
    """A second render of a tile takes the kept workspace (the same buffers, nothing new);
    two renders at once get two; ``release`` drops the kept ones."""
    import threading

    from cinr_codec.core import workspace as wsmod
    from cinr_codec.core.render import render

    wsmod.release()
    model = build_model(get_preset("cinr", "fast").model_config(128, 128, SMALL_HASH)).eval()
    with torch.inference_mode():
        first = render(model, 80, 96, 128.0)
    assert len(wsmod._free) == 1
    kept = wsmod._free[0]
    buffers = {k: v.data_ptr() for k, v in kept._buffers.items()}
    assert buffers and kept.nbytes > 0
    with torch.inference_mode():  # the decoder renders in inference mode, training under no_grad
        assert (render(model, 80, 96, 128.0) == first).all()
    assert (render(model, 80, 96, 128.0) == first).all()
    assert wsmod._free == [kept] and {k: v.data_ptr() for k, v in kept._buffers.items()} == buffers

    inside = threading.Barrier(2)
    seen: list[int] = []

    def hold() -> None:
        with wsmod.workspace() as ws:
            seen.append(id(ws))
            inside.wait(timeout=10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2 and id(kept) in seen
    assert wsmod.release() > 0 and wsmod._free == [] and wsmod.release() == 0

    with wsmod.workspace() as big:  # larger than KEEP_BYTES: not kept
        big.get("x", wsmod.KEEP_BYTES // 4 + 1)
    assert wsmod._free == []


def test_workspace_buffers_grow_and_keep_their_names_apart() -> None:
    from cinr_codec.core.workspace import Workspace

    ws = Workspace()
    a = ws.get("a", 4, 5)
    b = ws.get("b", 20)
    assert a.shape == (4, 5) and a.is_contiguous() and a.dtype == torch.float32
    assert a.data_ptr() != b.data_ptr() and ws.nbytes == 40 * 4
    assert ws.get("a", 2, 3).data_ptr() == a.data_ptr()  # smaller: the same memory
    assert ws.get("a", 50).numel() == 50 and ws.nbytes == 70 * 4  # larger: grown
