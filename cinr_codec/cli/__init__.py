"""The ``cinr`` command line: one module per command. Bad input: one line on stderr, exit status 2;
internal errors: 1. Importing this package imports neither torch nor openslide."""

from __future__ import annotations

import logging

import click

from ..logs import quiet_library_warnings
from .common import NullSink, handle_errors
from .decode import decode_cmd
from .encode import encode_cmd
from .fit import fit_cmd
from .info import info_cmd
from .serve import serve_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.version_option(package_name="cinr-codec")
def main(debug: bool) -> None:
    """cinr: a neural codec for pathology whole-slide images."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # pyvips' warnings (dozens for a hostile TIFF) become debug records: shown with --debug only.
    quiet_library_warnings()


for _command in (fit_cmd, encode_cmd, info_cmd, decode_cmd, serve_cmd):
    main.add_command(_command)

__all__ = ["NullSink", "handle_errors", "main"]

if __name__ == "__main__":  # pragma: no cover
    main()
