"""``python -m cinr_codec`` runs the ``cinr`` command line."""

from .cli import main

main()
