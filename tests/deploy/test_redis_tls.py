"""Redis as the rendered manifests run it: TLS only, a password, and the gateways' URLs
(``rediss://...?ssl_ca_certs=<mounted CA>``) read by babeldesk's own clients (session
store, answer cache, event bus, rate limits) against a real redis-server with a
certificate from a real CA (openssl); a wrong CA and a plain connection are refused."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from babeldesk.autoscale.manifests import KubernetesConfig, render
from babeldesk.autoscale.redis_objects import CA_MOUNT, redis_url
from babeldesk.config import LimitsConfig, StoreConfig
from babeldesk.edge.ratelimit import Limiter
from babeldesk.errors import RateLimited
from babeldesk.store import Turn, open_answer_cache, open_event_bus, open_session_store
from tests.conftest import free_port
from tests.store import ops

OPENSSL = shutil.which("openssl")
REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(not (OPENSSL and REDIS),
                                reason="needs openssl and redis-server (scripts/install.sh --test)")
PASSWORD = "tls-test-password"


def _ca(tmp: Path, name: str) -> None:
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-keyout", tmp / f"{name}.key",
                    "-out", tmp / f"{name}.crt"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("redis-tls")
    _ca(tmp, "ca")
    _ca(tmp, "other-ca")
    subprocess.run([OPENSSL, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=redis",
                    "-keyout", tmp / "tls.key", "-out", tmp / "tls.csr"],
                   check=True, capture_output=True)
    (tmp / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run([OPENSSL, "x509", "-req", "-in", tmp / "tls.csr", "-CA", tmp / "ca.crt",
                    "-CAkey", tmp / "ca.key", "-CAcreateserial", "-days", "1",
                    "-extfile", tmp / "ext", "-out", tmp / "tls.crt"],
                   check=True, capture_output=True)
    port = free_port()
    (args,) = [c["args"] for o in render(KubernetesConfig()) if o["kind"] == "StatefulSet"
               for c in o["spec"]["template"]["spec"]["containers"]]
    # the rendered flags, with this machine's paths, port and password
    args = [a.replace("/tls/", f"{tmp}/").replace("/data", str(tmp))
            .replace("$(REDIS_PASSWORD)", PASSWORD) for a in args[1:]]
    args[args.index("--tls-port") + 1] = str(port)
    log = tmp / "redis.log"
    proc = subprocess.Popen([REDIS, *args, "--bind", "127.0.0.1", "--save", ""],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, ssl=True,
                         ssl_ca_certs=str(tmp / "ca.crt"), socket_connect_timeout=1,
                         retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start: {log.read_text()[-2000:]}")
        try:
            if client.ping():
                break
        except redis.RedisError:
            time.sleep(0.05)
    yield port, tmp
    proc.kill()
    proc.wait()


def _url(port: int, tmp: Path, db: int, ca: str = "ca.crt") -> str:
    """The gateway's rendered URL, pointed at this machine."""
    url = redis_url(KubernetesConfig(), db)
    host = url.split("@", 1)[1].split("/", 1)[0]
    return (url.replace(host, f"127.0.0.1:{port}").replace("$(REDIS_PASSWORD)", PASSWORD)
            .replace(f"{CA_MOUNT}/ca.crt", str(tmp / ca)))


def test_babeldesk_clients_use_the_rendered_urls(tls_redis: tuple[int, Path]) -> None:
    port, tmp = tls_redis
    assert _url(port, tmp, 1).startswith("rediss://:")

    async def run() -> None:
        cfg = StoreConfig(cache_url=_url(port, tmp, 0), sessions_url=_url(port, tmp, 1))
        sessions = open_session_store(cfg)
        sid = await ops.create(sessions)
        await ops.append(sessions, sid, Turn("user", "hola"))
        assert [t.text for t in (await sessions.transcript(sid)).turns] == ["hola"]
        await sessions.ping()
        cache = open_answer_cache(cfg)
        await cache.close()
        bus = open_event_bus(cfg)
        async with bus.listen("tls-test"):
            pass
        await bus.close()
        await sessions.close()
        limiter = Limiter(LimitsConfig(storage_url=_url(port, tmp, 2), ip_messages="2/minute"))
        await limiter.check("ip_messages", "198.51.100.7", "public")
        await limiter.check("ip_messages", "198.51.100.7", "public")
        with pytest.raises(RateLimited):  # counted in Redis over TLS, not failing open
            await limiter.check("ip_messages", "198.51.100.7", "public")

    asyncio.run(run())


def test_a_wrong_ca_or_plain_redis_is_refused(tls_redis: tuple[int, Path]) -> None:
    port, tmp = tls_redis
    wrong = redis.Redis.from_url(_url(port, tmp, 1, ca="other-ca.crt"), socket_timeout=2,
                                 retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        wrong.ping()
    plain = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2,
                        retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.RedisError):
        plain.ping()
