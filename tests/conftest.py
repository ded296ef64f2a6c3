"""Shared fixtures: free ports, real worker processes, bundled model paths."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "babeldesk"

# tests share 2 cores: one compute thread per model
os.environ.setdefault("OMP_NUM_THREADS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """A real ``babeldesk worker`` (or ``serve`` / ``gateway``) process on a free port."""

    def __init__(self, args: list[str], port: int, log: Path, command: str = "worker",
                 env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = log.open("wb")
        threads = ["--threads", "1"] if command in ("worker", "serve") else []
        self.proc = subprocess.Popen(
            [str(BIN), command, "--port", str(port), *threads, *args],
            stdout=self._log_file, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


def start_worker(tmp: Path, *args: str, command: str = "worker",
                 env: dict[str, str] | None = None, port: int | None = None) -> WorkerProcess:
    port = port or free_port()
    w = WorkerProcess(list(args), port, tmp / f"{command}-{port}.log", command, env)
    try:
        w.wait_ready()
    except Exception:
        w.stop()
        raise
    return w


@pytest.fixture(scope="session")
def smol_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A real llamacpp worker on smollm2-135m, shared by the worker tests."""
    w = start_worker(tmp_path_factory.mktemp("smol"), "--model", "smollm2-135m",
                     "--max-batch-size", "16", "--max-model-len", "1024", "--max-queue", "128")
    yield w
    w.stop()
