"""``s3://`` URLs through s3fs, against moto's S3-compatible server on loopback: a region reads as
it does from a local file, fetching only its blocks; a missing key or bucket is one
``CinrIOError`` naming the URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cinr_codec.api import open_cinr
from cinr_codec.errors import CinrIOError
from cinr_codec.format.container import CinrReader

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

VECTORS = Path(__file__).resolve().parents[2] / "formats" / "vectors"


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """A moto S3 server on a free loopback port, bucket ``slides`` holding ``s.cinr``."""
    import boto3

    from benchmarks.fuzz import grid_seed

    data = grid_seed(VECTORS / "ngp-fast-64x40-int8.cinr")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_address[1]}"
        creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
        client.create_bucket(Bucket="slides")
        client.put_object(Bucket="slides", Key="s.cinr", Body=data)
        options = {"endpoint_url": endpoint, "key": "test", "secret": "test"}
        yield {"data": data, "remote": {"storage_options": options, "timeout": 10, "retries": 0}}
    finally:
        server.stop()


def test_a_region_over_s3_is_the_local_one(s3: dict[str, Any], tmp_path: Path) -> None:
    local = tmp_path / "s.cinr"
    local.write_bytes(s3["data"])
    with open_cinr(local) as slide:
        want = [np.asarray(slide.read_region((0, 0), k, slide.level_dimensions[k])) for k in (0, 1)]
    with open_cinr("s3://slides/s.cinr", remote=s3["remote"]) as remote:
        got = [np.asarray(remote.read_region((0, 0), k, remote.level_dimensions[k])) for k in (0, 1)]
        assert remote.properties["openslide.mpp-x"] == "0.25"
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)


def test_only_the_blocks_are_fetched_over_s3(s3: dict[str, Any]) -> None:
    with CinrReader("s3://slides/s.cinr", remote=s3["remote"]) as r:
        remote_file = r._remote
        assert remote_file is not None
        opened = remote_file.bytes_fetched
        stored = [b for b in r.blocks() if b.stored_length]
        assert opened <= len(s3["data"]) - sum(b.stored_length for b in stored)
        r.read_image_block(stored[-1].block_id)
        assert remote_file.bytes_fetched - opened == stored[-1].stored_length


@pytest.mark.parametrize("url", ["s3://slides/missing.cinr", "s3://no-such-bucket/s.cinr"])
def test_missing_objects_are_one_cinr_io_error(s3: dict[str, Any], url: str) -> None:
    with pytest.raises(CinrIOError, match=url.replace("/", "/")) as info:
        open_cinr(url, remote=s3["remote"])
    assert "\n" not in str(info.value)
