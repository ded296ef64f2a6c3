"""A small real HTTP server speaking the OpenAI chat-completions format, that can misbehave.

Faults (``FaultyServer.mode``): ``ok``, ``hang`` (never answers), ``error500``,
``error400``, ``error429``, ``drop`` (sends two chunks, then drops the connection
mid-stream), ``slow`` (``delay_s`` before every chunk). ``/ready`` answers 200, 503
(``ready = False``) or hangs (``ready_hang = True``). Every answer names the server, so a
test knows who served it, and ``/metrics`` counts chat requests like a babeldesk worker.

In-process: ``with FaultyServer("a").running() as srv:`` (uvicorn on 127.0.0.1 in a
thread, own event loop). As a process: ``python tests/fleet/faulty_server.py --name a
--port 8001``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import threading
import time
from typing import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

MODES = ("ok", "hang", "error500", "error400", "error429", "drop", "slow")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class FaultyServer:
    def __init__(self, name: str, *, mode: str = "ok", delay_s: float = 0.2,
                 words: int = 5) -> None:
        assert mode in MODES, mode
        self.name = name
        self.mode = mode
        self.delay_s = delay_s  # seconds before each chunk in "slow"
        self.words = words  # content chunks per streamed answer
        self.ready = True
        self.ready_hang = False
        self.chat_requests = 0  # /v1/chat/completions requests received
        self.sessions: list[str] = []  # x-session-id of each chat request, "" if none
        self.chat_in_flight = 0
        self.max_chat_in_flight = 0  # most chat requests being answered at once
        self.probes = 0  # /ready requests received
        self.probes_in_flight = 0
        self.max_probes_in_flight = 0
        self.host = "127.0.0.1"
        self.port = 0
        self._server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- app ---------------------------------------------------------------------------------

    def reply_text(self) -> str:
        return " ".join([f"{self.name}:"] + [f"w{i}" for i in range(self.words)])

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models),
            Route("/health", lambda r: JSONResponse({"status": "ok"})),
            Route("/ready", self._ready),
            Route("/metrics", self._metrics),
        ])

    async def _ready(self, request: Request) -> Response:
        self.probes += 1
        self.probes_in_flight += 1
        self.max_probes_in_flight = max(self.max_probes_in_flight, self.probes_in_flight)
        try:
            if self.ready_hang:
                await asyncio.sleep(3600)
            if not self.ready:
                return JSONResponse({"status": "not ready"}, status_code=503)
            return JSONResponse({"status": "ready", "server": self.name})
        finally:
            self.probes_in_flight -= 1

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": "faulty", "object": "model", "owned_by": self.name}]})

    async def _metrics(self, request: Request) -> Response:
        return PlainTextResponse(
            "babeldesk_requests_total{app=\"worker\",route=\"/v1/chat/completions\","
            f"status=\"200\"}} {self.chat_requests}\n")

    async def _chat(self, request: Request) -> Response:
        self.chat_in_flight += 1
        self.max_chat_in_flight = max(self.max_chat_in_flight, self.chat_in_flight)
        try:
            return await self._answer(request)
        finally:
            self.chat_in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        body = await request.json()
        self.chat_requests += 1
        self.sessions.append(request.headers.get("x-session-id", ""))
        mode = self.mode
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode in ("error500", "error400", "error429"):
            status = int(mode[-3:])
            return JSONResponse({"error": {"type": "faulty", "message": f"{self.name} {mode}"}},
                                status_code=status)
        if not body.get("stream"):
            if mode == "slow":
                await asyncio.sleep(self.delay_s)
            return JSONResponse(self._completion())
        return StreamingResponse(self._events(mode), media_type="text/event-stream")

    def _completion(self) -> dict[str, object]:
        return {
            "id": "chatcmpl-faulty", "object": "chat.completion", "created": int(time.time()),
            "model": "faulty", "system_fingerprint": self.name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": self.reply_text()}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": self.words + 1,
                      "total_tokens": self.words + 4},
        }

    async def _events(self, mode: str) -> AsyncIterator[bytes]:
        def event(delta: dict[str, str], finish: str | None = None,
                  usage: dict[str, int] | None = None) -> bytes:
            chunk = {"id": "chatcmpl-faulty", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": "faulty",
                     "system_fingerprint": self.name,
                     "choices": [] if usage else
                     [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:
                chunk["usage"] = usage
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        pieces = self.reply_text().split(" ")
        yield event({"role": "assistant", "content": ""})
        for i, piece in enumerate(pieces):
            if mode == "slow":
                await asyncio.sleep(self.delay_s)
            if mode == "drop" and i == 2:
                raise ConnectionAbortedError("faulty server drops the stream")
            yield event({"content": piece if i == 0 else " " + piece})
        yield event({}, "stop")
        yield event({}, usage={"prompt_tokens": 3, "completion_tokens": len(pieces),
                               "total_tokens": 3 + len(pieces)})
        yield b"data: [DONE]\n\n"

    # --- running -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[FaultyServer]:
        """Serve on ``host:port`` (a free port if 0) in a thread until the block ends."""
        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(self.app(), host=host, port=self.port, log_level="critical",
                                lifespan="off", loop="asyncio", timeout_graceful_shutdown=1)
        self._server = server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"faulty:{self.name}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"faulty server {self.name} did not start")
            time.sleep(0.01)
        try:
            yield self
        finally:
            server.should_exit = True
            server.force_exit = True
            thread.join(timeout=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", default="ok", choices=MODES)
    args = ap.parse_args()
    srv = FaultyServer(args.name, mode=args.mode)
    srv.host, srv.port = args.host, args.port
    uvicorn.run(srv.app(), host=args.host, port=args.port, log_level="warning",
                lifespan="off")


if __name__ == "__main__":
    main()
