"""Retrieval over the document index: the passages that may answer a customer message,
and whether any of them is relevant enough to answer from.

Relevance is read from the cosines between the message and the passages (``query:`` /
``passage:`` embeddings), not from the fused score, whose BM25 part depends on the words
a message happens to share. e5's cosines sit lower for a question in another language
than the articles' (a Vietnamese question about gift cards: 0.80, an English one about
the weather on Mars: 0.80), so the signals (``Relevance``) compare the best passage with
the others: how far it stands out of the crowd is what a question with an answer has
and an off-topic one lacks. ``RetrievalConfig`` holds the signal and threshold chosen on
the tuning questions (benchmarks/retrieval_eval.py, 90 of them unanswerable, most near
misses of the articles' topics): ``doc_gap`` over the language-neutral cosines, the best
article against the 5th best (at most 5% of the unanswerable tuning questions let
through: 44% of the answerable answered, against 32% for the earlier chunk ``gap``);
below it the pipeline hands off instead of letting the model answer from passages that
do not hold the answer.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from babeldesk.errors import ConfigError
from babeldesk.knowledge.documents import MAX_FILE_BYTES, Chunk, DocumentSet, load_documents
from babeldesk.knowledge.embed import EmbedderKind, default_cache_dir, make_embedder
from babeldesk.knowledge.index import (
    DocumentIndex,
    IndexConfig,
    Progress,
    QueryEmbedder,
    Scored,
    store_name,
)
from babeldesk.knowledge.neutral import Neutralizer

log = logging.getLogger(__name__)


class Relevance(str, enum.Enum):
    COSINE = "cosine"  # the best passage's cosine
    LIFT = "lift"  # best cosine - mean cosine of all passages
    Z = "z"  # lift / standard deviation of the cosines
    GAP = "gap"  # best cosine - the GAP_RANK-th best cosine
    # the best article's best cosine - the DOC_GAP_RANK-th best article's best cosine
    DOC_GAP = "doc_gap"


GAP_RANK = 10
DOC_GAP_RANK = 5  # chosen on the tuning questions: ranks 4-6 answer 41-44%, 3 and 8 35%


def relevance_signal(cosines: np.ndarray, kind: Relevance,
                     articles: np.ndarray | None = None) -> float:
    """The relevance of a message from its cosine to every passage (float32 [n], n >= 1).
    ``articles``: each passage's article as an int in [0, articles.max()] (``doc_gap``;
    None: each passage an article of its own)."""
    best = float(cosines.max())
    if kind is Relevance.DOC_GAP:
        if articles is not None:
            per_article = np.full(int(articles.max()) + 1, -np.inf, np.float32)
            np.maximum.at(per_article, articles, cosines)
        else:
            per_article = cosines
        k = min(DOC_GAP_RANK, len(per_article))
        return best - float(np.partition(per_article, len(per_article) - k)[len(per_article) - k])
    if kind is Relevance.COSINE:
        return best
    if kind is Relevance.GAP:
        k = min(GAP_RANK, len(cosines))
        return best - float(np.partition(cosines, len(cosines) - k)[len(cosines) - k])
    lift = best - float(cosines.mean())
    if kind is Relevance.Z:
        std = float(cosines.std())
        return lift / std if std > 1e-9 else 0.0
    return lift


@dataclass(frozen=True, slots=True)
class RetrievalConfig:
    # chosen on the tuning questions (benchmarks/retrieval_eval.py, e5-onnx int8,
    # 2026-12-03): the lowest threshold that lets through at most 5% of the 90 questions
    # no article answers. Read from the cosines the ranking reads: language-neutral when
    # the index has the matcher's neutralizer (``threshold``), plain e5 cosines when it
    # has none (``plain_threshold``: the same signal sits lower there)
    relevance: Relevance = Relevance.DOC_GAP
    threshold: float = 0.181  # of the relevance signal; below: nothing relevant
    plain_threshold: float = 0.043
    passages: int = 3  # at most this many passages go into the prompt
    # a passage after the first is kept when its cosine is within this of the best one
    margin: float = 0.04

    def __post_init__(self) -> None:
        if not (-1.0 <= self.threshold <= 1.0 and -1.0 <= self.plain_threshold <= 1.0):
            raise ConfigError("support.docs_threshold", "must be in [-1, 1]")
        if self.passages < 1:
            raise ConfigError("support.docs_passages", "must be >= 1")


@dataclass(frozen=True, slots=True)
class Hit:
    chunk: Chunk
    score: float  # fused
    cosine: float
    bm25: float


@dataclass(frozen=True, slots=True)
class Retrieval:
    hits: tuple[Hit, ...]  # best first, at most ``RetrievalConfig.passages``
    relevant: bool  # the relevance signal reached the threshold
    best_cosine: float
    signal: float  # the relevance signal (RetrievalConfig.relevance)
    seconds: float

    @property
    def chunk_hashes(self) -> tuple[str, ...]:
        return tuple(h.chunk.hash for h in self.hits)

    def sources(self) -> list[dict[str, str]]:
        """``[{title, url}]`` of the passages, one per link, in rank order."""
        seen: dict[str, dict[str, str]] = {}
        for hit in self.hits:
            seen.setdefault(hit.chunk.url, {"title": hit.chunk.heading, "url": hit.chunk.url})
        return list(seen.values())


class Retriever:
    def __init__(self, index: DocumentIndex, config: RetrievalConfig | None = None) -> None:
        self.index = index
        self.config = config or RetrievalConfig()
        # each chunk's article as an int (``doc_gap``)
        self.articles = article_numbers(index.chunks)

    def __len__(self) -> int:
        return len(self.index)

    def use_languages(self, detect: Callable[[str], str | None],
                      neutralizer: Neutralizer | None) -> dict[str, str | None]:
        """Detect each article's language (``detect`` on its title and first 1,000
        characters) and rank across languages with ``neutralizer`` (fitted for this
        index's embedder: pass the matcher's only when both use the same model).
        Returns {article id: language}."""
        by_doc: dict[str, list[Chunk]] = {}
        for chunk in self.index.chunks:
            by_doc.setdefault(chunk.doc_id, []).append(chunk)
        langs = {doc: detect((chunks[0].title + "\n" + "\n".join(c.text for c in chunks))[:1000])
                 for doc, chunks in by_doc.items()}
        self.index.use_languages([langs[c.doc_id] for c in self.index.chunks], neutralizer)
        return langs

    def search(self, text: str, k: int, lang: str | None = None) -> list[Hit]:
        """The ``k`` best chunks by fused score."""
        return self._hits(self.index.score(text, lang=lang), k)

    def _hits(self, scored: Scored, k: int) -> list[Hit]:
        order = np.argsort(-scored.fused, kind="stable")[:k]
        return [Hit(self.index.chunks[i], float(scored.fused[i]), float(scored.dense[i]),
                    float(scored.bm25[i])) for i in order]

    def retrieve(self, text: str, lang: str | None = None) -> Retrieval:
        """The passages for ``text``, written in ``lang`` (None: unknown)."""
        started = time.perf_counter()
        cfg = self.config
        if not len(self.index):
            return Retrieval((), False, 0.0, 0.0, time.perf_counter() - started)
        scored = self.index.score(text, lang=lang)
        hits = self._hits(scored, max(cfg.passages * 3, 10))
        best = float(scored.dense.max())
        signal, threshold = self.relevance(scored)
        kept = [h for h in hits if h.cosine >= best - cfg.margin][:cfg.passages]
        if hits[0] not in kept:  # the fused winner always goes in
            kept = [hits[0], *kept][:cfg.passages]
        return Retrieval(tuple(kept), signal >= threshold, best, signal,
                         time.perf_counter() - started)

    def relevance(self, scored: Scored) -> tuple[float, float]:
        """The relevance signal of one question's scores and the threshold it must reach.
        ``doc_gap`` reads the ranking's cosines (language-neutral or plain, each with its
        threshold); the other signals the plain cosines."""
        cfg = self.config
        if cfg.relevance is Relevance.DOC_GAP:
            threshold = cfg.threshold if self.index.neutral else cfg.plain_threshold
            return relevance_signal(scored.ranking, cfg.relevance, self.articles), threshold
        return relevance_signal(scored.dense, cfg.relevance), cfg.threshold

    async def aretrieve(self, text: str, lang: str | None = None) -> Retrieval:
        """``retrieve`` in a worker thread: the query embedding is 10-20 ms of CPU."""
        return await asyncio.to_thread(self.retrieve, text, lang)

    def rank_documents(self, text: str, k: int, pooling: str = "max",
                       lang: str | None = None) -> list[str]:
        """Article ids, best first, each scored by its chunks (``max`` or ``max+mean``:
        the best chunk plus a tenth of the mean of its chunks)."""
        return rank_documents(self.index.chunks, self.index.score(text, lang=lang).fused, k,
                              pooling)


def article_numbers(chunks: Sequence[Chunk]) -> np.ndarray:
    """Each chunk's article as an int, numbered in order of first appearance."""
    numbers: dict[str, int] = {}
    return np.array([numbers.setdefault(c.doc_id, len(numbers)) for c in chunks], np.intp)


def rank_documents(chunks: Sequence[Chunk], scores: np.ndarray, k: int,
                   pooling: str = "max") -> list[str]:
    best: dict[str, float] = {}
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for chunk, s in zip(chunks, scores.tolist()):
        best[chunk.doc_id] = max(best.get(chunk.doc_id, -np.inf), s)
        total[chunk.doc_id] = total.get(chunk.doc_id, 0.0) + s
        count[chunk.doc_id] = count.get(chunk.doc_id, 0) + 1
    if pooling == "max+mean":
        final = {d: best[d] + 0.1 * total[d] / count[d] for d in best}
    else:
        final = best
    return sorted(final, key=lambda d: -final[d])[:k]


def default_store_dir() -> Path:
    """``~/.cache/babeldesk/documents`` (beside the matcher's embedding cache)."""
    return default_cache_dir().parent / "documents"


def store_path(store_dir: Path, embedder: QueryEmbedder, docs_folder: Path) -> Path:
    """One vector store per embedder and help-center folder: a rebuild prunes the vectors
    of chunks that are gone, which must not be another shop's."""
    folder_key = hashlib.sha256(str(docs_folder.resolve()).encode()).hexdigest()[:12]
    return store_dir / store_name(embedder) / f"{folder_key}.npz"


def open_help_center(docs_folder: Path, *, retrieval: RetrievalConfig | None = None,
                     index: IndexConfig | None = None, embedder: QueryEmbedder | None = None,
                     threads: int = 1, store_dir: Path | None = None, strict: bool = False,
                     max_file_bytes: int = MAX_FILE_BYTES, label: str = "docs",
                     progress: Progress | None = None) -> tuple[Retriever, DocumentSet]:
    """Load the articles under ``docs_folder`` and index them (vectors from the store
    where their chunks are unchanged). Refused files are in the returned set's
    ``refused`` (``strict``: the first one raises). ``store_dir`` None: the default."""
    docs = load_documents(docs_folder, label=label, strict=strict,
                          max_file_bytes=max_file_bytes)
    if embedder is None:
        if not docs.chunks:  # no help center: no embedder loaded for it
            return Retriever(DocumentIndex.empty(IndexConfig()), retrieval), docs
        embedder = make_embedder(EmbedderKind.E5_ONNX, threads, default_cache_dir())
        assert embedder is not None
    store = store_path(store_dir or default_store_dir(), embedder, docs_folder)
    built = DocumentIndex.build(docs.chunks, embedder, index or IndexConfig(), store, progress)
    return Retriever(built, retrieval), docs
