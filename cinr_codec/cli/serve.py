"""``cinr serve``: a viewer and DeepZoom tile server for slides (``.cinr`` and what OpenSlide opens)."""

from __future__ import annotations

import click

from .common import handle_errors


@click.command("serve")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (loopback: this machine only).",
)
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one)."
)
@click.option(
    "--compare",
    default=None,
    help="The original of the one .cinr slide given: shown beside it, both views moving together. "
    "In a folder, X.cinr is paired with a source slide named X.* without this option.",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1, 64),
    help="Tiles decoded at once [default: cores, at most 4].",
)
@click.option("--tile-format", type=click.Choice(["jpeg", "png"]), default="jpeg", show_default=True)
@click.option(
    "--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality of tiles."
)
@handle_errors
def serve_cmd(
    sources: tuple[str, ...],
    host: str,
    port: int,
    compare: str | None,
    workers: int | None,
    tile_format: str,
    quality: int,
) -> None:
    """Serve SOURCES (slide files, folders of them, or .cinr URLs) to a browser: a viewer page and
    DeepZoom tiles. Only the slides named here are served."""
    import logging

    from ..errors import CinrInputError
    from ..serve import create_app, find_slides, make_server

    slides, pairs = find_slides(list(sources), compare)
    if not slides:
        raise CinrInputError("no slides found in " + ", ".join(sources))
    # One line per slide opened (cinr_codec.serve at INFO); werkzeug's line per request only with --debug.
    logging.getLogger("cinr_codec.serve").setLevel(logging.INFO)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(slides, workers=workers, tile_format=tile_format, quality=quality, compare=pairs)
    try:
        server = make_server(host, port, app)
    except OSError as exc:
        raise CinrInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    where = f"http://{host if ':' not in host else f'[{host}]'}:{server.server_port}/"
    scope = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else "other machines too"
    click.echo(f"cinr serve: {len(slides)} slide(s) at {where} ({scope}); Ctrl-C stops", err=True)
    for name, src in sorted(slides.items()):
        click.echo(f"  {name}: {src}" + (f"  (beside {pairs[name]})" if name in pairs else ""), err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
