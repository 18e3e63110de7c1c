"""The package's import graph: imports point one way (decode never reaches training code), and
reading a header costs neither torch nor openslide."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cinr_codec"
VECTOR = sorted((ROOT / "formats" / "vectors").glob("*.cinr"))[0]


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of the modules a file imports (function-level imports too, unless top_level_only)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ROOT).parts[:-1])
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_import_cinr_codec_loads_neither_torch_nor_openslide() -> None:
    out = _run(
        "import sys, cinr_codec\n"
        "print(sorted(m for m in ('torch', 'openslide', 'pyvips') if m in sys.modules))\n"
        "cinr_codec.CinrError, cinr_codec.__version__\n"
        "print(sorted(m for m in ('torch', 'openslide') if m in sys.modules))\n"
    )
    assert out.split("\n")[:2] == ["[]", "[]"]


def test_public_names_resolve() -> None:
    import cinr_codec

    for name in cinr_codec.__all__:
        assert getattr(cinr_codec, name) is not None, name
    with pytest.raises(AttributeError):
        cinr_codec.no_such_name  # noqa: B018


def test_cinr_info_and_help_do_not_import_torch() -> None:
    out = _run(
        "import sys\n"
        "from cinr_codec.cli import main\n"
        f"main(['info', {str(VECTOR)!r}, '--json'], standalone_mode=False)\n"
        "print('MODULES', 'torch' in sys.modules, 'openslide' in sys.modules)\n"
        "try:\n"
        "    main(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('AFTER HELP', 'torch' in sys.modules)\n"
    )
    lines = out.strip().split("\n")
    assert '"model"' in lines[0]
    assert "MODULES False False" in lines and lines[-1] == "AFTER HELP False"


def test_decoding_never_imports_training_code() -> None:
    """At run time: decoding a file (single block and slide) loads nothing from cinr_codec.encode."""
    out = _run(
        "import sys\n"
        "from cinr_codec import decode_image, open_cinr\n"
        f"decode_image({str(VECTOR)!r})\n"
        f"s = open_cinr({str(VECTOR)!r}); s.read_region((0, 0), 0, (32, 32)); s.close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('cinr_codec.encode')))\n"
    )
    assert out.strip() == "[]"


def test_decode_modules_import_no_training_code() -> None:
    """In the source: no module of decode/, format/ or core/ names cinr_codec.encode, even lazily."""
    for sub in ("decode", "format", "core"):
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            bad = sorted(m for m in _imports(path) if m.startswith("cinr_codec.encode"))
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_header_layers_import_no_torch_at_module_level() -> None:
    for sub in ("format", "decode", "cli"):
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            bad = sorted(
                m for m in _imports(path, top_level_only=True) if m.split(".")[0] in ("torch", "openslide")
            )
            assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level"
    for path in (
        PACKAGE / "coding" / "registry.py",
        PACKAGE / "coding" / "hashgrid.py",
        PACKAGE / "core" / "config.py",
    ):
        bad = sorted(m for m in _imports(path, top_level_only=True) if m.split(".")[0] == "torch")
        assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level"


def test_old_import_paths_still_work_with_a_deprecation_warning() -> None:
    out = _run(
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from cinr_codec.decoding import tune_allocator, SlideDecoder\n"
        "    from cinr_codec.encoding import encode_slide, QUANT_SETTINGS\n"
        "print(sum(issubclass(x.category, DeprecationWarning) for x in w), callable(tune_allocator))\n"
    )
    assert out.strip() == "2 True"
