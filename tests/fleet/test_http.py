"""The fleet's HTTP/1.1 client against real local servers: a scripted asyncio server that
writes exactly the bytes a test wants (chunked, malformed, closing, hanging), and a real
uvicorn app (the faulty OpenAI server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from faulty_server import FaultyServer, free_port

from babeldesk.fleet.http import (
    ConnectError,
    HTTPClient,
    Origin,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
)
from tests.clock import eventually

Handler = Callable[[int, int, bytes, asyncio.StreamWriter], Awaitable[bool]]


class Scripted:
    """A TCP server on 127.0.0.1 that reads each request (head + Content-Length body) and
    lets ``handler(conn_no, request_no_on_conn, request_bytes, writer)`` answer; the
    handler returns False to close the connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[bytes] = []
        self.eofs = 0  # connections the client closed
        self.server: asyncio.Server | None = None
        self.url = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self.readers: dict[int, asyncio.StreamReader] = {}  # by connection number

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn_no = self.connections
        self.readers[conn_no] = reader
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            n = 0
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.eofs += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                n += 1
                if not await self.handler(conn_no, n, head + body, writer):
                    return
        except asyncio.CancelledError:
            pass
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


async def answer_ok(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
    w.write(ok(b"conn %d req %d" % (conn, n)))
    await w.drain()
    return True


@pytest.fixture
async def client() -> AsyncIterator[HTTPClient]:
    c = HTTPClient(connect_timeout_s=1.0, read_timeout_s=1.0, max_connections=8,
                   headers={"authorization": "Bearer k"})
    yield c
    await c.aclose()


async def test_keep_alive_reuses_one_connection(client: HTTPClient) -> None:
    async with Scripted(answer_ok) as srv:
        for i in range(1, 6):
            status, body = await client.get(srv.url, "/x")
            assert (status, body) == (200, b"conn 1 req %d" % i)
        assert srv.connections == 1
        assert client.connections == (1, 1)  # open, idle
        first = srv.requests[0].decode()
        assert first.startswith("GET /x HTTP/1.1\r\n")
        assert f"host: {srv.url.removeprefix('http://')}\r\n" in first
        assert "authorization: Bearer k\r\n" in first


async def test_post_body_and_headers_reach_the_server(client: HTTPClient) -> None:
    async with Scripted(answer_ok) as srv:
        resp = await client.request("POST", srv.url + "/base/", "/v1/chat", body=b'{"a":1}',
                                    headers={"content-type": "application/json",
                                             "host": "worker.local:8000", "x-session-id": "s1"})
        assert resp.status == 200 and resp.headers["content-type"] == "text/plain"
        assert await resp.read() == b"conn 1 req 1"
        await resp.aclose()
        req = srv.requests[0].decode()
        assert req.startswith("POST /base/v1/chat HTTP/1.1\r\nhost: worker.local:8000\r\n")
        assert "content-length: 7\r\n" in req and "x-session-id: s1\r\n" in req
        assert req.endswith('\r\n\r\n{"a":1}')


async def test_chunked_body_streams_chunk_by_chunk(client: HTTPClient) -> None:
    go_on = asyncio.Event()

    async def chunked(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + b"7\r\ndata: 1\r\n")
        await w.drain()
        await go_on.wait()  # the second chunk only after the client saw the first
        w.write(b"7\r\ndata: 2\r\n" + b"0\r\n\r\n")
        await w.drain()
        return True

    async with Scripted(chunked) as srv:
        resp = await client.request("GET", srv.url, "/sse")
        chunks = resp.aiter_bytes()
        assert await anext(chunks) == b"data: 1"
        go_on.set()
        assert [c async for c in chunks] == [b"data: 2"]
        await resp.aclose()
        assert client.connections == (1, 1)  # read to the end: kept
        go_on.clear()
        asyncio.get_running_loop().call_later(0.05, go_on.set)
        status, body = await client.get(srv.url, "/sse")
        assert (status, body) == (200, b"data: 1data: 2") and srv.connections == 1


async def test_body_read_until_close(client: HTTPClient) -> None:
    async def until_close(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, ")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(b"part two")
        await w.drain()
        return False

    async with Scripted(until_close) as srv:
        assert await client.get(srv.url, "/") == (200, b"part one, part two")
        assert client.connections == (0, 0)  # not reusable
        assert await client.get(srv.url, "/") == (200, b"part one, part two")
        assert srv.connections == 2


async def test_an_informational_answer_is_skipped(client: HTTPClient) -> None:
    async def early_hints(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(ok(b"final"))
        await w.drain()
        return True

    async with Scripted(early_hints) as srv:
        for _ in range(2):
            resp = await client.request("GET", srv.url, "/")
            assert resp.status == 200 and "link" not in resp.headers
            assert await resp.read() == b"final"
            await resp.aclose()
        assert srv.connections == 1


async def test_idle_connection_closed_by_the_server_is_replaced(client: HTTPClient) -> None:
    async def answer_then_close_soon(conn: int, n: int, req: bytes,
                                     w: asyncio.StreamWriter) -> bool:
        w.write(ok(b"conn %d" % conn))
        await w.drain()
        await asyncio.sleep(0.05)  # as a server's keep-alive timeout, between requests
        return False

    async with Scripted(answer_then_close_soon) as srv:
        assert await client.get(srv.url, "/") == (200, b"conn 1")
        # the close arrives: the pool drops the connection
        assert await eventually(lambda: client.connections == (0, 0))
        assert await client.get(srv.url, "/") == (200, b"conn 2")


async def test_stale_keep_alive_connection_is_retried_once_fresh(client: HTTPClient) -> None:
    async def close_on_second(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        if conn == 1 and n == 2:  # the request met the server's close: no answer
            return False
        w.write(ok(b"conn %d" % conn))
        await w.drain()
        return True

    async with Scripted(close_on_second) as srv:
        assert await client.get(srv.url, "/") == (200, b"conn 1")
        resp = await client.request("POST", srv.url, "/", body=b"{}")
        assert resp.status == 200 and await resp.read() == b"conn 2"
        await resp.aclose()
        assert srv.connections == 2 and len(srv.requests) == 3


async def test_a_fresh_connection_closed_before_answering_is_an_error(
        client: HTTPClient) -> None:
    async def close_at_once(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        return False

    async with Scripted(close_at_once) as srv:
        with pytest.raises(ProtocolError, match="closed the connection before answering"):
            await client.get(srv.url, "/")
        assert srv.connections == 1  # not retried: a new connection is never stale
        assert client.connections == (0, 0)


async def test_no_answer_is_a_read_timeout_and_closes_the_connection() -> None:
    async def hang(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(3600)
        return False

    c = HTTPClient(connect_timeout_s=1, read_timeout_s=0.2)
    async with Scripted(hang) as srv:
        with pytest.raises(ReadTimeout, match="within 0.2s"):
            await c.get(srv.url, "/")
        assert len(srv.requests) == 1  # it was sent, and the wait for the answer timed out
        assert c.connections == (0, 0)
    await c.aclose()


async def test_a_gap_between_chunks_is_a_read_timeout_after_the_data_before_it() -> None:
    async def stall(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await w.drain()
        await asyncio.sleep(3600)
        return False

    c = HTTPClient(connect_timeout_s=1, read_timeout_s=0.2)
    async with Scripted(stall) as srv:
        resp = await c.request("GET", srv.url, "/")
        got = []
        with pytest.raises(ReadTimeout):
            async for chunk in resp.aiter_bytes():
                got.append(chunk)
        assert got == [b"abc"] and c.connections == (0, 0)
    await c.aclose()


async def test_connection_refused_is_a_connect_error(client: HTTPClient) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
        await client.get(f"http://127.0.0.1:{port}", "/")
    assert client.connections == (0, 0)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 abc OK\r\n\r\n",  # status is not a number
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
])
async def test_malformed_answer_is_a_protocol_error(client: HTTPClient, answer: bytes) -> None:
    async def bad(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(answer)
        await w.drain()
        await asyncio.sleep(3600)  # left open: the client, not a close, ends it
        return False

    async with Scripted(bad) as srv:
        with pytest.raises(ProtocolError, match="malformed answer"):
            await client.get(srv.url, "/")
        assert client.connections == (0, 0)


async def test_a_close_mid_body_is_a_protocol_error(client: HTTPClient) -> None:
    async def short(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await w.drain()
        return False

    async with Scripted(short) as srv:
        resp = await client.request("GET", srv.url, "/")
        got = []
        with pytest.raises(ProtocolError, match="mid-answer"):
            async for chunk in resp.aiter_bytes():
                got.append(chunk)
        assert got == [b"only this"] and client.connections == (0, 0)


async def test_an_answer_not_read_to_the_end_closes_its_connection(client: HTTPClient) -> None:
    async def big(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1000)
        await w.drain()
        await asyncio.sleep(3600)
        return False

    async with Scripted(big) as srv:
        resp = await client.request("GET", srv.url, "/")
        await resp.aclose()
        await resp.aclose()  # idempotent
        assert client.connections == (0, 0)
        await asyncio.sleep(0.05)
        assert srv.readers[1].at_eof()  # the server saw the close


async def test_connections_are_bounded_and_a_full_pool_times_out() -> None:
    release = asyncio.Event()

    async def slow(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        await release.wait()
        w.write(ok())
        await w.drain()
        return True

    c = HTTPClient(connect_timeout_s=0.3, read_timeout_s=5, max_connections=2,
                   max_keepalive=1)
    async with Scripted(slow) as srv:
        calls = [asyncio.create_task(c.get(srv.url, "/")) for _ in range(5)]
        assert await eventually(lambda: len(srv.requests) == 2)
        await asyncio.sleep(0.05)  # room for a third connection, were the pool unbounded
        assert srv.max_open == 2 and c.connections == (2, 0)
        release.set()
        assert [s for s, _ in await asyncio.gather(*calls)] == [200] * 5
        assert srv.max_open == 2
        assert c.connections == (1, 1)  # one idle kept (max_keepalive), the other closed
        release.clear()
        busy = [asyncio.create_task(c.get(srv.url, "/")) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(PoolTimeout):
            await c.get(srv.url, "/")
        release.set()
        await asyncio.gather(*busy)
    await c.aclose()


async def test_cancelled_request_frees_its_connection(client: HTTPClient) -> None:
    async def hang(conn: int, n: int, req: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(3600)
        return False

    async with Scripted(hang) as srv:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.get(srv.url, "/")
        assert client.connections == (0, 0)


async def test_header_injection_is_refused(client: HTTPClient) -> None:
    with pytest.raises(ValueError):
        await client.get("http://127.0.0.1:1", "/", headers={"x-session-id": "a\r\nx: y"})


def test_origin_parsing() -> None:
    assert Origin.parse("http://w1:8000") == Origin("http", "w1", 8000, "", "w1:8000")
    assert Origin.parse("https://api.example.com/openai/") == Origin(
        "https", "api.example.com", 443, "/openai", "api.example.com")
    assert Origin.parse("http://[::1]:9000").host_header == "[::1]:9000"
    with pytest.raises(ValueError):
        Origin.parse("ftp://x")


@pytest.fixture
def faulty() -> Iterator[FaultyServer]:
    s = FaultyServer("a")
    with s.running():
        yield s


async def test_a_real_openai_server_streamed_and_not(faulty: FaultyServer,
                                                     client: HTTPClient) -> None:
    chat = {"model": "faulty", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        resp = await client.request("POST", faulty.url, "/v1/chat/completions",
                                    body=json.dumps(chat).encode(),
                                    headers={"content-type": "application/json"})
        assert resp.status == 200
        assert json.loads(await resp.read())["choices"][0]["message"]["content"].startswith("a:")
        await resp.aclose()
        resp = await client.request("POST", faulty.url, "/v1/chat/completions",
                                    body=json.dumps({**chat, "stream": True}).encode(),
                                    headers={"content-type": "application/json"})
        assert resp.headers["content-type"].startswith("text/event-stream")
        chunks = [c async for c in resp.aiter_bytes()]
        await resp.aclose()
        assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    assert client.connections == (1, 1)  # uvicorn kept the one connection alive throughout
    assert await client.get(faulty.url, "/nowhere") == (404, b"Not Found")
