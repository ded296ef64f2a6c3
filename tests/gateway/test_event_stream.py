"""The SSE body of the event routes, in-process: the customer's view shows an agent's reply
in the customer's language and nothing else, and a draining gateway ends the stream."""

from __future__ import annotations

import json
from dataclasses import asdict

from babeldesk.gateway.agents import customer_view, event_stream
from babeldesk.store import Turn
from babeldesk.store.events import MemoryEventBus


def parse(chunk: bytes | str) -> tuple[str, dict]:
    text = chunk.decode() if isinstance(chunk, bytes) else chunk
    kind, data = text.strip().split("\n")
    return kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))


async def test_customer_stream_shows_agent_replies_and_ends_on_drain() -> None:
    bus = MemoryEventBus()
    draining = False
    body = event_stream(bus, "session:s", customer_view, stop=lambda: draining).body_iterator
    assert parse(await body.__anext__())[0] == "ready"
    await bus.publish("session:s", {"type": "message", "turn": asdict(Turn("user", "hola"))})
    reply = Turn("agent", "Your parcel is on its way.", language="en", agent="ana",
                 translation="Tu paquete está en camino.", translation_language="es")
    await bus.publish("session:s", {"type": "message", "turn": asdict(reply)})
    kind, data = parse(await body.__anext__())
    assert kind == "message" and data["turn"]["text"] == "Tu paquete está en camino."
    assert data["turn"]["translated"] is True and "agent" not in data["turn"]
    await bus.publish("session:s", {"type": "state", "state": "bot", "agent": "ana"})
    assert parse(await body.__anext__()) == ("state", {"type": "state", "state": "bot"})
    draining = True
    assert [chunk async for chunk in body] == []  # ends by itself, within a second
