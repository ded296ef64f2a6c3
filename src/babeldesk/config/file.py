"""The config file: ``Config`` (one field per section) and ``load_config``: YAML file <
``BABELDESK_<SECTION>_<KEY>`` environment variables < CLI flags, each value coerced to
its field's annotated type or refused with a ``ConfigError`` naming the key."""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from babeldesk.config.engine import EngineConfig, WorkerConfig
from babeldesk.config.fleet import FleetConfig, UpstreamConfig
from babeldesk.config.gateway import GatewayConfig, LimitsConfig, StoreConfig, SupportConfig
from babeldesk.errors import ConfigError

ENV_PREFIX = "BABELDESK_"


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    support: SupportConfig = field(default_factory=SupportConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


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
