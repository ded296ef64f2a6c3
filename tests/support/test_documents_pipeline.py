"""Answers from the help center, end to end: the real demo articles, the real e5 index,
the real matcher and the bundled multilingual model (qwen2.5-0.5b, short answers)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from babeldesk.config import EngineConfig, StoreConfig, SupportConfig
from babeldesk.engine.loader import load_engine
from babeldesk.knowledge.documents import load_documents
from babeldesk.knowledge.retrieve import Retriever, default_store_dir, open_help_center, store_path
from babeldesk.store import open_answer_cache, open_session_store
from babeldesk.knowledge.kb import docs_dir, load_kb
from babeldesk.support.language import LanguageDetector
from babeldesk.knowledge.matcher import IntentMatcher, MatcherConfig
from babeldesk.support.pipeline import SupportPipeline, SupportReply, SupportRequest
from babeldesk.telemetry.metrics import Metrics

pytestmark = pytest.mark.slow

GIFT_URL = "https://help.pinecone-market.example/gift-cards"
# only the article says (3 years). It was "¿Caducan las tarjetas regalo?" until the
# relevance gate was recalibrated on near misses (2026-12-03): that shorter question sits
# below the new threshold and is handed off
GIFT_QUESTION = "¿La tarjeta regalo tiene fecha de caducidad?"
SIZE_QUESTION = "What size duvet do I need for a double bed?"
UNCOVERED = "Can I rent a bicycle from you for a weekend trip?"
# near misses of an article's topic (cookware care; knife and board care) that no article
# answers, written for this test; the gate before 2026-12-03 let both through
NEAR_MISSES = {"Is the coating of your frying pans made with PFOA?": "en",
               "Wie entferne ich Kerzenwachs von der Tischdecke?": "de"}


@pytest.fixture(scope="module")
def engine():
    e = load_engine(EngineConfig(model="qwen2.5-0.5b", threads=1, max_batch_size=2,
                                 max_model_len=2048))
    e.start()
    yield e
    e.shutdown()


@pytest.fixture(scope="module")
def kb_and_matcher():
    """The matcher as ``serve`` builds it: the help center's section headings are its
    anchors, so a question closer to an article than to an intent is left to the
    documents (gateway.server.build_pipeline)."""
    kb = load_kb()
    detector = LanguageDetector()
    headings = sorted({c.heading for c in load_documents(docs_dir()).chunks})
    documents = [(h, detector.detect(h).language) for h in headings]
    return kb, IntentMatcher.from_kb(kb, MatcherConfig(threads=1), documents=documents)


@pytest.fixture(scope="module")
def help_center(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the demo help center (to edit), with its vector store seeded from the
    bundled one's (content-addressed: the copy's unchanged chunks are not re-embedded)."""
    folder = tmp_path_factory.mktemp("kb") / "docs"
    shutil.copytree(docs_dir(), folder)
    store = tmp_path_factory.mktemp("store")
    bundled, _ = open_help_center(docs_dir())  # the default store, shared with `serve`
    embedder = bundled.index.embedder
    seed = store_path(store, embedder, folder)
    seed.parent.mkdir(parents=True)
    shutil.copy(store_path(default_store_dir(), embedder, docs_dir()), seed)
    return folder, store


def pipeline(kb_and_matcher, engine, retriever: Retriever, cache=None) -> SupportPipeline:
    kb, matcher = kb_and_matcher
    if len(retriever):  # as serve does: articles' languages, the matcher's neutralizer
        detector = LanguageDetector()
        retriever.use_languages(lambda text: detector.detect(text).language, matcher.neutralizer)
    store = StoreConfig(cache_url="memory://", sessions_url="memory://")
    return SupportPipeline(kb=kb, matcher=matcher, sessions=open_session_store(store),
                           cache=cache if cache is not None else open_answer_cache(store),
                           model=engine,
                           config=SupportConfig(verifier=False, reply_max_tokens=48),
                           metrics=Metrics("test"), documents=retriever)


def ask(p: SupportPipeline, text: str) -> SupportReply:
    return asyncio.run(p.handle(SupportRequest(text)))


def test_a_spanish_question_is_answered_in_spanish_from_the_english_article(
        kb_and_matcher, engine, help_center) -> None:
    folder, store = help_center
    retriever, docs = open_help_center(folder, store_dir=store)
    assert retriever.index.stats.embedded == 0 and not docs.refused
    reply = ask(pipeline(kb_and_matcher, engine, retriever), GIFT_QUESTION)
    assert reply.source == "document" and reply.language == "es" and reply.intent is None
    assert reply.sources and reply.sources[0]["url"] == GIFT_URL
    assert reply.sources[0]["title"].startswith("Gift cards")
    assert "3" in reply.reply  # the article's fact: valid for 3 years
    assert LanguageDetector().detect(reply.reply).language == "es", reply.reply
    assert reply.to_dict()["sources"] == [dict(s) for s in reply.sources]


def test_a_question_no_article_covers_is_handed_off(kb_and_matcher, engine,
                                                    help_center) -> None:
    folder, store = help_center
    retriever, _ = open_help_center(folder, store_dir=store)
    assert not retriever.retrieve(UNCOVERED).relevant
    reply = ask(pipeline(kb_and_matcher, engine, retriever), UNCOVERED)
    assert reply.source == "handoff" and reply.handoff == {"reason": "low_confidence"}
    assert reply.sources == ()
    assert reply.reply == kb_and_matcher[0].answer("contact_human", "en")


@pytest.mark.parametrize("question", NEAR_MISSES)
def test_a_near_miss_no_article_answers_is_handed_off(kb_and_matcher, engine, help_center,
                                                      question: str) -> None:
    folder, store = help_center
    retriever, _ = open_help_center(folder, store_dir=store)
    reply = ask(pipeline(kb_and_matcher, engine, retriever), question)
    assert reply.source == "handoff" and reply.handoff == {"reason": "low_confidence"}, reply
    assert reply.sources == () and reply.language == NEAR_MISSES[question]
    assert reply.reply == kb_and_matcher[0].answer("contact_human", NEAR_MISSES[question])


def test_editing_an_article_changes_its_answers_and_only_those(kb_and_matcher, engine,
                                                               help_center) -> None:
    folder, store = help_center
    store_config = StoreConfig(cache_url="memory://", sessions_url="memory://")
    cache = open_answer_cache(store_config)  # one answer cache across the reload
    before, _ = open_help_center(folder, store_dir=store)
    p = pipeline(kb_and_matcher, engine, before, cache)
    gift = ask(p, GIFT_QUESTION)
    size = ask(p, SIZE_QUESTION)
    assert gift.source == size.source == "document"
    assert ask(p, GIFT_QUESTION).source == "cache"  # an unchanged article: cached

    article = folder / "gift-cards.md"
    text = article.read_text(encoding="utf-8")
    assert "valid for 3 years" in text
    article.write_text(text.replace("valid for 3 years", "valid for 7 years")
                       .replace("31 December 2028", "31 December 2032"), encoding="utf-8")
    after, _ = open_help_center(folder, store_dir=store)
    assert (after.index.stats.embedded, after.index.stats.cached) == (1, len(after) - 1)

    p = pipeline(kb_and_matcher, engine, after, cache)
    edited = ask(p, GIFT_QUESTION)
    assert edited.source == "document"  # its cache entry died with the old section
    assert "7" in edited.reply and edited.reply != gift.reply, edited.reply
    unchanged = ask(p, SIZE_QUESTION)
    assert unchanged.source == "cache" and unchanged.reply == size.reply
    assert unchanged.sources == size.sources


def test_an_untranslated_tail_is_cut_from_a_document_answer(kb_and_matcher) -> None:
    p = pipeline(kb_and_matcher, None, open_help_center(Path("no-such-folder"))[0])
    trim = p.answers.trim_to_language
    assert trim("Las tarjetas regalo caducan en 3 años, counted from the end of the year.",
                "es") == "Las tarjetas regalo caducan en 3 años."
    assert trim("La carte est valable 3 ans, comptée depuis la fin de l'année.", "fr") == \
        "La carte est valable 3 ans, comptée depuis la fin de l'année."  # all French: kept
    assert trim("Gift cards are valid for 3 years.", "es") == \
        "Gift cards are valid for 3 years."  # nothing in Spanish to keep: left whole
    assert trim("礼品卡的有效期是3年。", "zh") == "礼品卡的有效期是3年。"
