"""``babeldesk serve`` (embedded: gateway + in-process engine, sqlite sessions, memory
cache, the bundled model and demo shop) and ``babeldesk gateway`` (the same app in front
of a fleet of OpenAI-compatible workers). Both bind first, build the heavy parts in the
background (``/ready`` 503 until done), and drain on SIGTERM. A start-up that fails
(unknown model, malformed KB) stops the process with status 1.
"""

from __future__ import annotations

import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from babeldesk.config import Config
from babeldesk.gateway.app import GatewayState, Phase, create_app
from babeldesk.gateway.metered import SessionTokenCap
from babeldesk.gateway.passthrough import Passthrough
from babeldesk.store import open_answer_cache, open_event_bus, open_session_store
from babeldesk.store.redact import RedactingFilter, Redactor
from babeldesk.knowledge.embed import EmbedderKind, make_embedder
from babeldesk.knowledge.retrieve import RetrievalConfig, Retriever, open_help_center
from babeldesk.support.handoff import WebhookNotifier
from babeldesk.knowledge.kb import KnowledgeBase, docs_dir, load_kb
from babeldesk.support.language import LanguageDetector
from babeldesk.knowledge.matcher import IntentMatcher, MatcherConfig
from babeldesk.support.pipeline import SupportPipeline
from babeldesk.telemetry.gpu import start_gpu_sampler
from babeldesk.telemetry.metrics import EngineMetrics, Metrics
from babeldesk.types import ChatModel
from babeldesk.edge.errors import unavailable_until_mounted
from babeldesk.edge.lifecycle import DrainingServer, start_loading

log = logging.getLogger("babeldesk.gateway")


def log_progress(what: str) -> Callable[[str, int, int], None]:
    """A progress callback that logs every ~10% of a long start-up step (first start:
    embedding thousands of texts; later starts read them from the cache and log nothing)."""
    last: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        step = done * 10 // max(total, 1)
        if last.get(stage) != step:
            last[stage] = step
            log.info("%s: embedding %s %d/%d (%d%%; cached for the next start)", what, stage,
                     done, total, done * 100 // max(total, 1))

    return report


@dataclass(frozen=True)
class Knowledge:
    """The shop's knowledge as served: the KB, its trained matcher, the help center."""

    kb: KnowledgeBase
    matcher: IntentMatcher
    documents: Retriever | None


def build_pipeline(config: Config, metrics: Metrics, model: ChatModel | None,
                   knowledge: Knowledge | None = None) -> SupportPipeline:
    """Stores and webhook from config over the shop's knowledge (loaded here unless given);
    ``model`` is the engine or the fleet."""
    sup, store = config.support, config.store
    knowledge = knowledge or load_knowledge(config)
    kb, matcher, documents = knowledge.kb, knowledge.matcher, knowledge.documents
    notifier = (WebhookNotifier(sup.handoff_webhook, sup.webhook_attempts, sup.webhook_timeout_s,
                                secret=sup.webhook_secret)
                if sup.handoff_webhook else None)
    redactor = Redactor(store.redact_phone_regions) if store.redact else None
    return SupportPipeline(
        kb=kb, matcher=matcher, sessions=open_session_store(store),
        cache=open_answer_cache(store), model=model, config=sup, metrics=metrics,
        max_message_chars=config.gateway.max_message_chars, notifier=notifier,
        redact=redactor.redact if redactor else None,
        documents=documents, bus=open_event_bus(store))


def load_knowledge(config: Config) -> Knowledge:
    """The KB, the matcher trained on it and the help center indexed (embeddings from the
    cache where unchanged): the heavy part of start-up, no model needed."""
    sup = config.support
    kb = load_kb(Path(sup.kb) if sup.kb else None)
    matcher_config = MatcherConfig(threads=sup.matcher_threads,
                                   embedder=EmbedderKind(sup.matcher_embedder))
    if sup.verifier:  # without it the matcher's own (empty) verify band applies
        matcher_config = replace(matcher_config, verify_band=sup.verify_band)
    embedder = make_embedder(matcher_config.embedder, matcher_config.threads,
                             matcher_config.cache_dir)
    # the help center shares the matcher's e5 (one model in memory) and so can rank
    # across languages with the matcher's neutralizer (the same vectors); another
    # matcher embedder: the help center loads e5-onnx and ranks by plain cosines
    shared = embedder if matcher_config.embedder in (EmbedderKind.E5, EmbedderKind.E5_ONNX) \
        else None
    progress = log_progress("intent matcher")
    # first start: the help center is indexed while the matcher embeds its anchors (both
    # cores busy); later starts read both back
    with ThreadPoolExecutor(1, thread_name_prefix="help-center") as pool:
        pending = pool.submit(load_help_center, config, shared) if sup.docs else None
        IntentMatcher.prepare(kb, matcher_config, embedder, progress)
        documents = pending.result() if pending else None
    # the help center's section headings are anchors of the matcher: a question closer to
    # an article than to a curated intent goes to the document path
    detector = LanguageDetector()
    headings = sorted({c.heading for c in documents.index.chunks}) if documents else []
    matcher = IntentMatcher.from_kb(
        kb, matcher_config, embedder=embedder, progress=progress,
        documents=[(h, detector.detect(h).language) for h in headings])
    if documents is not None and len(documents):
        langs = documents.use_languages(lambda text: detector.detect(text).language,
                                        matcher.neutralizer if shared is not None else None)
        log.info("help center languages: %s", dict(sorted(
            collections.Counter(str(v) for v in langs.values()).items())))
    return Knowledge(kb, matcher, documents)


def load_help_center(config: Config, embedder: Any = None) -> Retriever:
    """The KB's docs/ folder, indexed (vectors from the cache where chunks are unchanged);
    progress and what was cached vs embedded go to the log. A refused article is logged
    and skipped (``support.docs_strict``: start-up fails instead)."""
    sup = config.support
    folder = docs_dir(Path(sup.kb) if sup.kb else None)
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if done == total or time.monotonic() - last[0] >= 2.0:
            last[0] = time.monotonic()
            log.info("help center: embedding changed chunks %d/%d (%d%%)", done, total,
                     100 * done // max(total, 1))

    retrieval = RetrievalConfig(passages=sup.docs_passages)
    if sup.docs_threshold is not None:
        retrieval = replace(retrieval, threshold=sup.docs_threshold)
    retriever, docs = open_help_center(
        folder, retrieval=retrieval, embedder=embedder, threads=sup.matcher_threads,
        strict=sup.docs_strict,
        store_dir=Path(sup.docs_cache_dir) if sup.docs_cache_dir else None,
        max_file_bytes=int(sup.docs_max_file_mb * 1024 * 1024), progress=progress)
    for problem in docs.refused:
        log.error("help center: refused %s", problem.message)
    stats = retriever.index.stats
    log.info("help center: %d articles (%d refused); %s", len(docs.documents),
             len(docs.refused), stats.describe())
    return retriever


def _server(app: FastAPI, state: GatewayState, config: Config, *,
            busy_extra: Any = None) -> DrainingServer:
    gw = config.gateway
    metrics = state.metrics

    def on_drain() -> None:
        state.phase = Phase.DRAINING

    def busy() -> int:
        n = metrics.in_flight()
        return n + (busy_extra() if busy_extra else 0)

    ucfg = uvicorn.Config(app, host=gw.host, port=gw.port, log_level="warning",
                          timeout_graceful_shutdown=max(1, int(gw.drain_grace_s)),
                          timeout_keep_alive=5,
                          access_log=False)
    return DrainingServer(ucfg, grace_s=gw.drain_grace_s, on_drain=on_drain, busy=busy)


def _logging(config: Config) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if config.store.redact:  # customer text in logs carries no e-mail, phone or card number
        redacting = RedactingFilter(Redactor(config.store.redact_phone_regions))
        for handler in logging.getLogger().handlers:
            handler.addFilter(redacting)


def run_serve(config: Config) -> int:
    """Gateway + in-process engine in one process."""
    from babeldesk.engine.loader import load_engine
    from babeldesk.worker.openai_api import OPENAI_PATHS, mount_openai

    _logging(config)
    metrics = Metrics("gateway")
    state = GatewayState(config, metrics)
    app = create_app(state)
    unavailable_until_mounted(app, OPENAI_PATHS, state.require)
    holder: dict[str, Any] = {}

    def load() -> str:
        # the model loads while the matcher and the help center come up (both cores busy;
        # a later start reads the embeddings back and waits on whichever is slower)
        with ThreadPoolExecutor(1, thread_name_prefix="engine-load") as pool:
            pending = pool.submit(load_engine, config.engine, EngineMetrics(metrics))
            try:
                knowledge = load_knowledge(config)
            finally:
                holder["engine"] = pending.result()
        engine = holder["engine"]
        engine.start()
        state.pipeline = build_pipeline(config, metrics,
                                        SessionTokenCap(engine, state.limiter), knowledge)
        mount_openai(app, engine, state.require, max_body_bytes=config.gateway.max_body_bytes,
                     configured_name=config.engine.model)
        return (f"ready on http://{config.gateway.host}:{config.gateway.port} "
                f"(model {engine.model_name}, {engine.backend.name})")

    @app.on_event("startup")
    async def _start() -> None:
        start_loading(state, load, server, log)
        start_gpu_sampler(metrics)

    def engine_busy() -> int:
        e = holder.get("engine")
        return 0 if e is None else e.num_running + e.num_waiting

    server = _server(app, state, config, busy_extra=engine_busy)
    server.run()
    if "engine" in holder:
        holder["engine"].shutdown()
    return 1 if state.phase == Phase.FAILED else 0


def run_gateway(config: Config, upstream_model: str) -> int:
    """Gateway in front of OpenAI-compatible workers (``fleet.upstreams``)."""
    from babeldesk.fleet import Fleet, FleetChatModel

    _logging(config)
    metrics = Metrics("gateway")
    state = GatewayState(config, metrics)
    app = create_app(state)
    if config.gateway.upstream_header:  # internal addresses to clients: tests only
        app.add_middleware(_UpstreamHeader)
        hot: dict[Any, Any] = getattr(app, "hot", {})
        for key, handler in hot.items():  # served ahead of the middleware: wrap them too
            hot[key] = _UpstreamHeader(handler)
    fleet = Fleet(config.fleet, metrics=metrics)
    state.ready_check = lambda: fleet.ready
    state.admin = fleet.admin_snapshot
    Passthrough(state, fleet, session_header=config.fleet.session_header,
                max_body_bytes=config.gateway.max_body_bytes).install(app)

    def load() -> str:
        model = SessionTokenCap(FleetChatModel(fleet, upstream_model), state.limiter)
        state.pipeline = build_pipeline(config, metrics, model)
        return (f"ready on http://{config.gateway.host}:{config.gateway.port} "
                f"with {len(config.fleet.upstreams)} upstream(s)")

    @app.on_event("startup")
    async def _start() -> None:
        await fleet.start()
        start_loading(state, load, server, log)

    @app.on_event("shutdown")
    async def _stop() -> None:
        await fleet.aclose()

    server = _server(app, state, config)
    server.run()
    return 1 if state.phase == Phase.FAILED else 0


class _UpstreamHeader:
    """Names the worker(s) that answered a non-streamed support message in the
    ``x-babeldesk-upstream`` response header (comma-separated, in call order), as the
    OpenAI passthrough does; a streamed reply's headers leave before any model call, so it
    carries none. Pure ASGI and only on that path: the passthrough pays nothing for it."""

    PATH = "/v1/support/messages"

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != self.PATH:
            await self.app(scope, receive, send)
            return
        from babeldesk.fleet.client import upstreams_used

        used: list[str] = []  # filled by Fleet.request in this request's context
        token = upstreams_used.set(used)

        async def _send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and used:
                value = ",".join(dict.fromkeys(used)).encode("latin-1")
                message = {**message,
                           "headers": [*message.get("headers", []),
                                       (b"x-babeldesk-upstream", value)]}
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            upstreams_used.reset(token)
