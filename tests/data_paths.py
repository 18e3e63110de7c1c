"""Where the tests' real images are: the bundled sample, and the real slides and images of
``../shared/data`` beside the checkout (absent on a fresh clone: tests that need them skip)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The checkout's root.
ROOT = Path(__file__).resolve().parents[1]
#: The shared real slides and images (``../shared/data``).
SHARED = ROOT.parent / "shared" / "data"
#: The bundled sample slide (an Aperio SVS, CC0).
SAMPLE = ROOT / "cinr_codec" / "data" / "CMU-1-Small-Region.svs"


def shared(name: str, why: str) -> Path:
    """``SHARED / name``, or skip the test (saying why it needs that file) when it is absent."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{name} ({why}); see README")
    return path
