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

This module is the pool (``HTTPClient``); one connection, its answer parsed by httptools,
and the ``Response`` read from it are ``http_connection.py``.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from babeldesk.fleet.http_connection import (
    ClosedBeforeAnswer,
    ConnectError,
    Connection,
    ConnectTimeout,
    HTTPError,
    Origin,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    Response,
    Timeout,
)

__all__ = [
    "ConnectError", "ConnectTimeout", "HTTPClient", "HTTPError", "Origin", "PoolTimeout",
    "ProtocolError", "ReadTimeout", "Response", "Timeout",
]

def _check_header(name: str, value: str) -> None:
    if any(c in name or c in value for c in "\r\n\0") or not name:
        raise ValueError(f"header {name!r}: CR, LF or NUL, or an empty name")


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
        self._idle: dict[Origin, list[Connection]] = {}  # newest last
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
            except ClosedBeforeAnswer:
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

    async def _acquire(self, origin: Origin, fresh: bool) -> tuple[Connection, bool]:
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

    async def _connect(self, origin: Origin) -> Connection:
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
                    lambda: Connection(self, origin), origin.host, origin.port, ssl=tls,
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

    def _release(self, conn: Connection) -> None:
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

    def _discard(self, conn: Connection) -> None:
        conn.active = False
        conn.close()
        self._drop(conn)

    def _drop(self, conn: Connection) -> None:
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
