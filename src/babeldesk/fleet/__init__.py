"""Upstream pool: health checks, circuit breakers, retries, routing policies, and the
OpenAI-compatible client (``FleetChatModel``) the gateway hands to ``support``."""

from __future__ import annotations

from babeldesk.fleet.breaker import BreakerState, CircuitBreaker
from babeldesk.fleet.attempt import UpstreamReply
from babeldesk.fleet.chat import FleetChatModel
from babeldesk.fleet.client import Fleet

__all__ = ["BreakerState", "CircuitBreaker", "Fleet", "FleetChatModel", "UpstreamReply"]
