"""One attempt: one request to one upstream, decided before the first byte, then relayed.

``Attempt.run`` sends the request and classifies the answer: a 5xx or 429, a timeout, a
connection error or an empty / error-first answer raises ``AttemptFailed`` (the fleet
retries elsewhere); a whole answer is returned committed; a stream is committed once its
first whole SSE event is here and is no error, then relayed by ``relay``, which ends a
stream that breaks with one error event. Whoever ends a committed stream (the relay, or
the caller's ``UpstreamReply.aclose``) settles the upstream's permit and metrics once
(``Attempt.finish``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from babeldesk.fleet.breaker import Permit
from babeldesk.fleet.http import ConnectError, HTTPClient, HTTPError, Response, Timeout
from babeldesk.fleet.pool import Upstream
from babeldesk.sse import EventSplitter, error_event, event_data, parse_chunk

log = logging.getLogger(__name__)


@dataclass
class UpstreamReply:
    """An upstream's answer. Exactly one of ``body`` (whole answer) or ``stream`` (SSE
    events, each whole, ending in ``[DONE]`` or in an error event) is set."""

    status: int
    content_type: str
    upstream: str  # the upstream's name (base url)
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: Mapping[str, str] | None = None  # e.g. retry-after
    _close: Callable[[], Awaitable[None]] | None = None  # settles a stream not read to the end

    async def aclose(self) -> None:
        """Stop reading: frees the upstream (always call it, or read the stream to its end)."""
        if self.stream is not None:
            await self.stream.aclose()  # type: ignore[attr-defined]
        if self._close is not None:
            await self._close()


class AttemptFailed(Exception):
    """One attempt failed before the first byte; ``outcome`` is the metric label."""

    def __init__(self, outcome: str, message: str, reply: UpstreamReply | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.reply = reply  # a 5xx / 429 answer, returned if no retry does better


# (upstream, outcome, started) -> counts the outcome and the time since ``started``
Record = Callable[[Upstream, str, float], None]


class Attempt:
    """One request to ``up`` under ``permit``; ``up.outstanding`` counts it until settled."""

    def __init__(self, client: HTTPClient, up: Upstream, permit: Permit, *, record: Record,
                 clock: Callable[[], float], session_header: str) -> None:
        self.client, self.up, self.permit = client, up, permit
        self._record, self._clock, self._session_header = record, clock, session_header
        self.started = 0.0
        self._settled = False  # a committed stream's permit and metrics, once
        self._resp: Response | None = None

    def _headers(self, payload: bytes | None, session_id: str | None) -> dict[str, str]:
        headers = {"content-type": "application/json"} if payload is not None else {}
        if self.up.target.host_header:
            headers["host"] = self.up.target.host_header
        if session_id:
            headers[self._session_header] = session_id
        return headers

    async def run(self, method: str, path: str, payload: bytes | None, streaming: bool,
                  session_id: str | None, timeout_s: float) -> UpstreamReply:
        up = self.up
        self.started = self._clock()
        up.outstanding += 1
        resp: Response | None = None
        committed = False
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self.client.request(method, up.name, path, body=payload,
                                                 headers=self._headers(payload, session_id))
                ctype = resp.headers.get("content-type", "")
                if resp.status >= 500 or resp.status == 429:
                    raise await _retryable(resp, up.name, ctype)
                if not (streaming and resp.status == 200 and "text/event-stream" in ctype):
                    reply = await self._whole(resp, ctype)
                    committed = True
                    return reply
                chunks = resp.aiter_bytes()
                splitter = EventSplitter()
                first = await _first_events(chunks, splitter)
            committed = True
            self._resp = resp
            return UpstreamReply(resp.status, ctype, up.name, _close=self.close,
                                 stream=relay(resp, chunks, splitter, first, self.finish))
        except AttemptFailed as exc:
            self._fail(exc.outcome, exc.message)
            raise
        except TimeoutError:
            msg = f"no first byte within {timeout_s:.3g}s"
            self._fail("timeout", msg)
            raise AttemptFailed("timeout", msg) from None
        except HTTPError as exc:
            outcome = "timeout" if isinstance(exc, Timeout) else (
                "connect_error" if isinstance(exc, ConnectError) else "protocol_error")
            msg = f"{type(exc).__name__}: {exc}"
            self._fail(outcome, msg)
            raise AttemptFailed(outcome, msg) from None
        except BaseException:  # cancelled: the caller went away
            self.permit.release()
            self._record(up, "cancelled", self.started)
            raise
        finally:
            if not committed:
                up.outstanding -= 1
                if resp is not None:
                    await resp.aclose()

    async def _whole(self, resp: Response, ctype: str) -> UpstreamReply:
        """A whole (not streamed) answer: committed unless a 200 came empty."""
        body = await resp.read()
        if resp.status == 200 and not body:
            raise AttemptFailed("protocol_error", "empty answer")
        self.permit.success()
        self._record(self.up, "ok" if resp.status < 400 else "client_error", self.started)
        self.up.outstanding -= 1
        return UpstreamReply(resp.status, ctype, self.up.name, body=body)

    def _fail(self, outcome: str, message: str) -> None:
        if outcome == "rate_limited":
            self.permit.success()  # a 429 is the upstream working as designed
        else:
            self.permit.failure()
        self.up.last_error = message
        self._record(self.up, outcome, self.started)

    def finish(self, outcome: str, error: str) -> None:
        """Settle a committed stream, once, whoever ends it."""
        if self._settled:
            return
        self._settled = True
        self.up.outstanding -= 1
        if outcome == "ok":
            self.permit.success()
        elif outcome == "cancelled":
            self.permit.release()
        else:
            self.permit.failure()
            self.up.last_error = error
            log.warning("fleet: stream from %s broke: %s", self.up.name, error)
        self._record(self.up, outcome, self.started)

    async def close(self) -> None:
        """The caller stops reading a committed stream (``UpstreamReply.aclose``)."""
        if self._resp is not None:
            await self._resp.aclose()  # idempotent; a relay never started ran no finally
        self.finish("cancelled", "")


async def _retryable(resp: Response, name: str, ctype: str) -> AttemptFailed:
    """A 5xx or 429: the answer kept (returned if no retry does better), to raise."""
    body = await resp.read()
    reply = UpstreamReply(resp.status, ctype, name, body=body,
                          headers={k: v for k, v in resp.headers.items()
                                   if k.lower() == "retry-after"})
    return AttemptFailed("server_error" if resp.status >= 500 else "rate_limited",
                         f"answered {resp.status}", reply)


async def _first_events(chunks: AsyncIterator[bytes], splitter: EventSplitter) -> list[bytes]:
    """Read until the first whole SSE event; refuse a stream that is empty or begins with
    an error (nothing is committed yet: the fleet may still retry elsewhere)."""
    first: list[bytes] = []
    while not first:
        try:
            first = splitter.feed(await anext(chunks))
        except StopAsyncIteration:
            raise AttemptFailed("protocol_error", "stream ended before any event") from None
    for ev in first:
        data = event_data(ev)
        if data is not None and parse_chunk(data).error:
            raise AttemptFailed("server_error", f"stream began with an error: {data[:200]}")
    return first


async def relay(
    resp: Response, chunks: AsyncIterator[bytes], splitter: EventSplitter,
    first: list[bytes], finish: Callable[[str, str], None],
) -> AsyncIterator[bytes]:
    """Yield whole SSE events; end a broken stream with one error event."""
    outcome, error = "cancelled", ""  # what a GeneratorExit / cancellation leaves
    try:
        pending = list(first)
        while True:
            for ev in pending:
                data = event_data(ev)
                chunk = parse_chunk(data) if data is not None else None
                if chunk is not None and chunk.done:
                    outcome = "ok"  # settled before the caller sees [DONE] and leaves
                    yield ev
                    return
                if chunk is not None and chunk.error:  # the upstream's own error event
                    outcome, error = "broken_stream", chunk.error
                    yield ev
                    return
                yield ev
            try:
                pending = splitter.feed(await anext(chunks))
            except StopAsyncIteration:
                outcome, error = "broken_stream", "the upstream closed the stream early"
                break
            except HTTPError as exc:
                outcome = "broken_stream"
                error = f"the upstream stream broke ({type(exc).__name__}: {exc})"
                break
    finally:
        await resp.aclose()
        finish(outcome, error)
    yield error_event(f"{error}; the answer is incomplete")
