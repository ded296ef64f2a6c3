"""``babeldesk worker``: bind, load the model in the background, serve, drain on SIGTERM.

SIGTERM (or SIGINT): ``/ready`` turns 503 and new generations get 503 at once; in-flight
requests finish within ``worker.drain_grace_s``; then uvicorn shuts down and the process
exits 0. A second signal stops at once. A model that fails to load stops it with status 1.
"""

from __future__ import annotations

import logging

import uvicorn

from babeldesk.config import Config
from babeldesk.engine.loader import load_engine
from babeldesk.telemetry.gpu import start_gpu_sampler
from babeldesk.telemetry.metrics import EngineMetrics, Metrics
from babeldesk.edge.lifecycle import DrainingServer, start_loading
from babeldesk.worker.app import Phase, WorkerState, create_app, mount_engine

log = logging.getLogger("babeldesk.worker")


def run_worker(config: Config) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = Metrics("worker")
    state = WorkerState(config, metrics)
    app = create_app(state)

    def load() -> str:
        engine = load_engine(config.engine, EngineMetrics(metrics))
        engine.start()
        mount_engine(app, state, engine)
        state.engine = engine
        return f"ready: {engine.model_name} on {engine.backend.name}"

    @app.on_event("startup")
    async def _start() -> None:
        start_loading(state, load, server, log)
        start_gpu_sampler(metrics)

    ucfg = uvicorn.Config(
        app, host=config.worker.host, port=config.worker.port, log_level="warning",
        timeout_graceful_shutdown=max(1, int(config.worker.drain_grace_s)),
        limit_concurrency=None, timeout_keep_alive=5,
        access_log=False)
    def on_drain() -> None:
        state.phase = Phase.DRAINING
        if state.engine is not None:
            state.engine.stop_accepting()

    def busy() -> int:
        engine = state.engine
        in_engine = 0 if engine is None else engine.num_running + engine.num_waiting
        return metrics.in_flight() + in_engine

    server = DrainingServer(ucfg, grace_s=config.worker.drain_grace_s, on_drain=on_drain,
                            busy=busy)
    server.run()
    if state.engine is not None:
        state.engine.shutdown()
    return 1 if state.phase == Phase.FAILED else 0
