"""What the gateway's fleet passthrough costs over calling a worker directly, next to nginx
(``babeldesk deploy nginx``, a real nginx) in front of the same workers, in the same run.

    python benchmarks/gateway_overhead.py [--workers 2] [--requests 2000]
        [--chat-requests 200] [--concurrency 16] [--duration-s 8] [--profile]
        [--json benchmarks/results/fleet/gateway_overhead.json]
        [--png docs/img/gateway-overhead.png]

Starts ``--workers`` real babeldesk workers (smollm2-135m, one thread), ``babeldesk gateway``
in front of them, and nginx with the rendered config, all on 127.0.0.1 ports.

Upstream call: ``GET /v1/models`` on the real workers. It is a real answer of the real
worker's HTTP stack but needs no model compute, so what differs between the three paths
is the proxy alone; a model call's own spread (milliseconds) would hide a sub-millisecond
difference. A non-streamed ``max_tokens=1`` completion is measured too, for scale.

1. Latency: one request at a time (keep-alive clients), the three paths interleaved
   request by request (direct, gateway, nginx, direct, ...) so that the machine's load
   drifts over all three alike; direct alternates over the workers as the proxies do.
   added = percentile(proxy) - percentile(direct).
2. Throughput per core: ``--concurrency`` requests in flight for ``--duration-s`` through
   each proxy; requests answered / CPU seconds the proxy's processes used (user + system,
   nginx master and workers together), so the number does not depend on what else the
   machine runs.

``--profile`` samples the gateway with py-spy during its throughput run and prints the
functions with the most samples (what limits it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

BIN = Path(sys.executable).parent / "babeldesk"
MODEL = "smollm2-135m"
MODELS_PATH = "/v1/models"
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = {"model": MODEL, "max_tokens": 1, "temperature": 0,
             "messages": [{"role": "user", "content": "Hi"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready:\n{log.read_text()}")


class Procs:
    """The processes this run started; all stopped at the end, whatever happens."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[subprocess.Popen[bytes], int]] = []

    def start(self, args: list[str], name: str, stop_signal: int = signal.SIGTERM
              ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
        self.procs.append((proc, stop_signal))
        return proc, log

    def stop_all(self) -> None:
        for proc, sig in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_stack(procs: Procs, n_workers: int) -> dict[str, Any]:
    workers = []
    for i in range(n_workers):
        port = free_port()
        proc, log = procs.start([str(BIN), "worker", "--model", MODEL, "--threads", "1",
                                 "--port", str(port), "--max-batch-size", "4",
                                 "--max-new-tokens", "8"], f"worker-{i}")
        workers.append((f"http://127.0.0.1:{port}", proc, log))
    for url, proc, log in workers:
        wait_ready(url + "/ready", proc, log)
    urls = [u for u, _, _ in workers]

    gw_port = free_port()
    args = [str(BIN), "gateway", "--port", str(gw_port), "--upstream-model", MODEL,
            "--sessions", "memory://", "--no-verifier"]
    for u in urls:
        args += ["--upstream", u]
    gw_proc, gw_log = procs.start(args, "gateway")
    gateway = f"http://127.0.0.1:{gw_port}"
    wait_ready(gateway + "/ready", gw_proc, gw_log)

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx is not installed (apt-get install nginx)")
    prefix = procs.tmp / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    os.chmod(prefix / "tmp", 0o777)  # nginx workers run as nobody under a root master
    ng_port = free_port()
    conf = prefix / "nginx.conf"
    render = [str(BIN), "deploy", "nginx", "--listen", f"127.0.0.1:{ng_port}", "-o", str(conf)]
    for u in urls:
        render += ["-u", u]
    subprocess.run(render, check=True, capture_output=True)
    subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(conf), "-e", "stderr"],
                   check=True, capture_output=True)
    ng_proc, ng_log = procs.start([nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr",
                                   "-g", "daemon off;"], "nginx", signal.SIGQUIT)
    nginx_url = f"http://127.0.0.1:{ng_port}"
    wait_ready(nginx_url + "/nginx-health", ng_proc, ng_log, 30)
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True,
                             check=True).stderr.strip()
    return {"workers": urls, "gateway": gateway, "gateway_pid": gw_proc.pid,
            "nginx": nginx_url, "nginx_pid": ng_proc.pid, "nginx_version": version}


def percentiles(ms: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": round(statistics.median(ms), 4), "p90": round(qs[89], 4),
            "p99": round(qs[98], 4), "mean": round(statistics.fmean(ms), 4), "n": len(ms)}


def latency(stack: dict[str, Any], path: str, n: int) -> dict[str, Any]:
    """One request at a time, the paths interleaved; milliseconds per request."""
    body = CHAT_BODY if path == CHAT_PATH else None
    clients = {name: httpx.Client(timeout=60) for name in ("direct", "gateway", "nginx")}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for i in range(n + n // 10):  # the first tenth warms connections up, not kept
            bases = {"direct": stack["workers"][i % len(stack["workers"])],
                     "gateway": stack["gateway"], "nginx": stack["nginx"]}
            for name, client in clients.items():
                t0 = time.perf_counter()
                r = (client.post(bases[name] + path, json=body) if body is not None
                     else client.get(bases[name] + path))
                took = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"{name} {path}: {r.status_code} {r.text[:200]}")
                if i >= n // 10:
                    samples[name].append(took)
    finally:
        for c in clients.values():
            c.close()
    out: dict[str, Any] = {name: percentiles(ms) for name, ms in samples.items()}
    for proxy in ("gateway", "nginx"):
        out[f"{proxy}_added_ms"] = {k: round(out[proxy][k] - out["direct"][k], 4)
                                    for k in ("p50", "p90", "p99", "mean")}
    return out


def _sums(url: str) -> dict[str, float]:
    """Histogram sums and counts from a /metrics page: request_duration_seconds of the
    /v1/models route and upstream_duration_seconds (all upstreams), in seconds."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for smp in fam.samples:
            if smp.name.startswith("babeldesk_request_duration_seconds_") and \
                    smp.labels.get("route") == MODELS_PATH:
                key = "request_" + smp.name.rsplit("_", 1)[1]
            elif smp.name.startswith("babeldesk_upstream_duration_seconds_"):
                key = "upstream_" + smp.name.rsplit("_", 1)[1]
            else:
                continue
            if key.endswith(("_sum", "_count")):
                out[key] = out.get(key, 0.0) + smp.value
    return out


def inside(stack: dict[str, Any], before: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean milliseconds per /v1/models request as the processes themselves measured them
    since ``before``: the gateway's whole handling, its upstream call, the worker's own."""
    gw0, wk0 = before["gateway"], before["workers"]
    gw = _sums(stack["gateway"])
    wk = [_sums(u) for u in stack["workers"]]

    def mean(now: dict[str, float], then: dict[str, float], kind: str) -> float:
        n = now.get(f"{kind}_count", 0) - then.get(f"{kind}_count", 0)
        return 1000 * (now.get(f"{kind}_sum", 0) - then.get(f"{kind}_sum", 0)) / n if n else 0.0

    worker_ms = statistics.fmean(mean(w, w0, "request") for w, w0 in zip(wk, wk0))
    gw_ms, up_ms = mean(gw, gw0, "request"), mean(gw, gw0, "upstream")
    return {"gateway_handling_ms": round(gw_ms, 4), "gateway_upstream_call_ms": round(up_ms, 4),
            "gateway_own_ms": round(gw_ms - up_ms, 4), "worker_handling_ms": round(worker_ms, 4)}


def snapshot(stack: dict[str, Any]) -> dict[str, Any]:
    return {"gateway": _sums(stack["gateway"]), "workers": [_sums(u) for u in stack["workers"]]}


async def _client_floor(url: str, n: int) -> dict[str, float]:
    """The upstream hop alone, from one event loop: the gateway's HTTP client
    (``babeldesk.fleet.http``, keep-alive), httpx AsyncClient (its client before) and a bare
    HTTP/1.1 exchange on an asyncio stream, all ``GET /v1/models`` on the same worker one
    at a time. Milliseconds per request."""
    from babeldesk.fleet.http import HTTPClient

    host, port = url.removeprefix("http://").split(":")
    out: dict[str, float] = {}

    async def timed(name: str, one: Any) -> None:
        for _ in range(max(n // 10, 10)):
            await one()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await one()
        out[f"{name}_wall_ms"] = round((time.perf_counter() - t0) / n * 1000, 4)
        out[f"{name}_cpu_ms"] = round((time.process_time() - c0) / n * 1000, 4)

    async with httpx.AsyncClient(base_url=url) as client:
        async def with_httpx() -> None:
            (await client.get(MODELS_PATH)).raise_for_status()

        await timed("httpx", with_httpx)
    fleet_client = HTTPClient(connect_timeout_s=5, read_timeout_s=60)

    async def with_fleet_client() -> None:
        status, _ = await fleet_client.get(url, MODELS_PATH)
        assert status == 200, status

    await timed("fleet", with_fleet_client)
    await fleet_client.aclose()
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET {MODELS_PATH} HTTP/1.1\r\nhost: {host}:{port}\r\n\r\n".encode()

    async def bare() -> None:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)

    await timed("bare", bare)
    writer.close()
    return out


def client_floor(url: str, n: int) -> dict[str, float]:
    try:
        import uvloop  # the gateway's loop (uvicorn picks it when installed)

        return uvloop.run(_client_floor(url, n))
    except ImportError:
        return asyncio.run(_client_floor(url, n))


async def _app_cost(n: int) -> float:
    """Microseconds of CPU per ``GET /v1/models`` in the gateway's own ASGI app (uvicorn's
    proxy-headers middleware included, the HTTP server and the upstream call not): the app
    as ``babeldesk gateway`` builds it, called in-process with a fleet stub that answers at
    once."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from babeldesk.config import Config
    from babeldesk.fleet.client import UpstreamReply
    from babeldesk.gateway.app import GatewayState, create_app
    from babeldesk.gateway.passthrough import Passthrough
    from babeldesk.telemetry.metrics import Metrics
    from babeldesk.edge.lifecycle import Phase

    body = b'{"object":"list","data":[{"id":"m","object":"model","owned_by":"w"}]}'

    class StubFleet:
        async def request(self, *args: Any, **kwargs: Any) -> UpstreamReply:
            return UpstreamReply(200, "application/json", "http://127.0.0.1:1", body=body)

    state = GatewayState(Config(), Metrics("gateway"))
    app = create_app(state)
    Passthrough(state, StubFleet(), session_header="x-session-id",  # type: ignore[arg-type]
                max_body_bytes=1 << 20).install(app)
    state.pipeline, state.phase = object(), Phase.READY  # type: ignore[assignment]
    asgi = ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "server": ("127.0.0.1", 8080),
             "client": ("127.0.0.1", 50000), "scheme": "http", "method": "GET",
             "root_path": "", "path": MODELS_PATH, "raw_path": MODELS_PATH.encode(),
             "query_string": b"", "headers": [(b"host", b"127.0.0.1:8080"),
                                              (b"accept", b"*/*")]}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(n // 10):
        await asgi(dict(scope), receive, send)
    c0 = time.process_time()
    for _ in range(n):
        await asgi(dict(scope), receive, send)
    took = time.process_time() - c0
    assert set(statuses) == {200}, set(statuses)
    return round(took / n * 1e6, 1)


def app_cost(n: int = 20000) -> float:
    try:
        import uvloop

        return uvloop.run(_app_cost(n))
    except ImportError:
        return asyncio.run(_app_cost(n))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (nginx workers)."""
    p = psutil.Process(pid)
    total = 0.0
    for q in [p, *p.children(recursive=True)]:
        t = q.cpu_times()
        total += t.user + t.system
    return total


async def _hammer(base: str, path: str, concurrency: int, duration_s: float) -> tuple[int, int]:
    """(answered, failed) with ``concurrency`` requests in flight for ``duration_s``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ok = failed = 0
    stop = time.monotonic() + duration_s
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def one() -> None:
            nonlocal ok, failed
            while time.monotonic() < stop:
                try:
                    r = await client.get(path)
                    if r.status_code == 200:
                        ok += 1
                    else:
                        failed += 1
                except httpx.HTTPError:
                    failed += 1

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return ok, failed


def throughput(base: str, pid: int | None, concurrency: int, duration_s: float,
               profile_out: Path | None = None) -> dict[str, Any]:
    spy = None
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(BIN.parent))
    if profile_out is not None and pid is not None and py_spy is None:
        print("--profile: py-spy is not installed (pip install py-spy); no profile")
    elif profile_out is not None and pid is not None:
        spy = subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--format", "raw",
                                "--rate", "200", "--duration", str(int(duration_s)),
                                "--output", str(profile_out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    cpu0 = cpu_seconds(pid) if pid is not None else 0.0
    t0 = time.monotonic()
    ok, failed = asyncio.run(_hammer(base, MODELS_PATH, concurrency, duration_s))
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0 if pid is not None else 0.0
    if spy is not None:
        spy.wait(timeout=60)
    return {"answered": ok, "failed": failed, "wall_s": round(wall, 3),
            "requests_per_s": round(ok / wall, 1), "proxy_cpu_s": round(cpu, 3),
            "requests_per_cpu_s": round(ok / cpu, 1) if cpu > 0 else None}


def top_frames(folded: Path, k: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Share of samples (%) per function, from py-spy's folded ("raw") output: ``self``
    (innermost frame) and ``inclusive`` (anywhere on the stack, counted once per sample)."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.strip().split(" (")[0] for f in stack.split(";")]
        self_counts[frames[-1]] += n
        for f in set(frames):
            incl_counts[f] += n
    return {kind: [(frame, round(100 * n / total, 1)) for frame, n in counts.most_common(k)]
            for kind, counts in (("self", self_counts), ("inclusive", incl_counts))}


def plot(result: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = result["latency_models"]
    tp = result["throughput"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = ["direct", "gateway", "nginx"]
    x = range(len(names))
    for i, (q, color) in enumerate((("p50", "#4c72b0"), ("p99", "#dd8452"))):
        vals = [lat[n][q] for n in names]
        ax1.bar([v + (i - 0.5) * 0.38 for v in x], vals, 0.38, label=q, color=color)
        for xv, v in zip(x, vals):
            ax1.text(xv + (i - 0.5) * 0.38, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(list(x), ["worker direct", "babeldesk gateway", "nginx"])
    ax1.set_ylabel("ms per GET /v1/models (one at a time)")
    ax1.set_title(f"Latency: gateway +{lat['gateway_added_ms']['p50']:.2f} ms p50, "
                  f"nginx +{lat['nginx_added_ms']['p50']:.2f} ms p50")
    ax1.legend()
    proxies = ["gateway", "nginx"]
    vals = [tp[p]["requests_per_cpu_s"] or 0 for p in proxies]
    ax2.bar(proxies, vals, color=["#55a868", "#8172b3"])
    for i, v in enumerate(vals):
        ax2.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=9)
    ax2.set_yscale("log")
    ax2.set_ylim(bottom=100)  # bars from a fixed floor, so their heights compare
    ax2.set_ylabel("requests proxied per CPU-second (log)")
    ax2.set_title(f"Proxy cost, {result['config']['concurrency']} in flight")
    fig.suptitle(f"babeldesk gateway vs nginx, {result['meta']['date']}, "
                 f"{result['meta']['cpus']} CPUs, load {result['meta']['load_before'][0]:.1f}",
                 fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def markdown(result: dict[str, Any]) -> str:
    """The result as the table in docs/benchmarks/gateway.md."""
    m, lat, chat, tp = (result["meta"], result["latency_models"],
                        result["latency_chat_max_tokens_1"], result["throughput"])
    rows = [("| path | p50 ms | p99 ms | added p50 ms | added p99 ms | requests per proxy "
            "CPU-second |"), "|---|---:|---:|---:|---:|---:|"]
    for name, label in (("direct", "worker, direct"), ("gateway", "babeldesk gateway"),
                        ("nginx", "nginx")):
        added = lat.get(f"{name}_added_ms")
        per_cpu = tp.get(name, {}).get("requests_per_cpu_s")
        rows.append(f"| {label} | {lat[name]['p50']:.2f} | {lat[name]['p99']:.2f} | "
                    + (f"{added['p50']:+.2f} | {added['p99']:+.2f} | " if added else "- | - | ")
                    + (f"{per_cpu:,.0f} |" if per_cpu else "- |"))
    lines = [(f"{m['date']}, {m['machine']}, {m['cpus']} CPUs shared with other jobs, load "
             f"average {m['load_before'][0]:.2f} at the start and {m['load_after'][0]:.2f} "
             f"at the end; {m['nginx']}, Python {m['python']}, httpx {m['httpx']}."),
             f"Command: `{m['command']}`", "", *rows, ""]
    ins = lat.get("inside_processes")
    if ins:
        lines.append(f"Inside the processes (mean per GET /v1/models): the gateway handled a "
                     f"request in {ins['gateway_handling_ms']:.2f} ms, of which its call to "
                     f"the worker took {ins['gateway_upstream_call_ms']:.2f} ms (the worker's "
                     f"own handling: {ins['worker_handling_ms']:.2f} ms), leaving "
                     f"{ins['gateway_own_ms']:.2f} ms in the gateway itself.")
    floor = result.get("upstream_client_floor")
    if floor:
        ours = (f"the gateway's client (fleet/http.py) {floor['fleet_wall_ms']:.2f} ms wall, "
                f"{floor['fleet_cpu_ms']:.2f} ms client CPU; " if "fleet_wall_ms" in floor
                else "")
        lines.append(f"The upstream hop alone (GET /v1/models from one uvloop event loop, one "
                     f"at a time): {ours}httpx AsyncClient {floor['httpx_wall_ms']:.2f} ms "
                     f"wall, {floor['httpx_cpu_ms']:.2f} ms client CPU; a bare HTTP/1.1 exchange "
                     f"on an asyncio stream {floor['bare_wall_ms']:.2f} ms wall, "
                     f"{floor['bare_cpu_ms']:.2f} ms CPU.")
        if "gateway_app_cpu_us" in floor:
            lines.append(f"The gateway's own ASGI app per GET /v1/models (in-process, upstream "
                         f"stubbed, no HTTP server): {floor['gateway_app_cpu_us']:.1f} us "
                         f"of CPU.")
    if chat:
        lines.append(f"A non-streamed max_tokens=1 completion: p50 direct "
                     f"{chat['direct']['p50']:.1f} ms, gateway {chat['gateway']['p50']:.1f} ms, "
                     f"nginx {chat['nginx']['p50']:.1f} ms (n={chat['direct']['n']} each).")
    lines.append(f"Throughput runs ({result['config']['concurrency']} in flight, "
                 f"{result['config']['duration_s']:g} s each): gateway "
                 f"{tp['gateway']['requests_per_s']:.0f} requests/s using "
                 f"{tp['gateway']['proxy_cpu_s']:.2f} CPU-s, nginx "
                 f"{tp['nginx']['requests_per_s']:.0f} requests/s using "
                 f"{tp['nginx']['proxy_cpu_s']:.2f} CPU-s; failed requests "
                 f"{tp['gateway']['failed'] + tp['nginx']['failed']}.")
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--requests", type=int, default=2000, help="per path, GET /v1/models")
    ap.add_argument("--chat-requests", type=int, default=200, help="per path, max_tokens=1")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration-s", type=float, default=8.0, help="per throughput run")
    ap.add_argument("--profile", action="store_true", help="py-spy the gateway's run")
    ap.add_argument("--profile-out", type=Path, default=None, help="keep the folded stacks")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/fleet/gateway_overhead.json"))
    ap.add_argument("--png", type=Path, default=Path("docs/img/gateway-overhead.png"))
    ap.add_argument("--markdown", type=Path, default=None,
                    help="only print the docs table of an earlier result JSON")
    args = ap.parse_args()
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())), end="")
        return

    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.machine()}, {cpu_model()}",
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "command": "python benchmarks/gateway_overhead.py " + " ".join(sys.argv[1:]),
    }
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp_s:
        procs = Procs(Path(tmp_s))
        try:
            stack = start_stack(procs, args.workers)
            meta["nginx"] = stack["nginx_version"]
            print(f"stack up: workers {stack['workers']}, gateway {stack['gateway']}, "
                  f"nginx {stack['nginx']}", flush=True)
            before = snapshot(stack)
            lat_models = latency(stack, MODELS_PATH, args.requests)
            lat_models["inside_processes"] = inside(stack, before)
            floor = client_floor(stack["workers"][0], min(args.requests, 1000))
            floor["gateway_app_cpu_us"] = app_cost()
            print("upstream client alone:", json.dumps(floor), flush=True)
            print("GET /v1/models:", json.dumps(lat_models), flush=True)
            lat_chat = latency(stack, CHAT_PATH, args.chat_requests) if args.chat_requests else None
            if lat_chat:
                print("chat max_tokens=1:", json.dumps(lat_chat), flush=True)
            folded = Path(tmp_s) / "gateway.folded" if args.profile else None
            tp = {
                "gateway": throughput(stack["gateway"], stack["gateway_pid"], args.concurrency,
                                      args.duration_s, folded),
                "nginx": throughput(stack["nginx"], stack["nginx_pid"], args.concurrency,
                                    args.duration_s),
            }
            print("throughput:", json.dumps(tp), flush=True)
            profile = top_frames(folded, 40) if folded is not None and folded.exists() else None
            if profile:
                for kind, rows in profile.items():
                    print(f"gateway profile ({kind}, % of samples):")
                    for frame, share in rows:
                        print(f"  {share:5.1f}%  {frame}")
            if folded is not None and args.profile_out is not None and folded.exists():
                shutil.copy(folded, args.profile_out)
        finally:
            procs.stop_all()
    meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "meta": meta,
        "config": {"workers": args.workers, "requests": args.requests,
                   "chat_requests": args.chat_requests, "concurrency": args.concurrency,
                   "duration_s": args.duration_s, "upstream_call": f"GET {MODELS_PATH}"},
        "latency_models": lat_models,
        "latency_chat_max_tokens_1": lat_chat,
        "throughput": tp,
        "upstream_client_floor": floor,
        "gateway_profile_top": profile,
        "target_met": lat_models["gateway_added_ms"]["p50"] <= 1.0,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.png)
    print(markdown(result))
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
