"""A real worker process, the official OpenAI SDK as the client."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

PROMPTS = {
    "en": "Hello! How long does delivery take?",
    "zh": "你好，我的订单什么时候发货？",
    "es": "Hola, ¿puedo devolver un producto?",
}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def streamed_text(c: openai.OpenAI, model: str, prompt: str, **kw: object) -> tuple[str, object]:
    parts, usage = [], None
    stream = c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=True,
        stream_options={"include_usage": True}, **kw)
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
    return "".join(parts), usage


@pytest.mark.parametrize("lang", sorted(PROMPTS))
def test_streamed_equals_non_streamed_greedy(smol_worker, lang: str) -> None:
    c = client(smol_worker.url)
    models = [m.id for m in c.models.list().data]
    assert models == ["smollm2-135m"]
    full = c.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": PROMPTS[lang]}],
        max_tokens=40, temperature=0)
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.completion_tokens > 0 and full.usage.prompt_tokens > 5
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    s_text, s_usage = streamed_text(c, "smollm2-135m", PROMPTS[lang], max_tokens=40, temperature=0)
    assert s_text == text
    assert s_usage.completion_tokens == full.usage.completion_tokens


def test_sampling_with_seed_is_repeatable(smol_worker) -> None:
    c = client(smol_worker.url)
    kw = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell me a story."}],
          "max_tokens": 20, "temperature": 0.9, "top_p": 0.95, "seed": 1234}
    a = c.chat.completions.create(**kw).choices[0].message.content
    b = c.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_stop_sequences(smol_worker) -> None:
    c = client(smol_worker.url)
    kw = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Count from 1 to 20."}],
          "max_tokens": 40, "temperature": 0}
    full = c.chat.completions.create(**kw).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = c.chat.completions.create(stop=[stop], **kw)
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]


def test_64_concurrent_streams_with_early_disconnects(smol_worker) -> None:
    """A quarter of the clients hang up after their first tokens; all others complete
    and the queue and running batch return to zero."""
    url = smol_worker.url

    async def one(i: int, ac: httpx.AsyncClient) -> tuple[int, str, str | None]:
        body = {"model": "smollm2-135m", "stream": True, "temperature": 0, "max_tokens": 24,
                "messages": [{"role": "user", "content": f"Question {i}: what is your return policy?"}]}
        text, finish, events = "", None, 0
        async with ac.stream("POST", url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events += 1
                chunk = json.loads(line[6:])
                for ch in chunk["choices"]:
                    text += ch["delta"].get("content") or ""
                    finish = ch["finish_reason"] or finish
                if i % 4 == 0 and events >= 3:
                    return i, text, "disconnected"
        return i, text, finish

    async def run() -> list[tuple[int, str, str | None]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=120, limits=limits) as ac:
            return await asyncio.gather(*[one(i, ac) for i in range(64)])

    results = asyncio.run(run())
    completed = [r for r in results if r[0] % 4 != 0]
    assert len(completed) == 48
    assert all(f in ("stop", "length") and t for _, t, f in completed)
    assert all(f == "disconnected" for i, _, f in results if i % 4 == 0)
    ready = {}
    for _ in range(100):
        ready = httpx.get(url + "/ready").json()
        if ready["running"] == 0 and ready["waiting"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert ready["running"] == 0 and ready["waiting"] == 0
    metrics = httpx.get(url + "/metrics").text
    assert "babeldesk_queue_depth 0.0" in metrics
    assert "babeldesk_running_sequences 0.0" in metrics
    assert 'babeldesk_engine_requests_total{finish_reason="abort"}' in metrics


def _sample(url: str, prefix: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _aborted(url: str) -> float:
    return _sample(url, 'babeldesk_engine_requests_total{finish_reason="abort"}')


def _hung_up(url: str) -> float:
    return _sample(url, 'babeldesk_requests_total{app="worker",route="/v1/chat/completions",'
                        'status="499"}')


def test_non_streamed_client_that_hangs_up_frees_its_slot(smol_worker) -> None:
    """A whole answer whose client gives up after 1 s: the worker notices the hang-up,
    aborts the sequence and frees its slot long before the 900 tokens asked for (~8 s
    here), counts the request as 499, and logs no stack trace for it."""
    before, gone = _aborted(smol_worker.url), _hung_up(smol_worker.url)
    log_start = smol_worker.log.stat().st_size
    body = {"messages": [{"role": "user", "content": "Write a very long story about a parcel."}],
            "max_tokens": 900, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(smol_worker.url + "/v1/chat/completions", json=body, timeout=1.0)
    ready = {}
    for _ in range(100):  # well before 900 tokens could have been generated
        ready = httpx.get(smol_worker.url + "/ready").json()
        if ready["running"] == 0 and ready["waiting"] == 0 and \
                _hung_up(smol_worker.url) > gone:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert ready["running"] == 0 and ready["waiting"] == 0
    assert _aborted(smol_worker.url) == before + 1  # cancelled, not run to its end
    assert _hung_up(smol_worker.url) == gone + 1  # the client left: neither 200 nor 500
    with smol_worker.log.open("rb") as f:
        f.seek(log_start)
        logged = f.read().decode("utf-8", "replace")
    assert "Traceback" not in logged and "ERROR" not in logged, logged
