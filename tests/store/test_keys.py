"""Cache keys and the text normaliser, across scripts."""

from __future__ import annotations

import pytest

from babeldesk.errors import InvalidRequest
from babeldesk.store import CacheKind, kb_answer_key, model_answer_key, normalise_text


@pytest.mark.parametrize(("a", "b"), [
    ("Where is my ORDER??", "where is my order"),
    ("  where   is\tmy\norder ", "where is my order"),
    ("¿Dónde está mi pedido?", "dónde está mi pedido"),
    ("Ｗｈｅｒｅ　ｉｓ　ｍｙ　ｏｒｄｅｒ？", "where is my order"),  # full-width forms (NFKC)
    ("STRASSE", "straße"),  # casefold, not lower
    ("Wo ist meine Bestellung?!", "wo ist meine bestellung"),
    ("Где мой заказ?", "где мой заказ"),
    ("Don't charge me twice", "dont charge me twice"),
    ("thanks 🙂🙂", "thanks"),
    ("我的订单在哪里？", "我的订单在哪里"),
    ("我的 订单 在 哪里", "我的订单在哪里"),  # no spaces between Han words
    ("我的订单，在哪里。", "我的订单在哪里"),
    ("注文は どこ ですか？", "注文はどこですか"),
    ("ｶﾀｶﾅ", "カタカナ"),  # half-width katakana
    ("คำสั่งซื้อ ของฉัน อยู่ที่ไหน", "คำสั่งซื้อของฉันอยู่ที่ไหน"),  # Thai
    ("طلبي أين هو؟", "طلبي أين هو"),  # Arabic question mark
    ("मेरा ऑर्डर कहाँ है।", "मेरा ऑर्डर कहाँ है"),  # danda
])
def test_same_question_same_text(a: str, b: str) -> None:
    assert normalise_text(a) == normalise_text(b)


@pytest.mark.parametrize(("a", "b"), [
    ("주문 어디 있어요", "주문어디있어요"),  # Hangul is written with spaces: they count
    ("refund 5€", "refund 5"),  # currency stays
    ("cancel my order", "cancel my orders"),
    ("a b", "ab"),
])
def test_different_questions_stay_apart(a: str, b: str) -> None:
    assert normalise_text(a) != normalise_text(b)


def test_model_keys_share_text_across_spellings_but_not_languages_or_versions() -> None:
    k = model_answer_key("zh", "我的订单在哪里？", "v1")
    assert k.kind is CacheKind.MODEL
    assert k == model_answer_key("zh", "我的 订单 在哪里", "v1")
    assert k != model_answer_key("ja", "我的订单在哪里", "v1")
    assert k != model_answer_key("zh", "我的订单在哪里", "v2")
    assert len(k.key) < 100  # hashed: a 20 kB message does not make a 20 kB key


def test_kb_keys() -> None:
    k = kb_answer_key("refund_status", "es", "3f2a")
    assert k.kind is CacheKind.KB
    assert k.key == "kb:3f2a:es:refund_status"
    assert k != kb_answer_key("refund_status", "pt", "3f2a")
    with pytest.raises(InvalidRequest):
        kb_answer_key("refund:status", "es", "v1")
    with pytest.raises(InvalidRequest):
        kb_answer_key("refund_status", "", "v1")
