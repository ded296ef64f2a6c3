"""Chaos: three real babeldesk workers (smollm2-135m) behind a real ``babeldesk gateway``
under steady concurrent load; one worker is SIGKILLed, then restarted on its port.

Load: sessions that each send one turn after another (bounded in turns and time), two
thirds OpenAI passthrough (non-streamed, ``x-session-id``), one third support messages
(non-streamed, ``session_id``). Which worker answered a turn comes back in the
``x-babeldesk-upstream`` response header (the gateway sets it on both paths).

Asserted: every request succeeds (no 5xx, no "model unavailable" handoff); the killed
worker's breaker opens after at most ``breaker_failures`` failed calls (admin endpoint
and ``babeldesk_upstream_state`` / ``babeldesk_upstream_requests_total``); it is back in
rotation within ``breaker_reset_s`` + one health interval of being ready again; while all
workers are healthy, >= 95% of each session's turns land on one worker.

Not caught here: a support message whose upstream stream is cut by the kill after its
first event comes back 200 with the text cut short (the fleet ends the stream with an
error; the support pipeline does not act on it). test_gateway_faults.py pins that down
with a dropping server, as strict xfails until the pipeline handles it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from uhashring import HashRing

from tests.conftest import WorkerProcess, free_port, start_worker

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
WORKER_ARGS = ("--model", MODEL, "--max-batch-size", "4", "--max-new-tokens", "16")
BREAKER_FAILURES = 5
RESET_S = 3.0  # breaker_reset_s: open -> half-open
INTERVAL_S = 1.0  # health_interval_s
JITTER = 0.1  # health_jitter: an interval is at most INTERVAL_S * (1 + JITTER)
GATEWAY_CONFIG = {
    "fleet": {
        "policy": "session_affinity",
        "breaker_failures": BREAKER_FAILURES,
        "breaker_reset_s": RESET_S,
        "breaker_max_reset_s": 2 * RESET_S,
        "health_interval_s": INTERVAL_S,
        "health_jitter": JITTER,
        # probes alone would take a dead worker out only after 10 minutes, so it is the
        # breaker, fed by the load's failed calls, that takes it out here: the thing under
        # test. One passing probe brings it back (and half-opens its breaker).
        "unhealthy_threshold": 600,
        # three workers and the gateway share two busy cores in CI: a turn may take long
        "first_byte_timeout_s": 240,
        "read_timeout_s": 240,
        "retry_deadline_s": 480,
        "healthy_threshold": 1,
    },
    # short model answers keep three workers on two shared cores responsive
    # no help center: an off-topic question then reaches the model through the fleet (with
    # one, a question no article covers is a handoff, and these tests need model calls)
    "support": {"verifier": False, "reply_max_tokens": 8, "docs": False},
    # which worker answered each turn (a test-only header: internal addresses)
    "gateway": {"upstream_header": True},
}
PASSTHROUGH_PER_WORKER = 2  # sessions homed on each worker (computed from the ring)
SUPPORT_PER_WORKER = 1
VICTIM_SESSIONS = PASSTHROUGH_PER_WORKER + SUPPORT_PER_WORKER
WARM_TURNS = 3  # turns per session before the kill, and again after recovery
MAX_TURNS = 80  # per session: the load is bounded in count ...
DEADLINE_S = 900.0  # ... and in time
FAILED = {"server_error", "timeout", "connect_error", "protocol_error", "broken_stream"}


@dataclass
class Turn:
    session: str
    kind: str  # "openai" | "support"
    started: float  # seconds, monotonic
    ended: float
    status: int
    upstream: str  # "" when no worker was called (a knowledge-base answer)
    problem: str  # "" when the client got a good answer


class Load:
    """One thread per session, each sending a turn after the previous one's answer."""

    def __init__(self, gateway: str, sessions: dict[str, str]) -> None:
        self.gateway = gateway
        self.sessions = sessions  # id -> kind
        self.turns: list[Turn] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(sid, kind), daemon=True)
                         for sid, kind in sessions.items()]
        self._deadline = time.monotonic() + DEADLINE_S

    def __enter__(self) -> Load:  # noqa: PYI034
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=180)

    def _run(self, sid: str, kind: str) -> None:
        with httpx.Client(base_url=self.gateway, timeout=300) as client:
            for n in range(MAX_TURNS):
                if self.stop.is_set() or time.monotonic() > self._deadline:
                    return
                started = time.monotonic()
                try:
                    status, upstream, problem = (self._openai if kind == "openai"
                                                 else self._support)(client, sid, n)
                except httpx.HTTPError as exc:
                    status, upstream, problem = 0, "", f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.turns.append(Turn(sid, kind, started, time.monotonic(), status,
                                           upstream, problem))

    @staticmethod
    def _openai(client: httpx.Client, sid: str, n: int) -> tuple[int, str, str]:
        r = client.post("/v1/chat/completions", headers={"x-session-id": sid}, json={
            "model": MODEL, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": f"Count to three ({sid}, turn {n})."}]})
        problem = "" if r.status_code == 200 else f"{r.status_code}: {r.text[:300]}"
        if not problem:
            body = r.json()
            if not isinstance(body["choices"][0]["message"]["content"], str):
                problem = f"no content: {body}"
        return r.status_code, r.headers.get("x-babeldesk-upstream", ""), problem

    @staticmethod
    def _support(client: httpx.Client, sid: str, n: int) -> tuple[int, str, str]:
        # off-topic and new every turn: no KB intent, no cache hit, no repeat handoff,
        # so the model answers (through the fleet)
        topics = ("volcanoes", "the moon", "jazz", "penguins", "origami", "chess", "tea",
                  "bridges", "comets", "violins")
        r = client.post("/v1/support/messages", json={
            "session_id": sid,
            "message": f"Tell me one short fact about {topics[n % len(topics)]}, please "
                       f"(question {n})."})
        problem = "" if r.status_code == 200 else f"{r.status_code}: {r.text[:300]}"
        if not problem:
            body = r.json()
            if not body["reply"]:
                problem = f"empty reply: {body}"
            elif (body.get("handoff") or {}).get("reason") == "model_unavailable":
                problem = f"model unavailable: {body}"
        return r.status_code, r.headers.get("x-babeldesk-upstream", ""), problem

    def done(self, since: float, turns: int) -> bool:
        """Has every session finished ``turns`` turns started after ``since``?"""
        with self._lock:
            counts = Counter(t.session for t in self.turns if t.started >= since)
        return all(counts[s] >= turns for s in self.sessions)

    def snapshot(self) -> list[Turn]:
        with self._lock:
            return list(self.turns)


def ring_home(urls: list[str], sid: str) -> str:
    """The worker a session id hashes to: the gateway's ring (uhashring over the worker
    urls, weight 1, as babeldesk.fleet.routing builds it)."""
    ring = HashRing(nodes={u: {"weight": 1} for u in urls})
    return str(next(iter(ring.iterate_nodes(sid))))


def balanced_sessions(gateway: str, urls: list[str]) -> dict[str, str]:
    """Sessions spread evenly over the workers by their ring home, so the killed worker's
    calls in flight stay within the retry budget's floor of 3. Passthrough session ids are
    the client's to choose; support sessions are created by the gateway (a knowledge-base
    question, answered without the model) and kept when their id lands where wanted."""
    want = {u: {"openai": PASSTHROUGH_PER_WORKER, "support": SUPPORT_PER_WORKER} for u in urls}
    out: dict[str, str] = {}
    for i in range(10_000):
        home = ring_home(urls, f"chaos-{i}")
        if want[home]["openai"]:
            want[home]["openai"] -= 1
            out[f"chaos-{i}"] = "openai"
        if not any(w["openai"] for w in want.values()):
            break
    with httpx.Client(base_url=gateway, timeout=60) as client:
        for _ in range(60):
            if not any(w["support"] for w in want.values()):
                return out
            r = client.post("/v1/support/messages",
                            json={"message": "How long does delivery take?"})
            r.raise_for_status()
            sid = r.json()["session_id"]
            home = ring_home(urls, sid)
            if want[home]["support"]:
                want[home]["support"] -= 1
                out[sid] = "support"
    raise AssertionError(f"could not balance the sessions over the ring: {want}")


def admin(gateway: str) -> dict[str, Any]:
    r = httpx.get(gateway + "/v1/admin/upstreams", timeout=10)
    r.raise_for_status()
    return {u["name"]: u for u in r.json()["upstreams"]}


def upstream_metrics(gateway: str, name: str) -> tuple[float, Counter[str]]:
    """(babeldesk_upstream_state, upstream_requests_total by outcome) for one upstream."""
    state = -1.0
    outcomes: Counter[str] = Counter()
    text = httpx.get(gateway + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("upstream") != name:
                continue
            if s.name == "babeldesk_upstream_state":
                state = s.value
            elif s.name == "babeldesk_upstream_requests_total":
                outcomes[s.labels["outcome"]] += int(s.value)
    return state, outcomes


def failures(outcomes: dict[str, int]) -> int:
    return sum(n for k, n in outcomes.items() if k in FAILED)


def wait_for(what: str, check: Any, timeout: float, every: float = 0.1,
             show: Any = None) -> Any:
    """Poll ``check`` until it returns something true; on timeout say what ``show`` says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}"
                       + (f": {show()}" if show else ""))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[list[WorkerProcess], WorkerProcess, Path]]:
    # three workers load together (one thread each), then the gateway in front of them
    workers = [WorkerProcess(list(WORKER_ARGS), free_port(), tmp_path / f"worker-{i}.log")
               for i in range(3)]
    gateway: WorkerProcess | None = None
    try:
        for w in workers:
            w.wait_ready()
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(GATEWAY_CONFIG))
        args = ["-c", str(cfg), "--upstream-model", MODEL, "--sessions", "memory://",
                "--no-verifier"]
        for w in workers:
            args += ["--upstream", w.url]
        gateway = start_worker(tmp_path, *args, command="gateway")
        yield workers, gateway, tmp_path
    finally:
        if gateway is not None:
            gateway.stop()
        for w in workers:
            w.stop()


def test_sigkill_a_worker_under_load(fleet) -> None:
    workers, gateway, tmp = fleet
    gw = gateway.url
    urls = [w.url for w in workers]
    sessions = balanced_sessions(gw, urls)
    victim = workers[0]
    with Load(gw, sessions) as load:
        # 1. all healthy: every session settles on its worker
        t0 = time.monotonic()
        wait_for("the warm-up turns", lambda: load.done(t0, WARM_TURNS), 600, 0.2,
                 show=lambda: load.snapshot()[-12:])
        t_kill_start = time.monotonic()
        before = admin(gw)[victim.url]
        in_flight_at_kill = before["outstanding"]

        # 2. SIGKILL one worker: its breaker opens after at most 5 failed calls
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        t_kill = time.monotonic()

        def victim_if_open() -> dict[str, Any] | None:
            up = admin(gw)[victim.url]
            return up if up["state"] == "open" else None

        opened = wait_for("the victim's breaker to open", victim_if_open, 300, 0.05,
                          show=lambda: (in_flight_at_kill, admin(gw), load.snapshot()[-12:]))
        state_gauge, outcomes = upstream_metrics(gw, victim.url)
        # it opened on the 5th consecutive failure (a dead worker answers nothing, so no
        # success came between them), and neither the admin view nor the gauge hides it
        assert opened["consecutive_failures"] == BREAKER_FAILURES, opened
        assert opened["openings"] == before["openings"] + 1 and not opened["usable"]
        assert state_gauge in (1.0, 2.0)  # open (or half-open by the time of the scrape)
        failed_at_open = failures(opened["requests"]) - failures(before["requests"])
        assert failed_at_open >= BREAKER_FAILURES
        assert failures(outcomes) - failures(before["requests"]) >= failed_at_open
        time.sleep(min(max(time.monotonic() - t_kill, 2.0), 10.0))  # load flows around it
        # while open, no new call reaches it but the half-open trials (each failed trial
        # reopens it); calls already under way when it opened may still fail: at most one
        # per other session homed there (a session has one call in flight at a time)
        dead = admin(gw)[victim.url]
        trials = dead["openings"] - opened["openings"]
        failed_calls = failures(dead["requests"]) - failures(before["requests"])
        assert failed_calls <= BREAKER_FAILURES + (VICTIM_SESSIONS - 1) + trials, (
            failed_calls, trials, dead)

        # 3. restart on the same port: back in rotation within reset + one health interval
        victim.stop()  # closes the old log
        revived = WorkerProcess(list(WORKER_ARGS), victim.port,
                                tmp / "worker-0-restarted.log")
        workers[0] = revived  # the fixture stops it
        revived.wait_ready()
        t_ready = time.monotonic()  # /ready answered 200 within the last 0.05 s
        wait_for("the revived worker back in rotation",
                 lambda: admin(gw)[victim.url]["usable"], 60, 0.05,
                 show=lambda: admin(gw)[victim.url])
        t_back = time.monotonic()
        bound = RESET_S + INTERVAL_S * (1 + JITTER)
        assert t_back - t_ready <= bound, (t_back - t_ready, bound)
        wait_for("the revived worker's breaker to close",
                 lambda: admin(gw)[victim.url]["state"] == "closed", 300, 0.05,
                 show=lambda: admin(gw)[victim.url])
        t_closed = time.monotonic()
        served_before = admin(gw)[victim.url]["requests"].get("ok", 0)

        # 4. all healthy again: sessions return home
        wait_for("the turns after recovery", lambda: load.done(t_closed, WARM_TURNS), 600, 0.2,
                 show=lambda: load.snapshot()[-12:])
    turns = load.snapshot()
    final = admin(gw)[victim.url]

    # zero client-visible errors, whatever phase
    bad = [t for t in turns if t.problem]
    assert not bad, bad[:5]
    assert len(turns) >= 2 * WARM_TURNS * len(sessions)
    assert final["requests"].get("ok", 0) > served_before  # the revived worker serves again

    # affinity while every worker was healthy: before the kill, and after it closed again
    for label, lo, hi in (("before the kill", t0, t_kill_start),
                          ("after recovery", t_closed, float("inf"))):
        for sid in sessions:
            homes = Counter(t.upstream for t in turns
                            if t.session == sid and lo <= t.started and t.ended <= hi
                            and t.upstream)
            total = sum(homes.values())
            assert total >= 1, (label, sid)
            share = homes.most_common(1)[0][1] / total
            assert share >= 0.95, (label, sid, homes)
    # the killed worker's sessions moved while it was out, and only they did
    moved = {t.session for t in turns if t_kill <= t.started and t.ended <= t_ready
             and t.upstream and t.upstream != _home(turns, t.session, t0, t_kill_start)}
    victims = {sid for sid in sessions if _home(turns, sid, t0, t_kill_start) == victim.url}
    assert moved <= victims, (moved, victims)
    print(f"\nchaos: {len(turns)} turns, 0 errors; breaker opened after {BREAKER_FAILURES} "
          f"consecutive failures ({in_flight_at_kill} calls in flight at the kill, "
          f"{failed_calls} failed calls while it was dead, {trials} failed trials); back in rotation "
          f"{t_back - t_ready:.2f}s after ready (bound {bound:.2f}s)")


def _home(turns: list[Turn], sid: str, lo: float, hi: float) -> str:
    homes = Counter(t.upstream for t in turns
                    if t.session == sid and lo <= t.started and t.ended <= hi and t.upstream)
    return homes.most_common(1)[0][0] if homes else ""
