"""Reports of ``babeldesk bench`` and ``babeldesk tune``: a summary dict (pure), a rich
table, a JSON file and a PNG plot (matplotlib, Agg backend).

The bench JSON is the file ``babeldesk cost --fleet NAME:price=P,bench=FILE`` and
``babeldesk autoscale --bench FILE`` read: their keys (``achieved_rps``, ``slo_rps``,
``source_shares``, ``model``, ``device``) sit under ``"summary"``.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from babeldesk.bench.loadgen import RequestResult, RunResult
from babeldesk.bench.slo import Slo, Trial

if TYPE_CHECKING:
    from rich.table import Table

    from babeldesk.bench.tune import TuneReport

SOURCES = ("knowledge_base", "cache", "model", "handoff")
FAST_MS = 100.0  # "answered under 100 ms", the support benchmark's headline share


def percentiles(values: Sequence[float], scale: float = 1000.0) -> dict[str, float] | None:
    """p50/p90/p99/mean/max of seconds, in milliseconds (``scale``); None when empty."""
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64) * scale
    p50, p90, p99 = np.quantile(a, [0.5, 0.9, 0.99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(a.mean()), "max": float(a.max())}


def environment() -> dict[str, Any]:
    """Where and when: for the record next to every number."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": socket.gethostname(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in load]}


def summarize(run: RunResult, slo: Slo) -> dict[str, Any]:
    """One run -> the report's numbers. Shares of sources are of answered messages; the
    under-100-ms share and goodput are of every message sent (a failure is not fast)."""
    rs = run.results
    n = len(rs)
    ok = [r for r in rs if r.ok]
    lat = [r.latency_s for r in ok if r.latency_s is not None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [g for r in ok for g in r.gaps_s]
    slo_s = slo.target_ms / 1000

    def within(r: RequestResult) -> bool:
        v = r.ttft_s if slo.metric == "ttft" else r.latency_s
        return r.ok and v is not None and v <= slo_s

    good = sum(1 for r in rs if within(r))
    fast = sum(1 for r in ok if r.latency_s is not None and r.latency_s * 1000 < FAST_MS)
    statuses = Counter(r.status for r in rs if not r.ok)
    wall = max(run.wall_s, 1e-9)
    out: dict[str, Any] = {
        "mode": run.mode.value, "offered_rps": run.offered_rps, "concurrency": run.concurrency,
        "requests": n, "ok": len(ok), "errors": n - len(ok),
        "errors_by_status": dict(sorted(statuses.items())),
        "wall_s": run.wall_s,
        "achieved_rps": len(ok) / wall,
        "latency_ms": percentiles(lat), "ttft_ms": percentiles(ttft), "itl_ms": percentiles(gaps),
        "under_100ms_share": fast / n if n else 0.0,
        "slo": {"target_ms": slo.target_ms, "quantile": slo.quantile, "metric": slo.metric},
        "goodput_rps": good / wall, "goodput_share": good / n if n else 0.0,
        "tokens_per_s": sum(r.tokens for r in ok) / wall,
    }
    sources = Counter(r.source for r in ok if r.source)
    if sources:  # the openai target marks every answer "model"; support names its source
        out["source_shares"] = {s: sources.get(s, 0) / len(ok) for s in SOURCES}
        out["handoff_share"] = sum(1 for r in ok if r.handoff) / len(ok)
        out["translated_share"] = sum(1 for r in ok if r.translated) / len(ok)
        out["under_100ms_by_source"] = {
            s: (sum(1 for r in ok if r.source == s and r.latency_s is not None
                    and r.latency_s * 1000 < FAST_MS) / sources[s]) if sources.get(s) else None
            for s in SOURCES}
        langs = Counter(r.language for r in ok if r.language)
        out["languages"] = dict(langs.most_common())
        out["under_100ms_by_language"] = {
            lang: sum(1 for r in ok if r.language == lang and r.latency_s is not None
                      and r.latency_s * 1000 < FAST_MS) / count
            for lang, count in langs.most_common()}
        kinds = Counter(it.kind for r, it in zip(rs, run.items) if r.ok) if run.items else {}
        out["workload_kinds"] = dict(kinds)
    return out


def bench_document(summary: dict[str, Any], *, target: dict[str, Any], workload: dict[str, Any],
                   trials: Sequence[Trial] = (), slo_rps: float | None = None,
                   model: str = "", device: str = "") -> dict[str, Any]:
    """The bench JSON: ``summary`` (with the keys cost/autoscale read), inputs, trials."""
    s = dict(summary)
    if slo_rps is not None:
        s["slo_rps"] = slo_rps
        # no trial failed: the search stopped at its trial limit or max rate, not a failure
        s["slo_search_open"] = all(t.met for t in trials)
    if model:
        s["model"] = model
    if device:
        s["device"] = device
    return {"summary": s, "target": target, "workload": workload,
            "trials": [{"rate": t.rate, "achieved_rps": t.achieved_rps,
                        "latency_ms": t.latency_ms, "error_share": t.error_share, "met": t.met}
                       for t in trials],
            "environment": environment()}


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def _ms(block: dict[str, float] | None, key: str) -> str:
    return "-" if not block else f"{block[key]:,.1f}"


def bench_table(doc: dict[str, Any]) -> Table:
    from rich.table import Table

    s = doc["summary"]
    t = Table(title=f"babeldesk bench: {doc['target']['kind']} at {doc['target']['url']}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    load = (f"open loop, {s['offered_rps']:g} req/s offered" if s["mode"] == "open"
            else f"closed loop, {s['concurrency']} clients")
    t.add_row("load", load)
    t.add_row("requests (ok / errors)", f"{s['requests']} ({s['ok']} / {s['errors']})")
    t.add_row("achieved requests/s", f"{s['achieved_rps']:.2f}")
    for name, key in (("latency", "latency_ms"), ("time to first token", "ttft_ms"),
                      ("inter-token latency", "itl_ms")):
        t.add_row(f"{name} ms p50 / p90 / p99",
                  " / ".join(_ms(s[key], q) for q in ("p50", "p90", "p99")))
    t.add_row("answered under 100 ms", f"{s['under_100ms_share']:.1%}")
    slo = s["slo"]
    t.add_row(f"goodput ({slo['metric']} <= {slo['target_ms']:g} ms)",
              f"{s['goodput_rps']:.2f} req/s ({s['goodput_share']:.1%})")
    if s.get("slo_rps") is not None:
        bound = ">= " if s.get("slo_search_open") else ""
        t.add_row(f"highest rate with p{slo['quantile'] * 100:g} <= {slo['target_ms']:g} ms",
                  f"{bound}{s['slo_rps']:.2f} req/s")
    elif doc.get("trials"):
        t.add_row(f"highest rate with p{slo['quantile'] * 100:g} <= {slo['target_ms']:g} ms",
                  "none of the trials met it")
    if s["errors_by_status"]:
        t.add_row("errors by status",
                  ", ".join(f"{k}: {v}" for k, v in s["errors_by_status"].items()))
    if "source_shares" in s:
        t.add_row("answered by KB / cache / model / handoff",
                  " / ".join(f"{s['source_shares'][k]:.0%}" for k in SOURCES))
    t.add_row("tokens/s (streamed pieces or usage)", f"{s['tokens_per_s']:.1f}")
    return t


def bench_plot(run: RunResult, doc: dict[str, Any], path: str | Path) -> Path:
    """Latency CDF by answer source, completions per second over the run, and (after an
    SLO search) the SLO metric against the offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = doc.get("trials") or []
    s = doc["summary"]
    ncols = 3 if trials else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.2))
    ax = axes[0]
    ok = [r for r in run.results if r.ok and r.latency_s is not None]
    groups: dict[str, list[float]] = {}
    for r in ok:
        groups.setdefault(r.source or "answered", []).append(r.latency_s * 1000)  # type: ignore[operator]
    if len(groups) > 1:
        groups = {"all": [r.latency_s * 1000 for r in ok], **groups}  # type: ignore[operator]
    for name, vals in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        v = np.sort(np.asarray(vals))
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=f"{name} ({len(v)})",
                linewidth=2.2 if name == "all" else 1.2)
    ax.axvline(FAST_MS, color="grey", linestyle=":", linewidth=1)
    ax.axvline(s["slo"]["target_ms"], color="red", linestyle="--", linewidth=1,
               label=f"SLO {s['slo']['target_ms']:g} ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency to the last byte (ms, log)")
    ax.set_ylabel("share of answered requests")
    ax.set_title(f"under 100 ms: {s['under_100ms_share']:.1%} of {s['requests']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)

    ax = axes[1]
    done = sorted(r.sent_at + (r.latency_s or 0.0) for r in ok)
    if done:
        edges = np.arange(0, max(done) + 1.0, 1.0)
        counts, _ = np.histogram(done, bins=edges if len(edges) > 1 else 1)
        ax.plot(edges[: len(counts)], counts, drawstyle="steps-post", label="answered / s")
    sent = sorted(r.sent_at for r in run.results)
    if sent:
        edges = np.arange(0, max(sent) + 1.0, 1.0)
        counts, _ = np.histogram(sent, bins=edges if len(edges) > 1 else 1)
        ax.plot(edges[: len(counts)], counts, drawstyle="steps-post", alpha=0.6, label="sent / s")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("requests per second")
    ax.set_title(f"achieved {s['achieved_rps']:.2f} req/s, goodput {s['goodput_rps']:.2f}",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    if trials:
        ax = axes[2]
        rates = [t["rate"] for t in trials]
        lat = [t["latency_ms"] if t["latency_ms"] is not None else np.nan for t in trials]
        colors = ["tab:green" if t["met"] else "tab:red" for t in trials]
        ax.scatter(rates, lat, c=colors, zorder=3)
        for i, (x, y) in enumerate(zip(rates, lat)):
            ax.annotate(str(i + 1), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(s["slo"]["target_ms"], color="red", linestyle="--", linewidth=1)
        ax.set_xlabel("offered requests/s (trial order numbered)")
        ax.set_ylabel(f"{s['slo']['metric']} p{s['slo']['quantile'] * 100:g} (ms)")
        ax.set_yscale("log")
        best = s.get("slo_rps")
        ax.set_title("SLO search: " + (f"{best:.2f} req/s meets it" if best else "no rate met it"),
                     fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"babeldesk bench, {doc['target']['kind']} target "
                 f"({doc['environment']['date']})", fontsize=10)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


# --- tune -----------------------------------------------------------------------------------


def tune_table(report: TuneReport) -> Table:
    from rich.table import Table

    t = Table(title=f"babeldesk tune: {report.model} ({report.backend}, {report.device})")
    for col in ("batch", "max_len", "tokens/s", "req/s", "p99 ms", "TTFT\np99 ms",
                "peak MiB", "load", "note"):
        t.add_column(col, justify="left" if col == "note" else "right")
    for p in report.points:
        mark = " *" if report.recommended is not None and p is report.recommended else ""
        t.add_row(f"{p.batch_size}{mark}", str(p.max_model_len),
                  "-" if p.oom else f"{p.tokens_per_s:.1f}",
                  "-" if p.oom else f"{p.requests_per_s:.2f}",
                  "-" if p.oom else f"{p.p99_ms:,.0f}",
                  "-" if p.oom else f"{p.ttft_p99_ms:,.0f}",
                  f"{p.peak_memory_bytes / 2**20:,.0f}" if p.peak_memory_bytes else "-",
                  f"{p.loadavg_1m:.1f}", p.note)
    return t


def tune_plot(report: TuneReport, path: str | Path) -> Path:
    """Throughput and p99 against batch size (at the first max_model_len); OOM marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first_len = report.points[0].max_model_len if report.points else 0
    pts = sorted((p for p in report.points if p.max_model_len == first_len),
                 key=lambda p: p.batch_size)
    ran = [p for p in pts if not p.oom]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = [p.batch_size for p in ran]
    ax.plot(xs, [p.tokens_per_s for p in ran], "o-", color="tab:blue", label="tokens/s")
    ax.set_xscale("log", base=2)
    ticks = sorted({p.batch_size for p in pts})
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.minorticks_off()
    for pt in ran:
        ax.annotate(f"{pt.peak_memory_bytes / 2**20:,.0f} MiB", (pt.batch_size, pt.tokens_per_s),
                    xytext=(0, -12), textcoords="offset points", ha="center", fontsize=7,
                    color="tab:blue")
    ax.set_ylim(bottom=0, top=max([pt.tokens_per_s for pt in ran], default=1.0) * 1.2)
    ax.set_xlabel("max batch size (labels: peak memory)")
    ax.set_ylabel("generated tokens/s (all sequences)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(xs, [p.p99_ms for p in ran], "s--", color="tab:orange", label="p99 latency")
    ax2.axhline(report.slo_p99_ms, color="red", linestyle=":", linewidth=1)
    ax2.set_ylabel("p99 request latency (ms)", color="tab:orange")
    ax2.set_ylim(bottom=0, top=max([p.p99_ms for p in ran] + [report.slo_p99_ms]) * 1.1)
    for pt in pts:
        if pt.oom:
            ax.axvline(pt.batch_size, color="red", alpha=0.5)
            ax.annotate("OOM", (pt.batch_size, ax.get_ylim()[1]), color="red", fontsize=8,
                        ha="center", va="top")
    if report.recommended is not None:
        ax.annotate("recommended", (report.recommended.batch_size, report.recommended.tokens_per_s),
                    xytext=(0, 12), textcoords="offset points", ha="center", fontsize=8,
                    arrowprops={"arrowstyle": "->"})
    ax.grid(alpha=0.3)
    ax.set_title(f"{report.model}, {report.backend} on {report.device}, max_model_len "
                 f"{first_len}, {report.max_tokens} new tokens; SLO p99 <= "
                 f"{report.slo_p99_ms:g} ms", fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
