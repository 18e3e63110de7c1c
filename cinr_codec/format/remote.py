"""``.cinr`` files behind fsspec URLs (``https://``, ``s3://``, ``gs://``, ``file://``).

``RemoteFile`` is a seekable binary file whose every read is one ranged fetch of exactly the
bytes asked for (no speculative read-ahead), so the container reader fetches the preamble, the
header, the index and then only the blocks a read touches; ``read_ranges`` fetches several
ranges at once (concurrent requests: the decoder asks for all the blocks of one read together,
so a read costs one round trip, not one per block). Each fetch is bounded in time (``timeout``) and
retried a bounded number of times on network errors; a server that ignores range requests, a
short response, a missing file or a timeout is an ``OSError``, which ``CinrReader`` reports as
``CinrIOError`` naming the URL. Over HTTP a response is also bounded in size: a server that
sends more than the range asked for is refused after at most 64 KiB more, before it is held
in memory (fsspec itself would read a ranged response whole).
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

#: Seconds one request (connect, headers and body) may take.
DEFAULT_TIMEOUT = 30.0
#: Further tries of a request that failed on the network (not of a refused one).
DEFAULT_RETRIES = 2

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_T = TypeVar("_T")


def is_url(source: object) -> bool:
    """True for a string with a URL scheme (``scheme://...``), which fsspec opens."""
    return isinstance(source, str) and bool(_URL.match(source))


def _transient(exc: BaseException) -> bool:
    """A network failure worth another try (timeouts, resets, refused connections, 5xx)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    name = type(exc).__name__
    if "Timeout" in name or name in ("ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError"):
        return True
    status = getattr(exc, "status", None)
    return isinstance(status, int) and status >= 500


def _root(exc: BaseException) -> BaseException:
    """What went wrong: fsspec's HTTP backend reports any failure to stat a URL (a refused
    connection, a 404, a timeout) as ``FileNotFoundError`` raised from the real cause."""
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def _range_length(value: str | None) -> int | None:
    """The bytes a ``Range: bytes=A-B`` request header asks for; None for any other request."""
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", (value or "").strip())
    return int(m.group(2)) - int(m.group(1)) + 1 if m else None


class _OversizedResponseError(ValueError):
    """A ranged HTTP response longer than the range (not retried: the server means it)."""


_bounded_response: type | None = None


def _bounded_response_class() -> type:
    """An aiohttp response class whose ``read`` of a ranged request stops past the range's
    length, so that a hostile or broken server cannot make a read hold more than it asked for."""
    global _bounded_response
    if _bounded_response is None:
        import aiohttp

        class BoundedResponse(aiohttp.ClientResponse):
            async def read(self) -> bytes:
                limit = _range_length(self.request_info.headers.get("Range"))
                if limit is not None and self._body is None:
                    parts, n = [], 0
                    while chunk := await self.content.read(1 << 16):
                        n += len(chunk)
                        if n > limit:
                            self.close()
                            raise _OversizedResponseError(
                                f"the server sent more than the {limit} bytes asked for"
                            )
                        parts.append(chunk)
                    self._body = b"".join(parts)
                return await super().read()

        _bounded_response = BoundedResponse
    return _bounded_response


def _describe(exc: BaseException, timeout: float) -> str:
    """One line for a failed fetch."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"HTTP {status} {getattr(exc, 'message', '') or ''}".strip()
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if "Timeout" in type(exc).__name__ or isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, _OversizedResponseError):
        return text
    if "support range requests" in text:
        return "the server ignores range requests (needed to read parts of a file)"
    return text[:200]


class RemoteFile(io.RawIOBase):
    """A read-only, seekable view of ``url`` through fsspec; see the module docstring.

    ``storage_options`` go to the fsspec filesystem (credentials, endpoints); ``timeout`` and
    ``retries`` bound each fetch. Opening fetches the file's size (an HTTP ``HEAD``).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.name = url
        self._timeout = float(timeout)
        self._retries = max(0, int(retries))
        self._pos = 0
        self.bytes_fetched = 0
        self.requests = 0
        try:
            import fsspec
        except ImportError:  # pragma: no cover - a dependency
            raise OSError("reading URLs needs the fsspec package") from None
        options = dict(storage_options or {})
        protocol = url.split("://", 1)[0].lower()
        if protocol in ("http", "https"):
            import aiohttp

            t = self._timeout
            client = dict(options.get("client_kwargs") or {})
            client.setdefault(
                "timeout", aiohttp.ClientTimeout(total=t, connect=t, sock_connect=t, sock_read=t)
            )
            client.setdefault("response_class", _bounded_response_class())
            options["client_kwargs"] = client
        elif protocol in ("s3", "s3a"):
            # botocore's own timeouts and retries (s3fs passes config_kwargs to it).
            t = self._timeout
            options.setdefault(
                "config_kwargs",
                {"connect_timeout": t, "read_timeout": t, "retries": {"max_attempts": self._retries + 1}},
            )
        try:
            self._fs, self._path = fsspec.core.url_to_fs(url, **options)
        except (ValueError, ImportError) as exc:  # unknown protocol, missing backend (s3fs, gcsfs)
            raise OSError(_describe(exc, self._timeout)) from None
        info = self._call(lambda: self._fs.info(self._path))
        size = info.get("size") if isinstance(info, Mapping) else None
        if info.get("type") == "directory":
            raise OSError("is a directory")
        if not isinstance(size, int) or size < 0:
            raise OSError("the server does not say the file's size (no Content-Length)")
        self.size = size
        # No cache and no read-ahead: each read is one ranged request of the bytes asked for.
        self._f = self._call(
            lambda: self._fs.open(self._path, "rb", block_size=1 << 16, cache_type="none", size=size)
        )

    def _call(self, fn: Callable[[], _T]) -> _T:
        last: BaseException | None = None
        for attempt in range(self._retries + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - fsspec backends raise many types
                last = _root(exc)
                if not _transient(last) or attempt == self._retries:
                    break
                time.sleep(min(2.0, 0.1 * 4**attempt))
        assert last is not None
        raise OSError(_describe(last, self._timeout)) from None

    # -- io.RawIOBase ------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        start = self._pos

        def fetch() -> bytes:
            self.requests += 1
            self._f.seek(start)
            return bytes(self._f.read(end - start))

        data = self._call(fetch)
        if len(data) != end - start:
            raise OSError(f"the server sent {len(data)} of the {end - start} bytes asked for")
        self.bytes_fetched += len(data)
        self._pos = end
        return data

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(start, end)`` range, fetched concurrently (fsspec ``cat_ranges``:
        one request per range, run together); the file position is unchanged. An ``OSError`` as
        for ``read`` when any fetch fails or comes back short."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        ranges = [(int(a), int(b)) for a, b in ranges]
        if any(not 0 <= a < b <= self.size for a, b in ranges):
            raise ValueError("ranges must be non-empty and inside the file")
        if not ranges:
            return []

        def fetch() -> list[bytes]:
            self.requests += len(ranges)
            parts = self._fs.cat_ranges(
                [self._path] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges], on_error="raise"
            )
            return [bytes(p) for p in parts]

        data = self._call(fetch)
        for (a, b), part in zip(ranges, data, strict=True):
            if len(part) != b - a:
                raise OSError(f"the server sent {len(part)} of the {b - a} bytes asked for")
        self.bytes_fetched += sum(len(p) for p in data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            f = getattr(self, "_f", None)
            if f is not None:
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - closing a remote handle must not raise
                    pass
        super().close()
