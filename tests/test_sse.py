"""The one SSE parser: event splitting, field rules, chunk reading, the error event."""

from __future__ import annotations

import json

from babeldesk.sse import (
    Chunk, EventSplitter, SseEvent, SseLines, error_event, event_data, parse_chunk, parse_event,
)
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


def test_sse_lines_rebuild_events() -> None:
    sse = SseLines()
    lines = ["event: delta", 'data: {"text": "Ho"}', "", ": keep-alive", "",
             "data: a", "data: b", "", "event: done", "data: {}"]
    events = [e for line in lines if (e := sse.feed(line)) is not None]
    assert [(e.event, e.data) for e in events] == [("delta", '{"text": "Ho"}'), ("message", "a\nb")]
    last = sse.close()
    assert last is not None and (last.event, last.data) == ("done", "{}")


def test_openai_chunks() -> None:
    chunk = '{"choices": [{"delta": {"content": "Hi"}, "finish_reason": null}]}'
    assert parse_chunk(chunk) == Chunk(text="Hi")
    usage = '{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12}}'
    assert parse_chunk(usage) == Chunk(usage=Usage(9, 12))
    assert parse_chunk("[DONE]") == Chunk(done=True)
    assert parse_chunk('{"error": {"message": "boom"}}').error == "boom"
    assert parse_chunk("{oops").error is not None


def test_a_whole_event_reads_as_its_lines_do() -> None:
    raw = b"event: done\r\ndata: {}\r\n\r\n"
    assert parse_event(raw) == SseEvent("done", "{}")
    assert parse_event(b": keep-alive\n\n") is None
