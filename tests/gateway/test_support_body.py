"""The support API's body parsing, in-process: the ``locale`` field and the
Accept-Language header are hints (a bad one is ignored), a non-string locale is a 400."""

from __future__ import annotations

import pytest

from babeldesk.errors import InvalidRequest
from babeldesk.gateway.app import parse_support_body


def test_locale_field_is_passed_as_the_hint() -> None:
    request, stream = parse_support_body({"message": "hola", "locale": "es-MX"})
    assert request.locale == "es-MX" and request.language is None and not stream


def test_accept_language_is_the_hint_when_the_body_has_no_locale() -> None:
    request, _ = parse_support_body({"message": "hola"}, "pt-BR,pt;q=0.9,en;q=0.8")
    assert request.locale == "pt"
    request, _ = parse_support_body({"message": "hola", "locale": "it-IT"}, "pt-BR")
    assert request.locale == "it-IT"  # the page's own locale wins over the header


@pytest.mark.parametrize("header", ["", "*", "xx-YY", "garbage;;q=x", "de;q=0", "\xff" * 600])
def test_a_bad_accept_language_header_is_ignored(header: str) -> None:
    request, _ = parse_support_body({"message": "hola"}, header)
    assert request.locale is None


def test_an_unknown_locale_string_is_kept_as_a_hint_that_matches_nothing() -> None:
    request, _ = parse_support_body({"message": "hola", "locale": "not a locale!"})
    assert request.locale == "not a locale!"  # the pipeline's locale_language ignores it


@pytest.mark.parametrize("locale", [5, 1.5, True, ["es"], {"lang": "es"}])
def test_a_non_string_locale_is_a_400_naming_the_field(locale: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_support_body({"message": "hi", "locale": locale})
    assert info.value.status == 400 and info.value.param == "locale"
    assert "locale" in info.value.message
