"""Language detection on labelled messages: accuracy per language without and with the
chat page's locale hint, the reply language of a first message and inside a locked
session, wrong locks, and the detection time per message.

    python benchmarks/language_detect.py                      # the KB's example questions
    python benchmarks/language_detect.py --data benchmarks/data/language_tune.jsonl
    python benchmarks/language_detect.py --data A.jsonl --data B.jsonl --hint-p 0.5
    python benchmarks/language_detect.py --data F.jsonl --set locale=2.0 --set words=0.8
    python benchmarks/language_detect.py --data F.jsonl --fasttext-only   # the old detector

Any JSONL with "text" and "lang" per line ("style" optional: accuracy per style too).
Columns (one row per language; Markdown for docs/benchmarks.md):

- ``no hint``: the detected language, message alone (the headline);
- ``first reply``: the language a first message is answered in (the lock's rule: an
  unsure message is answered in the default language);
- ``hint p``: the true locale passed with probability p (``--hint-p``), else none;
- ``en hint``: every message with an English browser (``es`` for English messages): a
  wrong hint must not win over clear text;
- ``session``: the reply language inside a session locked to the message's language
  (the lock plus the session prior; the other headline);
- ``wrong lock``: messages detected wrongly yet sure enough to lock a new session.

Single thread; time is wall-clock per ``LanguageDetector.detect`` call without its
result cache (median and p99 over ``--repeat`` passes), text_weight included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from babeldesk.knowledge.kb import load_kb
from babeldesk.support.language import (
    DEFAULT_WEIGHTS,
    DetectorWeights,
    LanguageDetector,
    Prior,
    text_weight,
)
from babeldesk.support.language_lock import LanguageLock, LockState

Row = tuple[str, str, str]  # (lang, text, style)


def read_rows(paths: list[Path]) -> list[Row]:
    rows: list[Row] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                item = json.loads(line)
                rows.append((str(item["lang"]), str(item["text"]), str(item.get("style", ""))))
    return rows


def hinted(text: str, p: float) -> bool:
    """Deterministic coin with probability p per text (same choice on every run)."""
    return (zlib.crc32(text.encode("utf-8")) % 10_000) < p * 10_000


def evaluate(detector: LanguageDetector, rows: list[Row], hint_p: float,
             lock: LanguageLock | None = None) -> dict[str, dict[str, dict[str, int]]]:
    """mode -> lang -> {"right", "n", "wrong_lock"}; plus mode "style:<s>" for no hint."""
    lock = lock or LanguageLock()
    out: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: {"right": 0, "n": 0, "wrong_lock": 0}))

    def count(mode: str, key: str, ok: bool) -> None:
        cell = out[mode][key]
        cell["n"] += 1
        cell["right"] += ok

    for lang, text, style in rows:
        weight = text_weight(text)
        found = detector.detect(text)
        count("no hint", lang, found.language == lang)
        if style:
            count("style", style, found.language == lang)
        first = lock.step(LockState(), found, weight)
        count("first reply", lang, first.language == lang)
        if first.state.locked not in (None, lang):
            out["first reply"][lang]["wrong_lock"] += 1
        prior = Prior(locale=lang) if hinted(text, hint_p) else None
        count("hint", lang, detector.detect(text, prior).language == lang)
        wrong = Prior(locale="es" if lang == "en" else "en")
        count("en hint", lang, detector.detect(text, wrong).language == lang)
        in_session = lock.step(LockState(locked=lang), detector.detect(text, Prior(session=lang)),
                               weight)
        count("session", lang, in_session.language == lang)
    return out


def timings(detector: LanguageDetector, rows: list[Row], repeat: int) -> list[float]:
    """Microseconds per detect call, result cache off."""
    times: list[float] = []
    for _ in range(repeat):
        for _, text, _ in rows:
            start = time.perf_counter_ns()
            detector.detect(text)
            text_weight.__wrapped__(text)  # type: ignore[attr-defined]  # uncached, as new text
            times.append((time.perf_counter_ns() - start) / 1000)
    return times


def pct(cell: dict[str, int]) -> str:
    return f"{cell['right'] / cell['n']:.1%}" if cell["n"] else "–"


def report(out: dict[str, dict[str, dict[str, int]]], hint_p: float,
           print_: Callable[[str], None] = print) -> None:
    modes = ["no hint", "first reply", "hint", "en hint", "session"]
    names = {"hint": f"hint p={hint_p:g}"}
    print_("| lang | n | " + " | ".join(names.get(m, m) for m in modes) + " | wrong lock |")
    print_("|---|---:|" + "---:|" * len(modes) + "---:|")
    langs = sorted(out["no hint"])
    for lang in langs:
        cells = [pct(out[m][lang]) for m in modes]
        print_(f"| {lang} | {out['no hint'][lang]['n']} | " + " | ".join(cells)
               + f" | {out['first reply'][lang]['wrong_lock']} |")
    totals = []
    for m in modes:
        right = sum(c["right"] for c in out[m].values())
        n = sum(c["n"] for c in out[m].values())
        totals.append(f"**{right / n:.1%}**")
    worst = min(langs, key=lambda lang: out["no hint"][lang]["right"] / out["no hint"][lang]["n"])
    locks = sum(c["wrong_lock"] for c in out["first reply"].values())
    print_(f"| **all** | {sum(c['n'] for c in out['no hint'].values())} | "
           + " | ".join(totals) + f" | {locks} |")
    print_("")
    print_(f"worst language without a hint: {worst} {pct(out['no hint'][worst])}")
    if out.get("style"):
        print_("by style (no hint): " + ", ".join(
            f"{s} {pct(c)} of {c['n']}" for s, c in sorted(out["style"].items())))


def print_errors(detector: LanguageDetector, rows: list[Row]) -> None:
    """Each message detected wrongly without a hint: true -> detected (confidence)."""
    print()
    for lang, text, style in rows:
        found = detector.detect(text)
        if found.language != lang:
            print(f"- {lang} -> {found.language} ({found.confidence:.2f}, {style or '-'}): {text}")
    print()


def parse_weights(items: list[str], fasttext_only: bool) -> DetectorWeights:
    weights = DEFAULT_WEIGHTS
    if fasttext_only:
        weights = dataclasses.replace(weights, fasttext=1.0, words=0.0, locale=0.0, session=0.0,
                                      unlisted_minimum=0.0)
    for item in items:
        key, _, value = item.partition("=")
        weights = dataclasses.replace(weights, **{key.strip(): float(value)})
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", default=[],
                        help="labelled JSONL (text, lang[, style]); may be repeated")
    parser.add_argument("--kb", type=Path, default=None,
                        help="knowledge-base folder whose examples to use when no --data")
    parser.add_argument("--hint-p", type=float, default=0.5,
                        help="probability that the true locale is passed in the hint column")
    parser.add_argument("--repeat", type=int, default=5, help="timing passes over the set")
    parser.add_argument("--set", action="append", default=[], metavar="WEIGHT=VALUE",
                        help="override a DetectorWeights field (e.g. locale=2.0)")
    parser.add_argument("--fasttext-only", action="store_true",
                        help="fastText alone (no word evidence, no priors): the old detector")
    parser.add_argument("--no-kb-vocabulary", action="store_true",
                        help="do not count the KB's words as evidence")
    parser.add_argument("--errors", action="store_true",
                        help="also list every message detected wrongly without a hint")
    args = parser.parse_args()

    if args.data:
        rows = read_rows(args.data)
        source = ", ".join(p.name for p in args.data) + f": {len(rows)} messages"
    else:
        rows = [(ex.language, ex.text, "") for ex in load_kb(args.kb).examples()]
        source = f"KB example questions: {len(rows)}"
    weights = parse_weights(args.set, args.fasttext_only)
    vocabulary = None if args.no_kb_vocabulary or args.fasttext_only else kb_texts(args.kb)
    t0 = time.perf_counter()
    detector = LanguageDetector(vocabulary=vocabulary, weights=weights)
    load_s = time.perf_counter() - t0

    out = evaluate(detector, rows, args.hint_p)
    uncached = LanguageDetector(cache_size=0, vocabulary=vocabulary, weights=weights)
    times = sorted(timings(uncached, rows, args.repeat))
    print(f"{source}, {len(out['no hint'])} languages; detector load {load_s * 1000:.0f} ms; "
          f"{platform.machine()}, Python {platform.python_version()}; weights {weights}; "
          f"KB vocabulary {'off' if vocabulary is None else 'on'}")
    print()
    report(out, args.hint_p)
    if args.errors:
        print_errors(detector, rows)
    print(f"detect time per message: p50 {statistics.median(times):.0f} µs, "
          f"p99 {times[min(len(times) - 1, int(0.99 * len(times)))]:.0f} µs "
          f"({len(times)} calls, result cache off)")


def kb_texts(path: Path | None) -> dict[str, list[str]]:
    """The KB's texts per language, as the pipeline passes them to the detector."""
    from babeldesk.support.language import kb_vocabulary

    return kb_vocabulary(load_kb(path))


if __name__ == "__main__":
    main()
