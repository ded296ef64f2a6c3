"""Where upstreams come from: files re-read on change, hosts-file / DNS names that give
several addresses, re-resolution that keeps live state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faulty_server import FaultyServer, free_port

from babeldesk.config import FleetConfig, RoutingPolicy, UpstreamConfig
from babeldesk.errors import ConfigError
from babeldesk.fleet import Fleet
from babeldesk.fleet.discovery import Resolver, expand, parse_hosts, read_upstreams_file


def test_parse_hosts() -> None:
    text = "127.0.0.1 localhost\n# comment\n127.0.0.2 workers.test w2 # tail\n" \
           "127.0.0.3 workers.test\nbad-line\nnot.an.ip workers.test\n::1 v6.test\n"
    assert parse_hosts(text) == {
        "localhost": ["127.0.0.1"], "workers.test": ["127.0.0.2", "127.0.0.3"],
        "w2": ["127.0.0.2"], "v6.test": ["::1"]}


def test_read_upstreams_file(tmp_path: Path) -> None:
    f = tmp_path / "up.yaml"
    f.write_text("- http://a:1\n- {url: 'http://b:2', weight: 3, backup: true}\n")
    ups = read_upstreams_file(f)
    assert [(u.url, u.weight, u.backup) for u in ups] == [
        ("http://a:1", 1, False), ("http://b:2", 3, True)]
    f.write_text("upstreams: [http://c:3]\n")
    assert [u.url for u in read_upstreams_file(f)] == ["http://c:3"]
    f.write_text("- {url: 'http://b:2', wieght: 3}\n")
    with pytest.raises(ConfigError, match=r"upstreams_file\[0\]\.wieght: unknown key"):
        read_upstreams_file(f)
    f.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError):
        read_upstreams_file(f)


async def test_localhost_resolves_with_the_system_resolver() -> None:
    out = await expand([UpstreamConfig("http://localhost:8123")], Resolver())
    names = [t.name for t in out["http://localhost:8123"]]
    assert "http://127.0.0.1:8123" in names
    assert all(t.host_header == "localhost:8123" for t in out["http://localhost:8123"])


async def test_names_and_ips_and_https(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.2 workers.test\n127.0.0.3 workers.test\n::1 workers.test\n")
    specs = [UpstreamConfig("http://workers.test:9000", weight=2),
             UpstreamConfig("http://127.0.0.9:9000", backup=True),
             UpstreamConfig("https://workers.test:9443")]
    out = await expand(specs, Resolver(str(hosts)))
    assert [(t.name, t.weight) for t in out["http://workers.test:9000"]] == [
        ("http://127.0.0.2:9000", 2), ("http://127.0.0.3:9000", 2), ("http://[::1]:9000", 2)]
    assert [(t.name, t.backup) for t in out["http://127.0.0.9:9000"]] == [
        ("http://127.0.0.9:9000", True)]
    assert [t.name for t in out["https://workers.test:9443"]] == ["https://workers.test:9443"]


async def test_failed_resolution_keeps_the_previous_addresses() -> None:
    spec = UpstreamConfig("http://workers.test:9000")
    answers = [["127.0.0.2"], []]

    async def resolve(host: str, port: int) -> list[str]:
        if not answers:
            raise OSError("resolver down")
        return answers.pop(0)

    first = await expand([spec], resolve)
    assert [t.name for t in first[spec.url]] == ["http://127.0.0.2:9000"]
    assert (await expand([spec], resolve, first))[spec.url] == first[spec.url]  # empty answer
    assert (await expand([spec], resolve, first))[spec.url] == first[spec.url]  # error


async def wait_for(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_upstreams_file_is_reloaded_on_change(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    a, b = FaultyServer("a"), FaultyServer("b")
    with a.running(), b.running():
        f = tmp_path / "upstreams.yaml"
        f.write_text(f"- {a.url}\n")
        cfg = FleetConfig(upstreams_file=str(f), file_check_interval_s=0.05,
                          health_interval_s=0, breaker_failures=1, breaker_reset_s=60)
        fleet = Fleet(cfg)
        await fleet.start()
        try:
            assert [u.name for u in fleet.pool.upstreams] == [a.url]
            up_a = fleet.pool.upstreams[0]
            a.mode = "error500"
            await fleet.request({"model": "m", "messages": []})
            assert up_a.breaker.state.value == "open"
            f.write_text(f"- {a.url}\n- {{url: '{b.url}', weight: 2}}\n")
            await wait_for(lambda: len(fleet.pool.upstreams) == 2)
            assert fleet.pool.get(a.url) is up_a and up_a.breaker.state.value == "open"
            assert fleet.pool.get(b.url).weight == 2  # type: ignore[union-attr]
            reply = await fleet.request({"model": "m", "messages": []})
            assert reply.status == 200 and b.chat_requests == 1
            f.write_text("- [broken\n")  # a half-written file keeps the last good list
            await wait_for(lambda: "keeping 2 upstreams" in caplog.text)  # it was read
            assert len(fleet.pool.upstreams) == 2
            f.write_text(f"- {b.url}\n")
            await wait_for(lambda: [u.name for u in fleet.pool.upstreams] == [b.url])
        finally:
            await fleet.aclose()


async def test_a_name_with_several_addresses_is_re_resolved(tmp_path: Path) -> None:
    """A headless-Service-like name: two real servers on 127.0.0.1 and 127.0.0.2, same port."""
    port = free_port()
    a, b = FaultyServer("a"), FaultyServer("b")
    with a.running("127.0.0.1", port), b.running("127.0.0.2", port):
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.1 workers.test\n")
        cfg = FleetConfig(upstreams=(UpstreamConfig(f"http://workers.test:{port}"),),
                          hosts_file=str(hosts), dns_refresh_s=0.05, health_interval_s=0,
                          policy=RoutingPolicy.WEIGHTED_ROUND_ROBIN)
        fleet = Fleet(cfg)
        await fleet.start()
        try:
            assert [u.name for u in fleet.pool.upstreams] == [f"http://127.0.0.1:{port}"]
            hosts.write_text("127.0.0.1 workers.test\n127.0.0.2 workers.test\n")
            await wait_for(lambda: len(fleet.pool.upstreams) == 2)
            for _ in range(4):
                assert (await fleet.request({"model": "m", "messages": []})).status == 200
            assert a.chat_requests == 2 and b.chat_requests == 2
            snap = fleet.admin_snapshot()["upstreams"]
            assert {u["source"] for u in snap} == {f"http://workers.test:{port}"}
            hosts.write_text("127.0.0.2 workers.test\n")
            await wait_for(lambda: len(fleet.pool.upstreams) == 1)
            assert fleet.pool.upstreams[0].name == f"http://127.0.0.2:{port}"
        finally:
            await fleet.aclose()
