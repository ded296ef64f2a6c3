"""The document index with the real e5 embedder on small real files: cross-lingual
retrieval, the on-disk vector store, incremental re-indexing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from babeldesk.knowledge.documents import load_documents
from babeldesk.knowledge.embed import E5Embedder
from babeldesk.knowledge.index import DocumentIndex, Fusion, IndexConfig
from babeldesk.knowledge.retrieve import Retriever, open_help_center, rank_documents

pytestmark = pytest.mark.slow

ARTICLES = {
    "gift-cards.md": """---
title: Gift cards
url: https://help.example/gift-cards
---
# Gift cards

Gift cards can be used for everything in our shop.

## Validity and expiry

Gift cards are valid for 3 years, counted from the end of the year of purchase.

## Checking your balance

The balance is shown at checkout and under My account > Gift cards.
""",
    "descaling.md": """# Descaling your coffee machine

## How often

Descale a fully automatic machine every 2 months with hard water.

## Which descaler

Use only liquid descaler made for coffee machines, never vinegar.
""",
    "size-guide.md": """# Size guide

## How to measure

Measure your chest at the widest point with a soft tape.
""",
}


class CountingEmbedder:
    """The real e5 embedder, counting the passages it embeds."""

    def __init__(self, inner: E5Embedder) -> None:
        self.inner = inner
        self.passages = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts):  # queries
        return self.inner.embed(texts)

    def embed_passages(self, texts):
        self.passages += len(texts)
        return self.inner.embed_passages(texts)


@pytest.fixture(scope="module")
def e5() -> E5Embedder:
    return E5Embedder(threads=1)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in ARTICLES.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_a_question_in_another_language_finds_the_english_section(e5, docs, tmp_path) -> None:
    retriever, loaded = open_help_center(docs, embedder=e5, store_dir=tmp_path / "store")
    assert len(retriever) == len(loaded.chunks) == 6
    for question in ("¿Cuánto tiempo es válida una tarjeta regalo?",
                     "Thẻ quà tặng có giá trị trong bao lâu?",
                     "Wie lange ist ein Geschenkgutschein gültig?"):
        found = retriever.retrieve(question)
        assert found.hits[0].chunk.section == "Validity and expiry", question
        assert found.sources()[0] == {"title": "Gift cards — Validity and expiry",
                                      "url": "https://help.example/gift-cards"}
    # (relevance is calibrated on a help center's worth of chunks: tested on the demo one
    # in tests/support/test_documents_pipeline.py)


def test_documents_rank_by_their_best_chunk(e5, docs) -> None:
    index = DocumentIndex.build(load_documents(docs).chunks, e5, IndexConfig())
    scores = index.score("how often should I descale my espresso machine").fused
    assert rank_documents(index.chunks, scores, 2)[0] == "descaling.md"
    retriever = Retriever(index)
    assert retriever.rank_documents("measure chest size", 3)[0] == "size-guide.md"


def test_every_fusion_ranks_an_exact_keyword_question(e5, docs) -> None:
    chunks = load_documents(docs).chunks
    for fusion in Fusion:
        index = DocumentIndex.build(chunks, e5, IndexConfig(fusion=fusion))
        best = int(np.argmax(index.score("vinegar descaler").fused))
        assert index.chunks[best].section == "Which descaler", fusion


def test_reindexing_embeds_only_changed_chunks_and_reloads_fast(e5, docs, tmp_path) -> None:
    counting = CountingEmbedder(e5)
    store = tmp_path / "store"
    first, _ = open_help_center(docs, embedder=counting, store_dir=store)
    assert counting.passages == 6
    assert (first.index.stats.cached, first.index.stats.embedded) == (0, 6)

    again, _ = open_help_center(docs, embedder=counting, store_dir=store)
    assert counting.passages == 6 and again.index.stats.cached == 6  # nothing embedded again
    np.testing.assert_array_equal(first.index.vectors, again.index.vectors)

    # one section edited, one article added, one removed
    gift = docs / "gift-cards.md"
    gift.write_text(gift.read_text().replace("3 years", "5 years"), encoding="utf-8")
    (docs / "pets.md").write_text("# Pets\n\nDogs are welcome in our stores.\n")
    (docs / "size-guide.md").unlink()
    edited, _ = open_help_center(docs, embedder=counting, store_dir=store)
    assert counting.passages == 6 + 2  # the edited section and the new article
    assert (edited.index.stats.cached, edited.index.stats.embedded) == (4, 2)
    assert edited.retrieve("¿Cuánto tiempo es válida una tarjeta regalo?").hits[0].chunk.text \
        .startswith("Gift cards are valid for 5 years")

    # the store now holds exactly the current chunks: the removed article is pruned
    shutil.rmtree(docs)
    docs.mkdir()
    (docs / "pets.md").write_text("# Pets\n\nDogs are welcome in our stores.\n")
    pruned, _ = open_help_center(docs, embedder=counting, store_dir=store)
    assert pruned.index.stats.cached == 1 and counting.passages == 8


def test_a_damaged_store_is_rebuilt(e5, docs, tmp_path) -> None:
    counting = CountingEmbedder(e5)
    store = tmp_path / "store"
    retriever, _ = open_help_center(docs, embedder=counting, store_dir=store)
    (files,) = [list(p.glob("*.npz")) for p in store.iterdir()]
    files[0].write_bytes(b"not a numpy file")
    again, _ = open_help_center(docs, embedder=counting, store_dir=store)
    assert again.index.stats.embedded == 6 and counting.passages == 12
    np.testing.assert_allclose(again.index.vectors, retriever.index.vectors, atol=1e-6)


def test_an_empty_help_center_loads_no_embedder(tmp_path) -> None:
    retriever, docs = open_help_center(tmp_path / "missing")
    assert len(retriever) == 0 and docs.documents == ()
    assert retriever.retrieve("anything").relevant is False
