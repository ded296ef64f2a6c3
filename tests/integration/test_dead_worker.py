"""A dead worker costs no customer an error while healthy capacity remains (issue 14).

Three real workers (smollm2-135m) behind a real ``babeldesk gateway``; N concurrent
clients send 60 non-streamed chat completions through the OpenAI passthrough; after the
12th answer one worker with requests in flight is SIGKILLed. Every one of the 60 must be
a 200 with content: the requests in flight on the dead worker (connection reset) and
those sent to it before its breaker opens (connection refused) are retried on the other
two, whatever the retry budget says (``fleet.retry_budget_healthy_share``).
Before that rule, the same run gave 2 of 60 a 503 "retry budget exhausted".

``BABELDESK_DEAD_WORKER_RUNS`` (default 1) repeats each client count that many times,
killing a different worker each time (the killed one is restarted before the next run).
With ``BABELDESK_DEAD_WORKER_RUNS=10`` (2026-12-03, the shared 2-core machine, 7 min 22 s):
20 of 20 passed, 10 at 8 clients and 10 at 16; 2-6 requests in flight on the victim at
the kill, 3-33 failed calls on it, every one retried.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import WorkerProcess, free_port
from tests.integration.test_chaos import admin, wait_for

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
WORKER_ARGS = ("--model", MODEL, "--max-batch-size", "8", "--max-new-tokens", "8")
REQUESTS = 60
KILL_AFTER = 12
RUNS = int(os.environ.get("BABELDESK_DEAD_WORKER_RUNS", "1"))
GATEWAY_CONFIG = {
    # the defaults of retries and budget (3 tries, ratio 0.2, floor 3) are under test; only
    # what lets a restarted worker back in quickly and what three workers on two shared
    # cores need is changed
    "fleet": {"breaker_reset_s": 1.0, "breaker_max_reset_s": 2.0, "health_interval_s": 0.5,
              "first_byte_timeout_s": 240, "read_timeout_s": 240, "retry_deadline_s": 480},
    "support": {"verifier": False, "docs": False},
}


class Fleet3:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.workers = [WorkerProcess(list(WORKER_ARGS), free_port(), tmp / f"w{i}.log")
                        for i in range(3)]
        self.gateway: WorkerProcess | None = None
        self.restarts = 0

    def revive(self) -> None:
        """Restart any dead worker on its port; wait until all three are in rotation."""
        for i, w in enumerate(self.workers):
            if w.proc.poll() is not None:
                w.stop()
                self.restarts += 1
                self.workers[i] = WorkerProcess(list(WORKER_ARGS), w.port,
                                                self.tmp / f"w{i}-{self.restarts}.log")
        for w in self.workers:
            w.wait_ready()
        assert self.gateway is not None
        gw = self.gateway.url
        wait_for("all workers in rotation", lambda: all(
            u["usable"] for u in admin(gw).values()), 120, 0.1, show=lambda: admin(gw))

        def closed() -> bool:  # a half-open breaker closes on its first good call
            if all(u["state"] == "closed" for u in admin(gw).values()):
                return True
            with httpx.Client(base_url=gw, timeout=120) as client:
                assert not _one(client, -1)
            return False

        wait_for("every breaker closed", closed, 120, 0.1, show=lambda: admin(gw))


@pytest.fixture(scope="module")
def fleet3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet3]:
    tmp = tmp_path_factory.mktemp("dead-worker")
    f = Fleet3(tmp)
    try:
        for w in f.workers:
            w.wait_ready()
        cfg = tmp / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(GATEWAY_CONFIG))
        args = ["-c", str(cfg), "--upstream-model", MODEL, "--sessions", "memory://",
                "--no-verifier"]
        for w in f.workers:
            args += ["--upstream", w.url]
        f.gateway = WorkerProcess(args, free_port(), tmp / "gateway.log", "gateway")
        f.gateway.wait_ready()
        yield f
    finally:
        if f.gateway is not None:
            f.gateway.stop()
        for w in f.workers:
            w.stop()


def _one(client: httpx.Client, n: int) -> str:
    """'' for a good answer, else what went wrong."""
    try:
        r = client.post("/v1/chat/completions", json={
            "model": MODEL, "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": f"Name a colour ({n})."}]})
    except httpx.HTTPError as exc:
        return f"{n}: {type(exc).__name__}: {exc}"
    if r.status_code != 200:
        return f"{n}: {r.status_code} {r.text[:300]}"
    content = r.json()["choices"][0]["message"]["content"]
    return "" if isinstance(content, str) else f"{n}: no content {r.text[:300]}"


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("clients", [8, 16])
def test_sigkill_mid_run_costs_no_request(fleet3: Fleet3, clients: int, run: int) -> None:
    fleet3.revive()
    assert fleet3.gateway is not None
    gw = fleet3.gateway.url
    victim = fleet3.workers[(run + clients) % 3]
    next_n = iter(range(REQUESTS))
    lock = threading.Lock()
    problems: list[str] = []
    done = [0]
    twelfth = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=gw, timeout=600) as client:
            while True:
                with lock:
                    n = next(next_n, None)
                if n is None:
                    return
                problem = _one(client, n)
                with lock:
                    done[0] += 1
                    if problem:
                        problems.append(problem)
                    if done[0] >= KILL_AFTER:
                        twelfth.set()

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    assert twelfth.wait(600), "12 answers never came"
    # kill it while it has requests in flight (the loss under test)
    in_flight: dict[str, Any] = wait_for(
        "requests in flight on the victim",
        lambda: (lambda u: u if u["outstanding"] > 0 else None)(admin(gw)[victim.url]), 120,
        0.01)
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    for t in threads:
        t.join(timeout=900)
    assert not any(t.is_alive() for t in threads)
    after = admin(gw)[victim.url]
    lost = sum(n for k, n in after["requests"].items()
               if k in ("protocol_error", "connect_error", "timeout", "server_error"))
    assert not problems, problems
    assert done[0] == REQUESTS
    assert lost >= 1, after  # the kill did cost the victim requests: they were retried
    print(f"\n{clients} clients: {REQUESTS} requests, 0 errors; {in_flight['outstanding']} "
          f"in flight on the victim at the kill, {lost} failed calls on it, retried")
