"""Config -> a started-ready ``Engine`` on the chosen backend."""

from __future__ import annotations

from babeldesk.config import Backend, EngineConfig
from babeldesk.engine.backends.base import Backend as BackendImpl
from babeldesk.engine.llm_engine import Engine
from babeldesk.engine.models import resolve_model
from babeldesk.types import EngineReporter


def load_backend(config: EngineConfig) -> BackendImpl:
    source = resolve_model(config.model)
    if config.backend == Backend.LLAMACPP:
        from babeldesk.engine.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(source, config)
    from babeldesk.engine.backends.transformers import TransformersBackend

    return TransformersBackend(source, config)


def load_engine(config: EngineConfig, reporter: EngineReporter | None = None) -> Engine:
    """Load the model; the caller starts the engine thread (``engine.start()``). What the
    engine reports goes to ``reporter`` (e.g. ``telemetry.metrics.EngineMetrics``)."""
    return Engine(load_backend(config), config, reporter)
