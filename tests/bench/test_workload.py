"""The built-in support workload: its mix, its own phrasings, JSONL files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from babeldesk.bench.workload import (
    FREE_FORM,
    INTENT_PHRASES,
    LANGUAGE_WEIGHTS,
    Mix,
    builtin_workload,
    load_jsonl,
    parse_languages,
)
from babeldesk.errors import ConfigError
from babeldesk.knowledge.kb import load_kb

REPO = Path(__file__).resolve().parents[2]
KB = REPO / "src" / "babeldesk" / "data" / "kb"



def _norm(text: str) -> str:
    return " ".join(text.casefold().replace("?", "").replace("？", "").split())


def test_covers_the_24_intents_in_12_plus_languages() -> None:
    assert set(INTENT_PHRASES) == set(load_kb(KB).intent_ids)  # the demo shop's 24
    langs = {lang for phrases in INTENT_PHRASES.values() for lang in phrases}
    assert len(langs) >= 12
    assert langs == set(LANGUAGE_WEIGHTS)
    assert all(len(p["en"]) >= 2 for p in INTENT_PHRASES.values())


def test_phrasings_are_not_copied_from_the_kb_or_the_eval_set() -> None:
    ours = {_norm(t) for p in INTENT_PHRASES.values() for ts in p.values() for t in ts}
    ours |= {_norm(t) for ts in FREE_FORM.values() for t in ts}
    theirs: set[str] = set()
    for f in KB.glob("*.yaml"):
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
        for texts in (data.get("examples") or {}).values():
            theirs |= {_norm(t) for t in texts}
    eval_set = REPO / "benchmarks" / "data" / "intent_eval.jsonl"
    if eval_set.is_file():
        theirs |= {_norm(json.loads(line)["text"])
                   for line in eval_set.read_text(encoding="utf-8").splitlines() if line.strip()}
    assert len(theirs) > 500  # the comparison really read the KB
    assert ours & theirs == set()


def test_mix_is_skewed_seeded_and_multilingual() -> None:
    items = builtin_workload(3000, seed=1)
    assert items == builtin_workload(3000, seed=1)
    assert items != builtin_workload(3000, seed=2)
    intents = Counter(i.intent for i in items if i.intent)
    # Zipf: the most popular intent is asked far more often than the least popular
    assert intents["order_status"] > 5 * intents["delete_account"] > 0
    langs = Counter(i.language for i in items)
    assert len(langs) == len(LANGUAGE_WEIGHTS)
    assert langs.most_common(1)[0][0] == "en"
    free = [i for i in items if i.kind == "free_form"]
    assert 0.03 < len(free) / len(items) < 0.15  # 10% of the languages that have free-form
    assert all(i.intent is None for i in free)


def test_mix_is_configurable() -> None:
    only_es = builtin_workload(200, Mix(free_form_share=0.0, languages={"es": 1.0}))
    assert {i.language for i in only_es} == {"es"}
    assert all(i.kind == "intent" for i in only_es)
    uniform = Counter(i.intent for i in builtin_workload(
        4800, Mix(free_form_share=0.0, intent_skew=0.0, languages={"en": 1.0})))
    assert min(uniform.values()) > 100  # 24 intents, ~200 each
    all_free = builtin_workload(100, Mix(free_form_share=1.0, languages={"en": 1.0}))
    assert all(i.kind == "free_form" for i in all_free)
    assert parse_languages("en,es=2") == {"en": LANGUAGE_WEIGHTS["en"], "es": 2.0}
    with pytest.raises(ConfigError, match="xx"):
        parse_languages("en,xx")
    with pytest.raises(ConfigError):
        Mix(free_form_share=1.5)
    with pytest.raises(ConfigError):
        Mix(languages={"en": 0.0})


def test_jsonl_workload(tmp_path: Path) -> None:
    f = tmp_path / "w.jsonl"
    f.write_text('{"message": "hola", "language": "es"}\n\n'
                 '{"prompt": "write a haiku", "max_tokens": 8}\n', encoding="utf-8")
    items = load_jsonl(f)
    assert [(i.message, i.language, i.max_tokens) for i in items] == [
        ("hola", "es", None), ("write a haiku", "", 8)]
    f.write_text('{"message": "ok"}\n{"language": "en"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"w\.jsonl:2"):
        load_jsonl(f)
    f.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_jsonl(f)
