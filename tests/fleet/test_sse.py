"""Pure SSE parsing: event splitting, chunk reading, the error event."""

from __future__ import annotations

import json

from babeldesk.fleet.sse import EventSplitter, error_event, event_data, parse_chunk
from babeldesk.types import Usage

STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"Hola"},"finish_reason":null}]}\n\n'
    b": keep-alive\n\n"
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\r\n\r\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)


def test_splitter_returns_whole_events_whatever_the_chunking() -> None:
    for size in (1, 3, 17, len(STREAM)):
        s = EventSplitter()
        events: list[bytes] = []
        for i in range(0, len(STREAM), size):
            events += s.feed(STREAM[i:i + size])
        assert b"".join(events) == STREAM and len(events) == 6 and s.pending == b""


def test_partial_event_is_never_returned() -> None:
    s = EventSplitter()
    assert s.feed(STREAM[:-3]) == list(EventSplitter().feed(STREAM))[:5]
    assert s.pending == b"data: [DONE"


def test_chunks() -> None:
    events = EventSplitter().feed(STREAM)
    data = [event_data(e) for e in events]
    assert data[2] is None  # a comment
    chunks = [parse_chunk(d) for d in data if d is not None]
    assert [c.text for c in chunks] == ["", "Hola", "", "", ""]
    assert chunks[2].finish_reason == "length"
    assert chunks[3].usage == Usage(7, 2)
    assert chunks[4].done and not chunks[3].done


def test_errors() -> None:
    ev = error_event("upstream broke", "upstream_error")
    assert ev.endswith(b"\n\n")
    body = json.loads(event_data(ev) or "")
    assert body == {"error": {"type": "upstream_error", "message": "upstream broke"}}
    assert parse_chunk(event_data(ev) or "").error == "upstream broke"
    assert parse_chunk("{not json").error
    assert parse_chunk('"a string"').error


def test_multiline_data_is_joined() -> None:
    assert event_data(b"event: x\ndata: a\ndata:b\n\n") == "a\nb"
