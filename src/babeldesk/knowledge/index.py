"""The document index: BM25 (bm25s) and multilingual-e5 vectors over the same chunks,
fused into one score per chunk.

Keywords find an exact product name or policy term in the article's own language; the
embedding finds the article across languages (a Vietnamese question, an English
article). Fusion (``Fusion``) is chosen on the tuning questions (benchmarks/retrieval_eval.py):

- ``score``: ``w * z(cosine) + (1 - w) * z(bm25)``, each standardised over the chunks for
  this question (e5's cosines crowd into a few hundredths, BM25 spans tens), so a
  question sharing no word with any article (another language) ranks by meaning alone;
- ``rrf``: reciprocal rank fusion, ``1/(k + rank_dense) + 1/(k + rank_bm25)``.

Across languages (``use_languages``): the ranking cosine is between language-neutral
vectors (``knowledge/neutral.py``: the question's language mean and each chunk's
language mean removed, the matcher's neutralizer), so a German question is not pulled
towards the German articles whatever it asks; and BM25 counts only for chunks in the
question's language (``bm25_same_language``), where shared words mean shared content.
``Scored.dense`` keeps the plain cosines and ``Scored.ranking`` the ones the ranking read;
the relevance gate (retrieve.py) reads the latter.

Vectors are kept on disk per embedder in ``<cache_dir>/<embedder>/<store>.npz``, keyed by
``Chunk.hash``: a rebuild embeds only chunks whose hash is not there (an edited section, a
new article) and drops vectors of chunks that are gone. BM25 is rebuilt every time: it is
milliseconds for a help center.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from babeldesk.errors import ConfigError
from babeldesk.knowledge.documents import Chunk
from babeldesk.knowledge.neutral import Neutralizer

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
_EMBED_BATCH = 16  # chunks per embedder call: progress is reported between calls
Progress = Callable[[int, int], None]  # (chunks embedded so far, chunks to embed)


class Fusion(str, enum.Enum):
    SCORE = "score"  # w * z(cosine) + (1 - w) * z(bm25), standardised per question
    RRF = "rrf"  # reciprocal rank fusion
    DENSE = "dense"  # embedding only
    BM25 = "bm25"  # keywords only


class QueryEmbedder(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Queries -> float32 [len(texts), dim], rows L2-normalised."""
        ...


@dataclass(frozen=True, slots=True)
class IndexConfig:
    # chosen on the tuning questions (benchmarks/retrieval_eval.py, docs/benchmarks.md):
    # 4 of their 5 languages are not the articles', and BM25 added nothing there (score
    # fusion w=0.95: recall@5 equal, recall@1 0.749 against 0.777; w=0.7: 0.949 / 0.606)
    fusion: Fusion = Fusion.DENSE
    dense_weight: float = 0.7  # ``score`` fusion: weight of the cosine
    rrf_k: int = 60  # ``rrf`` fusion: rank offset
    stem: bool = True  # English Snowball stemming for BM25 (PyStemmer)
    k1: float = 1.2
    b: float = 0.75
    # with chunk languages known (DocumentIndex.use_languages): rank by language-neutral
    # cosines, and let BM25 score only chunks in the question's language
    neutral: bool = True
    bm25_same_language: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.dense_weight <= 1.0:
            raise ConfigError("retrieval.dense_weight", "must be in [0, 1]")
        if self.rrf_k < 1:
            raise ConfigError("retrieval.rrf_k", "must be >= 1")


@dataclass(frozen=True, slots=True)
class IndexStats:
    chunks: int
    cached: int  # vectors read from the store
    embedded: int  # vectors computed now
    seconds: float

    def describe(self) -> str:
        return (f"{self.chunks} chunks: {self.cached} cached, {self.embedded} embedded, "
                f"in {self.seconds:.2f} s")


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores of every chunk for one query, aligned with ``DocumentIndex.chunks``."""

    fused: np.ndarray  # float32 [n]
    dense: np.ndarray  # float32 [n], cosine between the plain e5 vectors
    bm25: np.ndarray  # float32 [n], raw BM25
    # float32 [n], the cosine the ranking reads: language-neutral when the index ranks
    # across languages (DocumentIndex.neutral), else ``dense``
    ranking: np.ndarray


class Tokenizer:
    """Lower-cased words (NFKC), English Snowball stems when ``stem``. One function for
    chunks and queries, so both sides agree."""

    def __init__(self, stem: bool) -> None:
        self._stemmer: Any = None
        if stem:
            try:
                import Stemmer  # PyStemmer: Snowball in C

                self._stemmer = Stemmer.Stemmer("english")
            except ImportError:  # pragma: no cover - a broken install
                log.warning("PyStemmer not importable; BM25 without stemming")

    def __call__(self, text: str) -> list[str]:
        words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
        if self._stemmer is not None:
            return list(self._stemmer.stemWords(words))
        return words


def passages_of(embedder: Any, texts: Sequence[str]) -> np.ndarray:
    """Embed chunks as passages where the embedder has a passage mode (e5's ``passage:``
    prefix), else as it embeds queries."""
    method = getattr(embedder, "embed_passages", None)
    return method(texts) if method is not None else embedder.embed(texts)


def store_name(embedder: Any) -> str:
    mode = "passage" if hasattr(embedder, "embed_passages") else "query"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{embedder.name}-{mode}")


class DocumentIndex:
    def __init__(self, chunks: Sequence[Chunk], vectors: np.ndarray, embedder: QueryEmbedder,
                 config: IndexConfig, stats: IndexStats) -> None:
        self.chunks = tuple(chunks)
        self.vectors = vectors  # float32 [n, dim], rows L2-normalised
        self.embedder = embedder
        self.config = config
        self.stats = stats
        self.tokenize = Tokenizer(config.stem)
        self._bm25_index: Any = None  # built at first use: dense fusion never needs it
        self.neutralizer: Neutralizer | None = None
        self.languages: tuple[str | None, ...] = ()  # per chunk, once known
        self._neutral_vectors: np.ndarray | None = None
        self._language_array: np.ndarray | None = None

    def use_languages(self, languages: Sequence[str | None],
                      neutralizer: Neutralizer | None) -> None:
        """Each chunk's language (None: unknown) and the neutralizer fitted for this
        index's embedder (the matcher's: the same model). Questions then rank by
        language-neutral cosines (``IndexConfig.neutral``) and BM25 by same-language
        chunks (``bm25_same_language``)."""
        if len(languages) != len(self.chunks):
            raise ValueError(f"{len(languages)} languages for {len(self.chunks)} chunks")
        self.languages = tuple(languages)
        self._language_array = np.array(["" if x is None else x for x in languages], dtype=object)
        self.neutralizer = neutralizer
        self._neutral_vectors = (neutralizer.transform(self.vectors, self.languages)
                                 if neutralizer is not None and len(self.chunks) else None)

    @classmethod
    def build(cls, chunks: Sequence[Chunk], embedder: QueryEmbedder, config: IndexConfig,
              store: Path | None = None, progress: Progress | None = None) -> DocumentIndex:
        """Index ``chunks``, reusing vectors from ``store`` (an ``.npz`` file; None: no
        store) and writing it back when anything changed."""
        started = time.perf_counter()
        known = _read_store(store, embedder.dim) if store is not None else {}
        missing = [c for c in dict.fromkeys(c.hash for c in chunks) if c not in known]
        by_hash = {c.hash: c for c in chunks}
        fresh: dict[str, np.ndarray] = {}
        for start in range(0, len(missing), _EMBED_BATCH):
            batch = missing[start:start + _EMBED_BATCH]
            vectors = passages_of(embedder, [by_hash[h].passage for h in batch])
            fresh.update(zip(batch, vectors))
            if progress is not None:
                progress(start + len(batch), len(missing))
        table = {**known, **fresh}
        dim = embedder.dim
        matrix = (np.stack([table[c.hash] for c in chunks]).astype(np.float32)
                  if chunks else np.zeros((0, dim), np.float32))
        current = {c.hash for c in chunks}
        if store is not None and (fresh or set(known) != current):
            _write_store(store, {h: table[h] for h in sorted(current)}, dim)
        stats = IndexStats(len(chunks), len(chunks) - sum(1 for c in chunks if c.hash in fresh),
                           len(fresh), time.perf_counter() - started)
        return cls(chunks, matrix, embedder, config, stats)

    @classmethod
    def empty(cls, config: IndexConfig) -> DocumentIndex:
        """No articles: retrieval finds nothing, and nothing is loaded for it."""
        return cls((), np.zeros((0, 0), np.float32), _NoEmbedder(), config,
                   IndexStats(0, 0, 0, 0.0))

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def neutral(self) -> bool:
        """Whether questions rank by language-neutral cosines (``IndexConfig.neutral``
        and a neutralizer given to ``use_languages``)."""
        return self.config.neutral and self._neutral_vectors is not None

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self.embedder.embed([text])[0], dtype=np.float32)

    def score(self, text: str, query_vector: np.ndarray | None = None,
              lang: str | None = None) -> Scored:
        """Every chunk's scores for ``text`` in language ``lang`` (None: unknown), and
        ``query_vector`` its embedding, if known."""
        n = len(self.chunks)
        if n == 0:
            empty = np.zeros(0, np.float32)
            return Scored(empty, empty, empty, empty)
        cfg = self.config
        qv = self.embed_query(text) if query_vector is None else query_vector
        dense = (self.vectors @ qv).astype(np.float32)  # [n]
        ranking = dense
        if self.neutral and self._neutral_vectors is not None and self.neutralizer is not None:
            neutral_q = self.neutralizer.transform(qv[None, :], [lang])[0]
            ranking = (self._neutral_vectors @ neutral_q).astype(np.float32)
        if cfg.fusion is Fusion.DENSE:
            return Scored(ranking, dense, np.zeros(n, np.float32), ranking)
        bm25 = self.bm25_scores(text)
        if cfg.bm25_same_language and lang is not None and self._language_array is not None:
            bm25 = np.where(self._language_array == lang, bm25, 0.0).astype(np.float32)
        if cfg.fusion is Fusion.BM25:
            fused = bm25
        elif cfg.fusion is Fusion.RRF:
            fused = (1.0 / (cfg.rrf_k + _ranks(ranking)) + 1.0 / (cfg.rrf_k + _ranks(bm25)))
        else:
            fused = (cfg.dense_weight * _standard(ranking)
                     + (1.0 - cfg.dense_weight) * _standard(bm25))
        return Scored(fused.astype(np.float32), dense, bm25, ranking)

    def bm25_scores(self, text: str) -> np.ndarray:
        """Raw BM25 of every chunk: float32 [n]."""
        if self._bm25_index is None:
            self._bm25_index = _bm25(self.chunks, self.tokenize, self.config)
        vocab: dict[str, int] = self._bm25_index.vocab_dict
        tokens = [t for t in self.tokenize(text) if t in vocab]
        if not tokens:
            return np.zeros(len(self.chunks), np.float32)
        return np.asarray(self._bm25_index.get_scores(tokens), dtype=np.float32)


class _NoEmbedder:
    name = "none"
    dim = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), 0), np.float32)


def _standard(scores: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the chunks; all zeros when every score is the same."""
    std = float(scores.std())
    return (scores - scores.mean()) / std if std > 1e-9 else np.zeros_like(scores)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each entry, best (highest) first."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), np.float32)
    ranks[order] = np.arange(1, len(scores) + 1, dtype=np.float32)
    return ranks


def _bm25(chunks: Sequence[Chunk], tokenize: Tokenizer, config: IndexConfig) -> Any:
    import bm25s

    retriever = bm25s.BM25(k1=config.k1, b=config.b)
    corpus = [tokenize(c.passage) or ["\x00"] for c in chunks]  # bm25s refuses an empty row
    if corpus:
        retriever.index(corpus, show_progress=False)
    return retriever


def _read_store(path: Path, dim: int) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            hashes, vectors = data["hashes"], data["vectors"]
        if vectors.ndim == 2 and vectors.shape == (len(hashes), dim):
            return dict(zip((str(h) for h in hashes), vectors))
    except (OSError, ValueError, KeyError):
        pass
    log.warning("document vector store %s unreadable; re-embedding", path.name)
    return {}


def _write_store(path: Path, table: dict[str, np.ndarray], dim: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        hashes = np.array(list(table), dtype="U16")
        vectors = (np.stack(list(table.values())).astype(np.float32) if table
                   else np.zeros((0, dim), np.float32))
        np.savez(tmp, hashes=hashes, vectors=vectors)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except OSError as exc:
        log.warning("cannot write document vector store %s: %s", path, exc)
