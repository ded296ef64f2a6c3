"""Redaction of e-mails, phone numbers and card numbers in many languages and scripts."""

from __future__ import annotations

import logging

import pytest

from babeldesk.errors import ConfigError
from babeldesk.store import Redactor, Turn
from babeldesk.store.redact import RedactingFilter, luhn_ok


@pytest.mark.parametrize(("text", "expected"), [
    ("My email is john.doe+shop@example.com, card 4111 1111 1111 1111.",
     "My email is [email], card [card]."),
    ("Mi correo es josé.pérez@correo.es y mi teléfono +34 612 345 678",
     "Mi correo es [email] y mi teléfono [phone]"),
    ("我的邮箱是 用户@例子.中国，卡号 5500-0000-0000-0004，电话 +86 138 0013 8000",
     "我的邮箱是 [email]，卡号 [card]，电话 [phone]"),
    ("رقمي +971 50 123 4567 والبريد ali@example.ae",
     "رقمي [phone] والبريد [email]"),
    ("Мой номер +7 912 345-67-89, карта 4012888888881881",
     "Мой номер [phone], карта [card]"),
    ("मेरा नंबर +91 98765 43210 है और ईमेल raj@example.in",
     "मेरा नंबर [phone] है और ईमेल [email]"),
    ("電話は+81 90-1234-5678、カードは３７８２８２２４６３１０００５です",  # full-width digits
     "電話は[phone]、カードは[card]です"),
    ("Rufen Sie +49 30 123456 an oder +1 (415) 555-2671",
     "Rufen Sie [phone] an oder [phone]"),
    ("כתובת: dana@example.co.il, טלפון +972 52-123-4567",
     "כתובת: [email], טלפון [phone]"),
])
def test_personal_data_is_replaced(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


@pytest.mark.parametrize("text", [
    "Order 1234567890123 arrived on 2024-05-01",  # 13 digits, not Luhn-valid
    "Card 4111 1111 1111 1112 was declined",  # one digit off: not a card number
    "Bestellnummer 10023456, Rechnung 2024/0815",
    "我的订单号是 20240501123456",
    "Send it to 221B Baker Street, London NW1 6XE",
    "price 1,299.00 € for 3 items",
])
def test_order_numbers_dates_and_prices_stay(text: str) -> None:
    assert Redactor().redact(text) == text


def test_national_formats_need_a_region() -> None:
    text = "appelez-moi au 06 12 34 56 78 ou 0044 20 7946 0958, commande 2024-05-01"
    assert Redactor().redact(text) == text
    assert Redactor(("FR",)).redact(text) == "appelez-moi au [phone] ou [phone], commande 2024-05-01"
    assert Redactor(("jp",)).redact("電話は090-1234-5678です") == "電話は[phone]です"
    with pytest.raises(ConfigError) as err:
        Redactor(("XX",))
    assert err.value.key == "store.redact_phone_regions"


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("378282246310005")  # Amex, 15 digits
    assert not luhn_ok("4111111111111112")
    assert not luhn_ok("0000000000")  # too short for a card


def test_turn_keeps_everything_but_the_text() -> None:
    turn = Turn("user", "mail: a@b.io", language="en", intent="contact_human", confidence=0.5)
    redacted = Redactor().turn(turn)
    assert redacted.text == "mail: [email]"
    assert (redacted.role, redacted.language, redacted.intent, redacted.confidence, redacted.time) \
        == (turn.role, turn.language, turn.intent, turn.confidence, turn.time)
    clean = Turn("user", "nothing to hide")
    assert Redactor().turn(clean) is clean


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("babeldesk.test.redact")
    caplog.handler.addFilter(RedactingFilter(Redactor()))
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("customer said %r", "écrivez à marie@example.fr ou +33 6 12 34 56 78")
        log.info("nothing personal in %d messages", 3)
    assert [r.getMessage() for r in caplog.records] == [
        "customer said 'écrivez à [email] ou [phone]'",
        "nothing personal in 3 messages",
    ]
