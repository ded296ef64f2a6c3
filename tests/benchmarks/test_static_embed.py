"""benchmarks/static_embed.py, the static embedding distilled from e5 (an experiment kept
for the decision it documents): the built table's checks and the embedder's output. The
e5 tokenizer it shares with the serving package is tested in tests/knowledge."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from babeldesk.errors import ConfigError
from babeldesk.knowledge.embed import is_inline
from babeldesk.knowledge.matcher import normalize

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from static_embed import TABLE_ENV, StaticEmbedder, default_table_path  # noqa: E402

TEXTS = ["where is my order", "¿dónde está mi pedido PM-123?", "Ich möchte meine Bestellung stornieren",
         "注文をキャンセルしたい", "  two   spaces\tand a tab ", "Где мой заказ?", "😀 thanks!!", ""]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small table built by the real builder (the training pieces only, 128 dims;
    ~15 s on one core); the full one lives in the user's cache, not in the repository."""
    out = tmp_path_factory.mktemp("static") / "static_e5.npz"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "build_static_embeddings.py"),
                    "--top", "1", "--dim", "128", "--out", str(out)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                    "OPENBLAS_NUM_THREADS": "1"})
    return out


@pytest.fixture(scope="module")
def embedder(table: Path) -> StaticEmbedder:
    return StaticEmbedder(table)


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
    with pytest.raises(ConfigError, match="not built: run python benchmarks/build_static"):
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


def test_table_path_from_the_environment(table: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TABLE_ENV, str(table))
    assert default_table_path() == table
    assert StaticEmbedder().name == StaticEmbedder(table).name
