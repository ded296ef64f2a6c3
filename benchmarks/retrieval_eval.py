"""Measure document retrieval (knowledge/index.py, knowledge/retrieve.py).

    python benchmarks/retrieval_eval.py                     # everything below
    python benchmarks/retrieval_eval.py --parts tune        # only the own tuning questions
    python benchmarks/retrieval_eval.py --parts tau2,openings --tau2 PATH

Parts:
  tune      own cross-lingual questions, TUNE file: every setting of the grid; chooses
            the setting (fusion, pooling) and the relevance threshold. The only part
            read to choose anything.
  test      the same questions' TEST file, with the chosen setting only: recall@5 per
            language, and the threshold's answer / hand-off rates.
  tau2      tau2-bench banking_knowledge (698 documents, 97 openings; scorer and ceilings
            in its README): coverage@k and recall@k per setting, beside BM25 alone and a
            perfect ranking.
  openings  30 tau2 openings translated by hand into 5 languages: coverage@10 per
            language against the same 30 in English.
  timing    p50 / p95 retrieval over 1,000 chunks on one thread; cold build and reload
            from cache of the demo help center.

Questions: ``{"text", "lang", "doc", "section"}`` per line; ``doc`` is the article's file
under docs/ (null: no article answers it), ``section`` its heading. A question counts as
found at k when its article is among the k best articles (articles ranked by their best
chunk, or as ``--pooling`` says).

Output: tables on stdout, JSON in benchmarks/results/retrieval/, a PNG in docs/img/.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from babeldesk.knowledge.documents import Chunk, Document, load_documents, parse_markdown
from babeldesk.knowledge.embed import E5Embedder
from babeldesk.knowledge.index import DocumentIndex, Fusion, IndexConfig, Scored, store_name
from babeldesk.knowledge.retrieve import (
    Relevance,
    RetrievalConfig,
    Retriever,
    rank_documents,
    relevance_signal,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
DEFAULT_TAU2 = REPO.parent / "shared" / "eval" / "tau2_banking_knowledge"
DEFAULT_DOCS = REPO / "src" / "babeldesk" / "data" / "kb" / "docs"

# name -> (index settings, article pooling)
SETTINGS: dict[str, tuple[IndexConfig, str]] = {
    "bm25": (IndexConfig(fusion=Fusion.BM25), "max"),
    "dense": (IndexConfig(fusion=Fusion.DENSE), "max"),
    "dense max+mean": (IndexConfig(fusion=Fusion.DENSE), "max+mean"),
    "score w=0.5": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.5), "max"),
    "score w=0.7": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.7), "max"),
    "score w=0.85": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.85), "max"),
    "score w=0.95": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.95), "max"),
    "score w=0.7 max+mean": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.7), "max+mean"),
    "rrf": (IndexConfig(fusion=Fusion.RRF), "max"),
    "rrf max+mean": (IndexConfig(fusion=Fusion.RRF), "max+mean"),
    "score w=0.7 no stem": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.7, stem=False),
                            "max"),
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def cache_dir(args: argparse.Namespace) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(args.cache_dir) if args.cache_dir else Path(base) / "babeldesk" / "documents"


class Corpus:
    """Chunks embedded once; every setting re-scores them (BM25 per setting)."""

    def __init__(self, chunks: Sequence[Chunk], embedder: E5Embedder, store: Path) -> None:
        started = time.perf_counter()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.perf_counter() - last[0] > 10:
                last[0] = time.perf_counter()
                print(f"  embedding {done}/{total} chunks", file=sys.stderr)

        self.base = DocumentIndex.build(chunks, embedder, IndexConfig(), store, progress)
        self.seconds = time.perf_counter() - started
        self._indexes: dict[tuple[bool, float, float], DocumentIndex] = {}
        self._qcache: dict[str, np.ndarray] = {}

    def index(self, cfg: IndexConfig) -> DocumentIndex:
        key = (cfg.stem, cfg.k1, cfg.b)
        if key not in self._indexes:
            self._indexes[key] = DocumentIndex(self.base.chunks, self.base.vectors,
                                               self.base.embedder, cfg, self.base.stats)
        index = self._indexes[key]
        index.config = cfg  # fusion and weights are read at scoring time
        return index

    def query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._qcache]
        if todo:
            for t, v in zip(todo, self.base.embedder.embed(todo)):
                self._qcache[t] = v
        return np.stack([self._qcache[t] for t in texts])

    def scores(self, cfg: IndexConfig, texts: Sequence[str]) -> list[Scored]:
        index = self.index(cfg)
        vectors = self.query_vectors(texts)
        return [index.score(t, v) for t, v in zip(texts, vectors)]


def doc_rankings(corpus: Corpus, name: str, texts: Sequence[str], k: int) -> list[list[str]]:
    cfg, pooling = SETTINGS[name]
    return [rank_documents(corpus.base.chunks, s.fused, k, pooling)
            for s in corpus.scores(cfg, texts)]


# --- own cross-lingual questions ------------------------------------------------------


def doc_key(value: str) -> str:
    return Path(value).stem


def own_recall(corpus: Corpus, rows: Sequence[dict[str, Any]], name: str,
               k: int = 5) -> dict[str, Any]:
    answerable = [r for r in rows if r.get("doc")]
    ranked = doc_rankings(corpus, name, [r["text"] for r in answerable], k)
    per_lang: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    at1 = 0
    for r, docs in zip(answerable, ranked):
        stems = [doc_key(d) for d in docs]
        hit = doc_key(r["doc"]) in stems
        per_lang[r["lang"]][0] += hit
        per_lang[r["lang"]][1] += 1
        at1 += bool(stems) and stems[0] == doc_key(r["doc"])
    langs = {lang: round(h / n, 4) for lang, (h, n) in sorted(per_lang.items())}
    total = sum(n for _, n in per_lang.values())
    return {"setting": name, "k": k, "questions": total,
            f"recall@{k}": round(sum(h for h, _ in per_lang.values()) / max(total, 1), 4),
            "recall@1": round(at1 / max(total, 1), 4),
            "min_language": min(langs.values()) if langs else 0.0, "per_language": langs}


def relevance(corpus: Corpus, rows: Sequence[dict[str, Any]], signal: str) -> np.ndarray:
    """Per question, the relevance signal retrieve.py reads (Relevance)."""
    vectors = corpus.query_vectors([r["text"] for r in rows])
    cos = vectors @ corpus.base.vectors.T  # [questions, chunks]
    return np.array([relevance_signal(row, Relevance(signal)) for row in cos])


GRIDS = {Relevance.COSINE.value: np.round(np.arange(0.78, 0.921, 0.005), 3),
         Relevance.LIFT.value: np.round(np.arange(0.02, 0.161, 0.005), 3),
         Relevance.Z.value: np.round(np.arange(2.0, 8.01, 0.1), 2),
         Relevance.GAP.value: np.round(np.arange(0.0, 0.101, 0.0025), 4)}


def calibrate(cos: np.ndarray, rows: Sequence[dict[str, Any]], max_false: float,
              signal: str) -> dict[str, Any]:
    """The lowest threshold whose share of unanswerable questions let through is at most
    ``max_false`` (most answers within the false-answer budget)."""
    unanswerable = np.array([not r.get("doc") for r in rows])
    grid = GRIDS[signal]
    table = []
    for t in grid:
        passed = cos >= t
        false = float(passed[unanswerable].mean()) if unanswerable.any() else 0.0
        answered = float(passed[~unanswerable].mean()) if (~unanswerable).any() else 0.0
        table.append({"threshold": float(t), "answered": round(answered, 4),
                      "false_answers": round(false, 4)})
    ok = [row for row in table if row["false_answers"] <= max_false]
    chosen = ok[0] if ok else table[-1]
    return {"signal": signal, "chosen": chosen, "max_false": max_false, "grid": table,
            "unanswerable": int(unanswerable.sum()), "answerable": int((~unanswerable).sum())}


def apply_threshold(cos: np.ndarray, rows: Sequence[dict[str, Any]],
                    threshold: float) -> dict[str, Any]:
    unanswerable = np.array([not r.get("doc") for r in rows])
    passed = cos >= threshold
    per_lang: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r, p in zip(rows, passed):
        if r.get("doc"):
            per_lang[r["lang"]][0] += bool(p)
            per_lang[r["lang"]][1] += 1
    return {"threshold": threshold,
            "answered": round(float(passed[~unanswerable].mean()), 4) if (~unanswerable).any() else None,
            "false_answers": round(float(passed[unanswerable].mean()), 4) if unanswerable.any() else None,
            "answered_per_language": {k: round(h / n, 4) for k, (h, n) in sorted(per_lang.items())}}


# --- tau2 ------------------------------------------------------------------------------


def tau2_chunks(folder: Path) -> list[Chunk]:
    chunks: list[Chunk] = []
    for row in read_jsonl(folder / "documents.jsonl"):
        doc: Document = parse_markdown(f"# {row['title']}\n\n{row['text']}", row["id"],
                                       row["id"], f"tau2/{row['id']}")
        chunks.extend(doc.chunks)
    return chunks


def tau2_scorer(folder: Path) -> Any:
    spec = importlib.util.spec_from_file_location("tau2_score", folder / "score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tau2_metrics(scorer: Any, required: dict[str, set[str]], ids: Sequence[str],
                 rankings: Sequence[list[str]]) -> dict[str, float]:
    sub = {i: required[i] for i in ids}
    metrics = scorer.score(sub, dict(zip(ids, rankings)))["metrics"]
    return {k: round(v, 4) for k, v in metrics.items()}


# --- report ----------------------------------------------------------------------------


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[f"{c:.3f}" if isinstance(c, float) else str(c)
                                           for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    own = results.get("test") or results.get("tune")
    if own:
        langs = list(own["recall"]["per_language"])
        vals = [own["recall"]["per_language"][lang] for lang in langs]
        axes[0].bar(langs, vals, color="#2f6fed")
        axes[0].axhline(0.85, color="#a4262c", ls="--", lw=1, label="target 0.85")
        axes[0].set_ylim(0, 1.05)
        axes[0].set_title(f"own questions ({'test' if results.get('test') else 'tune'}): "
                          f"recall@5 per language")
        axes[0].legend(loc="lower right")
    tau2 = results.get("tau2")
    if tau2:
        names = list(tau2["settings"])
        vals = [tau2["settings"][n]["coverage@10"] for n in names]
        axes[1].barh(names, vals, color="#6a2d99")
        axes[1].axvline(tau2["ceiling"]["coverage@10"], color="#1e6b32", ls="--", lw=1,
                        label="perfect ranking")
        axes[1].axvline(0.45, color="#a4262c", ls=":", lw=1, label="target 0.45")
        axes[1].set_xlim(0, 1)
        axes[1].set_title("tau2 banking_knowledge: coverage@10")
        axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="tune,test,tau2,openings,timing")
    ap.add_argument("--tau2", type=Path, default=DEFAULT_TAU2,
                    help="tau2 banking_knowledge folder (default: ../shared/eval/... "
                         "beside the repository)")
    ap.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="help-center folder")
    ap.add_argument("--tune-file", type=Path, default=DATA / "docs_questions_tune.jsonl")
    ap.add_argument("--test-file", type=Path, default=DATA / "docs_questions_test.jsonl")
    ap.add_argument("--openings", type=Path, default=DATA / "tau2_openings_translated.jsonl")
    ap.add_argument("--setting", default=None,
                    help="the setting for test/openings/timing (default: chosen on tune)")
    ap.add_argument("--max-false", type=float, default=0.10,
                    help="threshold calibration: most unanswerable questions let through")
    ap.add_argument("--cache-dir", default=None, help="vector stores (default: "
                    "~/.cache/babeldesk/documents)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "retrieval")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "img" / "retrieval.png")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    t0 = time.perf_counter()
    embedder = E5Embedder(args.threads)
    embedder_load_s = time.perf_counter() - t0
    stores = cache_dir(args) / store_name(embedder)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU; "
                   f"{args.threads} embedding thread(s)",
        "embedder": embedder.name, "command": "python benchmarks/retrieval_eval.py "
        + " ".join(argv if argv is not None else sys.argv[1:])}

    chosen = args.setting
    signal, threshold = RetrievalConfig().relevance.value, RetrievalConfig().threshold
    demo: Corpus | None = None
    if parts & {"tune", "test"}:
        docs = load_documents(args.docs)
        for problem in docs.refused:
            print(f"refused: {problem}", file=sys.stderr)
        demo = Corpus(docs.chunks, embedder, stores / "demo-docs.npz")
        print(f"demo help center: {len(docs.documents)} articles, {len(docs.chunks)} chunks")

    if "tune" in parts and demo is not None:
        rows = read_jsonl(args.tune_file)
        grid = {name: own_recall(demo, rows, name) for name in SETTINGS}
        print("\n## own questions, TUNE: recall@5 (article in the 5 best)\n")
        print(table([(n, g["recall@1"], g["recall@5"], g["min_language"])
                     for n, g in grid.items()], ("setting", "recall@1", "recall@5", "worst lang")))
        # the best mean recall@5, then the best worst language, then recall@1
        best = max(grid, key=lambda n: (grid[n]["recall@5"], grid[n]["min_language"],
                                        grid[n]["recall@1"]))
        chosen = chosen or best
        cals = {sig.value: calibrate(relevance(demo, rows, sig.value), rows, args.max_false,
                                     sig.value) for sig in Relevance}
        for c in cals.values():
            print(f"relevance {c['signal']}: threshold {c['chosen']['threshold']} answers "
                  f"{c['chosen']['answered']:.1%} of answerable, lets through "
                  f"{c['chosen']['false_answers']:.1%} of {c['unanswerable']} unanswerable")
        cal = max(cals.values(), key=lambda c: (c["chosen"]["answered"],
                                                -c["chosen"]["false_answers"]))
        signal, threshold = cal["signal"], cal["chosen"]["threshold"]
        print(f"\nchosen on tune: {chosen}; relevance {signal} >= {threshold}")
        print(table([(lang, v) for lang, v in grid[chosen]["per_language"].items()],
                    ("language", "recall@5")))
        results["tune"] = {"grid": grid, "chosen": chosen, "calibration": cals,
                           "relevance": {"signal": signal, "threshold": threshold},
                           "recall": grid[chosen], "questions": len(rows)}
    chosen = chosen or "score w=0.7"

    if "test" in parts and demo is not None:
        rows = read_jsonl(args.test_file)
        rec = own_recall(demo, rows, chosen)
        applied = apply_threshold(relevance(demo, rows, signal), rows, threshold)
        print(f"\n## own questions, TEST ({chosen}, relevance {signal} >= {threshold}; "
              f"nothing tuned here)\n")
        print(table([(lang, v, applied["answered_per_language"].get(lang, 0.0))
                     for lang, v in rec["per_language"].items()],
                    ("language", "recall@5", "answered")))
        print(f"all: recall@5 {rec['recall@5']:.3f}, recall@1 {rec['recall@1']:.3f}; "
              f"answered {applied['answered']}, unanswerable let through "
              f"{applied['false_answers']}")
        results["test"] = {"setting": chosen, "recall": rec, "threshold": applied,
                           "relevance": signal,
                           "questions": len(rows)}

    tau2_corpus: Corpus | None = None
    if parts & {"tau2", "openings", "timing"}:
        tau2_corpus = Corpus(tau2_chunks(args.tau2), embedder, stores / "tau2-banking.npz")
        print(f"\ntau2 corpus: {len(tau2_corpus.base.chunks)} chunks "
              f"({tau2_corpus.base.stats.describe()})")

    if "tau2" in parts and tau2_corpus is not None:
        scorer = tau2_scorer(args.tau2)
        queries = read_jsonl(args.tau2 / "queries.jsonl")
        required = scorer.load_queries(str(args.tau2 / "queries.jsonl"))
        ids = [q["id"] for q in queries]
        per: dict[str, dict[str, float]] = {}
        for name in SETTINGS:
            per[name] = tau2_metrics(scorer, required, ids,
                                     doc_rankings(tau2_corpus, name, [q["query"] for q in queries], 10))
        ceiling = {k.removeprefix("ceiling_"): v for k, v in per[chosen].items()
                   if k.startswith("ceiling_")}
        print("\n## tau2 banking_knowledge (97 queries; a perfect ranking on the last line)\n")
        cols = ("recall@5", "recall@10", "coverage@5", "coverage@10")
        rows_out = [(n + (" (chosen)" if n == chosen else ""), *(per[n][c] for c in cols))
                    for n in SETTINGS]
        rows_out.append(("perfect ranking", *(ceiling[c] for c in cols)))
        print(table(rows_out, ("setting", *cols)))
        results["tau2"] = {"settings": per, "chosen": chosen, "ceiling": ceiling}

    if "openings" in parts and tau2_corpus is not None and args.openings.exists():
        scorer = tau2_scorer(args.tau2)
        required = scorer.load_queries(str(args.tau2 / "queries.jsonl"))
        rows = read_jsonl(args.openings)
        by_lang: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for r in rows:
            by_lang[r["lang"]].append(r)
        per_lang: dict[str, dict[str, dict[str, float]]] = {}
        for name in (chosen, "dense", "bm25"):
            per_lang[name] = {}
            for lang, items in sorted(by_lang.items()):
                ranked = doc_rankings(tau2_corpus, name, [r["query"] for r in items], 10)
                per_lang[name][lang] = tau2_metrics(scorer, required, [r["id"] for r in items],
                                                    ranked)
        print("\n## 30 tau2 openings, translated: coverage@10 per language\n")
        langs = sorted(by_lang)
        print(table([(n, *(per_lang[n][lang]["coverage@10"] for lang in langs))
                     for n in per_lang], ("setting", *langs)))
        en = per_lang[chosen].get("en", {}).get("coverage@10", 0.0)
        gaps = {lang: round(en - per_lang[chosen][lang]["coverage@10"], 4) for lang in langs}
        print(f"gap to English ({chosen}): {gaps}")
        results["openings"] = {"per_language": per_lang, "gap_to_en": gaps, "setting": chosen}

    if "timing" in parts and tau2_corpus is not None:
        cfg, _ = SETTINGS[chosen]
        base = tau2_corpus.base
        n = min(1000, len(base.chunks))
        index = DocumentIndex(base.chunks[:n], base.vectors[:n], embedder, cfg, base.stats)
        retriever = Retriever(index, RetrievalConfig(relevance=Relevance(signal),
                                                     threshold=threshold))
        questions = [r["text"] for r in read_jsonl(args.tune_file)][:60] \
            if args.tune_file.exists() else [q["query"] for q in read_jsonl(
                args.tau2 / "queries.jsonl")][:60]
        retriever.retrieve(questions[0])
        times, embed_ms, search_ms = [], [], []
        for q in questions:
            started = time.perf_counter()
            retriever.retrieve(q)
            times.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            qv = index.embed_query(q)
            embed_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            index.score(q, qv)
            search_ms.append((time.perf_counter() - started) * 1000)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            docs = load_documents(args.docs)
            DocumentIndex.build(docs.chunks, embedder, cfg, Path(tmp) / "s.npz")
            cold = time.perf_counter() - started
            started = time.perf_counter()
            docs = load_documents(args.docs)
            DocumentIndex.build(docs.chunks, embedder, cfg, Path(tmp) / "s.npz")
            warm = time.perf_counter() - started
        timing = {"chunks": n, "p50_ms": round(statistics.median(times), 2),
                  "p95_ms": round(float(np.percentile(times, 95)), 2), "queries": len(times),
                  "embed_p50_ms": round(statistics.median(embed_ms), 2),
                  "search_p50_ms": round(statistics.median(search_ms), 3),
                  "load_average": round(os.getloadavg()[0], 2),
                  "demo_chunks": len(docs.chunks), "demo_build_s": round(cold, 2),
                  "demo_reload_s": round(warm, 3), "embedder_load_s": round(embedder_load_s, 3)}
        print(f"\n## timing (one thread)\n\nretrieval over {n} chunks: p50 "
              f"{timing['p50_ms']} ms, p95 {timing['p95_ms']} ms ({len(times)} questions; of "
              f"which the query embedding {timing['embed_p50_ms']} ms, scoring "
              f"{timing['search_p50_ms']} ms; load average {timing['load_average']})\n"
              f"demo help center ({len(docs.chunks)} chunks): build {cold:.1f} s, reload from "
              f"cache {warm:.2f} s (+ e5 load {embedder_load_s:.2f} s, once per process)")
        results["timing"] = timing

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = "-".join(sorted(parts))
    out = args.out / f"retrieval_{stamp}.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    if results.get("tau2") or results.get("tune") or results.get("test"):
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
