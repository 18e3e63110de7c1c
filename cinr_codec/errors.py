"""Exception family: every error the library raises on bad input derives from CinrError."""

from __future__ import annotations


class CinrError(Exception):
    """Base class of cinr's own errors (bad input, bad files)."""


class CinrInputError(CinrError, ValueError):
    """An input slide or image cannot be used (missing, unreadable, too small...)."""


class CinrRequestError(CinrError, ValueError):
    """A read the decoder refuses: a bad argument, a closed slide, or a request beyond the limits of
    one read (output pixels, blocks or source pixels to decode; ``formats/cinr-v1.md`` §12)."""


class CinrFormatError(CinrError):
    """A .cinr file is malformed."""


class CinrVersionError(CinrFormatError):
    """A .cinr file was written by a newer, incompatible format version."""


class CinrChecksumError(CinrFormatError):
    """A checksum in a .cinr file does not match its bytes."""


class CinrTruncatedError(CinrFormatError):
    """A .cinr file ends early (or is empty): its trailer or a section lies past the end."""


class CinrIOError(CinrError, OSError):
    """A .cinr file cannot be opened, read or written (missing file, permission, I/O error)."""


class CinrWorkerError(CinrError):
    """A worker process ended without finishing its block (killed, or out of memory)."""
