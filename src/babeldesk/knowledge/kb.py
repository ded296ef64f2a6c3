"""The knowledge base: a folder of YAML files, loaded and validated once at start-up.

Layout (the demo shop ships as ``babeldesk/data/kb/``; ``--kb DIR`` loads a shop's own)::

    shop.yaml           name: str            the shop's name, used in prompts
                        version: str         the shop's own version label ("2026.11")
                        persona: str         one paragraph: who the assistant is, its tone
    <intent_id>.yaml    id: str              == the file's stem; [a-z][a-z0-9_]*
                        description: str     one English line: what the customer wants
                        examples:            {language code: [example questions]}
                        answers:             {language code: answer text}
                        handoff: bool        optional, default false: this intent goes
                                             to a human (contact_human)

Rules, each checked with an error naming the file and the field
(``kb/refund_status.yaml: answers.es: must be a non-empty string``):

- every file is UTF-8 YAML without duplicate keys, its top level is a mapping, and it has
  no unknown keys;
- language codes are strings in ``SUPPORTED_LANGUAGES`` (quote ``'no'``: bare ``no`` is
  YAML's false);
- ``examples`` has at least one language, each a non-empty list of non-empty strings;
- ``answers`` has at least one language, each a non-empty string;
- one example question (case- and space-insensitive) belongs to one intent only: the
  matcher trains on them, so a question under two intents is a labelling error;
- at least one intent file. Only ``*.yaml`` files are read; any other file is an error,
  so a misnamed ``refund.yml`` cannot be silently skipped.

``KnowledgeBase.version`` is ``<shop version>+<content hash>``: the hash (SHA-256 of the
parsed content, 12 hex digits) changes with any answer or example and not with comments
or formatting, so answer caches keyed by it invalidate exactly when content changes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import yaml

from babeldesk.errors import KnowledgeBaseError
from babeldesk.knowledge.languages import SUPPORTED_LANGUAGES

SHOP_FILE = "shop.yaml"
DOCS_DIR = "docs"  # help-center articles (any language), beside the intent files
_INTENT_KEYS = {"id", "description", "examples", "answers", "handoff"}
_INTENT_REQUIRED = ("id", "description", "examples", "answers")
_SHOP_KEYS = {"name", "version", "persona"}
_ID_RE = re.compile(r"[a-z][a-z0-9_]*")
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[valid-type,misc]
    """The safe loader, refusing duplicate keys (YAML keeps the last one silently, so a
    second ``es:`` under ``answers`` would drop the first answer without a word)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


@dataclass(frozen=True, slots=True)
class Shop:
    name: str
    version: str  # the shop's own label; KnowledgeBase.version adds the content hash
    persona: str


@dataclass(frozen=True, slots=True)
class Intent:
    id: str
    description: str
    examples: Mapping[str, tuple[str, ...]]  # language -> example questions (read-only)
    answers: Mapping[str, str]  # language -> answer text (read-only)
    handoff: bool = False


class Example(NamedTuple):
    """One labelled example question, as the matcher trains on it."""

    intent_id: str
    language: str
    text: str


@dataclass(frozen=True, slots=True)
class KnowledgeBase:
    shop: Shop
    intents: Mapping[str, Intent]  # id -> intent, ids sorted (read-only)
    content_hash: str  # 12 hex digits of SHA-256 over the parsed content

    @property
    def version(self) -> str:
        return f"{self.shop.version}+{self.content_hash}"

    @property
    def intent_ids(self) -> tuple[str, ...]:
        return tuple(self.intents)

    @property
    def answer_languages(self) -> frozenset[str]:
        return frozenset(lang for intent in self.intents.values() for lang in intent.answers)

    def answer(self, intent_id: str, lang: str) -> str | None:
        """The KB answer in ``lang``; None when this intent has none in that language.
        An unknown ``intent_id`` raises KeyError (the matcher only returns known ids)."""
        return self.intents[intent_id].answers.get(lang)

    def examples(self, languages: frozenset[str] | None = None) -> Iterator[Example]:
        """Every example question (intent by intent, languages sorted), optionally
        restricted to ``languages``."""
        for intent in self.intents.values():
            for lang, texts in intent.examples.items():
                if languages is None or lang in languages:
                    for text in texts:
                        yield Example(intent.id, lang, text)


def bundled_kb_dir() -> Traversable:
    """The demo shop's knowledge base inside the installed package."""
    return resources.files("babeldesk").joinpath("data", "kb")


def docs_dir(path: Path | None = None) -> Path:
    """The help-center folder of a knowledge base (None: the demo shop's)."""
    return (Path(str(bundled_kb_dir())) if path is None else Path(path)) / DOCS_DIR


def load_kb(path: Path | None = None) -> KnowledgeBase:
    """Load and validate a knowledge-base folder; None loads the bundled demo shop.
    Raises ``KnowledgeBaseError`` (a ``ConfigError``) naming the file and field."""
    folder: Traversable = bundled_kb_dir() if path is None else Path(path)
    label = folder.name or "kb"
    if not folder.is_dir():
        raise KnowledgeBaseError(str(folder), "", "knowledge-base folder not found")

    files = sorted((f for f in folder.iterdir() if not f.name.startswith(".")), key=_name)
    shop: Shop | None = None
    intents: dict[str, Intent] = {}
    for f in files:
        where = f"{label}/{f.name}"
        if f.is_dir() and f.name == DOCS_DIR:  # help-center articles, loaded by knowledge
            continue
        if f.is_dir() or not f.name.endswith(".yaml"):
            raise KnowledgeBaseError(where, "", "unexpected entry; the folder holds *.yaml files")
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise KnowledgeBaseError(where, "", "not UTF-8 text") from None
        data = parse_yaml(text, where)
        if f.name == SHOP_FILE:
            shop = parse_shop(data, where)
        else:
            intent = parse_intent(data, where, expected_id=f.name[: -len(".yaml")])
            intents[intent.id] = intent
    if shop is None:
        raise KnowledgeBaseError(f"{label}/{SHOP_FILE}", "", "missing")
    if not intents:
        raise KnowledgeBaseError(label, "", "no intent files (<intent_id>.yaml)")
    _check_unique_examples(intents, label)
    return KnowledgeBase(shop, MappingProxyType(intents), _content_hash(shop, intents))


def _name(f: Traversable) -> str:
    return f.name


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        detail = f": {problem}" if problem and problem.startswith("duplicate key") else ""
        raise KnowledgeBaseError(where, "", f"not valid YAML{line}{detail}") from None
    if not isinstance(data, dict):
        raise KnowledgeBaseError(where, "", "must be a mapping of fields")
    return data


def parse_shop(data: dict[str, Any], where: str) -> Shop:
    _check_keys(data, _SHOP_KEYS, _SHOP_KEYS, where)
    values = {key: _text(data[key], where, key) for key in sorted(_SHOP_KEYS)}
    return Shop(**values)


def parse_intent(data: dict[str, Any], where: str, expected_id: str) -> Intent:
    """One ``<intent_id>.yaml`` mapping -> Intent; pure, so it is tested without files."""
    _check_keys(data, _INTENT_KEYS, set(_INTENT_REQUIRED), where)
    intent_id = _text(data["id"], where, "id")
    if not _ID_RE.fullmatch(intent_id):
        raise KnowledgeBaseError(where, "id", "must match [a-z][a-z0-9_]*")
    if intent_id != expected_id:
        raise KnowledgeBaseError(where, "id", f"must equal the file name ({expected_id!r})")
    description = _text(data["description"], where, "description")

    examples: dict[str, tuple[str, ...]] = {}
    for lang, texts in _languages(data["examples"], where, "examples").items():
        field = f"examples.{lang}"
        if not isinstance(texts, list) or not texts:
            raise KnowledgeBaseError(where, field, "must be a non-empty list of questions")
        examples[lang] = tuple(_text(t, where, f"{field}[{i}]") for i, t in enumerate(texts))

    answers = {
        lang: _text(text, where, f"answers.{lang}")
        for lang, text in _languages(data["answers"], where, "answers").items()
    }
    handoff = data.get("handoff", False)
    if not isinstance(handoff, bool):
        raise KnowledgeBaseError(where, "handoff", "must be true or false")
    return Intent(
        intent_id,
        description,
        MappingProxyType(dict(sorted(examples.items()))),
        MappingProxyType(dict(sorted(answers.items()))),
        handoff,
    )


def _check_keys(data: dict[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise KnowledgeBaseError(
                where, str(key), f"unknown field; allowed: {', '.join(sorted(allowed))}"
            )
    for key in sorted(required):
        if key not in data:
            raise KnowledgeBaseError(where, key, "missing")


def _text(value: object, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise KnowledgeBaseError(where, field, "must be a non-empty string")
    return value.strip()


def _languages(value: object, where: str, field: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise KnowledgeBaseError(where, field, "must be a non-empty mapping of language codes")
    for lang in value:
        if not isinstance(lang, str):
            raise KnowledgeBaseError(
                where, f"{field}.{lang}", "language code must be a string (quote 'no', 'on')"
            )
        if lang not in SUPPORTED_LANGUAGES:
            raise KnowledgeBaseError(where, f"{field}.{lang}", "unknown language code")
    return value


def _normalize(text: str) -> str:
    return " ".join(text.casefold().split())


def _check_unique_examples(intents: Mapping[str, Intent], label: str) -> None:
    seen: dict[str, str] = {}  # normalised question -> intent id
    for intent in intents.values():
        for lang, texts in intent.examples.items():
            for i, text in enumerate(texts):
                other = seen.setdefault(_normalize(text), intent.id)
                if other != intent.id:
                    raise KnowledgeBaseError(
                        f"{label}/{intent.id}.yaml",
                        f"examples.{lang}[{i}]",
                        f"{text!r} is also an example of {other!r}",
                    )


def _content_hash(shop: Shop, intents: Mapping[str, Intent]) -> str:
    content = {
        "shop": [shop.name, shop.version, shop.persona],
        "intents": {
            i.id: [i.description, dict(i.examples), dict(i.answers), i.handoff]
            for i in intents.values()
        },
    }
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]
