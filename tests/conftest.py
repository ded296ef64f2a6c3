"""Shared fixtures: free ports, real worker processes, bundled model paths, a real
webhook receiver."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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
            time.sleep(0.05)
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


class WebhookReceiver:
    """A real HTTP server on a free port that keeps each POST it accepts: the raw body and
    the headers (names in lower case). The first ``failures`` POSTs are answered 500 and
    not kept."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.got: list[tuple[bytes, dict[str, str]]] = []
        self._changed = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                with outer._changed:
                    if outer.failures > 0:
                        outer.failures -= 1
                        self.send_response(500)
                    else:
                        outer.got.append((body, {k.lower(): v for k, v in self.headers.items()}))
                        outer._changed.notify_all()
                        self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def events(self) -> list[dict]:
        """The kept bodies as JSON."""
        return [json.loads(body) for body, _ in self.got]

    def wait(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``count`` POSTs are kept (True) or ``timeout`` passes (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.got) >= count, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[Callable[..., WebhookReceiver]]:
    """Makes ``WebhookReceiver(failures=...)``; every one made is shut down afterwards."""
    made: list[WebhookReceiver] = []

    def make(failures: int = 0) -> WebhookReceiver:
        made.append(WebhookReceiver(failures))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


# The longest files (2026-12-03, `--durations`, each over a minute of a 2-core machine)
# run first. With `pytest -n 2 --dist loadfile --no-loadscope-reorder` a file runs whole
# on one process, taken in collection order (xdist's default reorder would put files with
# many short tests first), so a long file left to the end would run alone while the other
# core idles; first, it runs beside the many short ones. Order only: every test runs.
LONG_FIRST = (
    "tests/engine/test_transformers_backend.py",
    "tests/integration/test_chaos.py",
    "tests/engine/test_llm_engine.py",
    "tests/benchmarks/test_static_embed.py",
    "tests/gateway/test_support_api.py",
    "tests/worker/test_backends.py",
    "tests/worker/test_openai_sdk.py",
    "tests/integration/test_client_errors.py",
    "tests/integration/test_gateway_faults.py",
    "tests/support/test_documents_pipeline.py",
    "tests/integration/test_surfaces.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    # sort is stable: within a file, and among the other files, the order stays as collected
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
