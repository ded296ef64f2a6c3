"""The serving-rate fixes on the hot path keep results identical: the detector's
per-text cache, SupportReply.to_dict without dataclasses.asdict."""

from __future__ import annotations

import dataclasses

from babeldesk.support.language import LanguageDetector, Prior
from babeldesk.support.pipeline import SupportReply


def test_detector_cache_returns_the_uncached_result() -> None:
    detector = LanguageDetector(cache_size=2)
    texts = ["¿Dónde está mi pedido?", "Wo ist meine Bestellung?", "Where is my order?",
             "¿Dónde está mi pedido?", "12345", "x" * 1500]
    for text in texts + texts:
        assert detector.detect(text) == detector._detect(text, Prior())
    info = detector._cached.cache_info()
    assert info.hits >= 1 and info.currsize <= 2  # bounded; long texts never stored


def test_reply_to_dict_matches_asdict() -> None:
    for handoff in (None, {"reason": "customer_request"}):
        reply = SupportReply("s1", "Hola", "es", "cache", "order_status", 0.93, handoff, 1.25,
                             translated=True)
        out = reply.to_dict()
        expected = dataclasses.asdict(reply)
        expected["sources"] = list(expected["sources"])  # JSON-ready: a list
        assert out == expected
        if handoff is not None:
            assert out["handoff"] is not handoff  # a copy: callers may not mutate the reply
