"""How long `babeldesk serve` takes to become ready: first start, then a later one.

    python benchmarks/serve_start.py                  # first start on an empty cache, then 2 later
    python benchmarks/serve_start.py --later 0        # only the first start
    python benchmarks/serve_start.py --cache DIR      # keep the cache folder (default: a temp one)

The first start has nothing cached: the e5 ONNX model is built, the matcher embeds the
product's out-of-scope anchors (~7.6k texts) and the KB's examples, and the help center
embeds its chunks. Later starts read all of it back. Each start runs `babeldesk serve` with
``XDG_CACHE_HOME`` pointing at the cache folder, polls ``/ready`` every 0.2 s and reports
the seconds to ready and the CPU seconds the process used (user + system of the process
and its threads, from /proc), with the log's own lines about each step.
Target (issue 12): first start < 120 s on 2 cores, later starts < 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent / "babeldesk"
STEPS = ("loaded", "ready in", "help center:", "intent matcher:", "ready on")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            return json.load(r).get("status") == "ready"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start(cache: Path, timeout_s: float) -> dict[str, object]:
    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    log = cache / f"serve-{port}.log"
    with log.open("w") as out:
        began = time.monotonic()
        proc = subprocess.Popen([str(BIN), "serve", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            last = 0.0
            while not ready(port):
                if proc.poll() is not None:
                    raise SystemExit(f"serve exited with {proc.returncode}; see {log}")
                waited = time.monotonic() - began
                if waited > timeout_s:
                    raise SystemExit(f"not ready after {timeout_s:.0f} s; see {log}")
                if waited - last >= 15:
                    last = waited
                    print(f"  ... {waited:.0f} s, {cpu_seconds(proc.pid):.0f} s CPU", flush=True)
                time.sleep(0.2)
            wall = time.monotonic() - began
            cpu = cpu_seconds(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    steps = [line.split(" INFO ", 1)[-1].strip()[:150] for line in log.read_text().splitlines()
             if any(s in line for s in STEPS)]
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "steps": steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--later", type=int, default=2, help="later starts after the first")
    ap.add_argument("--cache", type=Path, help="cache folder (default: a new temp folder)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="babeldesk-start-"))
    runs = []
    try:
        for n in range(1 + args.later):
            kind = "first" if n == 0 else "later"
            print(f"{kind} start (cache {cache}) ...", flush=True)
            run = {"kind": kind, **start(cache, args.timeout)}
            runs.append(run)
            print(f"{kind} start: ready in {run['wall_s']} s, {run['cpu_s']} s CPU", flush=True)
            for step in run["steps"]:
                print(f"    {step}")
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    print(f"\ncores: {os.cpu_count()}; load average now: {os.getloadavg()[0]:.2f}")
    print("| start | ready after | CPU |\n|---|---:|---:|")
    for run in runs:
        print(f"| {run['kind']} | {run['wall_s']} s | {run['cpu_s']} s |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
