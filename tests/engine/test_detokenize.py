from __future__ import annotations

import pytest

from babeldesk.engine.detokenize import ByteTokenDecoder, StopMatcher

TEXTS = ["退款什么时候到账？", "ご注文ありがとうございます", "شكرا لك على طلبك", "ok 👍🏽 done 🎉", "Größe ändern"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_decoder_never_splits_characters(text: str) -> None:
    data = text.encode("utf-8")
    pieces = {i: bytes([b]) for i, b in enumerate(data)}  # one byte per "token": worst case
    dec = ByteTokenDecoder(lambda t: pieces[t])
    out = []
    for i in range(len(data)):
        piece = dec.push(i)
        assert "\ufffd" not in piece
        out.append(piece)
    out.append(dec.flush())
    assert "".join(out) == text


def test_byte_decoder_flushes_invalid_tail_as_replacement() -> None:
    dec = ByteTokenDecoder(lambda t: b"\xe4\xbd")  # first two bytes of a 3-byte char
    assert dec.push(0) == ""
    assert dec.flush() == "\ufffd"


def test_stop_matcher_holds_back_possible_prefix() -> None:
    m = StopMatcher(("END",))
    assert m.push("hello E") == "hello "
    assert m.push("N") == ""
    assert m.push("x") == "ENx"
    assert not m.stopped
    assert m.push(" and END tail") == " and "
    assert m.stopped


def test_stop_matcher_picks_earliest_stop_and_flushes() -> None:
    m = StopMatcher(("b2", "a1"))
    assert m.push("xxa1yyb2") == "xx"
    m2 = StopMatcher(("###",))
    assert m2.push("text #") == "text "
    assert m2.flush() == "#"


def test_stop_matcher_without_stops_passes_through() -> None:
    assert StopMatcher(()).push("anything") == "anything"
