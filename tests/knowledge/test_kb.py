"""The knowledge-base loader: the bundled demo shop, and every validation rule on real
files in a temporary folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from babeldesk.errors import ConfigError, KnowledgeBaseError
from babeldesk.knowledge.kb import Example, KnowledgeBase, bundled_kb_dir, load_kb
from babeldesk.knowledge.languages import SUPPORTED_LANGUAGES

DESIGN_INTENTS = {
    "order_status", "delivery_time", "shipping_cost", "international_shipping",
    "change_shipping_address", "cancel_order", "return_policy", "start_return",
    "refund_status", "exchange_item", "damaged_item", "missing_item", "payment_failed",
    "payment_methods", "update_payment_method", "invoice_copy", "promo_code",
    "reset_password", "update_account_email", "delete_account", "cancel_subscription",
    "warranty", "opening_hours", "contact_human",
}  # fmt: skip
ANSWER_LANGS = ["en", "zh", "es", "fr", "de", "pt", "it", "ja", "ko", "ar", "ru", "hi"]
EXTRA_EXAMPLE_LANGS = ["he", "vi", "sv", "el", "ro", "cs", "nl", "pl", "tr", "id", "th", "uk"]


# ---- the bundled demo shop -------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> KnowledgeBase:
    return load_kb()


def test_demo_has_exactly_the_design_intents(demo: KnowledgeBase) -> None:
    assert set(demo.intent_ids) == DESIGN_INTENTS
    assert list(demo.intent_ids) == sorted(DESIGN_INTENTS)


def test_demo_examples_and_answers_cover_the_languages(demo: KnowledgeBase) -> None:
    for intent in demo.intents.values():
        for lang in ANSWER_LANGS:
            assert len(intent.examples.get(lang, ())) >= 4, (intent.id, lang)
            assert intent.answers.get(lang), (intent.id, lang)
        for lang in EXTRA_EXAMPLE_LANGS:
            assert len(intent.examples.get(lang, ())) >= 3, (intent.id, lang)


def test_demo_only_contact_human_hands_off(demo: KnowledgeBase) -> None:
    assert {i.id for i in demo.intents.values() if i.handoff} == {"contact_human"}


def test_demo_answers_never_state_an_order_status(demo: KnowledgeBase) -> None:
    # The order-status answer says where to look; it must not claim a status or date.
    answer = demo.answer("order_status", "en")
    assert answer is not None and "My account > Orders" in answer
    for invented in ("has shipped", "is on its way", "will arrive on", "was delivered"):
        assert invented not in answer


def test_demo_facts_are_consistent_across_languages(demo: KnowledgeBase) -> None:
    # The same numbers appear in every language's answer (no translation drifted).
    facts = {"shipping_cost": ["4", "49", "9", "19"], "return_policy": ["30"],
             "opening_hours": ["8", "20", "9", "16"], "refund_status": ["5", "10"],
             "damaged_item": ["14", "30"], "cancel_subscription": ["14"]}  # fmt: skip
    for intent_id, numbers in facts.items():
        for lang in ANSWER_LANGS:
            text = demo.answer(intent_id, lang)
            assert text is not None
            for number in numbers:
                assert number in text, (intent_id, lang, number)


def test_answer_lookup(demo: KnowledgeBase) -> None:
    assert demo.answer("refund_status", "es") is not None
    assert demo.answer("refund_status", "sv") is None  # examples only, no Swedish answer
    with pytest.raises(KeyError):
        demo.answer("no_such_intent", "en")


def test_examples_iteration_for_the_matcher(demo: KnowledgeBase) -> None:
    examples = list(demo.examples())
    assert all(isinstance(e, Example) for e in examples)
    assert len(examples) >= 24 * (12 * 4 + 12 * 3)
    assert {e.intent_id for e in examples} == DESIGN_INTENTS
    assert {e.language for e in examples} >= set(ANSWER_LANGS + EXTRA_EXAMPLE_LANGS)
    he = list(demo.examples(frozenset({"he"})))
    assert he and all(e.language == "he" for e in he)
    # every example language is a supported detector language
    assert {e.language for e in examples} <= SUPPORTED_LANGUAGES


def test_version_is_shop_version_plus_content_hash(demo: KnowledgeBase) -> None:
    shop_version, content_hash = demo.version.split("+")
    assert shop_version == demo.shop.version == "2026.11"
    assert len(content_hash) == 12 and int(content_hash, 16) >= 0
    assert load_kb().version == demo.version  # deterministic


def test_demo_is_read_only(demo: KnowledgeBase) -> None:
    intent = demo.intents["order_status"]
    with pytest.raises(TypeError):
        intent.answers["en"] = "changed"  # type: ignore[index]
    with pytest.raises(AttributeError):
        intent.id = "x"  # type: ignore[misc]


def test_bundled_kb_is_package_data() -> None:
    # Read through importlib.resources, the way an installed wheel is read.
    folder = bundled_kb_dir()
    names = {f.name for f in folder.iterdir()}
    assert "shop.yaml" in names and "refund_status.yaml" in names
    text = resources.files("babeldesk").joinpath("data/kb/shop.yaml").read_text("utf-8")
    assert yaml.safe_load(text)["name"] == "Pinecone Market"


# ---- validation, one rule at a time ----------------------------------------------------


def _intent(**override: object) -> dict[str, object]:
    data: dict[str, object] = {
        "id": "refund_status",
        "description": "When the money comes back.",
        "examples": {"en": ["where is my refund"], "es": ["¿y mi reembolso?"]},
        "answers": {"en": "Within 5 business days.", "es": "En 5 días hábiles."},
    }
    data.update(override)
    return data


def _write_kb(root: Path, intents: dict[str, object], shop: object | None = None) -> Path:
    kb = root / "kb"
    kb.mkdir(parents=True)
    shop = shop if shop is not None else {"name": "Test", "version": "1", "persona": "Kind."}
    (kb / "shop.yaml").write_text(yaml.safe_dump(shop), encoding="utf-8")
    for name, content in intents.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content, allow_unicode=True)
        (kb / name).write_text(text, encoding="utf-8")
    return kb


def _error(tmp_path: Path, intents: dict[str, object], shop: object | None = None) -> str:
    kb = _write_kb(tmp_path, intents, shop)
    with pytest.raises(KnowledgeBaseError) as info:
        load_kb(kb)
    assert isinstance(info.value, ConfigError)  # fails start-up like any config error
    return str(info.value)


def test_a_valid_custom_kb_loads(tmp_path: Path) -> None:
    kb = load_kb(_write_kb(tmp_path, {"refund_status.yaml": _intent()}))
    assert kb.intent_ids == ("refund_status",)
    assert kb.answer("refund_status", "es") == "En 5 días hábiles."
    assert kb.version.startswith("1+")
    assert not kb.intents["refund_status"].handoff


def test_content_hash_follows_content_not_formatting(tmp_path: Path) -> None:
    base = load_kb(_write_kb(tmp_path / "a", {"refund_status.yaml": _intent()}))
    commented = "# a comment\n" + yaml.safe_dump(_intent(), allow_unicode=True, indent=4)
    same = load_kb(_write_kb(tmp_path / "b", {"refund_status.yaml": commented}))
    changed = _intent(answers={"en": "Within 6 business days."})
    other = load_kb(_write_kb(tmp_path / "c", {"refund_status.yaml": changed}))
    assert base.version == same.version != other.version


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"answers": {"en": "ok", "es": ""}}, "kb/refund_status.yaml: answers.es: must be a non-empty string"),
        ({"answers": {"en": "ok", "es": 5}}, "kb/refund_status.yaml: answers.es: must be a non-empty string"),
        ({"answers": {}}, "kb/refund_status.yaml: answers: must be a non-empty mapping"),
        ({"answers": ["en"]}, "kb/refund_status.yaml: answers: must be a non-empty mapping"),
        ({"answers": {"xx": "hi"}}, "kb/refund_status.yaml: answers.xx: unknown language code"),
        ({"answers": {"EN": "hi"}}, "kb/refund_status.yaml: answers.EN: unknown language code"),
        ({"examples": {"en": []}}, "kb/refund_status.yaml: examples.en: must be a non-empty list"),
        ({"examples": {"en": "where"}}, "kb/refund_status.yaml: examples.en: must be a non-empty list"),
        ({"examples": {"en": ["ok", "  "]}}, "kb/refund_status.yaml: examples.en[1]: must be a non-empty string"),
        ({"examples": {"klingon": ["qapla"]}}, "kb/refund_status.yaml: examples.klingon: unknown language code"),
        ({"examples": None}, "kb/refund_status.yaml: examples: must be a non-empty mapping"),
        ({"description": ""}, "kb/refund_status.yaml: description: must be a non-empty string"),
        ({"id": "refund"}, "kb/refund_status.yaml: id: must equal the file name"),
        ({"handoff": "yes please"}, "kb/refund_status.yaml: handoff: must be true or false"),
        ({"answer": {"en": "typo"}}, "kb/refund_status.yaml: answer: unknown field"),
    ],
)  # fmt: skip
def test_each_field_rule_names_file_and_field(
    tmp_path: Path, override: dict[str, object], expected: str
) -> None:
    assert expected in _error(tmp_path, {"refund_status.yaml": _intent(**override)})


@pytest.mark.parametrize("field", ["id", "description", "examples", "answers"])
def test_missing_required_field(tmp_path: Path, field: str) -> None:
    data = _intent()
    del data[field]
    assert f"kb/refund_status.yaml: {field}: missing" in _error(
        tmp_path, {"refund_status.yaml": data}
    )


def test_bad_intent_id_pattern(tmp_path: Path) -> None:
    message = _error(tmp_path, {"Refund-Status.yaml": _intent(id="Refund-Status")})
    assert "kb/Refund-Status.yaml: id: must match" in message


def test_unquoted_norwegian_code_is_yaml_false(tmp_path: Path) -> None:
    # `no:` parses as the boolean false in YAML; the loader says how to fix it.
    text = yaml.safe_dump(_intent()) + "\n"
    text = text.replace("examples:\n", "examples:\n  no: [hvor er pengene mine]\n")
    message = _error(tmp_path, {"refund_status.yaml": text})
    assert "examples.False: language code must be a string" in message
    fixed = text.replace("  no: [", "  'no': [")
    assert load_kb(_write_kb(tmp_path / "ok", {"refund_status.yaml": fixed})).intents


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    message = _error(tmp_path, {"refund_status.yaml": "id: refund_status\nanswers: [unclosed\n"})
    assert "kb/refund_status.yaml: not valid YAML at line" in message


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = yaml.safe_dump(_intent(), allow_unicode=True)
    text = text.replace("answers:\n", "answers:\n  es: Primera respuesta.\n", 1)
    message = _error(tmp_path, {"refund_status.yaml": text})
    assert "kb/refund_status.yaml: not valid YAML at line" in message
    assert "duplicate key 'es'" in message


def test_binary_file_is_refused(tmp_path: Path) -> None:
    kb = _write_kb(tmp_path, {"refund_status.yaml": _intent()})
    (kb / "refund_status.yaml").write_bytes(b"\xff\xfe\x00binary junk\x80")
    with pytest.raises(KnowledgeBaseError, match="kb/refund_status.yaml: not UTF-8 text"):
        load_kb(kb)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = _error(tmp_path, {"refund_status.yaml": "- just\n- a list\n"})
    assert "kb/refund_status.yaml: must be a mapping of fields" in message


def test_same_example_under_two_intents(tmp_path: Path) -> None:
    first = _intent()
    second = _intent(id="return_policy", examples={"en": ["Where is my  REFUND"]})
    message = _error(tmp_path, {"refund_status.yaml": first, "return_policy.yaml": second})
    assert "examples.en[0]" in message and "also an example of 'refund_status'" in message


def test_shop_file_rules(tmp_path: Path) -> None:
    intents = {"refund_status.yaml": _intent()}
    assert "kb/shop.yaml: version: missing" in _error(
        tmp_path / "a", intents, {"name": "T", "persona": "p"}
    )
    assert "kb/shop.yaml: name: must be a non-empty string" in _error(
        tmp_path / "b", intents, {"name": " ", "version": "1", "persona": "p"}
    )
    kb = _write_kb(tmp_path / "c", intents)
    (kb / "shop.yaml").unlink()
    with pytest.raises(KnowledgeBaseError, match="kb/shop.yaml: missing"):
        load_kb(kb)


def test_folder_rules(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeBaseError, match="nowhere: knowledge-base folder not found"):
        load_kb(tmp_path / "nowhere")
    assert "no intent files" in _error(tmp_path / "a", {})
    message = _error(tmp_path / "b", {"refund_status.yml": _intent()})
    assert "kb/refund_status.yml: unexpected entry" in message
    kb = _write_kb(tmp_path / "c", {"refund_status.yaml": _intent()})
    (kb / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    assert load_kb(kb).intent_ids == ("refund_status",)
