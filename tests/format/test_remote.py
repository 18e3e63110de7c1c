"""``.cinr`` files read through URLs (``format/remote.py``): against a range-capable HTTP server on
loopback, only what a read needs is fetched; failures are ``CinrIOError`` naming the URL, in
bounded time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.loopback import serve
from cinr_codec.api import open_cinr
from cinr_codec.errors import CinrError, CinrIOError
from cinr_codec.format.container import CinrReader
from cinr_codec.format.remote import is_url

VECTORS = Path(__file__).resolve().parents[2] / "formats" / "vectors"


def _bytes_file(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


@pytest.fixture(scope="module")
def slide_bytes() -> bytes:
    from benchmarks.fuzz import grid_seed

    return grid_seed(VECTORS / "ngp-fast-64x40-int8.cinr")


def test_is_url() -> None:
    assert is_url("https://x/y.cinr") and is_url("s3://b/k.cinr") and is_url("file:///tmp/a.cinr")
    assert not is_url("slide.cinr") and not is_url("/tmp/a.cinr") and not is_url(Path("a://b"))


def test_a_region_over_http_is_the_local_one_and_fetches_only_its_blocks(
    slide_bytes: bytes, tmp_path: Path
) -> None:
    local = tmp_path / "s.cinr"
    local.write_bytes(slide_bytes)
    with serve({"/s.cinr": slide_bytes}) as server, open_cinr(server.url("/s.cinr")) as remote:
        opened = server.sent
        with CinrReader(local) as r:
            stored = [b for b in r.blocks() if b.stored_length]
            block0 = r.block_info(0)
        # Opening reads the preamble, header, index and footer: not one stored block.
        assert opened <= len(slide_bytes) - sum(b.stored_length for b in stored)
        got = np.asarray(remote.read_region((0, 0), 0, (64, 64)))
        fetched = server.sent - opened
        with open_cinr(local) as slide:
            want = np.asarray(slide.read_region((0, 0), 0, (64, 64)))
        assert np.array_equal(got, want)
        # Block 0 (a model) is the only block under the region: its bytes and nothing else.
        assert fetched == block0.stored_length
        assert remote.properties["openslide.mpp-x"] == "0.25"
        assert remote.associated_images["label"].size == (40, 30)
    assert server.sent < len(slide_bytes)


def test_a_read_fetches_its_blocks_together_and_nothing_more(
    slide_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read over several stored blocks asks for them in one ``read_ranges`` call (concurrent
    requests: one round trip), fetches exactly their bytes, and decodes what a local read does."""
    from cinr_codec.format.remote import RemoteFile

    calls: list[list[tuple[int, int]]] = []
    original = RemoteFile.read_ranges

    def spy(self: RemoteFile, ranges: list[tuple[int, int]]) -> list[bytes]:
        calls.append(list(ranges))
        return original(self, ranges)

    monkeypatch.setattr(RemoteFile, "read_ranges", spy)
    local = tmp_path / "s.cinr"
    local.write_bytes(slide_bytes)
    with open_cinr(local) as slide:
        w, h = slide.level_dimensions[1]
        want = np.asarray(slide.read_region((0, 0), 1, (w, h)))
    with CinrReader(local) as r:  # the first mip level's stored blocks
        mips = [b for b in r.blocks() if b.kind == "image"]
        assert CinrReader.prefetch(r, [b.block_id for b in mips]) == 0  # a local file: nothing to do
    with serve({"/s.cinr": slide_bytes}) as server, open_cinr(server.url("/s.cinr")) as remote:
        opened = server.sent
        got = np.asarray(remote.read_region((0, 0), 1, (w, h)))
        fetched = server.sent - opened
        assert np.array_equal(got, want)
        assert len(calls) == 1 and len(calls[0]) >= 1
        fetched_ranges = sum(b - a for a, b in calls[0])
        assert fetched == fetched_ranges
        assert fetched in {sum(b.stored_length for b in mips[:2]), sum(b.stored_length for b in mips)}
        # Read again: cached pixels, nothing fetched.
        again = server.sent
        assert np.array_equal(np.asarray(remote.read_region((0, 0), 1, (w, h))), want)
        assert server.sent == again and len(calls) == 1


def test_fetched_ahead_blocks_are_bounded_and_checked(
    slide_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``PREFETCH_BYTES`` are held; ids that are not stored blocks are skipped; a block
    fetched ahead is still CRC-checked when read (a damaged one is a ``CinrError``)."""
    from cinr_codec.format.container import reader as reader_mod

    with CinrReader(_bytes_file(slide_bytes)) as r:
        stored = [b for b in r.blocks() if b.stored_length]
        background = [b.block_id for b in r.blocks() if b.kind == "background"]
    bad = bytearray(slide_bytes)
    victim = stored[-1]
    bad[victim.offset + victim.stored_length // 2] ^= 0xFF  # the index CRC no longer matches
    files = {"/s.cinr": slide_bytes, "/bad.cinr": bytes(bad)}
    with serve(files) as server:
        monkeypatch.setattr(reader_mod, "PREFETCH_BYTES", stored[0].stored_length)
        with CinrReader(server.url("/s.cinr")) as r:
            before = server.sent
            got = r.prefetch([-1, 10**9, *background, *(b.block_id for b in stored)])
            assert 0 < got <= stored[0].stored_length and server.sent - before == got
        monkeypatch.setattr(reader_mod, "PREFETCH_BYTES", 64 << 20)
        with CinrReader(server.url("/bad.cinr")) as r:
            assert r.prefetch([victim.block_id]) == victim.stored_length
            with pytest.raises(CinrError, match="checksum"):
                r.read_image_block(victim.block_id)


def test_file_urls_and_cli_info(slide_bytes: bytes, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cinr_codec.cli import main

    local = tmp_path / "s.cinr"
    local.write_bytes(slide_bytes)
    with open_cinr(local.as_uri()) as slide:
        assert slide.dimensions == open_cinr(local).dimensions
    with serve({"/s.cinr": slide_bytes}) as server:
        res = CliRunner().invoke(main, ["info", "--json", server.url("/s.cinr")])
    assert res.exit_code == 0, res.output
    assert f'"bytes": {len(slide_bytes)}' in res.output


@pytest.mark.parametrize(
    ("mode", "name", "expect"),
    [
        ("ok", "/missing.cinr", "404"),
        ("norange", "/s.cinr", "range"),
        ("short", "/s.cinr", ""),
        ("nosize", "/s.cinr", "size"),
        ("hang", "/s.cinr", "no answer within 2 s"),
    ],
)
def test_bad_servers_give_one_cinr_io_error_naming_the_url(
    slide_bytes: bytes, mode: str, name: str, expect: str
) -> None:
    with serve({"/s.cinr": slide_bytes}, mode) as server:
        url = server.url(name)
        t = time.perf_counter()
        with pytest.raises(CinrIOError) as info:
            with open_cinr(url, remote={"timeout": 2, "retries": 1}) as slide:
                slide.read_region((0, 0), 0, (64, 64))
        assert time.perf_counter() - t < 15
    msg = str(info.value)
    assert msg.startswith(url) and "\n" not in msg
    assert expect in msg.lower()


def test_a_server_that_sends_more_than_asked_is_refused_early(slide_bytes: bytes) -> None:
    """A ranged response longer than its range is an error after a bounded read, not after the
    client has held the whole body (fsspec alone reads a 206 response whole)."""
    with serve({"/s.cinr": slide_bytes}, "flood") as server:
        url = server.url("/s.cinr")
        with pytest.raises(CinrIOError, match="more than the") as info:
            with open_cinr(url, remote={"timeout": 10, "retries": 1}) as slide:
                slide.read_region((0, 0), 0, (64, 64))
        assert "\n" not in str(info.value)
        # Socket buffers take a few MiB beyond what the client read; a whole body is 256 MiB.
        assert server.sent < 32 << 20


def test_unknown_protocols_are_cinr_errors() -> None:
    with pytest.raises(CinrError, match="nosuchproto://x/y.cinr"):
        open_cinr("nosuchproto://x/y.cinr")


def test_a_refused_connection_is_a_cinr_io_error() -> None:
    with serve({}) as server:
        url = server.url("/s.cinr")
    with pytest.raises(CinrIOError, match="(?i)cannot connect"):
        open_cinr(url, remote={"retries": 0})
