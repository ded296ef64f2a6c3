"""serve's and gateway's one background loader (gateway.server._start_loading): READY when
the load returns, FAILED and the process told to stop when it raises, and a SIGTERM that
arrives while loading is not undone when the load finishes."""

from __future__ import annotations

import threading

import uvicorn

from babeldesk.config import Config
from babeldesk.edge.lifecycle import Phase
from babeldesk.errors import ModelLoadError
from babeldesk.gateway.app import GatewayState
from babeldesk.gateway.server import _start_loading
from babeldesk.telemetry.metrics import Metrics


def _parts() -> tuple[GatewayState, uvicorn.Server]:
    return GatewayState(Config(), Metrics("gateway")), uvicorn.Server(uvicorn.Config(app=None))


def test_a_load_that_returns_makes_the_app_ready() -> None:
    state, server = _parts()
    _start_loading(state, lambda: "ready on test", server).join(10)
    assert state.phase is Phase.READY and not server.should_exit


def test_a_load_that_fails_stops_the_process() -> None:
    state, server = _parts()

    def load() -> str:
        raise ModelLoadError("no such model")

    _start_loading(state, load, server).join(10)
    assert state.phase is Phase.FAILED and state.error == "ModelLoadError"
    assert server.should_exit


def test_a_drain_during_loading_is_not_undone() -> None:
    state, server = _parts()
    loading, drained = threading.Event(), threading.Event()

    def load() -> str:
        loading.set()
        assert drained.wait(10)
        return "ready on test"

    thread = _start_loading(state, load, server)
    assert loading.wait(10)
    state.phase = Phase.DRAINING  # what DrainingServer's on_drain does on SIGTERM
    drained.set()
    thread.join(10)
    assert not thread.is_alive()
    assert state.phase is Phase.DRAINING
