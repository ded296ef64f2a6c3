"""The fleet client in front of a real babeldesk worker (smollm2-135m) and a broken server:
the OpenAI stream format, usage, and failover to the real worker."""

from __future__ import annotations

import json

import pytest
from faulty_server import FaultyServer

from babeldesk.config import FleetConfig, RoutingPolicy, UpstreamConfig
from babeldesk.fleet import Fleet, FleetChatModel
from babeldesk.types import ChatMessage, ChatRequest, SamplingParams, collect

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"


async def test_chat_model_over_a_real_worker_past_a_hanging_one(smol_worker) -> None:
    with FaultyServer("hung", mode="hang").running() as hung:
        cfg = FleetConfig(
            upstreams=(UpstreamConfig(hung.url), UpstreamConfig(smol_worker.url)),
            health_interval_s=0, first_byte_timeout_s=3.0,  # a loaded machine is slow
            policy=RoutingPolicy.WEIGHTED_ROUND_ROBIN)
        fleet = Fleet(cfg)
        await fleet.start()
        try:
            model = FleetChatModel(fleet, MODEL)
            request = ChatRequest([ChatMessage("user", "Say hello.")],
                                  SamplingParams(max_tokens=8))
            for _ in range(2):  # one of the two goes to the hung server first
                done = await collect(model.stream_chat(request))
                assert done.text.strip() and done.finish_reason in ("stop", "length")
                assert done.usage.completion_tokens >= 1 and done.usage.prompt_tokens > 1
            assert hung.chat_requests >= 1
            # raw passthrough, not streamed: the worker's own JSON comes back unchanged
            reply = await fleet.request({"model": MODEL, "max_tokens": 4,
                                         "messages": [{"role": "user", "content": "Hi"}]},
                                        session_id="s1")
            assert reply.status == 200 and reply.upstream == smol_worker.url
            assert json.loads(reply.body or b"")["object"] == "chat.completion"
            # a 4xx from the worker is the client's: returned, not retried, not counted
            bad = await fleet.request({"model": MODEL, "messages": [], "max_tokens": -1})
            assert 400 <= bad.status < 500
            up = fleet.pool.get(smol_worker.url)
            assert up is not None and up.breaker.consecutive_failures == 0
        finally:
            await fleet.aclose()
