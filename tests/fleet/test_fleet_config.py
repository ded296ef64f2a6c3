"""The fleet config section: YAML, env vars, nested upstream lists, errors naming keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from babeldesk.config import FleetConfig, RoutingPolicy, UpstreamConfig, load_config
from babeldesk.errors import ConfigError


def test_yaml_with_mappings_and_bare_urls(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("fleet:\n  policy: least_outstanding\n  breaker_failures: 3\n"
                 "  upstreams:\n    - http://w1:8000\n"
                 "    - {url: 'http://w2:8000', weight: 2}\n"
                 "    - {url: 'http://spare:8000', backup: true}\n")
    cfg = load_config(f, env={})
    assert cfg.fleet.policy is RoutingPolicy.LEAST_OUTSTANDING
    assert cfg.fleet.breaker_failures == 3
    assert cfg.fleet.upstreams == (UpstreamConfig("http://w1:8000"),
                                   UpstreamConfig("http://w2:8000", weight=2),
                                   UpstreamConfig("http://spare:8000", backup=True))


def test_env_list_of_urls() -> None:
    cfg = load_config(env={"BABELDESK_FLEET_UPSTREAMS": "http://a:1, http://b:2",
                           "BABELDESK_FLEET_HEALTH_INTERVAL_S": "5"})
    assert [u.url for u in cfg.fleet.upstreams] == ["http://a:1", "http://b:2"]
    assert cfg.fleet.health_interval_s == 5.0


@pytest.mark.parametrize("section, key", [
    ({"upstreams": [{"url": "http://a:1", "wieght": 2}]}, r"fleet\.upstreams\[0\]\.wieght"),
    ({"upstreams": ["ftp://a:1"]}, r"fleet\.upstreams\.url"),
    ({"upstreams": [{"url": "http://a:1", "weight": 0}]}, r"fleet\.upstreams\.weight"),
    ({"upstreams": ["http://a:1", "http://a:1"]}, r"fleet\.upstreams: duplicate"),
    ({"upstreams": [3]}, r"fleet\.upstreams\[0\]"),
    ({"policy": "random"}, r"fleet\.policy.*one of"),
    ({"breaker_failures": 0}, r"fleet\.breaker_failures"),
    ({"health_jitter": 1.5}, r"fleet\.health_jitter"),
    ({"breaker_max_reset_s": 1}, r"fleet\.breaker_max_reset_s"),
])
def test_bad_values_name_the_key(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(env={}, overrides={"fleet": section})


def test_defaults_match_the_issue() -> None:
    f = FleetConfig()
    assert (f.breaker_failures, f.breaker_reset_s, f.health_interval_s) == (5, 30.0, 30.0)
    assert f.health_path == "/ready"
