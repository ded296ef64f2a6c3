"""Two surfaces and operator keys with scopes, as one pure-ASGI middleware.

A deployment faces anonymous customers on its *public* surface (chat page, widget, the
support message endpoint, a customer's own session by its id) and its staff and tools on
the *operator* surface (OpenAI passthrough, admin, metrics, any transcript, agents).
Every operator route names the ``Scope`` it needs; a request must carry
``Authorization: Bearer <key>`` of an ``OperatorKey`` holding that scope: no or unknown
key -> 401, a key without the scope -> 403. A key has a name (its identity: an agent's
replies are signed with it), put in ``scope["state"]["operator"]`` for the app.

Keys come from the config: ``gateway.api_key`` (one key named ``default`` with every
scope) and ``gateway.keys_file`` (YAML: ``keys: [{name, key | key_sha256, scopes}]``),
each also settable by environment (``BABELDESK_GATEWAY_API_KEY``,
``BABELDESK_GATEWAY_KEYS_FILE``). Only SHA-256 digests are kept in memory and nothing of
a key is ever logged. With no key at all the operator surface is open on a loopback
bind (a laptop) to local callers that no proxy relayed, and refused (403) otherwise, so a
deployment cannot forget it.

Why by hand: Starlette's ``AuthenticationMiddleware`` runs a backend per request but
leaves scopes to decorators on each endpoint (``requires``), which the raw ASGI hot
routes do not have; the rule table here is the one place that says what is public.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from babeldesk.errors import BabeldeskError, ConfigError, Forbidden, Unauthorized

log = logging.getLogger(__name__)


class Scope(str, enum.Enum):
    """What an operator key may do. ``ALL`` in a key's list grants every scope."""

    CHAT = "chat"  # OpenAI passthrough: /v1/chat/completions, /v1/models
    ADMIN = "admin"  # /v1/admin/*: upstreams, configuration views
    METRICS = "metrics"  # /metrics
    TRANSCRIPTS = "transcripts"  # list and read any conversation
    AGENT = "agent"  # the agent API and console; the key's name is the agent
    ALL = "*"


@dataclass(frozen=True)
class OperatorKey:
    name: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return Scope.ALL in self.scopes or scope in self.scopes


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class KeyRing:
    """Operator keys by the SHA-256 of their secret (a lookup by digest leaks nothing
    useful through timing: the digest of a guess says nothing about the real key)."""

    def __init__(self, keys: Iterable[tuple[bytes, OperatorKey]] = ()) -> None:
        self._by_digest: dict[bytes, OperatorKey] = {}
        for digest, key in keys:
            self._by_digest[digest] = key

    def __len__(self) -> int:
        return len(self._by_digest)

    def names(self) -> list[str]:
        return sorted(k.name for k in self._by_digest.values())

    def match(self, authorization: bytes) -> OperatorKey | None:
        """The key of an ``Authorization: Bearer <key>`` header value, or None."""
        scheme, _, secret = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not secret.strip():
            return None
        return self._by_digest.get(_digest(secret.strip()))

    @classmethod
    def single(cls, secret: str, name: str, scopes: Iterable[Scope]) -> KeyRing:
        if not secret:
            return cls()
        return cls([(_digest(secret.encode()), OperatorKey(name, frozenset(scopes)))])

    @classmethod
    def from_config(cls, api_key: str, keys_file: str, *, agent_keys: Sequence[str] = (),
                    section: str = "gateway") -> KeyRing:
        """``api_key`` (all scopes, named ``default``), ``agent_keys`` ("name:key", the
        agent scope only) and the keys of ``keys_file``."""
        entries: list[tuple[bytes, OperatorKey]] = []
        if api_key:
            entries.append((_digest(api_key.encode()),
                            OperatorKey("default", frozenset({Scope.ALL}))))
        for entry in agent_keys:
            name, _, secret = entry.partition(":")
            entries.append((_digest(secret.encode()), OperatorKey(name, frozenset({Scope.AGENT}))))
        if keys_file:
            entries += read_keys_file(Path(keys_file), f"{section}.keys_file")
        names = [k.name for _, k in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{section}.keys_file", f"duplicate key name(s): {dupes}")
        if len({d for d, _ in entries}) != len(entries):
            raise ConfigError(f"{section}.keys_file", "two keys have the same secret")
        return cls(entries)


def read_keys_file(path: Path, key: str) -> list[tuple[bytes, OperatorKey]]:
    """``keys: [{name, key | key_sha256 (hex), scopes: [chat, admin, ...]}]``; errors
    name the entry, never its secret."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(key, f"{path}: invalid YAML") from None
    items = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError(key, f"{path}: expected 'keys:' with a list of keys")
    out: list[tuple[bytes, OperatorKey]] = []
    valid = ", ".join(s.value for s in Scope)
    for i, item in enumerate(items):
        where = f"{path}: keys[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(key, f"{where}: must be a mapping")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(key, f"{where}: 'name' is required")
        secret, hexdigest = item.get("key"), item.get("key_sha256")
        if (secret is None) == (hexdigest is None):
            raise ConfigError(key, f"{where} ({name}): give exactly one of key, key_sha256")
        if secret is not None:
            if not isinstance(secret, str) or len(secret) < 16:
                raise ConfigError(key, f"{where} ({name}): key must be >= 16 characters")
            digest = _digest(secret.encode())
        else:
            try:
                digest = bytes.fromhex(str(hexdigest))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ConfigError(key, f"{where} ({name}): key_sha256 must be 64 hex digits")
        scopes = item.get("scopes")
        if not isinstance(scopes, list) or not scopes:
            raise ConfigError(key, f"{where} ({name}): 'scopes' must list some of {valid}")
        try:
            parsed = frozenset(Scope(str(s)) for s in scopes)
        except ValueError:
            raise ConfigError(key, f"{where} ({name}): unknown scope in {scopes}; "
                                   f"valid: {valid}") from None
        out.append((digest, OperatorKey(name.strip(), parsed)))
    return out


@dataclass(frozen=True)
class Rule:
    """``path``: exact, or a prefix when it ends with ``/`` (but ``/`` itself is exact);
    ``scope`` None: public."""

    path: str
    scope: Scope | None
    methods: frozenset[str] = frozenset()  # empty: any method

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        if len(self.path) > 1 and self.path.endswith("/"):
            return path.startswith(self.path)
        return path == self.path


@dataclass(frozen=True)
class Surface:
    """Which routes are public and which scope each operator route needs; the first
    matching rule decides, and a path no rule names needs ``default`` (deny by default:
    a route added without a rule is operator-only)."""

    rules: Sequence[Rule]
    default: Scope | None = Scope.ADMIN

    def needs(self, method: str, path: str) -> Scope | None:
        for rule in self.rules:
            if rule.matches(method, path):
                return rule.scope
        return self.default

    def label(self, path: str) -> str:
        """A metrics label for a request refused before routing: the path of the rule it
        matched (a prefix rule ends in ``*``), else ``unmatched`` (bounded either way)."""
        for rule in self.rules:
            if len(rule.path) > 1 and rule.path.endswith("/"):
                if path.startswith(rule.path):
                    return rule.path + "*"
            elif path == rule.path:
                return rule.path
        return "unmatched"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_JSON = [(b"content-type", b"application/json")]


async def _refuse(send: Send, exc: BabeldeskError) -> None:
    import json

    body = json.dumps(exc.to_dict()).encode()
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RouteLabel:
    """What ``scope["route"]`` holds where no Starlette route ran (a hot route, a request
    the edge refused): the metrics middleware labels requests by its ``path``."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_FORWARDED = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


def _local(scope: AsgiScope) -> bool:
    """A caller on this machine, not relayed by a proxy on it (a local nginx in front of
    a loopback gateway must not open the operator surface to the internet)."""
    client = scope.get("client")
    if not client or not is_loopback(str(client[0])):
        return False
    return not any(k in _FORWARDED for k, _ in scope["headers"])


class OperatorAuth:
    """Pure ASGI: public routes pass; operator routes need a key with their scope.
    ``open_without_keys``: with an empty key ring, let operator routes through (a
    loopback bind) instead of refusing them."""

    def __init__(self, app: ASGIApp, *, keys: KeyRing, surface: Surface,
                 open_without_keys: bool) -> None:
        self.app = app
        self.keys = keys
        self.surface = surface
        self.open = open_without_keys and not len(keys)

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        need = self.surface.needs(scope["method"], scope["path"])
        if need is None or (self.open and _local(scope)):
            await self.app(scope, receive, send)
            return
        scope.setdefault("route", RouteLabel(self.surface.label(scope["path"])))
        if not len(self.keys):
            await _refuse(send, Forbidden(
                "the operator surface is off: no operator keys are configured "
                "(gateway.api_key or gateway.keys_file)"))
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        key = self.keys.match(header)
        if key is None:
            await _refuse(send, Unauthorized(
                "missing or unknown operator key (Authorization: Bearer ...)"))
            return
        if not key.allows(need):
            await _refuse(send, Forbidden(f"this key lacks the '{need.value}' scope"))
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["operator"] = key
        await self.app(scope, receive, send)
