"""The tile server behind ``cinr serve``: a Flask app over named slides (``.cinr`` files, local or
behind URLs, and anything OpenSlide opens, for comparison with a source).

Routes (``name`` is a served slide's name; nothing else is reachable):

- ``/``: the viewer page (OpenSeadragon, vendored in ``static/openseadragon``);
- ``/api/slides``: JSON list (name, kind, dimensions, mpp, DeepZoom descriptor URL);
- ``/api/slides/<name>``: that slide's properties and associated image names;
- ``/slides/<name>.dzi`` and ``/slides/<name>_files/<level>/<col>_<row>.<jpeg|png>``: DeepZoom
  (``openslide.deepzoom.DeepZoomGenerator`` over ``CinrSlide`` or ``OpenSlide``);
- ``/slides/<name>/associated/<image>.png``;
- ``/slides/<name>_diff.dzi`` and ``/slides/<name>_diff_files/...``: for a ``.cinr`` served beside
  its original of the same size, the difference of their tiles (white: equal; each channel
  darker by 4x the absolute difference).

Tiles are decoded under a bounded semaphore (``workers`` at a time), carry ``Cache-Control`` and
an ``ETag``, and each slide is opened once, on first use, so the decoder's caches serve every
request. Unknown slides, levels, tiles or images are 404 with a one-line text, never a traceback.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: Tile formats served, and their MIME types.
FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}
#: Tiles may be cached by browsers this long (seconds): a slide file does not change under a name.
MAX_AGE = 3600


@dataclass
class ServedSlide:
    """A slide under its name: where it is, and its open slide and DeepZoom generator (made on first use)."""

    name: str
    source: str
    kind: str  # "cinr" or "openslide"
    tag: str  # what the ETags of its tiles start with: changes when the file does
    lock: threading.Lock = field(default_factory=threading.Lock)
    slide: Any = None
    dz: Any = None


def _tag(source: str) -> str:
    try:
        st = os.stat(source)
        ident = f"{os.path.realpath(source)}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        ident = source  # a URL
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


def served_slides(sources: Mapping[str, str]) -> dict[str, ServedSlide]:
    """name -> ``ServedSlide`` for name -> path or URL (``.cinr`` by suffix, else OpenSlide)."""
    return {
        name: ServedSlide(
            name, src, "cinr" if src.lower().split("?")[0].endswith(".cinr") else "openslide", _tag(src)
        )
        for name, src in sources.items()
    }


def create_app(
    sources: Mapping[str, str],
    *,
    tile_size: int = 254,
    overlap: int = 1,
    tile_format: str = "jpeg",
    quality: int = 90,
    workers: int | None = None,
    compare: Mapping[str, str] | None = None,
) -> Any:
    """The Flask app serving ``sources`` (name -> path or URL); ``compare`` pairs a name with the
    name of the slide the viewer shows beside it (its original)."""
    from flask import Flask, Response, abort, jsonify, request, send_from_directory

    if tile_format not in FORMATS:
        raise ValueError(f"tile format must be one of {', '.join(FORMATS)}")
    slides = served_slides(sources)
    pairs = dict(compare or {})
    for a, b in pairs.items():
        if a not in slides or b not in slides:
            raise ValueError(f"cannot compare {a!r} with {b!r}: both must be served")
    decode_slots = threading.BoundedSemaphore(max(1, workers or min(4, os.cpu_count() or 1)))
    app = Flask(__name__, static_folder=None)

    def opened(name: str) -> ServedSlide:
        s = slides.get(name)
        if s is None:
            abort(404, f"no slide named {name!r}")
        with s.lock:
            if s.dz is None:
                from openslide.deepzoom import DeepZoomGenerator

                try:
                    if s.kind == "cinr":
                        from ..api import open_cinr

                        s.slide = open_cinr(s.source)
                    else:
                        import openslide

                        s.slide = openslide.open_slide(s.source)
                except Exception as exc:  # noqa: BLE001 - a slide that cannot open is a 404, logged
                    log.warning("cannot open %s: %s", s.source, exc)
                    abort(404, f"slide {name!r} cannot be opened")
                s.dz = DeepZoomGenerator(s.slide, tile_size=tile_size, overlap=overlap, limit_bounds=False)
                log.info("opened %s (%s, %d x %d)", s.source, s.kind, *s.slide.dimensions)
        return s

    def summary(s: ServedSlide) -> dict[str, Any]:
        props = s.slide.properties
        mpp = [_float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))]
        return {
            "name": s.name,
            "kind": s.kind,
            "dimensions": list(s.slide.dimensions),
            "mpp": mpp,
            "objective_power": _float(props.get("openslide.objective-power")),
            "dzi": f"/slides/{s.name}.dzi",
            "compare": pairs.get(s.name),
            "diff": f"/slides/{s.name}_diff.dzi" if s.name in pairs else None,
        }

    @app.errorhandler(404)
    @app.errorhandler(405)
    def not_found(err: Any) -> Any:
        return Response(f"{getattr(err, 'description', 'not found')}\n", err.code, mimetype="text/plain")

    @app.errorhandler(Exception)
    def internal(err: Exception) -> Any:
        from werkzeug.exceptions import HTTPException

        from ..errors import CinrError

        if isinstance(err, HTTPException):
            return Response(f"{err.description}\n", err.code or 500, mimetype="text/plain")
        if isinstance(err, CinrError):  # a damaged block: this tile cannot be had, the others can
            log.warning("%s: %s", request.path, err)
            return Response(
                "this tile cannot be decoded (see the server's log)\n", 404, mimetype="text/plain"
            )
        log.exception("request %s failed", request.path)
        return Response("internal error (logged by the server)\n", 500, mimetype="text/plain")

    @app.get("/")
    def index() -> Any:
        return send_from_directory(STATIC, "index.html", max_age=0)

    @app.get("/static/<path:filename>")
    def static_file(filename: str) -> Any:
        return send_from_directory(STATIC, filename, max_age=MAX_AGE)  # safe_join: 404 outside

    @app.get("/api/slides")
    def api_slides() -> Any:
        from werkzeug.exceptions import NotFound

        out = []
        for n in sorted(slides):
            try:
                out.append(summary(opened(n)))
            except NotFound:  # one slide that cannot open does not hide the others
                out.append({"name": n, "error": "cannot be opened"})
        return jsonify(out)

    @app.get("/api/slides/<name>")
    def api_slide(name: str) -> Any:
        s = opened(name)
        return jsonify(
            {
                **summary(s),
                "properties": dict(s.slide.properties),
                "associated_images": sorted(s.slide.associated_images),
                "levels": s.dz.level_count,
            }
        )

    @app.get("/slides/<name>.dzi")
    def dzi(name: str) -> Any:
        s = opened(name)
        return Response(s.dz.get_dzi(tile_format), mimetype="application/xml")

    def pair(name: str) -> tuple[ServedSlide, ServedSlide]:
        if name not in pairs:
            abort(404, f"slide {name!r} is not served beside an original")
        a, b = opened(name), opened(pairs[name])
        if a.slide.dimensions != b.slide.dimensions:
            abort(404, f"slide {name!r} and its original differ in size: no difference view")
        return a, b

    @app.get("/slides/<name>_diff.dzi")
    def diff_dzi(name: str) -> Any:
        a, _ = pair(name)
        return Response(a.dz.get_dzi(tile_format), mimetype="application/xml")

    def unchanged(etag: str) -> bool:
        """The client already has this tile (its If-None-Match names the ETag)."""
        return etag in request.headers.get("If-None-Match", "")

    def checked(s: ServedSlide, level: int, col: int, row: int, fmt: str) -> None:
        if fmt not in FORMATS:
            abort(404, f"no tile format {fmt!r}")
        if not 0 <= level < s.dz.level_count:
            abort(404, f"no level {level}")
        cols, rows = s.dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            abort(404, f"no tile {col}_{row} at level {level}")

    @app.get("/slides/<name>_diff_files/<int:level>/<int:col>_<int:row>.<fmt>")
    def diff_tile(name: str, level: int, col: int, row: int, fmt: str) -> Any:
        import numpy as np
        from PIL import Image

        a, b = pair(name)
        checked(a, level, col, row, fmt)
        etag = f'"{a.tag}-{b.tag}-diff-{tile_size}-{overlap}-{level}-{col}-{row}-{fmt}-{quality}"'
        if unchanged(etag):
            return Response(status=304, headers={"ETag": etag, "Cache-Control": f"max-age={MAX_AGE}"})
        with decode_slots:
            ta = np.asarray(a.dz.get_tile(level, (col, row)).convert("RGB"), dtype=np.int16)
            tb = np.asarray(b.dz.get_tile(level, (col, row)).convert("RGB"), dtype=np.int16)
        d = np.clip(255 - 4 * np.abs(ta - tb), 0, 255).astype(np.uint8)
        return _image_response(Image.fromarray(d), fmt, quality, etag)

    @app.get("/slides/<name>_files/<int:level>/<int:col>_<int:row>.<fmt>")
    def tile(name: str, level: int, col: int, row: int, fmt: str) -> Any:
        s = opened(name)
        checked(s, level, col, row, fmt)
        etag = f'"{s.tag}-{tile_size}-{overlap}-{level}-{col}-{row}-{fmt}-{quality}"'
        if unchanged(etag):
            return Response(status=304, headers={"ETag": etag, "Cache-Control": f"max-age={MAX_AGE}"})
        with decode_slots:
            img = s.dz.get_tile(level, (col, row))
        return _image_response(img, fmt, quality, etag)

    @app.get("/slides/<name>/associated/<image>.png")
    def associated(name: str, image: str) -> Any:
        s = opened(name)
        if image not in s.slide.associated_images:
            abort(404, f"slide {name!r} has no associated image {image!r}")
        buf = io.BytesIO()
        s.slide.associated_images[image].convert("RGB").save(buf, "PNG")
        return Response(buf.getvalue(), mimetype="image/png", headers={"Cache-Control": f"max-age={MAX_AGE}"})

    app.config["CINR_SLIDES"] = slides
    return app


#: Connections served at once by ``make_server``'s server (more wait in the listen queue), and
#: the seconds an idle keep-alive connection keeps its slot.
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 30.0


def make_server(host: str, port: int, app: Any, max_connections: int = MAX_CONNECTIONS) -> Any:
    """A threaded WSGI server for ``app`` with a thread per connection, at most ``max_connections``
    of them (a burst of clients waits in the listen queue instead of spawning threads without
    bound); a connection idle for ``IDLE_TIMEOUT`` seconds is closed."""
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        timeout = IDLE_TIMEOUT  # socketserver sets it on the connection

    class Server(ThreadedWSGIServer):
        def __init__(self) -> None:
            super().__init__(host, port, app, handler=Handler)
            self.slots = threading.BoundedSemaphore(max(1, max_connections))

        def process_request(self, request: Any, client_address: Any) -> None:
            self.slots.acquire()
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    return Server()


def _image_response(img: Any, fmt: str, quality: int, etag: str) -> Any:
    """A tile as JPEG or PNG bytes with its caching headers."""
    from flask import Response

    buf = io.BytesIO()
    if fmt == "jpeg":
        img.convert("RGB").save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG")
    return Response(
        buf.getvalue(), mimetype=FORMATS[fmt], headers={"ETag": etag, "Cache-Control": f"max-age={MAX_AGE}"}
    )


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


def close_slides(app: Any) -> None:
    """Close every slide the app opened."""
    for s in app.config.get("CINR_SLIDES", {}).values():
        with s.lock:
            if s.slide is not None:
                s.slide.close()
            s.slide = s.dz = None
