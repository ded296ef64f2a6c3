"""Handing a conversation to a human: the reasons, the rule for repeated questions, and
the webhook that tells the shop's help desk. A handoff is a structured result on the
response (``handoff: {reason}``), never a token in the reply text."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from babeldesk.signing import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)


class HandoffReason(str, enum.Enum):
    CUSTOMER_REQUEST = "customer_request"  # asked for a person (a KB intent with handoff: true)
    REPEATED_QUESTION = "repeated_question"  # the same question failed repeatedly
    LOW_CONFIDENCE = "low_confidence"  # matcher unsure and the model could not answer from the KB
    MODEL_UNAVAILABLE = "model_unavailable"  # the model path failed (no worker, queue full)


def repeats(previous_keys: Sequence[str | None], key: str | None) -> int:
    """How many of the customer's immediately preceding messages asked the same thing.
    ``previous_keys`` are the earlier user turns' keys (intent id, or normalised text when
    no intent matched), oldest first."""
    if key is None:
        return 0
    n = 0
    for k in reversed(previous_keys):
        if k != key:
            break
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class HandoffEvent:
    session_id: str
    reason: str
    language: str
    message: str  # the customer's last message, redacted like the transcript
    intent: str | None
    time: float  # Unix seconds
    transcript_url: str = ""  # the conversation on the operator surface (agent API)


class WebhookNotifier:
    """POSTs handoff events in the background with retries and exponential backoff.

    Why not stamina/tenacity: the whole mechanism is a bounded loop with a doubling sleep;
    what matters here is that it runs detached from the customer's request (the reply never
    waits for, or fails because of, the help desk), and that pending deliveries are awaited
    at shutdown — neither library does that part.
    """

    def __init__(self, url: str, attempts: int = 4, timeout_s: float = 5.0,
                 first_backoff_s: float = 0.5, secret: str = "") -> None:
        self.url = url
        self.secret = secret  # signs every delivery (babeldesk.signing) when set
        self.attempts = attempts
        self.first_backoff_s = first_backoff_s
        self._client = httpx.AsyncClient(timeout=timeout_s)
        self._tasks: set[asyncio.Task[bool]] = set()
        self.delivered = 0
        self.failed = 0

    def notify(self, event: HandoffEvent | dict[str, Any]) -> asyncio.Task[bool]:
        """Deliver in the background: a ``HandoffEvent`` (sent as ``handoff.requested``) or
        a whole event payload (``support.events``)."""
        payload = ({"type": "handoff.requested", **asdict(event)}
                   if isinstance(event, HandoffEvent) else event)
        task = asyncio.get_running_loop().create_task(self._deliver(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, payload: dict[str, Any]) -> bool:
        delay = self.first_backoff_s
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        for attempt in range(1, self.attempts + 1):
            headers = {"content-type": "application/json"}
            if self.secret:  # signed afresh per attempt: a retry is not a replay
                headers[SIGNATURE_HEADER] = sign(self.secret, body)
            try:
                r = await self._client.post(self.url, content=body, headers=headers)
                if r.status_code < 400:
                    self.delivered += 1
                    return True
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            if attempt < self.attempts:
                log.warning("webhook attempt %d/%d failed (%s); retrying in %.1fs",
                            attempt, self.attempts, why, delay)
                await asyncio.sleep(delay)
                delay *= 2
            else:
                log.error("webhook %s gave up after %d attempts (%s): session %s",
                          payload.get("type"), self.attempts, why, payload.get("session_id"))
        self.failed += 1
        return False

    async def aclose(self, timeout_s: float = 10.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
        await self._client.aclose()


def event(session_id: str, reason: HandoffReason, language: str, message: str,
          intent: str | None, transcript_url: str = "") -> HandoffEvent:
    return HandoffEvent(session_id, reason.value, language, message, intent, time.time(),
                        transcript_url)


def conversation_event(kind: str, session_id: str, transcript_url: str, *,
                       language: str | None, state: str, agent: str | None,
                       reason: str | None, **extra: Any) -> dict[str, Any]:
    """A webhook payload for ``agent.joined``, ``conversation.closed``,
    ``conversation.rated`` (docs/webhooks.md has the JSON schema of each)."""
    return {"type": kind, "session_id": session_id, "time": time.time(),
            "transcript_url": transcript_url, "language": language, "state": state,
            "agent": agent, "reason": reason, **extra}
