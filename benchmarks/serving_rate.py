"""Support serving rate (issue 3): the highest open-loop request rate at which p99 stays
<= 20 ms, side by side in one run, for

  ceiling   a minimal FastAPI app returning a canned JSON (benchmarks/ceiling_app.py)
  cache     ``babeldesk serve``: repeated first messages, answered from the answer cache
  kb        ``babeldesk serve``: new messages in several languages, answered from the
            knowledge base (language detection + intent matcher on every one)

Each server is one process pinned to ``--server-cpu`` (one uvicorn worker); this script,
the load generator (serving_rate_load.py), is pinned to ``--generator-cpu``. The rates
are searched per target by doubling, then bisection, with the targets' trials
interleaved (one trial per target per round), so a change in the machine's load hits
all three alike. Per core: the server process's CPU time per answered request, from
/proc (user + system, all its threads), and the requests one CPU-second serves.

    python benchmarks/serving_rate.py                       # the documented run
    python benchmarks/serving_rate.py --sessions memory     # + serve with memory:// sessions
    python benchmarks/serving_rate.py --kb-embedders e5,e5-onnx  # + kb with the int8 e5
    python benchmarks/serving_rate.py --targets ceiling --duration 1 --max-trials 2  # smoke
    python benchmarks/serving_rate.py --plot-only           # PNG from the JSON

Writes benchmarks/results/serving_rate.json and docs/img/serving_rate.png.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import serving_rate_messages as messages
from serving_rate_load import TrialResult, run_trial

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "benchmarks" / "results" / "serving_rate.json"
OUT_PNG = REPO / "docs" / "img" / "serving_rate.png"
PATH = "/v1/support/messages"
CACHE_MESSAGES = 48  # distinct messages repeated by the cache target
START_RATE = {"ceiling": 1000.0, "cache": 500.0, "kb": 20.0}  # requests/s, first trial
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    args: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  # on top of this process's environment

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (all threads)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


@dataclass
class Search:
    """Doubling until a rate misses the SLO twice in a row, then bisection (geometric
    midpoint)."""

    target: str
    server: Server
    bodies: Iterator[bytes]
    rate: float
    slo_ms: float
    lo: float = 0.0  # highest rate that met the SLO
    hi: float = math.inf  # lowest rate that missed it (twice in a row)
    retried: bool = False  # the current rate missed once and is being tried again
    trials: list[dict[str, Any]] = field(default_factory=list)

    def done(self, precision: float, min_rate: float, max_trials: int) -> bool:
        return (len(self.trials) >= max_trials or (self.lo > 0 and self.hi <= self.lo * (1 + precision))
                or (self.lo == 0 and self.hi <= min_rate))

    def record(self, result: TrialResult) -> None:
        """A miss counts only when the same rate misses again right away: on a shared
        machine one stalled trial would otherwise cap the whole search."""
        if result.meets(self.slo_ms):
            self.lo = max(self.lo, result.rate)
            self.retried = False
        elif not self.retried:
            self.retried = True
            return  # same rate once more
        else:
            self.hi = min(self.hi, result.rate)
            self.retried = False
        if self.hi == math.inf:
            self.rate = self.lo * 2
        elif self.lo == 0:
            self.rate = self.hi / 2
        else:
            self.rate = math.sqrt(self.lo * self.hi)


def start(server: Server, cpu: int | None, log_dir: Path) -> None:
    cmd = (["taskset", "-c", str(cpu)] if cpu is not None else []) + server.args
    log = open(log_dir / f"{server.name}.log", "wb")  # noqa: SIM115 - lives with the process
    env = None if server.env is None else {**os.environ, **server.env}
    server.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def wait_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} exited with {server.proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{server.name} not ready after {timeout_s:.0f} s")


def post(port: int, body: bytes) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_args(port: int, sessions: str, extra: list[str]) -> list[str]:
    return [str(Path(sys.executable).parent / "babeldesk"), "serve", "--port", str(port),
            "--threads", "1", "--sessions", sessions, *extra]


async def search_all(searches: list[Search], args: argparse.Namespace) -> None:
    """Round robin: one trial per unfinished target per round."""
    while True:
        live = [s for s in searches if not s.done(args.precision, args.min_rate, args.max_trials)]
        if not live:
            return
        for s in live:
            total = max(1, round(s.rate * (args.warmup + args.duration)))
            bodies = list(itertools.islice(s.bodies, total))
            cpu0 = s.server.cpu_s()
            result = await run_trial("127.0.0.1", s.server.port, PATH, bodies, s.rate,
                                     args.duration, args.warmup, args.connections,
                                     timeout_s=args.timeout, slo_ms=s.slo_ms)
            cpu = s.server.cpu_s() - cpu0
            row = asdict(result)
            row["server_cpu_ms_per_request"] = (1000 * cpu / result.answered
                                                if result.answered else None)
            row["meets_slo"] = result.meets(s.slo_ms)
            row["load_avg_1m"] = os.getloadavg()[0]
            s.trials.append(row)
            print(f"{s.target:>14} {result.rate:9.1f}/s p50 {result.p50_ms:8.2f} p99 "
                  f"{result.p99_ms:9.2f} ms ok {result.ok}/{result.measured}"
                  f"{' stopped' if result.stopped_early else ''} sources {result.sources} "
                  f"server {row['server_cpu_ms_per_request'] or 0:.3f} ms CPU/req, "
                  f"gen {result.generator_cpu:.2f} core, lag p99 {result.send_lag_p99_ms:.1f} ms",
                  flush=True)
            s.record(result)
            await asyncio.sleep(args.pause)
            settle(s.server)


def settle(server: Server, idle_cpu: float = 0.05, limit_s: float = 30.0) -> None:
    """Wait until the server is idle (< ``idle_cpu`` of a core over 0.2 s): a trial stopped
    early leaves up to ``--connections`` requests being processed."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = server.cpu_s()
        time.sleep(0.2)
        if server.cpu_s() - before < idle_cpu * 0.2:
            return


def run_wrk(server: Server, body: bytes, seconds: float, connections: int, cpu: int | None,
            tmp: Path) -> dict[str, Any]:
    """Closed-loop cross-check with wrk (Debian's 4.1.0, one thread): the saturation
    throughput and the server CPU per request there (no latency correction: not the
    SLO measurement)."""
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [==[{body.decode()}]==]\n")  # raw UTF-8, no escapes
    cmd = (["taskset", "-c", str(cpu)] if cpu is not None else []) + [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script),
        f"http://127.0.0.1:{server.port}{PATH}"]
    cpu0 = server.cpu_s()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu_s = server.cpu_s() - cpu0
    found_rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    found_n = re.search(r"(\d+) requests in", out)
    if found_rps is None or found_n is None:
        raise RuntimeError(f"unexpected wrk output: {out!r}")
    rps, n = float(found_rps.group(1)), int(found_n.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": rps, "requests": n, "non_2xx": int(bad.group(1)) if bad else 0,
            "server_cpu_ms_per_request": 1000 * cpu_s / n if n else None,
            "connections": connections, "seconds": seconds}


def summary(s: Search, ceiling: float | None, ceiling_cpu_ms: float | None) -> dict[str, Any]:
    best = max((t for t in s.trials if t["meets_slo"]), key=lambda t: t["rate"], default=None)
    # per core: the median over trials of the server's CPU time per answered request;
    # trials that ran to the end only (a stopped one burnt CPU on requests it dropped),
    # unless every trial was stopped
    usable = [t for t in s.trials if t["server_cpu_ms_per_request"] and t["answered"] >= 20]
    complete = [t for t in usable if not t["stopped_early"]] or usable
    cpu_ms = sorted(float(t["server_cpu_ms_per_request"]) for t in complete)
    cpu = cpu_ms[len(cpu_ms) // 2] if cpu_ms else None
    return {
        "target": s.target, "slo_ms": s.slo_ms, "max_rate_at_slo": s.lo,
        "first_miss": None if s.hi == math.inf else s.hi,
        "p99_ms_at_max": best["p99_ms"] if best else None,
        "server_cpu_ms_per_request": cpu,
        "requests_per_cpu_second": 1000 / cpu if cpu else None,
        "share_of_ceiling": s.lo / ceiling if ceiling else None,
        # the same per core: ceiling CPU per request / this target's
        "share_of_ceiling_per_cpu": ceiling_cpu_ms / cpu if ceiling_cpu_ms and cpu else None,
    }


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slo = float(data["slo_ms"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for target, trials in data["trials"].items():
        pts = sorted((t["rate"], min(t["p99_ms"] or math.inf, 5000.0)) for t in trials)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=target)
    ax1.axhline(slo, color="grey", ls="--", label=f"SLO p99 {slo:g} ms")
    ax1.set(xscale="log", yscale="log", xlabel="offered rate, requests/s (open loop)",
            ylabel="p99 latency, ms (capped at 5 s)", title="p99 per trial")
    ax1.legend(fontsize=8)
    rows = data["summary"]
    names = [r["target"] for r in rows]
    x = range(len(names))
    rates = [max(r["max_rate_at_slo"], 0.5) for r in rows]
    per_cpu = [r["requests_per_cpu_second"] or 0.5 for r in rows]
    b1 = ax2.bar([i - 0.2 for i in x], rates, 0.4, label="max rate at its p99 SLO (open loop)")
    b2 = ax2.bar([i + 0.2 for i in x], per_cpu, 0.4, label="requests per server CPU-second")
    for bar, r in zip(b1, rows):
        share = r["share_of_ceiling"]
        ax2.annotate(f"{r['max_rate_at_slo']:.0f}" + (f"\n{share:.0%}" if share is not None else ""),
                     (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                     va="bottom", fontsize=7)
    for bar, v in zip(b2, per_cpu):
        ax2.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                     ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(list(x), [f"{n}\n(p99<={r['slo_ms']:g} ms)" for n, r in zip(names, rows)],
                   fontsize=7)
    ax2.set(yscale="log", ylabel="requests/s, one server core",
            title=f"server on one core (load avg {data['load_avg_1m_start']:.1f} at start)")
    ax2.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown(data: dict[str, Any]) -> str:
    lines = [("| target | p99 SLO | max rate at SLO | p99 there | share of ceiling "
             "| server CPU per request | requests per CPU-second | share of ceiling per CPU |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def pct(v: object) -> str:
        return "" if v is None else f"{v:.1%}"

    for r in data["summary"]:
        cpu = r["server_cpu_ms_per_request"]
        p99 = "" if r["p99_ms_at_max"] is None else f"{r['p99_ms_at_max']:.1f} ms"
        lines.append(f"| {r['target']} | {r['slo_ms']:g} ms | {r['max_rate_at_slo']:.0f}/s | "
                     f"{p99} | {pct(r['share_of_ceiling'])} | "
                     f"{'' if cpu is None else f'{cpu:.3f} ms'} | "
                     f"{'' if cpu is None else f'{1000 / cpu:.0f}'} | "
                     f"{pct(r['share_of_ceiling_per_cpu'])} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="ceiling,cache,kb")
    p.add_argument("--sessions", default="sqlite", help="sqlite (the default store) and/or "
                   "memory, comma-separated: one serve process each")
    p.add_argument("--kb-embedders", default="",
                   help="comma-separated support.matcher_embedder values: the kb target once per "
                   "embedder, each its own serve (sqlite sessions); the first one is the default "
                   "serve's (e.g. e5,e5-onnx; empty: the default embedder only)")
    p.add_argument("--slo-ms", type=float, default=20.0)
    p.add_argument("--kb-loose-slo-ms", type=float, default=0.0,
                   help="also search the kb target at this looser p99 (0: no)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per trial")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds per trial not measured")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--timeout", type=float, default=10.0, help="wait for stragglers, seconds")
    p.add_argument("--precision", type=float, default=0.05, help="stop when hi/lo <= 1 + this")
    p.add_argument("--min-rate", type=float, default=2.0)
    p.add_argument("--max-trials", type=int, default=16, help="per target")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between trials")
    p.add_argument("--wrk-seconds", type=float, default=5.0,
                   help="closed-loop wrk cross-check per ceiling/cache target (0: none; "
                   "skipped when wrk is not installed)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--generator-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--serve-arg", action="append", default=[], help="extra serve argument")
    p.add_argument("--out", type=Path, default=OUT_JSON)
    p.add_argument("--png", type=Path, default=OUT_PNG)
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.png)
        return 0
    targets = args.targets.split(",")
    server_cpu = None if args.no_pin else args.server_cpu
    if not args.no_pin:
        os.sched_setaffinity(0, {args.generator_cpu})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="serving_rate_"))  # sessions.db, servers' logs
    print(f"servers' logs: {tmp}", flush=True)
    servers: dict[str, Server] = {}
    if "ceiling" in targets:
        port = free_port()
        servers["ceiling"] = Server("ceiling", [sys.executable, str(REPO / "benchmarks" / "ceiling_app.py"),
                                                "--port", str(port)], port)
    variants = [v for v in args.sessions.split(",") if v]
    if any(t != "ceiling" for t in targets):
        for v in variants:
            port = free_port()
            url = f"sqlite:///{tmp}/sessions.db" if v == "sqlite" else "memory://"
            servers[f"serve-{v}"] = Server(f"serve-{v}", serve_args(port, url, args.serve_arg), port)
    embedders = [e for e in args.kb_embedders.split(",") if e]
    env_key = "BABELDESK_SUPPORT_MATCHER_EMBEDDER"
    if embedders and "serve-sqlite" in servers:
        servers["serve-sqlite"].env = {env_key: embedders[0]}
    if "kb" in targets:
        for e in embedders[1:]:
            port = free_port()
            url = f"sqlite:///{tmp}/sessions-{e}.db"
            servers[f"serve-{e}"] = Server(f"serve-{e}", serve_args(port, url, args.serve_arg),
                                           port, env={env_key: e})
    try:
        for srv in servers.values():
            start(srv, server_cpu, tmp)
        for srv in servers.values():
            wait_ready(srv, 300)
        searches: list[Search] = []
        kept: list[messages.Skeleton] = []
        rejected = 0
        if any(t != "ceiling" for t in targets):
            kept, rejected = messages.screen(messages.skeletons(), embedders=embedders)
            print(f"message templates answered by the KB without the verifier: {len(kept)} "
                  f"(rejected {rejected})", flush=True)
        if "ceiling" in targets:
            body = messages.body("Where is my order?")
            searches.append(Search("ceiling", servers["ceiling"], itertools.repeat(body),
                                   START_RATE["ceiling"], args.slo_ms))
        for k, v in enumerate(variants):
            server = servers.get(f"serve-{v}")
            suffix = "" if v == "sqlite" else f"@{v}"
            if server is None:
                continue
            # one stream per server: no message is sent to the same server twice
            # (except the cache target's, on purpose)
            fresh = (messages.body(m) for m in messages.stream(kept, seed=k))
            if "cache" in targets:
                fixed = list(itertools.islice(fresh, CACHE_MESSAGES))
                for b in fixed:  # the first time: matcher + KB; stored in the answer cache
                    post(server.port, b)
                assert all(post(server.port, b)["source"] == "cache" for b in fixed[:3])
                searches.append(Search("cache" + suffix, server, itertools.cycle(fixed),
                                       START_RATE["cache"], args.slo_ms))
            if "kb" in targets:
                searches.append(Search("kb" + suffix, server, fresh, START_RATE["kb"],
                                       args.slo_ms))
                if args.kb_loose_slo_ms and k == 0:  # the KB path's capacity, for scale
                    searches.append(Search("kb-loose" + suffix,
                                           server, fresh, START_RATE["kb"],
                                           args.kb_loose_slo_ms))
        for k, e in enumerate(embedders[1:], start=len(variants)):
            server = servers.get(f"serve-{e}")
            if server is not None:
                fresh = (messages.body(m) for m in messages.stream(kept, seed=k))
                searches.append(Search(f"kb@{e}", server, fresh, START_RATE["kb"], args.slo_ms))
        asyncio.run(search_all(searches, args))
        closed: dict[str, Any] = {}
        if args.wrk_seconds > 0 and shutil.which("wrk"):
            gen_cpu = None if args.no_pin else args.generator_cpu
            for s in searches:
                if s.target.startswith(("ceiling", "cache")):
                    settle(s.server)
                    closed[s.target] = run_wrk(s.server, next(s.bodies), args.wrk_seconds,
                                               args.connections, gen_cpu, tmp)
                    print(f"{s.target:>14} wrk closed loop: {closed[s.target]}", flush=True)
    finally:
        for srv in servers.values():
            if srv.proc is not None:
                srv.proc.terminate()
                try:
                    srv.proc.wait(30)
                except subprocess.TimeoutExpired:
                    srv.proc.kill()
    shutil.rmtree(tmp, ignore_errors=True)  # kept (with the servers' logs) when a step failed
    ceiling = next((s.lo for s in searches if s.target == "ceiling"), None)
    first = [summary(s, ceiling, None) for s in searches]
    ceiling_cpu = next((r["server_cpu_ms_per_request"] for r in first
                        if r["target"] == "ceiling"), None)
    data: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "slo_ms": args.slo_ms, "duration_s": args.duration, "warmup_s": args.warmup,
        "connections": args.connections, "pinned": not args.no_pin,
        "server_cpu": server_cpu, "generator_cpu": args.generator_cpu,
        "load_avg_1m_start": load_start, "load_avg_1m_end": os.getloadavg()[0],
        "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "python": platform.python_version(),
        "kb_templates_kept": len(kept), "kb_templates_rejected": rejected,
        "kb_embedders": embedders,
        "summary": [summary(s, ceiling, ceiling_cpu) for s in searches],
        "wrk_closed_loop": closed,
        "trials": {s.target: s.trials for s in searches},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite(data), indent=1, allow_nan=False))
    plot(data, args.png)
    print(markdown(data))
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _finite(value: object) -> object:
    """inf / nan (a p99 with failed requests) -> None, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
