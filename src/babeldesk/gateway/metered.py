"""A per-session cap on model-generated tokens (``limits.session_tokens``): the
``ChatModel`` the support pipeline gets, in front of the engine or the fleet. A model call
for a session whose window is full is refused before it starts (``RateLimited``; the
pipeline hands the conversation to a person); a finished call's completion tokens are
counted against its session, in the same limit storage as the other limits (Redis:
shared by every gateway replica). Calls without a session (translations of curated
answers, cached afterwards) are not counted."""

from __future__ import annotations

from collections.abc import AsyncIterator

from babeldesk.edge.ratelimit import Limiter
from babeldesk.types import ChatModel, ChatRequest, TextDelta


class SessionTokenCap:
    def __init__(self, model: ChatModel, limiter: Limiter) -> None:
        self.model = model
        self.limiter = limiter

    @property
    def model_name(self) -> str:
        return self.model.model_name

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[TextDelta]:
        sid = request.session_id
        if not sid or not self.limiter.enabled("session_tokens"):
            async for delta in self.model.stream_chat(request):
                yield delta
            return
        await self.limiter.room("session_tokens", sid, "public")
        generated = 0
        try:
            async for delta in self.model.stream_chat(request):
                if delta.usage is not None:
                    generated = delta.usage.completion_tokens
                elif delta.text:
                    generated += 1
                yield delta
        finally:
            await self.limiter.spend("session_tokens", sid, generated)
