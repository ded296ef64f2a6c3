"""Intent matcher: config, the verifier hook, the anchors and evaluation data, and the
real e5 matcher: an English-only KB answering other languages, and refusing assistant
commands and general knowledge in several languages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from babeldesk.errors import ConfigError
from babeldesk.knowledge.anchors import load_anchors, normalize
from babeldesk.knowledge.embed import EmbedderKind, embed_cached
from babeldesk.knowledge.intents import IntentScorer, Scores, calibrate, decide
from babeldesk.knowledge.kb import load_kb
from babeldesk.knowledge.matcher import (
    Candidate,
    IntentMatcher,
    Match,
    MatcherConfig,
    llm_verifier,
    parse_verifier_answer,
    verifier_prompt,
)
from babeldesk.types import ChatRequest, TextDelta, Usage

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"
EN = frozenset({"en"})


class Recorder:
    """A deterministic verifier: answers from a table, records what it was asked."""

    def __init__(self, answer: str | None = None, *, fail: bool = False, delay: float = 0.0):
        self.answer, self.fail, self.delay = answer, fail, delay
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    async def __call__(self, message: str, candidates: Sequence[Candidate]) -> str | None:
        self.calls.append((message, tuple(c.intent_id for c in candidates)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("verifier down")
        return self.answer


# -- pure parts ---------------------------------------------------------------------------


def test_normalize_drops_digits_and_case() -> None:
    assert normalize("  Where is ORDER #48213 ?? ") == "where is order # ??"
    assert normalize("ＡＢＣ１２") == "abc"  # NFKC folds full-width forms first


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("2", "b"), (" 1.", "a"), ("Answer: 3", "c"), ("0", None), ("4", None), ("none", None)],
)
def test_parse_verifier_answer(reply: str, expected: str | None) -> None:
    candidates = [Candidate(x, 0.3, x.upper()) for x in ("a", "b", "c")]
    assert parse_verifier_answer(reply, candidates) == expected


def test_verifier_prompt_lists_candidates_and_none() -> None:
    candidates = [Candidate("refund_status", 0.4, "Where is my refund"),
                  Candidate("return_policy", 0.3, "How long can I return")]
    user = verifier_prompt("¿y mi reembolso?", candidates)[-1].content
    assert "1. Where is my refund" in user and "2. How long can I return" in user
    assert "0. None of these" in user and "¿y mi reembolso?" in user


@pytest.mark.parametrize(
    "overrides",
    [{"threads": 0}, {"accept_same": 1.5}, {"accept_cross": -2.0}, {"verify_band": -0.1},
     {"top_k": 0}, {"embedder": EmbedderKind.NONE}],
)
def test_config_rejects_bad_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        MatcherConfig(**overrides)  # type: ignore[arg-type]


def test_scorer_decides_on_threshold_and_margin() -> None:
    # two intents along two axes, one anchor along a third
    eye = np.eye(4, dtype=np.float32)
    scorer = IntentScorer(["a", "b"], eye[[0, 1]], ["a", "b"], eye[[2]], domain=0.0)
    msgs = np.array([[0.9, 0.1, 0.0, 0.0], [0.1, 0.0, 0.9, 0.0]], dtype=np.float32)
    msgs /= np.linalg.norm(msgs, axis=1, keepdims=True)
    scores = scorer.score(msgs)
    best, accepted = decide(scores, 0.5, 0.0)
    assert best[0] == 0 and accepted.tolist() == [True, False]  # second: anchor is closer
    _, accepted = decide(scores, np.array([0.999, 0.5]), 0.0)
    assert accepted.tolist() == [False, False]  # per-row thresholds


def test_calibrate_keeps_to_the_false_hit_rate() -> None:
    top = np.linspace(0.0, 0.99, 100, dtype=np.float32)
    scores = Scores(top[:, None], np.full(100, -1.0, dtype=np.float32))
    for rate in (0.0, 0.01, 0.05, 0.2):
        threshold = calibrate(scores, margin=0.0, false_hit_rate=rate)
        assert (top >= threshold).sum() <= int(rate * 100)
        assert (top >= threshold - 0.011).sum() > int(rate * 100)  # the lowest such


# -- data ----------------------------------------------------------------------------------


def test_anchors_cover_the_product_corpus() -> None:
    anchors = load_anchors()
    parallel = [lang for lang, p in zip(anchors.languages, anchors.parallel) if p]
    assert len(set(parallel)) >= 30 and len(set(anchors.concepts)) >= 200
    assert len(anchors.texts) == len(anchors.languages) == len(anchors.concepts)


def test_a_malformed_corpus_names_the_file_and_entry(tmp_path: Path) -> None:
    bad = tmp_path / "corpus.yaml"
    bad.write_text("concepts:\n  - category: misc\n    text: {en: ''}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_anchors(bad)
    assert "corpus.yaml" in str(exc.value) and "concepts[0].text.en" in str(exc.value)


def _rows(name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (DATA / name).read_text("utf-8").splitlines() if line]


def test_evaluation_sets_are_kept_apart_from_training_data() -> None:
    """No tune or test line may also be a KB example or an out-of-scope anchor."""
    train = {normalize(e.text) for e in load_kb().examples()}
    train |= {normalize(t) for t in load_anchors().texts}
    for name in ("intent_eval.jsonl", "intent_test.jsonl", "oos_test.jsonl"):
        leaked = [r["text"] for r in _rows(name) if normalize(str(r["text"])) in train]
        assert leaked == [], name


def test_test_set_covers_every_intent_in_every_language() -> None:
    rows = _rows("intent_test.jsonl")
    intents = set(load_kb().intent_ids)
    langs = {r["lang"] for r in rows}
    assert len(langs) >= 24
    for lang in langs:
        assert {r["intent"] for r in rows if r["lang"] == lang and r["intent"]} == intents
    assert len({r["lang"] for r in _rows("oos_test.jsonl")}) >= 20


# -- the embedding cache --------------------------------------------------------------------


class CountingEmbedder:
    name = "counting-v1"
    dim = 3

    def __init__(self) -> None:
        self.calls = 0
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_embedding_cache_reuses_and_repairs(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    first = embed_cached(embedder, ["a", "bb"], tmp_path)
    again = embed_cached(embedder, ["a", "bb"], tmp_path)
    assert embedder.calls == 1
    np.testing.assert_array_equal(first, again)
    embed_cached(embedder, ["a", "bb", "ccc"], tmp_path)  # one new text: only it is embedded
    assert embedder.calls == 2 and embedder.texts == 3
    for f in tmp_path.glob("*.npz"):
        f.write_bytes(b"not a numpy file")
    repaired = embed_cached(embedder, ["a", "bb"], tmp_path)
    assert embedder.calls == 3
    np.testing.assert_array_equal(repaired, first)
    assert not list(tmp_path.glob("*.tmp.npz"))


def test_embedding_cache_in_threads_matches_one_thread(tmp_path: Path) -> None:
    texts = [f"text {i}" * (i % 7 + 1) for i in range(700)]
    seen: list[tuple[int, int]] = []
    many = embed_cached(CountingEmbedder(), texts, tmp_path / "a", workers=3,
                        progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_array_equal(many, embed_cached(CountingEmbedder(), texts, None))
    assert seen[-1] == (700, 700) and len(seen) >= 2
    # duplicates are embedded once and come back in every place they occur
    embedder = CountingEmbedder()
    out = embed_cached(embedder, ["x", "yy", "x"], tmp_path / "b")
    assert embedder.texts == 2 and out[0].tolist() == out[2].tolist()


def test_embedding_progress_is_reported(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    embed_cached(CountingEmbedder(), [str(i) for i in range(600)], tmp_path,
                 progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (600, 600) and len(seen) >= 2
    seen.clear()
    embed_cached(CountingEmbedder(), [str(i) for i in range(600)], tmp_path,
                 progress=lambda done, total: seen.append((done, total)))
    assert seen == []  # read from the cache


# -- the real thing: e5, the product's anchors, the bundled KB -------------------------------


@pytest.fixture(scope="module")
def en_matcher() -> IntentMatcher:
    """The demo KB with every non-English example removed (answers untouched), trained
    as ``serve`` trains it. First run embeds the product corpus (~1-2 min, then cached)."""
    return IntentMatcher.from_kb(load_kb(), MatcherConfig(), languages=EN)


@pytest.mark.slow
@pytest.mark.parametrize(("message", "lang", "intent"), [
    ("¿Cuándo me devuelven el dinero de la devolución?", "es", "refund_status"),
    ("我忘记密码了，登录不了", "zh", "reset_password"),
    ("أريد إلغاء طلبي", "ar", "cancel_order"),
    ("where is my parcel, ordered a week ago", "en", "order_status"),
])
def test_english_only_kb_matches_other_languages(en_matcher: IntentMatcher, message: str,
                                                 lang: str, intent: str) -> None:
    match = en_matcher.match(message, lang)
    assert match.intent == intent, match


@pytest.mark.slow
@pytest.mark.parametrize(("message", "lang"), [
    ("set an alarm for 7 tomorrow morning", "en"),
    ("pon una alarma a las siete de la mañana", "es"),
    ("明天早上七点设个闹钟", "zh"),
    ("what is the capital of Australia", "en"),
    ("¿quién escribió Cien años de soledad?", "es"),
    ("ما هي عاصمة أستراليا؟", "ar"),
])
def test_assistant_commands_and_general_knowledge_get_no_intent(
        en_matcher: IntentMatcher, message: str, lang: str) -> None:
    assert en_matcher.match(message, lang).intent is None


@pytest.mark.slow
def test_the_whole_multilingual_kb_matches_too() -> None:
    matcher = IntentMatcher.from_kb(load_kb(), MatcherConfig())
    assert matcher.example_languages >= {"en", "es", "zh", "ar"}
    assert matcher.match("Wann bekomme ich mein Geld zurück?", "de").intent == "refund_status"
    assert matcher.match("wie spät ist es in Tokio", "de").intent is None


@pytest.mark.slow
async def test_verifier_decides_only_the_band_below_the_threshold(
        en_matcher: IntentMatcher) -> None:
    from dataclasses import replace

    banded = IntentMatcher(replace(en_matcher.config, verify_band=2.0),
                           en_matcher.descriptions, en_matcher._embedder,  # noqa: SLF001
                           en_matcher.neutralizer, en_matcher.scorer,
                           en_matcher.example_languages)
    sure = await banded.amatch("I forgot my password", Recorder("cancel_order"), "en")
    assert sure.intent == "reset_password" and not sure.verified  # sure: never asked
    verifier = Recorder("opening_hours")
    unsure = await banded.amatch("tell me a joke", verifier, "en")
    assert verifier.calls and unsure.verified
    assert unsure.intent == ("opening_hours" if "opening_hours" in verifier.calls[0][1]
                             else None)
    failing = await banded.amatch("tell me a joke", Recorder(fail=True), "en")
    assert failing.intent is None and not failing.verified
    plain = await en_matcher.amatch("tell me a joke", Recorder("opening_hours"), "en")
    assert plain.intent is None and not plain.verified  # no band: never asked


class ScriptedModel:
    """A ChatModel that always answers ``reply`` (the LLM's wiring, not its quality)."""

    model_name = "scripted"

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.requests: list[ChatRequest] = []

    async def stream_chat(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        yield TextDelta(self.reply)
        yield TextDelta("", finish_reason="stop", usage=Usage(10, 1))


async def test_llm_verifier_wires_a_chat_model() -> None:
    candidates = [Candidate("refund_status", 0.4, "Where is my refund"),
                  Candidate("return_policy", 0.3, "Return window")]
    model = ScriptedModel("2")
    verify = llm_verifier(model)
    assert await verify("cuánto tiempo tengo para devolver", candidates) == "return_policy"
    request = model.requests[0]
    assert request.params.temperature == 0.0 and request.params.max_tokens
    assert await llm_verifier(ScriptedModel("0"))("hola", candidates) is None


def test_match_is_a_plain_record() -> None:
    m = Match(None, 0.2, (Candidate("a", 0.2, "A"),), 0.5)
    assert m.embedded and not m.verified


def test_fast_ngram_rows_equal_scikit_learn() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from babeldesk.knowledge.intents import NgramTfidf

    texts = ["where is my refund", "¿dónde está mi reembolso?", "退款什么时候到账", "a  b"]
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(2, 4), sublinear_tf=True)
    vectorizer.fit(texts)
    fast = NgramTfidf(vectorizer)
    for text in texts + ["refund  please", "zzz"]:
        expected = vectorizer.transform([text]).toarray()[0]
        cols, weights = fast.transform(text)
        got = np.zeros_like(expected)
        got[cols] = weights
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_config_names_every_embedder_kind() -> None:
    # config is core and cannot import knowledge, so it spells the kinds out: keep them equal
    from babeldesk.config import MATCHER_EMBEDDERS

    assert set(MATCHER_EMBEDDERS) == {kind.value for kind in EmbedderKind}
