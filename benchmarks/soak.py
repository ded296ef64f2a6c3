"""Soak and faults (issue 14, item 8): mixed multilingual support traffic through 2 real
gateways, 2 real workers and one real Redis for ``--minutes``, with, in order, one worker
SIGKILLed (and restarted), Redis SIGKILLed and restarted on its data (AOF, fsync always),
and a flood of messages from one client IP.

    python benchmarks/soak.py --minutes 20 --out benchmarks/results/soak/soak.json

Clients hold short conversations (a new session every few messages) with messages from
``benchmarks/data`` (intent and out-of-scope test sets, many languages; some reach the
model), each client with its own IP (X-Forwarded-For: the gateways run with
``limits.forwarded_for``, as behind the deployment's own proxy), alternating gateways.
The report:

- turns acknowledged vs stored: every 200 reply is 2 turns (the message and the answer;
  1 once the conversation waits for a person: the message only);
  at the end each session's stored transcript is read through the operator API and
  counted (must be equal: nothing acknowledged is lost, nothing stored twice);
- client-visible errors outside the flood, by status and by phase (a Redis restart is
  allowed a few seconds of 503 with Retry-After; the worker's death none);
- the flood's 429 share (the per-IP limit: 120/minute);
- RSS of every process after warm-up and at the end (growth per process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent / "babeldesk"
OPS_KEY = "soak-operator-0123456789"
TURNS_PER_SESSION = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Proc:
    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None,
                 url: str | None = None) -> None:
        self.name, self.args, self.log, self.env, self.url = name, args, log, env, url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(self.env or {})})

    def wait_ready(self, path: str = "/ready", timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} not ready")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def messages() -> list[str]:
    out = []
    for name in ("intent_test.jsonl", "oos_test.jsonl"):
        for line in (HERE / "data" / name).read_text("utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line)["text"])
    return out


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: Counter[str] = Counter()  # session id -> turns acknowledged
        self.errors: Counter[str] = Counter()  # "phase status" -> count
        self.ok = 0
        self.flood: Counter[int] = Counter()
        self.phase = "warm-up"
        self.latencies: list[float] = []


def client(i: int, gateways: list[str], texts: list[str], stop: threading.Event,
           tally: Tally, think_s: float) -> None:
    rng = random.Random(i)
    ip = f"10.1.{i // 250}.{i % 250 + 1}"
    with httpx.Client(timeout=300) as http:
        while not stop.is_set():
            session: str | None = None
            for turn in range(TURNS_PER_SESSION):
                if stop.is_set():
                    return
                gw = gateways[(i + turn) % len(gateways)]
                body: dict[str, Any] = {"message": rng.choice(texts)}
                if session:
                    body["session_id"] = session
                t0 = time.monotonic()
                try:
                    r = http.post(gw + "/v1/support/messages", json=body,
                                  headers={"x-forwarded-for": ip})
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    r, status = None, type(exc).__name__
                with tally.lock:
                    if r is not None and r.status_code == 200:
                        reply = r.json()
                        session = reply["session_id"]
                        # a conversation handed off stores the message only (no assistant
                        # reply: source "agent", text "")
                        tally.acked[session] += 1 if reply["source"] == "agent" else 2
                        tally.ok += 1
                        tally.latencies.append(time.monotonic() - t0)
                    else:
                        tally.errors[f"{tally.phase} {status}"] += 1
                if r is None or r.status_code != 200:
                    time.sleep(1.0)
                    break  # a new conversation
                time.sleep(think_s)


FLOOD_THREADS = 8
FLOOD_MESSAGE = "Where is my order? It has not arrived yet."  # a KB answer, then cached


def flood(gateway: str, stop: threading.Event, tally: Tally) -> None:
    """One client IP sending as fast as ``FLOOD_THREADS`` connections go."""
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            try:
                r = http.post(gateway + "/v1/support/messages", json={"message": FLOOD_MESSAGE},
                              headers={"x-forwarded-for": "10.9.9.9"})
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            with tally.lock:
                tally.flood[status] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--think-s", type=float, default=1.0)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "soak" / "soak.json")
    args = ap.parse_args()
    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        raise SystemExit("redis-server not found (scripts/install.sh --test installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="babeldesk-soak-"))
    rport = free_port()
    redis = Proc("redis", [redis_exe, "--port", str(rport), "--bind", "127.0.0.1",
                           "--dir", str(tmp), "--appendonly", "yes", "--appendfsync", "always",
                           "--save", ""], tmp / "redis.log")
    rurl = f"redis://127.0.0.1:{rport}"
    workers = [Proc(f"worker{i}", [str(BIN), "worker", "--port", str(p), "--threads", "1",
                                    "--model", args.model, "--max-new-tokens", "24"],
                    tmp / f"worker{i}.log", url=f"http://127.0.0.1:{p}")
               for i, p in enumerate((free_port(), free_port()))]
    cfg = tmp / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({
        "support": {"verifier": False, "docs": False},
        "limits": {"storage_url": f"{rurl}/2", "forwarded_for": True},
        "fleet": {"health_interval_s": 0.5, "breaker_reset_s": 1.0}}))
    gateways = [Proc(f"gateway{i}", [
        str(BIN), "gateway", "-c", str(cfg), "--port", str(p), "--upstream-model", args.model,
        *[a for w in workers for a in ("--upstream", str(w.url))],
        "--sessions", f"{rurl}/1", "--cache", f"{rurl}/0", "--no-verifier"],
        tmp / f"gateway{i}.log", url=f"http://127.0.0.1:{p}",
        env={"BABELDESK_GATEWAY_API_KEY": OPS_KEY})
        for i, p in enumerate((free_port(), free_port()))]
    procs = [redis, *workers, *gateways]
    tally, stop = Tally(), threading.Event()
    report: dict[str, Any] = {"minutes": args.minutes, "clients": args.clients,
                              "model": args.model, "events": []}
    try:
        redis.start()
        time.sleep(1.0)
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        for g in gateways:
            g.start()
        for g in gateways:
            g.wait_ready()
        texts = messages()
        urls = [str(g.url) for g in gateways]
        threads = [threading.Thread(target=client, args=(i, urls, texts, stop, tally,
                                                          args.think_s), daemon=True)
                   for i in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        total = args.minutes * 60

        def at(share: float) -> None:
            time.sleep(max(0.0, t0 + share * total - time.monotonic()))

        def event(what: str) -> None:
            report["events"].append({"t_s": round(time.monotonic() - t0, 1), "event": what})
            print(f"[{time.monotonic() - t0:7.1f}s] {what}", flush=True)

        at(0.1)
        rss0 = {p.name: rss_mb(p.proc.pid) for p in procs if p.proc}
        tally.phase = "steady"
        event("warm-up over; RSS sampled")
        at(0.25)
        tally.phase = "worker-kill"
        workers[0].kill()
        event("worker0 SIGKILLed")
        time.sleep(5)
        workers[0].start()
        workers[0].wait_ready()
        event("worker0 back")
        tally.phase = "steady"
        at(0.45)
        tally.phase = "redis-restart"
        redis.kill()
        event("redis SIGKILLed")
        redis.start()
        time.sleep(1.0)
        event("redis restarted")
        at(0.5)
        tally.phase = "steady"
        at(0.6)
        tally.phase = "flood"
        flood_stop = threading.Event()
        flooders = [threading.Thread(target=flood, args=(urls[i % 2], flood_stop, tally),
                                     daemon=True) for i in range(FLOOD_THREADS)]
        for f in flooders:
            f.start()
        event("flood from 10.9.9.9 begins")
        at(0.8)
        flood_stop.set()
        for f in flooders:
            f.join()
        tally.phase = "steady"
        event("flood over")
        at(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=330)
        event("traffic stopped")
        rss1 = {p.name: rss_mb(p.proc.pid) for p in procs if p.proc}
        stored: dict[str, int] = {}
        with httpx.Client(timeout=60, headers={"authorization": f"Bearer {OPS_KEY}"}) as http:
            for sid in tally.acked:
                r = http.get(f"{urls[0]}/v1/transcripts/{sid}")
                stored[sid] = len(r.json()["turns"]) if r.status_code == 200 else -1
        acked = sum(tally.acked.values())
        lat = sorted(tally.latencies)
        flood_total = sum(tally.flood.values())
        report.update({
            "answered": tally.ok,
            "turns_acknowledged": acked, "turns_stored": sum(max(0, n) for n in stored.values()),
            "sessions": len(stored),
            "sessions_mismatched": {s: [tally.acked[s], n] for s, n in stored.items()
                                    if n != tally.acked[s]},
            "errors_outside_flood": dict(tally.errors),
            "flood": {"requests": flood_total, "status": dict(tally.flood),
                      "share_429": round(tally.flood[429] / flood_total, 4) if flood_total
                      else None},
            "latency_s": {"p50": round(lat[len(lat) // 2], 3) if lat else None,
                          "p99": round(lat[int(len(lat) * 0.99)], 3) if lat else None},
            "rss_mb": {n: {"after_warmup": round(rss0.get(n, 0), 1), "end": round(v, 1),
                           "growth": round(v - rss0.get(n, 0), 1)} for n, v in rss1.items()},
        })
    finally:
        stop.set()
        for p in reversed(procs):
            p.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "sessions_mismatched"},
                     indent=1))
    print(f"logs: {tmp}")
    return 0 if report.get("turns_acknowledged") == report.get("turns_stored") else 1


if __name__ == "__main__":
    raise SystemExit(main())
