"""Two gateway processes on one real Redis: a turn written by one is read by the other,
concurrent appends to one session are all kept, a Redis restart (AOF) loses no
acknowledged turn, and Redis down means 503 + Retry-After for sessions."""

from __future__ import annotations

import concurrent.futures
import signal

import httpx
import pytest

from tests.conftest import start_worker
from tests.store.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis-gw")
    (tmp / "redis").mkdir()
    redis = RedisServer(tmp / "redis")
    redis.start()
    args = ["--model", "smollm2-135m", "--sessions", redis.url, "--cache", redis.url,
            "--no-verifier"]
    a = start_worker(tmp, *args, command="serve")
    b = start_worker(tmp, *args, command="serve")
    yield redis, a, b
    a.stop()
    b.stop()
    redis.kill()


def say(url: str, message: str, sid: str | None = None) -> httpx.Response:
    body = {"message": message, **({"session_id": sid} if sid else {})}
    return httpx.post(url + "/v1/support/messages", json=body, timeout=120)


def turns(url: str, sid: str) -> list[dict]:
    return httpx.get(f"{url}/v1/support/sessions/{sid}", timeout=30).json()["turns"]


def test_turn_written_by_one_gateway_is_read_by_the_other(fleet) -> None:
    _, a, b = fleet
    first = say(a.url, "Quanto costa la spedizione in Italia?").json()
    sid = first["session_id"]
    second = say(b.url, "E la consegna quanto tempo richiede?", sid).json()
    assert second["session_id"] == sid and second["language"] == "it"
    seen_a, seen_b = turns(a.url, sid), turns(b.url, sid)
    assert seen_a == seen_b and len(seen_a) == 4
    assert [t["role"] for t in seen_a] == ["user", "assistant", "user", "assistant"]


def test_concurrent_appends_from_both_gateways_keep_every_turn(fleet) -> None:
    _, a, b = fleet
    sid = say(a.url, "Hello, I have a few questions about my order.").json()["session_id"]
    questions = [f"Question {i}: can I return item {i}?" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda iq: say((a, b)[iq[0] % 2].url, iq[1], sid).status_code,
                              enumerate(questions)))
    assert codes == [200] * 8
    user_texts = [t["text"] for t in turns(b.url, sid) if t["role"] == "user"]
    assert sorted(user_texts[1:]) == sorted(questions) and len(user_texts) == 9


def test_redis_restart_with_aof_loses_no_acknowledged_turn(fleet) -> None:
    redis, a, b = fleet
    sid = say(a.url, "Wie lange dauert der Versand nach Österreich?").json()["session_id"]
    for i in range(4):
        assert say((a, b)[i % 2].url, f"Noch eine Frage Nummer {i}", sid).status_code == 200
    before = turns(a.url, sid)
    redis.proc.send_signal(signal.SIGKILL)
    redis.proc.wait()
    down = say(b.url, "Sind Sie noch da?", sid)
    assert down.status_code == 503 and down.headers.get("retry-after")
    assert down.json()["error"]["type"] == "service_unavailable"
    redis.start()
    after = None
    for _ in range(50):  # the clients reconnect on their own
        r = httpx.get(f"{a.url}/v1/support/sessions/{sid}", timeout=30)
        if r.status_code == 200:
            after = r.json()["turns"]
            break
    # every acknowledged message is there, answered or (after a handoff: issue 15's states)
    # held for an agent without an assistant turn
    assert after == before
    assert [t["text"] for t in after if t["role"] == "user"] == [
        "Wie lange dauert der Versand nach Österreich?",
        *(f"Noch eine Frage Nummer {i}" for i in range(4))]
