"""Test helpers: a real redis-server (Debian's) on a free loopback port in a temp dir, with
the AOF on and fsync at every write, so tests can kill -9 and restart it on the same data;
and separate appender processes writing into one session at once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

HERE = Path(__file__).parent
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server "
                               "(scripts/install.sh --test installs it)")
        self.exe = exe
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    if client.ping():  # raises BusyLoadingError while replaying the AOF
                        return
                except redis.RedisError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on port {self.port}")
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """kill -9: no shutdown, no final fsync."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


def start_appenders(url: str, session_id: str, writers: list[str], n: int,
                    go: Path) -> list[subprocess.Popen[str]]:
    """One process per writer, each appending ``n`` turns ``"<writer>-<i>"`` once ``go``
    exists and printing each acknowledged ``i``; it stops at the first 503."""
    return [
        subprocess.Popen(
            [sys.executable, str(HERE / "appender.py"), url, session_id, w, str(n), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in writers
    ]


def release(go: Path, writers: list[str], timeout_s: float = 30.0) -> None:
    """Wait until every writer has connected, then let them all start at once."""
    deadline = time.monotonic() + timeout_s
    while not all(go.with_name(f"ready-{w}").exists() for w in writers):
        if time.monotonic() > deadline:
            raise RuntimeError("appenders did not get ready")
        time.sleep(0.02)
    go.touch()


def run_appenders(url: str, session_id: str, writers: list[str], n: int, workdir: Path,
                  timeout_s: float = 120.0) -> list[list[int]]:
    """``start_appenders``, released together; each writer's acknowledged indices."""
    go = workdir / "go"
    procs = start_appenders(url, session_id, writers, n, go)
    try:
        release(go, writers)
        results = []
        for p in procs:
            out, err = p.communicate(timeout=timeout_s)
            assert p.returncode == 0, err
            results.append([int(line) for line in out.split()])
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
