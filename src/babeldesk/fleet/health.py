"""Active health checks: ``GET /ready`` on every upstream, jittered, one probe in flight.

An upstream leaves rotation after ``unhealthy_threshold`` failed probes in a row and comes
back after ``healthy_threshold`` passes. Each upstream has its own loop, so probes of one
upstream are sequential; ``check`` also refuses to start a second probe while one runs
(an on-demand check racing the loop), so a hanging upstream never piles up probes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

from babeldesk.config import FleetConfig
from babeldesk.fleet.http import HTTPClient, HTTPError
from babeldesk.fleet.pool import Upstream

log = logging.getLogger(__name__)


def jittered(interval_s: float, jitter: float, rng: random.Random) -> float:
    """``interval_s`` scaled by a uniform factor in [1 - jitter, 1 + jitter] (seconds), so
    gateways that started together do not probe in lockstep."""
    return interval_s * (1.0 + rng.uniform(-jitter, jitter))


class HealthChecker:
    def __init__(
        self,
        cfg: FleetConfig,
        client: HTTPClient,
        on_change: Callable[[Upstream], None] = lambda u: None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self._client = client
        self._on_change = on_change  # called when an upstream's ``healthy`` flips
        self._rng = rng or random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def probe(self, up: Upstream) -> str:
        """"" when the upstream answers 2xx within the timeout, else why not."""
        headers = {"host": up.target.host_header} if up.target.host_header else {}
        try:
            async with asyncio.timeout(self.cfg.health_timeout_s):
                status, _ = await self._client.get(up.name, self.cfg.health_path,
                                                   headers=headers)
        except TimeoutError:
            return f"probe timed out after {self.cfg.health_timeout_s:g}s"
        except HTTPError as exc:
            return f"probe failed: {type(exc).__name__}: {exc}"
        return "" if 200 <= status < 300 else f"probe answered {status}"

    async def check(self, up: Upstream) -> bool | None:
        """Probe once and update the counters; None if a probe of ``up`` is already running."""
        if up.probe_in_flight:
            return None
        up.probe_in_flight = True
        try:
            error = await self.probe(up)
        finally:
            up.probe_in_flight = False
        up.probes += 1
        up.last_probe_at = time.monotonic()
        was = up.healthy
        if error:
            up.last_error = error
            up.health_passes = 0
            up.health_failures += 1
            if up.health_failures >= self.cfg.unhealthy_threshold:
                up.healthy = False
        else:
            up.health_failures = 0
            up.health_passes += 1
            if up.health_passes >= self.cfg.healthy_threshold:
                up.healthy = True
                # a restarted worker is back within one probe, however long its breaker
                # would still stay open after repeated openings
                up.breaker.half_open_now()
        if up.healthy and not was:
            # failures from before it went out (a dead worker's refused calls) are not
            # its state now; left, they would count it as failing until its next success
            up.breaker.forget_failures()
        if up.healthy != was:
            log.warning("fleet: %s is now %s%s", up.name,
                        "healthy" if up.healthy else "unhealthy", f" ({error})" if error else "")
            self._on_change(up)
        return not error

    async def _loop(self, up: Upstream) -> None:
        cfg = self.cfg
        # first probe soon, spread over a tenth of the interval
        await asyncio.sleep(self._rng.uniform(0, cfg.health_interval_s * 0.1))
        while True:
            try:
                await self.check(up)
            except Exception:  # a bug must not stop health checking for good
                log.exception("fleet: health check of %s failed", up.name)
            await asyncio.sleep(jittered(cfg.health_interval_s, cfg.health_jitter, self._rng))

    def watch(self, upstreams: list[Upstream]) -> None:
        """Probe exactly these upstreams from now on (starts and stops loops)."""
        if self.cfg.health_interval_s <= 0:
            return
        names = {u.name for u in upstreams}
        for name in list(self._tasks):
            if name not in names:
                self._tasks.pop(name).cancel()
        for up in upstreams:
            if up.name not in self._tasks:
                self._tasks[up.name] = asyncio.create_task(
                    self._loop(up), name=f"health:{up.name}")

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
