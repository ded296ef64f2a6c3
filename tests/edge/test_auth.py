"""Operator keys, scopes and surfaces: the key file's rules, and the middleware's 401 /
403 / pass on a real Starlette app."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from babeldesk.config import GatewayConfig
from babeldesk.edge.auth import KeyRing, OperatorAuth, Rule, Scope, Surface, is_loopback
from babeldesk.errors import ConfigError

SURFACE = Surface([Rule("/", None), Rule("/public", None), Rule("/v1/chat", Scope.CHAT),
                   Rule("/v1/agent/", Scope.AGENT)])
AGENT_KEY = "agent-key-0123456789"
OPS_KEY = "ops-key-0123456789ab"


def keys_file(tmp_path: Path, text: str) -> str:
    p = tmp_path / "keys.yaml"
    p.write_text(text)
    return str(p)


def test_keys_file_and_scopes(tmp_path: Path) -> None:
    digest = hashlib.sha256(OPS_KEY.encode()).hexdigest()
    ring = KeyRing.from_config("", keys_file(tmp_path, f"""
keys:
  - {{name: ana, key: {AGENT_KEY}, scopes: [agent]}}
  - {{name: ops, key_sha256: {digest}, scopes: ["*"]}}
"""))
    ana = ring.match(f"Bearer {AGENT_KEY}".encode())
    ops = ring.match(f"bearer {OPS_KEY}".encode())
    assert ana is not None and ana.name == "ana" and ana.allows(Scope.AGENT)
    assert not ana.allows(Scope.CHAT)
    assert ops is not None and ops.allows(Scope.ADMIN) and ops.allows(Scope.AGENT)
    assert ring.match(b"Bearer nope") is None and ring.match(AGENT_KEY.encode()) is None
    assert ring.names() == ["ana", "ops"]


@pytest.mark.parametrize("text,words", [
    ("keys: []", "list of keys"),
    ("keys: [{name: a, key: short, scopes: [chat]}]", ">= 16"),
    ("keys: [{name: a, key: 0123456789abcdefgh, scopes: [root]}]", "unknown scope"),
    ("keys: [{name: a, scopes: [chat]}]", "exactly one"),
    ("keys: [{name: a, key_sha256: abc, scopes: [chat]}]", "64 hex"),
    ("keys: [{key: 0123456789abcdefgh, scopes: [chat]}]", "name"),
    ("keys: [{name: a, key: 0123456789abcdefgh, scopes: [chat]}, "
     "{name: a, key: 0123456789abcdefgX, scopes: [chat]}]", "duplicate"),
])
def test_bad_keys_file_names_the_problem_not_the_secret(tmp_path: Path, text: str,
                                                        words: str) -> None:
    with pytest.raises(ConfigError) as err:
        KeyRing.from_config("", keys_file(tmp_path, text))
    assert words in str(err.value) and "0123456789abcdef" not in str(err.value)


def test_secrets_are_not_in_the_config_repr() -> None:
    assert "sekret-value" not in repr(GatewayConfig(api_key="sekret-value"))


def _app(ring: KeyRing, open_: bool = False) -> httpx.AsyncClient:
    async def who(request: Request) -> JSONResponse:
        op = request.scope.get("state", {}).get("operator")
        return JSONResponse({"operator": op.name if op else None})

    inner = Starlette(routes=[Route(p, who, methods=["GET", "POST"]) for p in
                              ("/public", "/v1/chat", "/v1/agent/x", "/other")])
    app = OperatorAuth(inner, keys=ring, surface=SURFACE, open_without_keys=open_)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_middleware_401_403_and_identity(tmp_path: Path) -> None:
    ring = KeyRing.from_config("", keys_file(
        tmp_path, f"keys: [{{name: ana, key: {AGENT_KEY}, scopes: [agent]}}]"))
    async with _app(ring) as c:
        assert (await c.get("/public")).json() == {"operator": None}
        r = await c.post("/v1/chat")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
        auth = {"authorization": f"Bearer {AGENT_KEY}"}
        r = await c.post("/v1/chat", headers=auth)
        assert r.status_code == 403 and "chat" in r.json()["error"]["message"]
        assert (await c.get("/other", headers=auth)).status_code == 403  # default: admin
        r = await c.get("/v1/agent/x", headers=auth)
        assert r.status_code == 200 and r.json() == {"operator": "ana"}


async def test_no_keys_open_on_loopback_refused_elsewhere() -> None:
    async with _app(KeyRing(), open_=True) as c:
        assert (await c.post("/v1/chat")).status_code == 200
        # relayed by a proxy on this machine: not a local caller
        r = await c.post("/v1/chat", headers={"x-forwarded-for": "198.51.100.4"})
        assert r.status_code == 403
    async with _app(KeyRing(), open_=False) as c:
        r = await c.post("/v1/chat")
        assert r.status_code == 403 and "no operator keys" in r.json()["error"]["message"]
        assert (await c.get("/public")).status_code == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_agent_keys_are_keys_with_the_agent_scope_only() -> None:
    ring = KeyRing.from_config("", "", agent_keys=["ana:" + AGENT_KEY])
    ana = ring.match(f"Bearer {AGENT_KEY}".encode())
    assert ana is not None and ana.name == "ana" and ana.scopes == frozenset({Scope.AGENT})
