"""A real nginx (Debian) in front of two real babeldesk workers, configured by
``babeldesk deploy nginx``: checked with ``nginx -t``, then a completion streamed through
it with the session header pinning the worker, sessions spread, and a killed worker's
sessions served by the other."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from openai import OpenAI

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "babeldesk"
MODEL = "smollm2-135m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_bin() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed (scripts/install.sh --test installs it)")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not up:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Worker:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"worker-{self.port}.log"
        self.proc = subprocess.Popen(
            [str(BIN), "worker", "--model", MODEL, "--threads", "1", "--port", str(self.port),
             "--max-batch-size", "4", "--max-model-len", "512", "--max-new-tokens", "16"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT)

    def answered(self) -> int:
        """Requests this worker generated for (its time-to-first-token histogram count)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        m = re.search(r"^babeldesk_time_to_first_token_seconds_count\S*\s+(\S+)$", text, re.M)
        return int(float(m.group(1))) if m else 0


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    tmp = tmp_path_factory.mktemp("nginx-workers")
    ws = [Worker(tmp), Worker(tmp)]  # load together: two cores, one thread each
    try:
        for w in ws:
            wait_http(w.url + "/ready", w.proc, w.log, 240)
        yield ws
    finally:
        for w in ws:
            stop(w.proc)


@pytest.fixture(scope="module")
def nginx(workers: list[Worker], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = nginx_bin()
    prefix = tmp_path_factory.mktemp("nginx")
    (prefix / "tmp").mkdir(mode=0o777)
    os.chmod(prefix / "tmp", 0o777)  # workers run as nobody when the master is root
    conf = prefix / "nginx.conf"
    port = free_port()
    args = [str(BIN), "deploy", "nginx", "--listen", f"127.0.0.1:{port}", "-o", str(conf)]
    for w in workers:
        args += ["-u", w.url]
    subprocess.run(args, check=True)
    text = conf.read_text()
    assert "hash $http_x_session_id consistent;" in text
    assert text.count("max_fails=5 fail_timeout=30s") == 2 and "proxy_buffering off;" in text
    check = subprocess.run([exe, "-t", "-p", str(prefix), "-c", str(conf), "-e", "stderr"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr
    log = prefix / "nginx.log"
    proc = subprocess.Popen([exe, "-p", str(prefix), "-c", str(conf), "-e", "stderr",
                             "-g", "daemon off;"], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/nginx-health", proc, log, 20)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, signal.SIGQUIT)


def client(base: str, session: str) -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120,
                  default_headers={"x-session-id": session})


def test_stream_through_nginx_pinned_by_the_session_header(nginx, workers) -> None:
    before = [w.answered() for w in workers]
    c = client(nginx, "customer-42")
    for turn in range(3):
        stream = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say hello ({turn})."}],
            stream=True, max_tokens=8, temperature=0)
        chunks = list(stream)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text.strip()
        assert len(chunks) >= 3  # delivered as a stream of events, not one buffered blob
        assert any(ch.choices and ch.choices[0].finish_reason for ch in chunks)
    delta = sorted(w.answered() - b for w, b in zip(workers, before))
    assert delta == [0, 3]  # every turn of the session on one worker


def test_sessions_spread_over_both_workers(nginx, workers) -> None:
    before = [w.answered() for w in workers]
    homes = {}
    for i in range(16):
        c = client(nginx, f"conversation-{i}")
        for _ in range(2):
            counts = [w.answered() for w in workers]
            r = c.chat.completions.create(model=MODEL, max_tokens=1,
                                          messages=[{"role": "user", "content": "Hi"}])
            assert r.choices[0].message.content is not None
            after = [w.answered() for w in workers]
            home = next(k for k in range(2) if after[k] > counts[k])
            assert homes.setdefault(i, home) == home  # both turns on the same worker
    assert sorted(set(homes.values())) == [0, 1]
    assert sum(w.answered() for w in workers) - sum(before) == 32


def test_killed_workers_sessions_are_served_by_the_other(nginx, workers) -> None:
    victim, survivor = workers
    session = next(f"s{i}" for i in range(200) if _lands_on(nginx, f"s{i}", workers) == 0)
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    before = survivor.answered()
    for _ in range(3):
        r = client(nginx, session).chat.completions.create(
            model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "Hi"}])
        assert r.choices  # nginx retried on the survivor before any byte reached us
    assert survivor.answered() - before == 3


def _lands_on(base: str, session: str, workers: list[Worker]) -> int:
    counts = [w.answered() for w in workers]
    client(base, session).chat.completions.create(
        model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "Hi"}])
    return next(k for k, w in enumerate(workers) if w.answered() > counts[k])
