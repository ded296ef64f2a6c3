"""One ``babeldesk bench``: the workload, the main run, the optional search for the highest
open-loop rate meeting the SLO, and the bench document. The caller runs each load (so it
can show progress) through ``RunLoad``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from babeldesk.bench import loadgen, report, workload as wl
from babeldesk.bench.slo import Slo, Trial, judge, slo_search

# (load, label for the display, items) -> the run; blocking (it runs its own event loop)
RunLoad = Callable[[loadgen.LoadConfig, str, list[wl.WorkItem]], loadgen.RunResult]


@dataclass(frozen=True)
class Workload:
    """The messages of the main run, how to draw a fresh set for each SLO trial, and the
    description the bench document records."""

    items: list[wl.WorkItem]
    describe: dict[str, object]
    mix: wl.Mix | None = None  # builtin: trials draw fresh messages from it
    seed: int = 0

    def for_trial(self, n: int, trial: int) -> list[wl.WorkItem]:
        if self.mix is None:
            return self.items
        return wl.builtin_workload(n, self.mix, self.seed + trial)


def make_workload(spec: str, requests: int, *, free_form_share: float, intent_skew: float,
                  languages: str | None, seed: int) -> Workload:
    """``builtin`` (the shop questions in a language mix) or a JSONL file's messages."""
    if spec != "builtin":
        items = wl.load_jsonl(spec)
        return Workload(items, {"kind": "jsonl", "path": spec, "messages": len(items)})
    mix = wl.Mix(free_form_share, intent_skew,
                 wl.parse_languages(languages) if languages else dict(wl.LANGUAGE_WEIGHTS))
    return Workload(wl.builtin_workload(requests, mix, seed),
                    {"kind": "builtin", "free_form_share": free_form_share,
                     "intent_skew": intent_skew, "languages": dict(mix.languages), "seed": seed},
                    mix, seed)


@dataclass(frozen=True)
class Search:
    """``--search``: open-loop trials from ``start_rate`` (0: half the main run's rate)."""

    start_rate: float = 0.0
    max_rate: float = 1000.0
    max_trials: int = 6
    trial_requests: int = 100


def run_bench(target: loadgen.Target, config: loadgen.TargetConfig, load: loadgen.LoadConfig,
              work: Workload, slo: Slo, run_load: RunLoad, *, search: Search | None = None,
              device: str = "") -> tuple[loadgen.RunResult, dict[str, Any]]:
    """The main run, then the search if asked; returns the run and the bench document."""
    label = (f"open loop {load.rate:g} req/s" if load.mode == loadgen.LoadMode.OPEN
             else f"closed loop x{load.concurrency}")
    run = run_load(load, label, work.items)
    summary = report.summarize(run, slo)
    trials: list[Trial] = []
    slo_rps = None
    if search is not None:
        start = search.start_rate or max(0.1, summary["achieved_rps"] / 2)

        async def at_rate(rate: float) -> Trial:
            n = len(trials) + 1
            trial_load = loadgen.LoadConfig(loadgen.LoadMode.OPEN, search.trial_requests, rate,
                                            seed=load.seed + n)
            t = judge(await asyncio.to_thread(
                run_load, trial_load, f"SLO trial {n}: {rate:.2f} req/s",
                work.for_trial(search.trial_requests, n)), slo)
            trials.append(t)
            return t

        slo_rps, _ = asyncio.run(slo_search(at_rate, start_rate=start,
                                            max_rate=max(search.max_rate, start),
                                            max_trials=search.max_trials))
    model = getattr(target, "model", config.model)
    doc = report.bench_document(
        summary, target={"kind": config.kind.value, "url": config.base_url,
                         "stream": config.stream, "model": model or None},
        workload=dict(work.describe), trials=trials, slo_rps=slo_rps, model=model,
        device=device)
    return run, doc
