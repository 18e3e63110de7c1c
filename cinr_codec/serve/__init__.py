"""``cinr serve``: slides to a browser (``app.create_app``), and which files a command line names
(``find_slides``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CinrInputError
from ..format.remote import is_url
from .app import close_slides, create_app, make_server

#: File suffixes a folder is searched for: .cinr, and the formats OpenSlide reads.
SLIDE_SUFFIXES = (
    ".cinr",
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _name(src: str, taken: set[str]) -> str:
    base = _UNSAFE.sub("_", src.rstrip("/").rsplit("/", 1)[-1]) or "slide"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def find_slides(sources: list[str], compare: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> path or URL, name of a .cinr -> name of its original) for command-line arguments:
    files, folders (their slide files, not below; symbolic links leading out of the folder are
    skipped) and URLs. ``compare`` is the original of the single source given."""
    found: list[str] = []
    for src in sources:
        if is_url(src):
            found.append(src)
            continue
        p = Path(src)
        if p.is_dir():
            root = p.resolve()
            for f in sorted(p.iterdir()):
                real = f.resolve()
                if f.is_file() and f.suffix.lower() in SLIDE_SUFFIXES and real.is_relative_to(root):
                    found.append(str(f))
        elif p.is_file():
            found.append(str(p))
        else:
            raise CinrInputError(f"{src}: no such file or folder")
    if compare is not None:
        if len(sources) != 1 or len(found) != 1 or not found[0].lower().endswith(".cinr"):
            raise CinrInputError("--compare needs exactly one .cinr slide to compare")
        if not is_url(compare) and not os.path.isfile(compare):
            raise CinrInputError(f"{compare}: no such file")
        found.append(compare)
    taken: set[str] = set()
    slides = {_name(src, taken): src for src in found}
    by_src = {src: name for name, src in slides.items()}
    pairs: dict[str, str] = {}
    if compare is not None:
        pairs[by_src[found[0]]] = by_src[compare]
    else:  # in one folder, X.cinr beside X.svs (or any X.* source)
        stems = {
            (os.path.dirname(s), Path(s).stem): n
            for n, s in slides.items()
            if not s.lower().endswith(".cinr")
        }
        for name, src in slides.items():
            if src.lower().endswith(".cinr") and not is_url(src):
                other = stems.get((os.path.dirname(src), Path(src).stem))
                if other is not None:
                    pairs[name] = other
    return slides, pairs


__all__ = ["SLIDE_SUFFIXES", "close_slides", "create_app", "find_slides", "make_server"]
