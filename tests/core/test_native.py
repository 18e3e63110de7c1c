"""core.native: what a compiled kernel's cache key covers, and how its return codes become errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinr_codec.core import native

PACKAGE = Path(native.__file__).resolve().parents[1]


def test_a_kernel_depends_on_the_package_headers_it_includes() -> None:
    names = [p.relative_to(PACKAGE).as_posix() for p in native._sources(PACKAGE / "encode/train/_rate.c")]
    assert names == ["encode/train/_rate.c", "encode/train/_tiles.h", "core/_kernels.h"]
    assert [p.name for p in native._sources(PACKAGE / "core/_native.c")] == ["_native.c"]


@pytest.mark.skipif(native._compiler() is None, reason="needs a C compiler")
def test_changing_an_included_header_builds_a_new_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CINR_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "k.h").write_text("#define K 1\n")
    src = tmp_path / "k.c"
    src.write_text('#include "inc/k.h"\nint k(void) { return K; }\n')
    cc = native._compiler()
    assert cc is not None
    first = native._build(cc, src)
    assert native._build(cc, src) == first  # cached
    (tmp_path / "inc" / "k.h").write_text("#define K 2\n")
    second = native._build(cc, src)
    assert second != first and second.is_file() and first.is_file()


def test_kernel_return_codes_become_errors_naming_the_work() -> None:
    native.raise_for(0, "anything")  # fine: nothing raised
    with pytest.raises(MemoryError, match="^training upsampling of a 9x7 block: out of memory$"):
        native.raise_for(3, "training upsampling of a 9x7 block")
    with pytest.raises(ValueError, match=r"^the training rate: the kernel refused its arguments \(code 2\)$"):
        native.raise_for(2, "the training rate")
