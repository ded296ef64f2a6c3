"""`OneWriteHttpTools`: a real uvicorn server on a real socket; the head of a response with
a Content-Length leaves in the same socket write as its body, streamed responses still
send their head before the first chunk, and every response reads back byte-exact."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from babeldesk.web import OneWriteHttpTools

pytestmark = pytest.mark.asyncio

BODY = b'{"reply":"hola"}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class App:
    """/json: one body part; /parts: a Content-Length body in two parts; /stream: chunked,
    the first chunk only after `release` is set; /empty: 204."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.writes: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/empty":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        length = str(len(BODY)).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", length)]})
        if path == "/parts":
            await send({"type": "http.response.body", "body": BODY[:5], "more_body": True})
            await send({"type": "http.response.body", "body": BODY[5:]})
        else:
            await send({"type": "http.response.body", "body": BODY})


class _RecordingTransport:
    """The real transport, with every write also appended to ``writes``."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@contextlib.asynccontextmanager
async def serving(app: App) -> AsyncIterator[int]:
    """uvicorn with OneWriteHttpTools on a free port; its socket writes land in
    ``app.writes`` too."""

    class Recorded(OneWriteHttpTools):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(_RecordingTransport(transport, app.writes))

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           http=Recorded, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def _request(port: int, method: str, path: str) -> tuple[asyncio.StreamReader,
                                                               asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head, await reader.readexactly(length)


async def test_head_and_body_leave_in_one_write() -> None:
    app = App()
    async with serving(app) as port:
        reader, writer = await _request(port, "GET", "/json")
        head, body = await _read_response(reader)
        # keep-alive: a second request on the same connection
        writer.write(b"GET /parts HTTP/1.1\r\nhost: x\r\n\r\n")
        head2, body2 = await _read_response(reader)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == BODY
    assert head2.startswith(b"HTTP/1.1 200 OK\r\n") and body2 == BODY
    # /json: one write with head + body; /parts: head + first part, then the rest
    assert app.writes[0] == head + BODY
    assert app.writes[1:] == [head2 + BODY[:5], BODY[5:]]


async def test_streamed_head_is_not_held() -> None:
    app = App()
    async with serving(app) as port:
        reader, writer = await _request(port, "GET", "/stream")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # before any chunk
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"transfer-encoding: chunked" in head
        app.release.set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        writer.close()
    assert rest == b"9\r\ndata: 1\n\n\r\n0\r\n\r\n"


async def test_head_request_and_204() -> None:
    app = App()
    async with serving(app) as port:
        reader, writer = await _request(port, "HEAD", "/json")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"GET /empty HTTP/1.1\r\nhost: x\r\n\r\n")
        empty = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 16" in head
    assert empty.startswith(b"HTTP/1.1 204 No Content\r\n")
