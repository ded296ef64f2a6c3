"""The one background loader of worker, serve and gateway (edge.lifecycle.start_loading):
READY when the load returns, FAILED and the process told to stop when it raises, and a
SIGTERM that arrives while loading is not undone when the load finishes; and the one
``AppState.require``: 503s a balancer retries until the app serves."""

from __future__ import annotations

import logging
import threading

import pytest
import uvicorn

from babeldesk.config import Config
from babeldesk.edge.lifecycle import AppState, Phase, start_loading
from babeldesk.errors import ModelLoadError, Unavailable
from babeldesk.gateway.app import GatewayState
from babeldesk.telemetry.metrics import Metrics
from babeldesk.worker.app import WorkerState

log = logging.getLogger("test")


def _parts() -> tuple[GatewayState, uvicorn.Server]:
    return GatewayState(Config(), Metrics("gateway")), uvicorn.Server(uvicorn.Config(app=None))


def _start_loading(state: AppState[object], load, server: uvicorn.Server) -> threading.Thread:
    return start_loading(state, load, server, log)


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



@pytest.mark.parametrize("kind", [WorkerState, GatewayState])
def test_require_is_a_503_until_ready_and_while_draining(kind: type[AppState[object]]) -> None:
    state = kind(Config(), Metrics("x"))
    with pytest.raises(Unavailable) as err:
        state.require()
    assert str(err.value) == f"{kind.name} is loading" and err.value.retry_after == 5
    served = object()
    state.served, state.phase = served, Phase.READY
    assert state.require() is served
    state.phase = Phase.DRAINING
    with pytest.raises(Unavailable) as err:
        state.require()
    assert str(err.value) == f"{kind.name} is draining" and err.value.retry_after == 1
