"""Capacity per replica, read from a bench result.

The bench writes a JSON object; the autoscaler reads only these keys of it (others are
ignored, so the bench may add more):

```json
{"achieved_rps": 12.4,   // requests/s one replica completed in the run (required)
 "slo_rps": 9.8,         // highest requests/s that still met the latency SLO (optional)
 "model": "qwen2.5-0.5b", "device": "NVIDIA H100"}   // labels for the report (optional)
```

The keys may also sit under a ``"summary"`` object. ``slo_rps`` wins when present: the
autoscaler plans with what a replica serves *within the SLO*, not its saturated maximum.

The autoscaler counts *model* requests (the workers' chat completions), so a bench of a
mixed workload through a gateway is converted with its model share: ``without_model_share``
(0..1) or ``source_shares.model``, the same keys ``babeldesk cost`` reads. A bench straight
against a worker has model share 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babeldesk.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BenchCapacity:
    achieved_rps: float  # requests/s completed by one replica at saturation
    slo_rps: float | None = None  # requests/s at which the latency SLO still held
    model: str = ""
    device: str = ""
    model_share: float = 1.0  # share of the benched requests that reached the model, (0, 1]

    @property
    def capacity_rps(self) -> float:
        """Model requests/s one replica is planned to carry: the SLO rate if measured."""
        rate = self.slo_rps if self.slo_rps is not None else self.achieved_rps
        return rate * self.model_share


def _rate(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: {key}", f"must be a number, got {value!r}")
    rate = float(value)
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(f"{source}: {key}", f"must be a finite number > 0, got {value!r}")
    return rate


def _fraction(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{source}: {key}", f"must be a number in [0, 1], got {value!r}")
    return float(value)


def parse_bench_capacity(data: Mapping[str, Any], source: str = "bench result") -> BenchCapacity:
    """A bench result object -> the capacity per replica; fails naming the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, "must be a JSON object")
    body = data.get("summary", data)
    if not isinstance(body, Mapping):
        raise ConfigError(f"{source}: summary", "must be a JSON object")
    if "achieved_rps" not in body:
        raise ConfigError(f"{source}: achieved_rps", "missing")
    achieved = _rate(source, "achieved_rps", body["achieved_rps"])
    slo = body.get("slo_rps")
    share = 1.0
    if body.get("without_model_share") is not None:
        share = 1.0 - _fraction(source, "without_model_share", body["without_model_share"])
    elif isinstance(body.get("source_shares"), Mapping) and "model" in body["source_shares"]:
        share = _fraction(source, "source_shares.model", body["source_shares"]["model"])
    if share <= 0:
        raise ConfigError(f"{source}: model share", "no benched request reached the model")
    return BenchCapacity(
        achieved_rps=achieved,
        slo_rps=None if slo is None else _rate(source, "slo_rps", slo),
        model=str(body.get("model", "")),
        device=str(body.get("device", "")),
        model_share=share,
    )


def load_bench_capacity(path: Path) -> BenchCapacity:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), f"invalid JSON: {exc}") from exc
    return parse_bench_capacity(data, source=str(path))
