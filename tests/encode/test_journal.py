"""The encode journal: records survive, torn tails are cut, other settings are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinr_codec.encode.journal import Journal, journal_path
from cinr_codec.errors import CinrInputError


def test_append_and_resume(tmp_path: Path) -> None:
    p = journal_path(tmp_path / "out.cinr")
    assert p.name == "out.cinr.journal"
    j = Journal.create(p, {"a": 1})
    j.append({"block_id": 3, "kind": "model"}, [b"payload", b"", b"mip"])
    j.append({"block_id": 1, "kind": "background"}, [])
    j.close()
    j = Journal.resume(p, {"a": 1})
    assert j.done == {1, 3}
    rec = j.read(3)
    assert rec.meta["kind"] == "model" and rec.parts == [b"payload", b"", b"mip"]
    assert [r.meta["block_id"] for r in j.records()] == [1, 3]
    j.delete()
    assert not p.exists()


def test_torn_record_is_cut_off(tmp_path: Path) -> None:
    p = tmp_path / "x.journal"
    j = Journal.create(p, {"a": 1})
    j.append({"block_id": 0}, [b"x" * 100])
    j.append({"block_id": 1}, [b"y" * 100])
    j.close()
    size = p.stat().st_size
    for cut in (1, 50, 110):  # a kill -9 or power loss mid-write
        data = p.read_bytes()[: size - cut]
        q = tmp_path / f"cut{cut}.journal"
        q.write_bytes(data)
        j = Journal.resume(q, {"a": 1})
        assert j.done == {0}
        j.append({"block_id": 1}, [b"z"])  # appends after the cut
        j.close()
        assert Journal.resume(q, {"a": 1}).done == {0, 1}
    # A flipped byte in a record body: that record and the rest are dropped.
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    q = tmp_path / "flip.journal"
    q.write_bytes(bytes(data))
    assert Journal.resume(q, {"a": 1}).done == {0}


def test_refuses_other_settings_and_existing_journal(tmp_path: Path) -> None:
    p = tmp_path / "x.journal"
    Journal.create(p, {"steps": 10}).close()
    with pytest.raises(CinrInputError, match="other settings.*steps"):
        Journal.resume(p, {"steps": 20})
    with pytest.raises(CinrInputError, match="--resume"):
        Journal.create(p, {"steps": 10})
    p.write_bytes(b"garbage")
    with pytest.raises(CinrInputError, match="not a cinr journal"):
        Journal.resume(p, {"steps": 10})
