"""Evaluate the intent matcher: per language, across languages, and on what it must refuse.

    python benchmarks/matcher_eval.py --set tune --grid        # choose defaults (tune set only)
    python benchmarks/matcher_eval.py --set test               # the report: every table below
    python benchmarks/matcher_eval.py --set test --tables kb,en --json out.json

Sets (benchmarks/data/, see its README):
- tune: ``intent_eval.jsonl``, the team's set (24 languages). Every default of the matcher
  is chosen on it (``--grid``), nothing else.
- test: ``intent_test.jsonl``, written apart from the KB, the matcher and the tune set
  (26 languages, informal spellings); never read to choose anything.
- ``oos_test.jsonl``: 1,560 out-of-scope messages in 26 languages (assistant commands,
  general knowledge, small talk, other businesses), never trained on.

Tables:
- kb: the bundled multilingual KB (examples in 24 languages).
- en: the KB with every non-English example removed (answers untouched), tested in every
  language: the headline for a shop that writes its knowledge once.
- lolo: leave-one-language-out: for each KB language L, trained without L's examples,
  tested on L's messages.
- oos: the out-of-scope test, share answered with an intent per language (bundled KB and
  English-only KB).

Covered accuracy: the right intent answered / covered messages (a message sent onward
counts as not answered). Wrong: answered with another intent. False hits: out-of-scope
messages (off_topic, uncovered_shop, near_miss) answered with any intent. The language
each message is matched with is the detector's (no hints), as in ``serve``.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from babeldesk.knowledge.embed import EmbedderKind, default_cache_dir, embed_cached  # noqa: E402
from babeldesk.knowledge.intents import Scores, calibrate  # noqa: E402
from babeldesk.knowledge.documents import load_documents  # noqa: E402
from babeldesk.knowledge.kb import docs_dir, load_kb  # noqa: E402
from babeldesk.support.language import LanguageDetector  # noqa: E402
from babeldesk.knowledge.anchors import load_anchors, normalize  # noqa: E402
from babeldesk.knowledge.matcher import IntentMatcher, MatcherConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
SETS = {"tune": HERE / "data" / "intent_eval.jsonl", "test": HERE / "data" / "intent_test.jsonl"}
OOS_TEST = HERE / "data" / "oos_test.jsonl"


def load_rows(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    for n, row in enumerate(rows, 1):
        for key in ("text", "lang"):
            if key not in row:
                raise SystemExit(f"{path}:{n}: missing {key!r}")
        row.setdefault("intent", None)
    return rows


class Memo:
    """The matcher's embedder with a per-text memory: leave-one-language-out trains on
    24 subsets of the same examples (``embed_cached`` would read its store for each)."""

    def __init__(self, embedder: Any) -> None:
        self._e = embedder
        self._seen: dict[str, np.ndarray] = {}
        self.name, self.dim = embedder.name, embedder.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._seen]
        if missing:
            for t, v in zip(missing, self._e.embed(missing), strict=True):
                self._seen[t] = v
        return np.stack([self._seen[t] for t in texts]) if texts else np.empty((0, self.dim))


class Evaluator:
    """Vectors and detected languages of a set, computed once; matchers scored on them."""

    def __init__(self, rows: Sequence[dict[str, Any]], matcher: IntentMatcher,
                 detector: LanguageDetector, cache: Path | None) -> None:
        self.rows = list(rows)
        texts = [normalize(r["text"]) for r in self.rows]
        self.vectors = embed_cached(matcher._embedder, texts, cache)  # noqa: SLF001
        self.detected = [detector.detect(r["text"]).language for r in self.rows]
        self.texts = texts

    def predict(self, matcher: IntentMatcher,
                thresholds: tuple[float, float] | None = None) -> list[str | None]:
        scores = matcher.scores(self.vectors, self.detected, self.texts)
        return [m.intent for m in matcher.decide_scores(scores, self.detected, thresholds)]

    def top_scores(self, matcher: IntentMatcher) -> tuple[np.ndarray, np.ndarray]:
        """Best score and o per message (for choosing thresholds)."""
        scores = matcher.scores(self.vectors, self.detected, self.texts)
        return scores.intents.max(axis=1), scores.out_of_scope


def score(rows: Sequence[dict[str, Any]], preds: Sequence[str | None],
          languages: set[str] | None = None) -> dict[str, Any]:
    """Covered accuracy, wrong answers and false hits, overall and per language."""
    per: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for row, pred in zip(rows, preds, strict=True):
        if languages is not None and row["lang"] not in languages:
            continue
        c = per[row["lang"]]
        if row["intent"] is not None:
            c["covered"] += 1
            c["right"] += pred == row["intent"]
            c["wrong"] += pred is not None and pred != row["intent"]
        else:
            c["oos"] += 1
            c["false_hits"] += pred is not None
    total: collections.Counter[str] = sum(per.values(), collections.Counter())

    def rates(c: collections.Counter[str]) -> dict[str, float]:
        return {"accuracy": c["right"] / max(c["covered"], 1),
                "wrong": c["wrong"] / max(c["covered"], 1),
                "false_hits": c["false_hits"] / max(c["oos"], 1),
                "covered": c["covered"], "oos": c["oos"]}

    return {"all": rates(total), "languages": {k: rates(v) for k, v in sorted(per.items())}}


ANCHORS: Any = None  # --corpus: another out-of-scope corpus (default: the bundled one)
DOCUMENTS: list[tuple[str, str]] = []  # the demo help center's headings, as serve passes them


def train(kb: Any, config: MatcherConfig, languages: frozenset[str] | None,
          embedder: Any = None) -> IntentMatcher:
    return IntentMatcher.from_kb(kb, config, embedder=embedder, languages=languages,
                                 anchors=ANCHORS, documents=DOCUMENTS)


def fmt_row(name: str, r: dict[str, float]) -> str:
    return (f"| {name} | {r['accuracy']:.1%} | {r['wrong']:.1%} | {r['false_hits']:.1%} "
            f"| {int(r['covered'])} / {int(r['oos'])} |")


def table(title: str, result: dict[str, Any]) -> str:
    lines = [f"\n#### {title}\n", "| language | covered accuracy | wrong intent | false hits "
             "| covered / out-of-scope messages |", "|---|---|---|---|---|",
             fmt_row("**all**", result["all"])]
    lines += [fmt_row(k, v) for k, v in result["languages"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=sorted(SETS), default="test")
    ap.add_argument("--tables", default="kb,en,lolo,oos")
    ap.add_argument("--embedder", choices=[k.value for k in EmbedderKind if k.value != "none"],
                    default=MatcherConfig().embedder.value)
    ap.add_argument("--grid", action="store_true", help="print the tuning grid (tune set only)")
    ap.add_argument("--accept-same", type=float)
    ap.add_argument("--accept-cross", type=float)
    ap.add_argument("--margin", type=float)
    ap.add_argument("--domain", type=float)
    ap.add_argument("--corpus", type=Path, help="out-of-scope corpus (default: bundled)")
    ap.add_argument("--no-docs", action="store_true",
                    help="without the help center's headings as anchors (serve uses them)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.grid and args.set != "tune":
        raise SystemExit("--grid chooses defaults: only on --set tune")

    global ANCHORS
    if args.corpus is not None:
        ANCHORS = load_anchors(args.corpus)
    cache = default_cache_dir()
    config = MatcherConfig(embedder=EmbedderKind(args.embedder))
    for key in ("accept_same", "accept_cross", "margin", "domain"):
        if getattr(args, key) is not None:
            config = replace(config, **{key: getattr(args, key)})
    kb = load_kb()
    detector = LanguageDetector()
    if not args.no_docs:
        docs = load_documents(docs_dir(None))
        DOCUMENTS[:] = [(h, detector.detect(h).language)
                        for h in sorted({c.heading for c in docs.chunks})]
    t0 = time.monotonic()
    full = train(kb, config, None)
    embedder = Memo(full._embedder)  # noqa: SLF001 - one loaded model for every variant
    embedder.embed([normalize(e.text) for e in kb.examples()])
    rows = load_rows(SETS[args.set])
    ev = Evaluator(rows, full, detector, cache)
    print(f"# matcher_eval: set {args.set} ({len(rows)} messages), embedder {args.embedder}, "
          f"{platform.machine()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
          f"(setup {time.monotonic() - t0:.0f} s)", flush=True)
    out: dict[str, Any] = {"set": args.set, "documents": len(DOCUMENTS), "config": {
        "accept_same": config.accept_same, "accept_cross": config.accept_cross,
        "margin": config.margin, "domain": config.domain, "embedder": args.embedder}}
    en = frozenset({"en"})

    if args.grid:
        # For each (domain, margin): the threshold that keeps false hits at a target on
        # the tune set, for messages in a KB language (bundled KB) and across languages
        # (English-only KB, the other languages), and the accuracy it leaves.
        print("\n| domain | margin | false hits <= | same-language threshold: KB accuracy / "
              "false hits | cross-language threshold: English-only KB, other languages |")
        print("|---|---|---|---|---|")
        others = {r["lang"] for r in rows} - {"en"}
        oos_rows = np.array([r["intent"] is None for r in rows])
        for domain, margin in itertools.product((0.5, 1.0), (-0.05, 0.0, 0.05)):
            cfg = replace(config, margin=margin, domain=domain)
            m_all = train(kb, cfg, None, embedder)
            m_en = train(kb, cfg, en, embedder)
            for target in (0.01, 0.02, 0.03):
                picked = []
                for m, langs in ((m_all, None), (m_en, others)):
                    top, o = ev.top_scores(m)
                    sel = oos_rows & np.array([langs is None or r["lang"] in langs for r in rows])
                    t = calibrate(Scores(top[sel, None], o[sel]), margin, target)
                    th = (t, t)
                    res = score(rows, ev.predict(m, th), langs)["all"]
                    picked.append(f"{t:.3f}: {res['accuracy']:.1%} / {res['false_hits']:.1%}")
                print(f"| {domain} | {margin:+.2f} | {target:.0%} | {picked[0]} | {picked[1]} |",
                      flush=True)
        return 0

    tables = set(args.tables.split(","))
    if "kb" in tables:
        res = score(rows, ev.predict(full))
        out["kb"] = res
        print(table(f"Bundled KB (examples in {len(full.example_languages)} languages)", res),
              flush=True)
    m_en = None
    if "en" in tables or "oos" in tables:
        m_en = train(kb, config, en, embedder)
    if "en" in tables and m_en is not None:
        res = score(rows, ev.predict(m_en))
        others = score(rows, ev.predict(m_en), {r["lang"] for r in rows} - {"en"})
        res["other_languages"] = others["all"]
        out["en"] = res
        print(table(f"English-only KB; all but English: "
                    f"{others['all']['accuracy']:.1%} accuracy, "
                    f"{others['all']['false_hits']:.1%} false hits", res), flush=True)
    if "lolo" in tables:
        lolo: dict[str, dict[str, float]] = {}
        kb_langs = sorted(full.example_languages)
        for lang in kb_langs:
            keep = frozenset(kb_langs) - {lang}
            m = train(kb, config, keep, embedder)
            lolo[lang] = score(rows, ev.predict(m), {lang})["all"]
        out["lolo"] = lolo
        lines = ["\n#### Leave one language out (trained without L's examples, tested on L)\n",
                 "| language | covered accuracy | wrong intent | false hits | messages |",
                 "|---|---|---|---|---|"]
        tested = {k: v for k, v in lolo.items() if v["covered"]}
        lines += [fmt_row(k, v) for k, v in tested.items()]
        mean_acc = statistics.fmean(v["accuracy"] for v in tested.values()) if tested else 0
        lines.append(f"\nMean over languages: {mean_acc:.1%}")
        print("\n".join(lines), flush=True)
    if "oos" in tables and OOS_TEST.exists():
        oos_rows = load_rows(OOS_TEST)
        oev = Evaluator(oos_rows, full, detector, cache)
        res_oos: dict[str, Any] = {}
        lines = ["\n#### Out-of-scope test (never trained on): share answered with an intent\n",
                 "| language | bundled KB | English-only KB | messages |", "|---|---|---|---|"]
        for name, m in (("kb", full), ("en", m_en)):
            assert m is not None
            preds = oev.predict(m)
            per: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
            cats: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
            for row, pred in zip(oos_rows, preds, strict=True):
                per[row["lang"]][0] += pred is not None
                per[row["lang"]][1] += 1
                cats[row.get("category", "?")][0] += pred is not None
                cats[row.get("category", "?")][1] += 1
            res_oos[name] = {"all": sum(p[0] for p in per.values()) / len(oos_rows),
                             "languages": {k: v[0] / v[1] for k, v in per.items()},
                             "categories": {k: v[0] / v[1] for k, v in cats.items()}}
        lines.append(f"| **all** | {res_oos['kb']['all']:.1%} | {res_oos['en']['all']:.1%} "
                     f"| {len(oos_rows)} |")
        for lang in sorted(res_oos["kb"]["languages"]):
            n = sum(1 for r in oos_rows if r["lang"] == lang)
            lines.append(f"| {lang} | {res_oos['kb']['languages'][lang]:.1%} | "
                         f"{res_oos['en']['languages'][lang]:.1%} | {n} |")
        lines.append("\nBy category (bundled KB): " + ", ".join(
            f"{k} {v:.1%}" for k, v in sorted(res_oos["kb"]["categories"].items())))
        out["oos"] = res_oos
        print("\n".join(lines), flush=True)
    if "timing" in tables:
        sample = [r["text"] for r in rows[:: max(1, len(rows) // 200)]]
        times = []
        for text, lang in zip(sample, [detector.detect(t).language for t in sample], strict=True):
            t = time.perf_counter()
            full.match(text, lang)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        out["timing_ms"] = {"p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)]}
        print(f"\nMatch time (embedding included), {len(times)} messages, one thread: "
              f"p50 {out['timing_ms']['p50']:.1f} ms, p99 {out['timing_ms']['p99']:.1f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
