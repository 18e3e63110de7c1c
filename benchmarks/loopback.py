"""A range-capable HTTP server on loopback, for the remote-reading benchmark and tests.

``serve(files, mode=..., latency=...)`` serves ``files`` (path -> bytes) from ``http.server``
threads on 127.0.0.1 and counts what it sends (``sent``: body bytes, ``requests``: GETs). Modes:
``ok``; ``norange`` (ignores Range); ``short`` (sends half of what it announces, then closes);
``hang`` (never answers a GET); ``nosize`` (no Content-Length, no Content-Range); ``flood``
(answers a range with the right Content-Range but ``FLOOD`` bytes of body, counting what the
client accepted). ``latency`` seconds pass before each response (a network's round trip;
concurrent requests wait side by side).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: The body a ``flood`` server sends for any range.
FLOOD = 256 << 20


class RangeServer(ThreadingHTTPServer):
    """The server ``serve`` runs; its counters and settings are attributes."""

    daemon_threads = True
    files: dict[str, bytes]
    mode = "ok"
    latency = 0.0
    sent = 0
    requests = 0
    lock: threading.Lock
    release: threading.Event

    def url(self, name: str) -> str:
        """The URL of ``name`` (a path starting with ``/``)."""
        return f"http://127.0.0.1:{self.server_address[1]}{name}"

    def count(self, sent: int, requests: int = 0) -> None:
        """Add to the counters (handler threads run at once)."""
        with self.lock:
            self.sent += sent
            self.requests += requests


class _Handler(BaseHTTPRequestHandler):
    server: RangeServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args: object) -> None:
        pass

    def _file(self) -> bytes | None:
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404, "no such file")
        return data

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        time.sleep(self.server.latency)
        data = self._file()
        if data is None:
            return
        self.send_response(200)
        if self.server.mode != "nosize":
            self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        time.sleep(self.server.latency)
        data = self._file()
        if data is None:
            return
        mode = self.server.mode
        if mode == "hang":
            self.server.release.wait(30)
            self.close_connection = True
            return
        rng = self.headers.get("Range")
        status, body, start, end = 200, data, 0, len(data) - 1
        if rng and mode != "norange":
            a, _, b = rng.removeprefix("bytes=").partition("-")
            start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
            status, body = 206, data[start : end + 1]
        self.send_response(status)
        if mode == "nosize":  # a body delimited by closing the connection, sizes unsaid
            self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
            return
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        if mode == "flood" and status == 206:
            self.send_header("Content-Length", str(FLOOD))
            self.end_headers()
            self.close_connection = True
            chunk = bytes(1 << 20)
            with contextlib.suppress(OSError):  # the client hung up
                for _ in range(FLOOD // len(chunk)):
                    self.wfile.write(chunk)
                    self.server.count(len(chunk))
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "short":
            body = body[: len(body) // 2]
            self.close_connection = True
        self.server.count(len(body), 1)  # before it is sent: a client that has it sees it counted
        self.wfile.write(body)


@contextlib.contextmanager
def serve(files: dict[str, bytes], mode: str = "ok", latency: float = 0.0) -> Iterator[RangeServer]:
    """A ``RangeServer`` of ``files`` on a free loopback port, shut down on exit."""
    server = RangeServer(("127.0.0.1", 0), _Handler)
    server.files, server.mode, server.latency = files, mode, latency
    server.lock, server.release = threading.Lock(), threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
