"""One HTTP/1.1 connection of the fleet's client (``http.py``): an asyncio protocol whose
answer httptools parses (status, headers, a body framed by Content-Length, chunked or the
close; 1xx answers skipped; reading paused above ``HIGH_WATER`` unread bytes), the
``Response`` a caller reads it through, and the errors an exchange ends in."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httptools

if TYPE_CHECKING:
    from babeldesk.fleet.http import HTTPClient

HIGH_WATER = 256 * 1024  # bytes of unread body at which the connection stops reading
LOW_WATER = 64 * 1024  # ... and resumes below this


class HTTPError(Exception):
    """One exchange failed; the message says how."""


class ConnectError(HTTPError):
    """No connection: refused, unreachable, unknown name."""


class Timeout(HTTPError):
    pass


class ConnectTimeout(Timeout):
    pass


class ReadTimeout(Timeout):
    pass


class PoolTimeout(Timeout):
    """Every connection the pool may open was busy for the whole connect timeout."""


class ProtocolError(HTTPError):
    """The answer was malformed, or the connection closed before it was whole."""


class ClosedBeforeAnswer(ProtocolError):
    """The connection closed before a byte of the answer: the request was not taken."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a base url points: ``http://host:port[/prefix]``."""

    scheme: str
    host: str  # to connect to (no brackets around an IPv6 literal)
    port: int
    prefix: str  # path before every request path, "" or "/something" (no trailing /)
    host_header: str  # "host:port", or "host" on the scheme's default port

    @classmethod
    def parse(cls, base: str) -> Origin:
        u = urlsplit(base)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) base url: {base!r}")
        default = 443 if u.scheme == "https" else 80
        port = u.port or default
        shown = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        return cls(u.scheme, u.hostname, port, u.path.rstrip("/"),
                   shown if port == default else f"{shown}:{port}")


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the state of the answer being read on it."""

    def __init__(self, client: HTTPClient, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False  # the transport is gone (either side closed it)
        self.counted = True  # in ``client._open``; cleared exactly once by ``client._drop``
        self.idle = False  # in ``client._idle``
        self.active = False  # an exchange is under way
        self._new_answer()

    def _new_answer(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.framed = False  # Content-Length or chunked: the body's end is known
        self.complete = False
        self.extra = False  # bytes came after the answer was complete
        self.interim = False  # reading a 1xx (informational) answer; the real one follows
        self.keep_alive = False
        self.got_bytes = False
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0  # bytes in ``body``
        self.paused = False
        self.error: HTTPError | None = None
        self.waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:  # bytes nobody asked for: unusable from now
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed answer from {self.origin.host_header}: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.active and not self.complete:
            if self.headers_done and not self.framed:  # read-until-close: the close ends it
                self.complete = True
            elif not self.got_bytes:
                self._fail(ClosedBeforeAnswer(
                    f"{self.origin.host_header} closed the connection before answering"))
            else:
                self._fail(ProtocolError(
                    f"{self.origin.host_header} closed the connection mid-answer"))
            self._wake()
        elif not self.active:
            self.client._drop(self)  # an idle connection the server closed

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer nobody asked for: never reuse this connection
            self.extra = True
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.extra:
            return
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding"
                                          and b"chunked" in value.lower()):
            self.framed = True
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.extra:
            return
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # e.g. 103 Early Hints: skipped, the answer follows
            self.interim = True
            self.raw_headers = []
            self.framed = False
            return
        self.headers_done = True
        if self.status in (204, 304):
            self.framed = True  # no body
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.extra:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.extra:
            return
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # --- the reader's side ---------------------------------------------------------------

    def _fail(self, error: HTTPError) -> None:
        if self.error is None:
            self.error = error

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def take(self) -> bytes:
        """Everything buffered, as one chunk (resumes reading if it was paused)."""
        chunk = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()
            self.paused = False
        return chunk

    async def wait(self, timeout_s: float) -> None:
        """Until the next parser event or close; ``ReadTimeout`` after ``timeout_s``."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.waiter = fut
        timer = self.loop.call_later(timeout_s, _expire, fut, timeout_s, self.origin)
        try:
            await fut
        finally:
            timer.cancel()
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(fut: asyncio.Future[None], timeout_s: float, origin: Origin) -> None:
    if not fut.done():
        fut.set_exception(ReadTimeout(
            f"no data from {origin.host_header} within {timeout_s:g}s"))


class Response:
    """An answer whose status and headers are in; read its body once, or ``aclose`` it."""

    def __init__(self, conn: Connection, read_timeout_s: float) -> None:
        self._conn: Connection | None = conn
        self._read_timeout_s = read_timeout_s
        self.status = conn.status
        headers: dict[str, str] = {}
        for name, value in conn.raw_headers:
            key, val = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        self.headers = headers  # lower-case names; repeated headers joined with ", "

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk; raises ``ReadTimeout`` /
        ``ProtocolError`` after yielding whatever arrived before the failure."""
        conn = self._conn
        if conn is None:
            return
        while True:
            if conn.body:
                yield conn.take()
                continue
            if conn.error is not None:
                self._discard()
                raise conn.error
            if conn.complete:
                self._settle()
                return
            try:
                await conn.wait(self._read_timeout_s)
            except BaseException:
                self._discard()
                raise

    async def read(self) -> bytes:
        """The whole body."""
        parts = [chunk async for chunk in self.aiter_bytes()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        """Done with this answer: keeps the connection if it was read to the end, else
        closes it. Idempotent."""
        conn = self._conn
        if conn is None:
            return
        if conn.complete and not conn.body and conn.error is None:
            self._settle()
        else:
            self._discard()

    def _settle(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.client._release(conn)

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.active = False
            conn.close()
            conn.client._drop(conn)
