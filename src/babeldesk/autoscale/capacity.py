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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from babeldesk.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BenchCapacity:
    achieved_rps: float  # requests/s completed by one replica at saturation
    slo_rps: float | None = None  # requests/s at which the latency SLO still held
    model: str = ""
    device: str = ""

    @property
    def capacity_rps(self) -> float:
        """What one replica is planned to carry: the SLO rate if measured."""
        return self.slo_rps if self.slo_rps is not None else self.achieved_rps


def _rate(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: {key}", f"must be a number, got {value!r}")
    rate = float(value)
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(f"{source}: {key}", f"must be a finite number > 0, got {value!r}")
    return rate


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
    return BenchCapacity(
        achieved_rps=achieved,
        slo_rps=None if slo is None else _rate(source, "slo_rps", slo),
        model=str(body.get("model", "")),
        device=str(body.get("device", "")),
    )


def load_bench_capacity(path: Path) -> BenchCapacity:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), f"invalid JSON: {exc}") from exc
    return parse_bench_capacity(data, source=str(path))
