"""``decode``: the slide decoder's public cache controls and its caches (the reads themselves are
tested through ``open_cinr`` in tests/test_api.py and against the format vectors)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cinr_codec.decode import LRUCache, SlideDecoder, decode_image

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "formats" / "vectors"


def test_cache_controls() -> None:
    path = sorted(VECTORS.glob("*.cinr"))[0]
    with SlideDecoder(path) as dec:
        assert dec.cache_bytes == 0
        first = dec.read(0, 0, 40, 30)
        assert dec.cache_bytes > 0
        dec.cache_capacity = 0  # nothing kept from now on (beyond the newest entry)
        dec.clear_cache()
        assert dec.cache_bytes == 0
        assert (dec.read(0, 0, 40, 30) == first).all()
        dec.cache_capacity = -5
        assert dec.cache_capacity == 0


def test_clear_cache_can_keep_the_models() -> None:
    path = sorted(VECTORS.glob("*.cinr"))[0]
    with SlideDecoder(path) as dec:
        first = dec.read(0, 0, 40, 30)
        assert dec.loaded_models == 1 and dec.cache_bytes > 0
        dec.clear_cache(models=False)
        assert dec.loaded_models == 1 and dec.cache_bytes == 0
        assert (dec.read(0, 0, 40, 30) == first).all()
        dec.clear_cache()
        assert dec.loaded_models == 0 and dec.cache_bytes == 0


def test_clearing_the_models_drops_the_kept_render_buffers() -> None:
    """A hash-grid render keeps its buffers for the next (``core.workspace``); clearing the
    models gives them back, keeping the models does not."""
    from cinr_codec.core import workspace

    with SlideDecoder(VECTORS / "cinr-fast-64x64-int8+float16.cinr") as dec:
        first = dec.read(0, 0, 64, 64)
        assert workspace._free
        dec.clear_cache(models=False)
        assert workspace._free
        dec.clear_cache()
        assert workspace._free == []
        assert (dec.read(0, 0, 64, 64) == first).all()


def test_slide_decoder_and_single_block_decoder_agree() -> None:
    expected = json.loads((VECTORS / "expected.json").read_text())
    for entry in expected["vectors"]:
        path = VECTORS / entry["file"]
        with SlideDecoder(path) as dec:
            if dec.layout.n_blocks != 1:
                continue
            full = dec.read(0, 0, dec.width, dec.height)
        assert (full == decode_image(path)).all()


def test_lru_cache_bounds_cost_and_is_thread_safe() -> None:
    cache = LRUCache(100)
    for i in range(10):
        cache.put(i, np.zeros(1), 30)
    assert cache.cost <= 100 and cache.get(9) is not None and cache.get(0) is None

    def hammer(k: int) -> None:
        for i in range(200):
            cache.put((k, i), i, 7)
            cache.get((k, i - 1))

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.cost <= 100


def test_threads_asking_for_the_same_tile_make_it_once() -> None:
    """Readers of the same block at the same time wait for one decode (model load and tile), get
    the same pixels, and a failed decode leaves the others to try for themselves."""
    import time

    path = VECTORS / "ccinr-q6-64x48-compact.cinr"
    with SlideDecoder(path) as dec:
        want = dec.read(0, 0, 64, 48)
    with SlideDecoder(path) as dec:
        made = {"tile": 0, "model": 0}
        make_tile, load = dec._make_tile, dec.codec.load

        def slow_tile(*args: object) -> np.ndarray:
            made["tile"] += 1
            time.sleep(0.3)  # long enough for every thread to ask while it is being made
            return make_tile(*args)  # type: ignore[arg-type]

        def counted_load(*args: object, **kw: object) -> object:
            made["model"] += 1
            return load(*args, **kw)  # type: ignore[arg-type]

        dec._make_tile = slow_tile  # type: ignore[method-assign]
        dec.codec = type("C", (), {"load": staticmethod(counted_load)})()  # type: ignore[assignment]
        out: list[np.ndarray] = []
        threads = [threading.Thread(target=lambda: out.append(dec.read(0, 0, 64, 48))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert made == {"tile": 1, "model": 1}
        assert len(out) == 6 and all((o == want).all() for o in out)

    with SlideDecoder(path) as dec:
        calls = {"n": 0}
        make_tile = dec._make_tile

        def fails_first(*args: object) -> np.ndarray:
            calls["n"] += 1
            if calls["n"] == 1:
                time.sleep(0.3)
                raise RuntimeError("first maker fails")
            return make_tile(*args)  # type: ignore[arg-type]

        dec._make_tile = fails_first  # type: ignore[method-assign]
        results: list[object] = []

        def read() -> None:
            try:
                results.append(dec.read(0, 0, 64, 48))
            except RuntimeError as exc:
                results.append(exc)

        threads = [threading.Thread(target=read) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(isinstance(r, RuntimeError) for r in results) == 1
        assert sum(isinstance(r, np.ndarray) and (r == want).all() for r in results) == 2


def test_renders_run_with_the_chosen_threads_and_restore_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed ``threads`` holds inside each render; by default the render asks
    ``core.threads.decode_threads`` (the cores other processes leave free); either way the
    caller's torch setting is back afterwards. Bad counts are refused."""
    import torch

    from cinr_codec.core import threads as T

    path = VECTORS / "ccinr-q6-64x48-compact.cinr"
    before = torch.get_num_threads()
    for threads, auto, want in ((1, 2, 1), (None, 1, 1), (None, 2, 2)):
        monkeypatch.setattr(T, "decode_threads", lambda auto=auto: auto)
        with SlideDecoder(path, threads=threads) as dec:
            seen: list[int] = []
            render = dec._render_tile

            def spy(*args: object, render: Any = render, seen: list[int] = seen) -> np.ndarray:
                seen.append(torch.get_num_threads())
                return render(*args)  # type: ignore[no-any-return]

            dec._render_tile = spy  # type: ignore[method-assign]
            dec.read(0, 0, 64, 48)
        assert seen == [want]
        assert torch.get_num_threads() == before
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="threads"):
            SlideDecoder(path, threads=bad)  # type: ignore[arg-type]


def test_a_reads_pool_decodes_the_latent_pieces_first_the_largest_first() -> None:
    """With two threads, a read of a tiled ccinr block (format 1.8) first hands its pool the pieces
    of latents its tiles will decode, the most latents first, then the tiles: every piece is
    decoded once, by the pool, and the pixels are those of a serial read."""
    from concurrent.futures import ThreadPoolExecutor

    path = VECTORS / "ccinr-q6-64x48-tiled.cinr"  # 2 x 2 first-grid tiles of 32 px: pieces 0-4
    with SlideDecoder(path, threads=1) as dec:
        dec.tile = 16
        want = dec.read(0, 0, 64, 48)
    with SlideDecoder(path, threads=2) as dec:
        dec.tile = 16  # 4 x 3 tiles in the 64 x 48 block
        tiles = [(0, 1, ti, tj) for ti in range(3) for tj in range(4)]
        with ThreadPoolExecutor(2) as pool:
            plan = dec._pieces(pool, tiles)
        model = dec._model(0)
        sizes = dict(model.pieces(model.height, model.width, x0=model.x0, y0=model.y0))
        assert sorted(plan) == [(0, k) for k in range(5)]
        assert [sizes[k] for _, k in plan] == sorted(sizes.values(), reverse=True)
        decoded: list[tuple[int, bool]] = []
        decode = model._tiled._decode

        def spy(k: int) -> None:
            if model._tiled._streams[k] is not None:
                decoded.append((k, threading.current_thread() is threading.main_thread()))
            decode(k)

        model._tiled._decode = spy
        got = dec.read(0, 0, 64, 48)
    assert (got == want).all()
    assert sorted(decoded) == [(k, False) for k in range(5)]


def test_free_cores_render_a_reads_tiles_in_parallel() -> None:
    """With two threads a read's missing tiles are rendered by a pool before the read assembles
    them (one torch thread each, every tile once), and the pixels are those of a serial read; when
    the tiles would not fit half the pixel cache, the read renders them itself."""
    import torch

    path = VECTORS / "ccinr-q6-64x48-compact.cinr"
    with SlideDecoder(path, threads=1) as dec:
        dec.tile = 16  # 4 x 3 tiles in the 64 x 48 block
        want = dec.read(0, 0, 64, 48)
    for cache, pooled in ((1 << 20, True), (16 * 16 * 3 * 4, False)):
        with SlideDecoder(path, threads=2, cache_bytes=cache) as dec:
            dec.tile = 16
            seen: list[tuple[bool, int, tuple[int, ...]]] = []
            render = dec._render_tile

            def spy(*args: int, render: Any = render, seen: list[Any] = seen) -> np.ndarray:
                main = threading.current_thread() is threading.main_thread()
                seen.append((main, torch.get_num_threads(), args))
                return render(*args)  # type: ignore[no-any-return]

            dec._render_tile = spy  # type: ignore[method-assign]
            got = dec.read(0, 0, 64, 48)
        assert (got == want).all()
        assert sorted(s[2][2:] for s in seen) == [(i, j) for i in range(3) for j in range(4)]
        if pooled:
            assert all(not main and n == 1 for main, n, _ in seen)
        else:
            assert all(main and n == 2 for main, n, _ in seen)
