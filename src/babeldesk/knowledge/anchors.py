"""The product's out-of-scope anchors and the text normalisation the matcher shares.

``data/out_of_scope_corpus.yaml``: 200 concepts (assistant commands, small talk, general
knowledge, other businesses) written in 36 languages, parallel, so its rows also fit the
neutralizer (``neutral.py``); ``data/out_of_scope.yaml``: near misses and thanks. The
out-of-scope decision is the product's job: a shop never has to write negatives.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from babeldesk.errors import ConfigError

CORPUS_FILE = "out_of_scope_corpus.yaml"
EXTRA_FILE = "out_of_scope.yaml"
# kinds of EXTRA_FILE used as anchors: its uncovered_shop kind lists questions the
# *demo* shop cannot answer, which another shop may well answer, so it is not an anchor
EXTRA_KINDS = ("off_topic", "near_miss")


_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, case-folded, digits dropped, spaces collapsed. Order numbers carry no
    intent, and a placeholder for them made "order 48213" look like "17 times 23"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _DIGITS.sub(" ", text)).strip()


@dataclass(frozen=True)
class Anchors:
    """The product's out-of-scope messages: text, language and concept (the same id for
    translations of one sentence; parallel rows fit the neutralizer)."""

    texts: tuple[str, ...]
    languages: tuple[str, ...]
    concepts: tuple[int, ...]
    parallel: tuple[bool, ...]  # from the parallel corpus

    def with_texts(self, texts: Sequence[tuple[str, str]]) -> Anchors:
        """These anchors and more (text, language), each a concept of its own."""
        if not texts:
            return self
        start = max(self.concepts, default=-1) + 1
        return Anchors(self.texts + tuple(t for t, _ in texts),
                       self.languages + tuple(lang for _, lang in texts),
                       self.concepts + tuple(range(start, start + len(texts))),
                       self.parallel + (False,) * len(texts))

    def digest(self) -> str:
        h = hashlib.sha256()
        for t, lang, c in zip(self.texts, self.languages, self.concepts, strict=True):
            h.update(f"{lang}\x00{c}\x00{t}\x01".encode())
        return h.hexdigest()[:16]


# libyaml's parser where PyYAML has it: the 7,200-line corpus in ~0.3 s instead of ~3 s
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_data(name: str, path: Path | None) -> tuple[object, str]:
    if path is None:
        text = resources.files("babeldesk").joinpath("data", name).read_text("utf-8")
        return yaml.load(text, Loader=_Loader), name
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader), str(path)


@functools.lru_cache(maxsize=4)
def load_anchors(corpus: Path | None = None, extra: Path | None = None) -> Anchors:
    """The parallel corpus (``{languages, concepts: [{category, text: {lang: str}}]}``)
    and the extra kinds of ``out_of_scope.yaml`` (``{kind: {lang: [str]}}``)."""
    texts: list[str] = []
    langs: list[str] = []
    concepts: list[int] = []
    parallel: list[bool] = []
    data, where = _read_data(CORPUS_FILE, corpus)
    if not isinstance(data, dict) or not isinstance(data.get("concepts"), list):
        raise ConfigError(where, "must be a mapping with a 'concepts' list")
    for n, concept in enumerate(data["concepts"]):
        text = concept.get("text") if isinstance(concept, dict) else None
        if not isinstance(text, dict) or not text:
            raise ConfigError(f"{where}: concepts[{n}].text", "must map languages to strings")
        for lang, value in text.items():
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: concepts[{n}].text.{lang}", "must be a string")
            texts.append(value)
            langs.append(str(lang))
            concepts.append(n)
            parallel.append(True)
    extra_data, where = _read_data(EXTRA_FILE, extra)
    if not isinstance(extra_data, dict):
        raise ConfigError(where, "must map kinds to {language: [messages]}")
    next_id = len(data["concepts"])
    for kind in EXTRA_KINDS:
        per_lang = extra_data.get(kind) or {}
        if not isinstance(per_lang, dict):
            raise ConfigError(f"{where}: {kind}", "must map language codes to lists")
        for lang, items in per_lang.items():
            if not isinstance(items, list) or not all(isinstance(t, str) and t for t in items):
                raise ConfigError(f"{where}: {kind}.{lang}", "must be a list of strings")
            for item in items:
                texts.append(item)
                langs.append(str(lang))
                concepts.append(next_id)
                parallel.append(False)
                next_id += 1
    return Anchors(tuple(texts), tuple(langs), tuple(concepts), tuple(parallel))
