"""A lean HTTP/1.1 client for the fleet's upstream calls: asyncio protocols (uvloop when the
loop is one) with ``httptools`` parsing the answers.

Why not httpx: on the gateway's passthrough path its AsyncClient cost 0.4-0.6 ms of CPU a
call (connection-pool bookkeeping, anyio cancel scopes), more than the worker's own
answer; one exchange on a bare asyncio connection costs ~0.03 ms (docs/benchmarks.md,
Fleet). The fleet needs little of HTTP: one request, its answer read whole or chunk by
chunk, keep-alive. So this is that, and nothing else (no redirects, cookies, proxies,
compression, HTTP/2).

- ``HTTPClient.request(method, base, path, body=, headers=)`` sends one request and returns
  a ``Response`` once the status line and headers are in; the body is read with
  ``read()`` (whole) or ``aiter_bytes()`` (as it arrives: SSE relays). Content-Length,
  chunked and read-until-close bodies.
- Keep-alive pool per origin, newest idle connection first; ``max_connections`` open
  connections over all origins (a caller waits up to the connect timeout for one, then
  ``PoolTimeout``), at most ``max_keepalive`` of them idle. A connection goes back to the
  pool only when its answer was read to the end and the server keeps it alive; ``aclose``
  before that closes it.
- A stale keep-alive connection (the server closed it between requests, and the request
  met the close) is retried once on a fresh connection: nothing of an answer came back,
  so the server never took the request.
- Timeouts, seconds: ``connect_timeout_s`` to connect (and to wait for a pool slot),
  ``read_timeout_s`` for the headers and for every gap between two body chunks.
- Failures are ``HTTPError`` subclasses: ``ConnectError``, ``ConnectTimeout`` /
  ``ReadTimeout`` / ``PoolTimeout`` (all ``Timeout``), ``ProtocolError`` (a malformed
  answer, or a connection closed before the answer was whole).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools

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


class _ClosedBeforeAnswer(ProtocolError):
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


def _check_header(name: str, value: str) -> None:
    if any(c in name or c in value for c in "\r\n\0") or not name:
        raise ValueError(f"header {name!r}: CR, LF or NUL, or an empty name")


class _Connection(asyncio.Protocol):
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
                self._fail(_ClosedBeforeAnswer(
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

    def __init__(self, conn: _Connection, read_timeout_s: float) -> None:
        self._conn: _Connection | None = conn
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


class HTTPClient:
    """Keep-alive HTTP/1.1 client over a bounded connection pool (see the module doc)."""

    def __init__(self, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 max_connections: int = 100, max_keepalive: int | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.max_keepalive = max_connections if max_keepalive is None else min(
            max_keepalive, max_connections)
        for k, v in (headers or {}).items():
            _check_header(k, v)
        self._default_headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._origins: dict[str, Origin] = {}
        self._idle: dict[Origin, list[_Connection]] = {}  # newest last
        self._n_idle = 0
        self._open = 0  # connections counted against max_connections (connecting included)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    # --- requests ------------------------------------------------------------------------

    async def request(self, method: str, base: str, path: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> Response:
        """Send one request to ``base`` + ``path``; returns once the headers are in."""
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = Origin.parse(base)
        head = self._head(method, origin, path, body, headers)
        fresh = False
        while True:
            conn, reused = await self._acquire(origin, fresh)
            try:
                conn._new_answer()
                conn.active = True
                assert conn.transport is not None
                conn.transport.write(head if body is None else head + body)
                while not conn.headers_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(self.read_timeout_s)
            except _ClosedBeforeAnswer:
                self._discard(conn)
                if reused and not fresh:  # a stale keep-alive connection: once more, fresh
                    fresh = True
                    continue
                raise
            except BaseException:
                self._discard(conn)
                raise
            return Response(conn, self.read_timeout_s)

    async def get(self, base: str, path: str, *, headers: Mapping[str, str] | None = None
                  ) -> tuple[int, bytes]:
        """(status, body) of a GET, read whole."""
        resp = await self.request("GET", base, path, headers=headers)
        try:
            return resp.status, await resp.read()
        finally:
            await resp.aclose()

    def _head(self, method: str, origin: Origin, path: str, body: bytes | None,
              headers: Mapping[str, str] | None) -> bytes:
        host = origin.host_header
        extra = ""
        if headers:
            for k, v in headers.items():
                _check_header(k, v)
                if k.lower() == "host":
                    host = v
                else:
                    extra += f"{k}: {v}\r\n"
        if body is not None:
            extra += f"content-length: {len(body)}\r\n"
        return (f"{method} {origin.prefix}{path} HTTP/1.1\r\nhost: {host}\r\n"
                f"{self._default_headers}{extra}\r\n").encode("latin-1")

    # --- the pool ------------------------------------------------------------------------

    async def _acquire(self, origin: Origin, fresh: bool) -> tuple[_Connection, bool]:
        """An idle connection to ``origin`` (reused=True) or a new one."""
        if self._closed:
            raise ConnectError("the client is closed")
        deadline: float | None = None
        while True:
            idle = None if fresh else self._idle.get(origin)
            while idle:
                conn = idle.pop()
                self._n_idle -= 1
                conn.idle = False
                if not conn.closed and conn.transport is not None \
                        and not conn.transport.is_closing():
                    return conn, True
                self._drop(conn)
            if self._open < self.max_connections:
                return await self._connect(origin), False
            if self._n_idle:  # full, but some idle connection is not to ``origin``
                victims = next(v for v in self._idle.values() if v)
                conn = victims.pop(0)  # the oldest
                self._n_idle -= 1
                conn.idle = False
                conn.close()
                self._drop(conn)
                continue
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.connect_timeout_s
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
            except BaseException as exc:
                if fut.done() and not fut.cancelled():  # woken, but leaving: pass it on
                    self._wake_one()
                else:
                    fut.cancel()
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout(f"all {self.max_connections} connections stayed busy "
                                      f"for {self.connect_timeout_s:g}s") from None
                raise

    async def _connect(self, origin: Origin) -> _Connection:
        self._open += 1
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin), origin.host, origin.port, ssl=tls,
                    server_hostname=origin.host if tls else None)
        except TimeoutError:
            self._open -= 1
            self._wake_one()
            raise ConnectTimeout(f"no connection to {origin.host_header} within "
                                 f"{self.connect_timeout_s:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            self._open -= 1
            self._wake_one()
            raise ConnectError(f"cannot connect to {origin.host_header}: {exc}") from None
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        sock: Any = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        return conn

    def _release(self, conn: _Connection) -> None:
        """An answer read to the end: keep the connection if it may be reused."""
        conn.active = False
        if (conn.keep_alive and not conn.closed and not self._closed
                and self._n_idle < self.max_keepalive):
            conn.idle = True
            self._idle.setdefault(conn.origin, []).append(conn)
            self._n_idle += 1
            self._wake_one()
        else:
            conn.close()
            self._drop(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.active = False
        conn.close()
        self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        """``conn`` no longer counts against the bounds (once, however often called)."""
        if conn.idle:
            conn.idle = False
            self._idle[conn.origin].remove(conn)
            self._n_idle -= 1
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    @property
    def connections(self) -> tuple[int, int]:
        """(open, idle) connections now."""
        return self._open, self._n_idle

    async def aclose(self) -> None:
        """Close idle connections; busy ones close when their answers are done."""
        self._closed = True
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.close()
                self._drop(conn)
        self._idle.clear()
