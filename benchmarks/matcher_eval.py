"""Evaluate the intent matcher on the held-out multilingual set.

    python benchmarks/matcher_eval.py                      # bundled KB, e5 + char n-grams
    python benchmarks/matcher_eval.py --embedder none      # char n-grams only
    python benchmarks/matcher_eval.py --tune               # grid-search thresholds on the tune half
    python benchmarks/matcher_eval.py --verifier llm --verify-low 0.4 --verify-high 0.8
    python benchmarks/matcher_eval.py --cascade-threshold none  # the combined model on every message
    python benchmarks/matcher_eval.py --embedder static    # the static table distilled from e5
    python benchmarks/matcher_eval.py --embedder static --fallback e5 --tune  # 3 stages

Split discipline: every line of benchmarks/data/intent_eval.jsonl falls in the "tune" or
the "test" half by a hash of its text (stable across runs and edits of other lines).
Thresholds and hyper-parameters are chosen on "tune" only (``--tune`` prints the grid);
the report's headline numbers are the untouched "test" half, with the full set beside.
The matcher never trains on the eval set: it trains on the KB examples and the bundled
out-of-scope examples; lines of the eval set that duplicate a KB example are counted
and reported (the set is written apart from the KB, so this should be 0).

Output: a Markdown report on stdout (paste into docs/benchmarks.md); ``--json PATH``
writes the raw numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from babeldesk.knowledge.embed import EmbedderKind
from babeldesk.support.kb import load_kb
from babeldesk.support.matcher import (
    IntentMatcher,
    Match,
    MatcherConfig,
    Verifier,
    llm_verifier,
    normalize,
)

HERE = Path(__file__).resolve().parent
DEFAULT_EVAL = HERE / "data" / "intent_eval.jsonl"


def load_eval(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for key in ("text", "lang", "intent", "kind"):
            if key not in row:
                raise SystemExit(f"{path}:{n}: missing {key!r}")
        row["half"] = split_half(row["text"])
        rows.append(row)
    return rows


def split_half(text: str) -> str:
    return "tune" if hashlib.sha256(text.encode("utf-8")).digest()[0] % 2 == 0 else "test"


def score(rows: Sequence[dict[str, Any]], preds: Sequence[Match]) -> dict[str, Any]:
    covered = [(r, p) for r, p in zip(rows, preds) if r["intent"] is not None]
    oos = [(r, p) for r, p in zip(rows, preds) if r["intent"] is None]
    per_lang: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    confusion: collections.Counter[tuple[str, str]] = collections.Counter()
    for r, p in covered:
        ok = p.intent == r["intent"]
        per_lang[r["lang"]][0] += ok
        per_lang[r["lang"]][1] += 1
        if not ok:
            confusion[(r["intent"], p.intent or "none")] += 1
    per_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    false_hits = []
    for r, p in oos:
        per_kind[r["kind"]][0] += p.intent is not None
        per_kind[r["kind"]][1] += 1
        if p.intent is not None:
            false_hits.append((r["lang"], r["kind"], r["text"], p.intent, round(p.confidence, 2)))
    n_cov = max(len(covered), 1)
    n_oos = max(len(oos), 1)
    return {
        "covered": len(covered),
        "out_of_scope": len(oos),
        "accuracy": sum(p.intent == r["intent"] for r, p in covered) / n_cov,
        "rejected_covered": sum(p.intent is None for _, p in covered) / n_cov,
        "false_hit_rate": sum(p.intent is not None for _, p in oos) / n_oos,
        "per_language": {k: v[0] / v[1] for k, v in sorted(per_lang.items())},
        "per_kind": {k: (v[0], v[1]) for k, v in sorted(per_kind.items())},
        "confusions": confusion.most_common(),
        "false_hits": false_hits,
        "verified": sum(p.verified for p in preds),
        "embedded": sum(p.embedded for p in preds) / max(len(preds), 1),
        "fallback": sum(p.fallback for p in preds) / max(len(preds), 1),
    }


def cascade(matcher: IntentMatcher, first: np.ndarray, probs: np.ndarray,
            threshold: float | None, third: np.ndarray | None = None,
            middle: float | None = None) -> list[Match]:
    """The cascade's decisions from every stage's probabilities (as ``match_many`` does);
    threshold None: no n-gram stage; ``third`` (the fallback model's rows): the combined
    model decides only when sure (``middle``), the third stage the rest."""
    out = []
    for i, (f, p) in enumerate(zip(first, probs)):
        match = matcher.first_stage(f, threshold) if threshold is not None else None
        if match is None and third is not None:
            match = matcher.middle_stage(p, middle) or replace(matcher.decide(third[i]), fallback=True)
        out.append(match or matcher.decide(p))
    return out


def tune(matcher: IntentMatcher, rows: list[dict[str, Any]], first: np.ndarray,
         probs: np.ndarray, third: np.ndarray | None = None) -> None:
    """Print the accept-threshold grid and the cascade-threshold grid on the tune half."""
    idx = [i for i, r in enumerate(rows) if r["half"] == "tune"]
    sub = [rows[i] for i in idx]
    print("accept threshold (combined model alone)  accuracy  false_hits   (tune half)")
    for th in np.arange(0.20, 0.81, 0.05):
        s = score(sub, [matcher.decide(probs[i], float(th)) for i in idx])
        print(f"  {th:.2f}     {s['accuracy']:.3f}     {s['false_hit_rate']:.3f}")
    if not matcher.cascades:
        return
    print("cascade threshold  accuracy  false_hits  embedded   (tune half)")
    for th in np.arange(0.30, 0.96, 0.05):
        preds = cascade(matcher, first[idx], probs[idx], float(th))
        s = score(sub, preds)
        print(f"  {th:.2f}     {s['accuracy']:.3f}     {s['false_hit_rate']:.3f}"
              f"     {s['embedded']:.3f}")
    if third is None:
        return
    print("cascade x middle threshold  accuracy  false_hits  embedded  fallback (tune half)")
    for th in np.arange(0.40, 0.96, 0.05):
        for mid in np.arange(0.50, 1.001, 0.05):
            preds = cascade(matcher, first[idx], probs[idx], float(th), third[idx], float(mid))
            s = score(sub, preds)
            print(f"  {th:.2f}  {mid:.2f}    {s['accuracy']:.3f}     {s['false_hit_rate']:.3f}"
                  f"     {s['embedded']:.3f}     {s['fallback']:.3f}")


async def run_verifier(
    matcher: IntentMatcher, rows: Sequence[dict[str, Any]], preds: list[Match], verifier: Verifier
) -> list[Match]:
    out = []
    for r, p in zip(rows, preds):  # the verifier sees what reached the combined model
        decided_first = matcher.cascades and not p.embedded
        out.append(p if decided_first else await matcher.verify(r["text"], p, verifier))
    return out


def latency(matcher: IntentMatcher, texts: Sequence[str], n: int) -> dict[str, float]:
    """Per-message matcher latency in ms: one message per call, as the gateway calls it."""
    samples: list[tuple[float, int]] = []  # (ms, stage: 1 n-grams, 2 combined, 3 fallback)
    for text in texts[:n]:
        t0 = time.perf_counter()
        match = matcher.match(text)
        samples.append(((time.perf_counter() - t0) * 1000,
                        3 if match.fallback else 2 if match.embedded else 1))
    out: dict[str, float] = {}
    for key, part in (("", samples), ("first_", [s for s in samples if s[1] == 1]),
                      ("embedded_", [s for s in samples if s[1] == 2]),
                      ("fallback_", [s for s in samples if s[1] == 3])):
        ms = sorted(x for x, _ in part) or [float("nan")]
        out[f"{key}n"] = len(part)
        out[f"{key}p50_ms"] = statistics.median(ms)
        out[f"{key}p99_ms"] = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return out


def workload(matcher: IntentMatcher) -> dict[str, float]:
    """What share of the serving-rate KB workload the embedding stage sees: one message
    per template skeleton, those the cascade assigns to their intent (as the benchmark
    screens them)."""
    sys.path.insert(0, str(HERE))
    import serving_rate_messages as srm

    skeletons = srm.skeletons()
    matches = matcher.match_many([s.text(12345678) for s in skeletons])
    kept = [m for s, m in zip(skeletons, matches, strict=True) if m.intent == s.intent]
    return {"skeletons": len(skeletons), "kept": len(kept),
            "embedded": sum(m.embedded for m in kept) / max(len(kept), 1),
            "fallback": sum(m.fallback for m in kept) / max(len(kept), 1)}


def report(results: dict[str, Any], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    test, full = results["test"], results["all"]
    lines = [
        f"Run {meta['date']} on {meta['machine']}, command: `{meta['command']}`",
        (
            f"KB {meta['kb_version']}: {meta['kb_examples']} examples, {meta['intents']} intents;"
            f" {meta['negatives']} out-of-scope training examples; eval lines duplicating a KB"
            f" example: {meta['eval_kb_overlap']}. Training {meta['train_s']:.1f} s"
            f" (embeddings {'cached' if meta['cache_hit'] else 'computed'})."
        ),
        "",
        "| | test half (untouched) | whole set |",
        "|---|---|---|",
        f"| covered messages | {test['covered']} | {full['covered']} |",
        f"| intent accuracy on covered | **{test['accuracy']:.1%}** | {full['accuracy']:.1%} |",
        f"| covered but rejected (none) | {test['rejected_covered']:.1%} | {full['rejected_covered']:.1%} |",
        f"| out-of-scope messages | {test['out_of_scope']} | {full['out_of_scope']} |",
        f"| false hits on out of scope | **{test['false_hit_rate']:.1%}** | {full['false_hit_rate']:.1%} |",
        f"| decided by the verifier | {test['verified']} | {full['verified']} |",
        f"| embedded (n-gram stage unsure) | {test['embedded']:.1%} | {full['embedded']:.1%} |",
        f"| third stage (fallback embedder) | {test['fallback']:.1%} | {full['fallback']:.1%} |",
        "",
        "False hits per out-of-scope kind (whole set): "
        + ", ".join(f"{k} {h}/{n}" for k, (h, n) in full["per_kind"].items()),
        "",
        "Accuracy per language (whole set / test half):",
        "",
        "| " + " | ".join(full["per_language"]) + " |",
        "|" + "---|" * len(full["per_language"]),
        "| " + " | ".join(f"{v:.0%}" for v in full["per_language"].values()) + " |",
        "| " + " | ".join(f"{test['per_language'].get(k, 0):.0%}" for k in full["per_language"]) + " |",
        "",
        "Remaining confusions (whole set, expected -> got, count): "
        + "; ".join(f"{a} -> {b} ({n})" for (a, b), n in full["confusions"][:15]),
        "",
        (
            f"Matcher latency per message (one message per call, {meta['latency']['n']} messages):"
            f" p50 {meta['latency']['p50_ms']:.2f} ms, p99 {meta['latency']['p99_ms']:.1f} ms;"
            f" decided by the n-gram stage ({meta['latency']['first_n']}): p50"
            f" {meta['latency']['first_p50_ms']:.3f} ms, p99 {meta['latency']['first_p99_ms']:.3f} ms;"
            f" embedded ({meta['latency']['embedded_n']}): p50"
            f" {meta['latency']['embedded_p50_ms']:.3f} ms, p99 {meta['latency']['embedded_p99_ms']:.3f} ms;"
            f" third stage ({meta['latency']['fallback_n']}): p50"
            f" {meta['latency']['fallback_p50_ms']:.1f} ms, p99 {meta['latency']['fallback_p99_ms']:.1f} ms."
        ),
    ]
    if meta.get("workload"):
        w = meta["workload"]
        lines += ["", (
            f"Serving-rate KB workload (benchmarks/serving_rate_messages.py, {w['skeletons']}"
            f" templates, one message each): {w['kept']} assigned to their intent;"
            f" of those, {w['embedded']:.1%} reach the embedding stage,"
            f" {w['fallback']:.1%} the third stage (fallback embedder)."
        )]
    if args.show_errors:  # tune half only: the test half stays unseen while tuning
        tuned = results["tune"]
        lines += ["", "False hits (tune half):"] + [f"  {x}" for x in tuned["false_hits"]]
        lines += ["Confusions (tune half): " + "; ".join(f"{a} -> {b} ({n})" for (a, b), n in tuned["confusions"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kb", type=Path, default=None, help="KB folder (default: bundled demo)")
    ap.add_argument("--eval", type=Path, default=DEFAULT_EVAL)
    ap.add_argument("--embedder", choices=[k.value for k in EmbedderKind],
                    default=MatcherConfig.embedder.value, help="default: the matcher's default")
    ap.add_argument("--fallback", choices=["none", *(k.value for k in EmbedderKind if k.value != "none")],
                    default="none", help="third stage behind the combined model (e.g. e5 behind static)")
    ap.add_argument("--middle-threshold", type=float, default=None, help="override middle_threshold")
    ap.add_argument("--fallback-weight", type=float, default=None)
    ap.add_argument("--fallback-c", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=None, help="override accept_threshold")
    ap.add_argument("--verify-low", type=float, default=None, help="override verify_low")
    ap.add_argument("--verify-high", type=float, default=None, help="override verify_high")
    ap.add_argument("--embedding-weight", type=float, default=None)
    ap.add_argument("--c", type=float, default=None)
    ap.add_argument("--cascade-threshold", default=None,
                    help="override cascade_threshold (a number, or none: no cascade)")
    ap.add_argument("--cascade-c", type=float, default=None)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--tune", action="store_true", help="print the threshold grid (tune half)")
    ap.add_argument("--verifier", choices=["none", "llm"], default="none")
    ap.add_argument("--model", default="qwen2.5-0.5b", help="engine model for --verifier llm")
    ap.add_argument("--latency-n", type=int, default=300)
    ap.add_argument("--show-errors", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    kb = load_kb(args.kb)
    config = MatcherConfig(embedder=EmbedderKind(args.embedder), threads=args.threads,
                           fallback=None if args.fallback == "none" else EmbedderKind(args.fallback))
    if args.no_cache:
        config = replace(config, cache_dir=None)
    overrides = {
        "accept_threshold": args.threshold,
        "verify_low": args.verify_low,
        "verify_high": args.verify_high,
        "embedding_weight": args.embedding_weight,
        "c": args.c,
        "cascade_c": args.cascade_c,
        "middle_threshold": args.middle_threshold,
        "fallback_weight": args.fallback_weight,
        "fallback_c": args.fallback_c,
    }
    for key, value in overrides.items():
        if value is not None:
            config = replace(config, **{key: value})
    if args.cascade_threshold is not None:
        th = None if args.cascade_threshold == "none" else float(args.cascade_threshold)
        config = replace(config, cascade_threshold=th)
    cache_hit = config.cache_dir is not None and config.cache_dir.exists() and any(config.cache_dir.iterdir())
    t0 = time.monotonic()
    matcher = IntentMatcher.from_kb(kb, config)
    train_s = time.monotonic() - t0

    rows = load_eval(args.eval)
    missing = sorted({r["intent"] for r in rows if r["intent"] and r["intent"] not in kb.intents})
    if missing:  # a partial KB: score only the intents it has
        print(f"note: KB lacks {len(missing)} intents of the eval set; their lines are skipped")
        rows = [r for r in rows if r["intent"] is None or r["intent"] in kb.intents]
    kb_norm = {normalize(e.text) for e in kb.examples()}
    overlap = sum(normalize(r["text"]) in kb_norm for r in rows)
    probs = matcher.probabilities([r["text"] for r in rows])  # combined model, every row
    first = matcher.ngram_probabilities([r["text"] for r in rows])
    third = (matcher.fallback_probabilities([r["text"] for r in rows])
             if matcher.has_fallback else None)
    preds = cascade(matcher, first, probs, config.cascade_threshold, third)
    if args.tune:
        tune(matcher, rows, first, probs, third)
    if args.verifier == "llm":
        preds = asyncio.run(_with_llm(matcher, rows, preds, args))

    results = {
        "all": score(rows, preds),
        "test": score(*zip(*[(r, p) for r, p in zip(rows, preds) if r["half"] == "test"])),
        "tune": score(*zip(*[(r, p) for r, p in zip(rows, preds) if r["half"] == "tune"])),
    }
    covered_texts = [r["text"] for r in rows]
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {_cpu_name()}, {args.threads} thread(s)",
        "command": "python benchmarks/matcher_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "kb_version": kb.version,
        "kb_examples": sum(1 for _ in kb.examples()),
        "intents": len(kb.intents),
        "negatives": _n_negatives(),
        "eval_kb_overlap": overlap,
        "train_s": train_s,
        "cache_hit": cache_hit,
        "latency": latency(matcher, covered_texts[:: max(1, len(covered_texts) // args.latency_n)], args.latency_n),
        "config": {k: str(v) for k, v in vars(config).items()},
        "workload": workload(matcher),
    }
    print(report(results, args, meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, ensure_ascii=False, indent=1, default=str))
    return 0


async def _with_llm(
    matcher: IntentMatcher, rows: list[dict[str, Any]], preds: list[Match], args: argparse.Namespace
) -> list[Match]:
    from babeldesk.config import EngineConfig
    from babeldesk.engine.loader import load_engine

    engine = load_engine(EngineConfig(model=args.model, threads=args.threads, max_new_tokens=8))
    engine.start()
    try:
        return await run_verifier(matcher, rows, preds, llm_verifier(engine))
    finally:
        engine.shutdown()


def _n_negatives() -> int:
    from babeldesk.support.matcher import load_out_of_scope

    return sum(len(v) for v in load_out_of_scope().values())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
