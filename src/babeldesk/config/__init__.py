"""Frozen configuration dataclasses, validated at construction (one module per group of
sections: ``engine``, ``fleet``, ``gateway``; ``file`` reads them).

One YAML file, overridden by ``BABELDESK_<SECTION>_<KEY>`` environment variables, then by
CLI flags. Read once at start-up; an invalid value fails with a ``ConfigError`` naming
the key (``engine.max_batch_size: must be >= 1``).
"""

from __future__ import annotations

from babeldesk.config.engine import (
    Backend,
    DType,
    EngineConfig,
    Quantization,
    Requantize,
    WorkerConfig,
)
from babeldesk.config.fleet import (
    FleetConfig,
    RoutingPolicy,
    UpstreamConfig,
)
from babeldesk.config.gateway import (
    GatewayConfig,
    LimitsConfig,
    MATCHER_EMBEDDERS,
    StoreConfig,
    SupportConfig,
)
from babeldesk.config.file import (
    Config,
    ENV_PREFIX,
    load_config,
    parse_upstreams,
)

__all__ = [
    "Backend",
    "Config",
    "DType",
    "ENV_PREFIX",
    "EngineConfig",
    "FleetConfig",
    "GatewayConfig",
    "LimitsConfig",
    "MATCHER_EMBEDDERS",
    "Quantization",
    "Requantize",
    "RoutingPolicy",
    "StoreConfig",
    "SupportConfig",
    "UpstreamConfig",
    "WorkerConfig",
    "load_config",
    "parse_upstreams",
]
