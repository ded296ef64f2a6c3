"""The worker's FastAPI app. The engine is loaded in the background after the socket is
bound, so ``/health`` answers at once and ``/ready`` turns 200 only when the model is
loaded; draining (SIGTERM) turns it back to 503 and refuses new generations."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from babeldesk.edge.auth import KeyRing, OperatorAuth, Rule, Scope, Surface
from babeldesk.engine.llm_engine import Engine
from babeldesk.worker.openai_api import OPENAI_PATHS, mount_openai
from babeldesk.telemetry.http import MetricsMiddleware
from babeldesk.telemetry.metrics import CONTENT_TYPE
from babeldesk.edge.errors import install_error_handlers, unavailable_until_mounted
from babeldesk.edge.lifecycle import AppState, Phase
from babeldesk.edge.openapi import content, publish_openapi

log = logging.getLogger(__name__)
# with worker.api_key set, the OpenAI API needs it; /health, /ready, /metrics stay open
# (the network policy lets only gateways and Prometheus reach a worker)
WORKER_SURFACE = Surface([Rule("/v1/", Scope.CHAT)], default=None)


class WorkerState(AppState[Engine]):
    """The worker's engine once loaded, and its phase."""

    name = "worker"

    @property
    def engine(self) -> Engine | None:
        return self.served

    @engine.setter
    def engine(self, engine: Engine | None) -> None:
        self.served = engine


def create_app(state: WorkerState) -> FastAPI:
    app = FastAPI(title="babeldesk worker", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.state.worker = state

    unavailable_until_mounted(app, OPENAI_PATHS, state.require)
    key = state.config.worker.api_key
    if key:  # the fleet sends it (fleet.api_key); probes and scrapes need none
        app.add_middleware(OperatorAuth, keys=KeyRing.single(key, "fleet", {Scope.CHAT}),
                           surface=WORKER_SURFACE, open_without_keys=False)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "phase": state.phase.value}

    @app.get("/ready")
    async def ready() -> Response:
        body: dict[str, Any] = {"status": state.phase.value}
        if state.engine is not None:
            body.update(running=state.engine.num_running, waiting=state.engine.num_waiting)
        if state.phase == Phase.FAILED:  # the reason is in the log, not on the wire
            body["status"] = "failed: see the worker log"
        ok = state.phase == Phase.READY
        return JSONResponse(body, status_code=200 if ok else 503,
                            headers=None if ok else {"Retry-After": "5"})

    @app.get("/metrics", response_class=Response, responses=content("text/plain"))
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    publish_openapi(app)
    return app


def mount_engine(app: FastAPI, state: WorkerState, engine: Engine) -> None:
    """Called once the model is loaded: add the OpenAI routes over the engine."""
    cfg = state.config
    mount_openai(app, engine, state.require, max_body_bytes=cfg.worker.max_body_bytes,
                 configured_name=cfg.engine.model)
