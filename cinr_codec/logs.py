"""Logging of the libraries cinr reads through: their warnings are debug records, not stderr lines.

pyvips forwards every libvips/libtiff/libpng warning (GLib domain ``VIPS``) to the Python logger
``pyvips`` at WARNING level; a hostile TIFF makes dozens of them, and Python's last-resort
handler (or ``logging.basicConfig``) would print each on stderr. `quiet_library_warnings`
demotes them to DEBUG records of the same logger: ``cinr --debug`` (or any logging
configuration that enables DEBUG for ``pyvips``) still shows them. Errors stay errors: what
matters reaches the user as the exception cinr raises. The command line installs it; the
library leaves other libraries' loggers to the application (``quiet_library_warnings()`` is
public for applications that want the same).

OpenSlide (the ``openslide-bin`` build) links its own private copy of GLib, so its few
warnings cannot be routed here; OpenSlide 4 reports decoding problems as errors
(``OpenSlideError``), which cinr turns into one-line messages.
"""

from __future__ import annotations

import logging

#: Loggers whose WARNING records are demoted to DEBUG.
LIBRARY_LOGGERS = ("pyvips",)


class _DemoteWarnings(logging.Filter):
    """Turn WARNING records into DEBUG ones, dropped unless the logger is enabled for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = _DemoteWarnings()


def quiet_library_warnings() -> None:
    """Install the demotion on the library loggers (idempotent)."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
