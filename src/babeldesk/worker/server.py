"""``babeldesk worker``: bind, load the model in the background, serve, drain on SIGTERM.

SIGTERM (or SIGINT): ``/ready`` turns 503 and new generations get 503 at once; in-flight
requests finish within ``worker.drain_grace_s``; then uvicorn shuts down and the process
exits 0. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any

import uvicorn

from babeldesk.config import Backend, Config
from babeldesk.engine.llm_engine import Engine
from babeldesk.engine.loader import load_engine
from babeldesk.telemetry.metrics import Metrics
from babeldesk.worker.app import Phase, WorkerState, create_app, mount_engine

log = logging.getLogger("babeldesk.worker")


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: WorkerState) -> None:
        super().__init__(config)
        self.state = state
        self._drain_started = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._drain_started:  # second signal: stop now
            self.force_exit = True
            self.should_exit = True
            return
        self._drain_started = True
        threading.Thread(target=self._drain, name="drain", daemon=True).start()

    def _drain(self) -> None:
        state = self.state
        state.phase = Phase.DRAINING
        engine = state.engine
        grace = state.config.worker.drain_grace_s
        log.info("draining: refusing new requests, %.0fs for in-flight ones", grace)
        deadline = time.monotonic() + grace
        if engine is not None:
            engine.stop_accepting()
        m = state.metrics
        while time.monotonic() < deadline:
            busy = m.requests_in_flight.labels(m.app)._value.get()  # HTTP requests in flight
            if busy <= 0 and (engine is None or (engine.num_running + engine.num_waiting) == 0):
                break
            time.sleep(0.05)
        self.should_exit = True


def run_worker(config: Config) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = Metrics("worker")
    state = WorkerState(config, metrics)
    app = create_app(state)

    def _load() -> None:
        try:
            engine = load_engine(config.engine, metrics)
            engine.start()
            mount_engine(app, state, engine)
            state.engine = engine
            if state.phase == Phase.LOADING:
                state.phase = Phase.READY
            log.info("ready: %s on %s", engine.model_name, engine.backend.name)
        except Exception as exc:  # reported on /ready and in the log; the process stays up
            log.error("model load failed: %s", exc)
            state.error = str(exc)
            state.phase = Phase.FAILED

    @app.on_event("startup")
    async def _start_loading() -> None:
        threading.Thread(target=_load, name="load-model", daemon=True).start()

    ucfg = uvicorn.Config(
        app, host=config.worker.host, port=config.worker.port, log_level="warning",
        timeout_graceful_shutdown=max(1, int(config.worker.drain_grace_s)),
        limit_concurrency=None, timeout_keep_alive=5)
    server = _DrainingServer(ucfg, state)
    server.run()
    if state.engine is not None:
        state.engine.shutdown()
    return 0
