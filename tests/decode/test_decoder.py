"""``decode``: the slide decoder's public cache controls and its caches (the reads themselves are
tested through ``open_cinr`` in tests/test_api.py and against the format vectors)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

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
