"""The one server-sent-events parser (the fleet client, the load generator and the
benchmarks all read streams with it): split bytes into events, read an event's fields,
read an OpenAI chunk, build the error event that ends a broken stream. Pure; no I/O.
Part of core (imports nothing of the package), so every part may use it.

Field rules (WHATWG HTML, "event stream interpretation"): a line starting with ``:`` is a
comment; ``name: value`` with one optional space after the colon; ``data`` lines of one
event are joined with ``\n``; an event without ``data`` is not dispatched.

Wire format: events separated by a blank line, each ``data: <json>``; the last is
``data: [DONE]``. A mid-stream error is ``data: {"error": {...}}``, which the OpenAI SDK
raises as ``APIError``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from babeldesk.types import FinishReason, Usage

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
DONE = "[DONE]"


class EventSplitter:
    """Feed bytes as they arrive; get back whole events (bytes, each ending in a blank line).
    A partial event at the end of a broken stream is never returned."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        events: list[bytes] = []
        while True:
            m = _BOUNDARY.search(self._buf)
            if m is None:
                return events
            events.append(self._buf[: m.end()])
            self._buf = self._buf[m.end():]

    @property
    def pending(self) -> bytes:
        return self._buf


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # "message" when the server named none
    data: str


class SseLines:
    """Feed the lines of an SSE body (without newlines); get whole events back."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            ev = SseEvent(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def close(self) -> SseEvent | None:
        """The event the body ended in without a blank line, if any."""
        return self.feed("")


def parse_event(event: bytes) -> SseEvent | None:
    """One whole event (as ``EventSplitter`` returns it); None for a comment / keep-alive."""
    lines = SseLines()
    for line in event.decode("utf-8", "replace").splitlines():
        if (ev := lines.feed(line)) is not None:
            return ev
    return lines.close()


def event_data(event: bytes) -> str | None:
    """The joined ``data:`` lines of one event; None for a comment / keep-alive event."""
    ev = parse_event(event)
    return None if ev is None else ev.data


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one ``chat.completion.chunk`` says (choice 0)."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: str | None = None
    done: bool = False  # the ``[DONE]`` sentinel


_FINISH = {"stop": "stop", "length": "length", "abort": "abort", "error": "error",
           "tool_calls": "stop", "content_filter": "stop"}


def parse_chunk(data: str) -> Chunk:
    if data.strip() == DONE:
        return Chunk(done=True)
    try:
        obj: Any = json.loads(data)
    except ValueError:
        return Chunk(error=f"unparseable stream chunk: {data[:80]!r}")
    if not isinstance(obj, dict):
        return Chunk(error="stream chunk is not an object")
    if obj.get("error"):
        err = obj["error"]
        return Chunk(error=str(err.get("message", err)) if isinstance(err, dict) else str(err))
    usage = None
    if isinstance(obj.get("usage"), dict):
        u = obj["usage"]
        usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
    text, finish = "", None
    choices = obj.get("choices") or []
    if choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta") or {}
        text = delta.get("content") or ""
        raw = choices[0].get("finish_reason")
        finish = _FINISH.get(raw, "stop") if raw else None
    return Chunk(text=text, finish_reason=finish, usage=usage)  # type: ignore[arg-type]


def error_event(message: str, type_: str = "upstream_error") -> bytes:
    """The event that ends a stream broken midway (never followed by ``[DONE]``)."""
    body = {"error": {"type": type_, "message": message}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
