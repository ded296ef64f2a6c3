"""Language detection on labelled messages: accuracy, share of "sure" messages (the
lock's rule), wrong locks, and latency per message.

    python benchmarks/language_detect.py [--repeat 20] [--kb DIR]    # the KB's examples
    python benchmarks/language_detect.py --jsonl benchmarks/data/intent_eval.jsonl
                                         # any JSONL with "text" and "lang" per line

Prints a Markdown table (one row per language) for docs/benchmarks.md. Single thread;
latency is wall-clock per ``LanguageDetector.detect`` call (median and p99 over
``repeat`` passes of every example), text_weight included.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

from babeldesk.support.kb import load_kb
from babeldesk.support.language import LanguageDetector, LanguageLock, text_weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timing passes over the set")
    parser.add_argument("--kb", type=Path, default=None, help="knowledge-base folder")
    parser.add_argument("--jsonl", type=Path, default=None, help="labelled messages instead")
    args = parser.parse_args()

    if args.jsonl is None:
        kb = load_kb(args.kb)
        examples = [(ex.language, ex.text) for ex in kb.examples()]
        source = f"KB {kb.version}: {len(examples)} example questions"
    else:
        lines = args.jsonl.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        examples = [(str(row["lang"]), str(row["text"])) for row in rows]
        source = f"{args.jsonl.name}: {len(examples)} messages"
    t0 = time.perf_counter()
    detector = LanguageDetector()
    load_s = time.perf_counter() - t0
    lock = LanguageLock()

    right: dict[str, int] = defaultdict(int)
    sure: dict[str, int] = defaultdict(int)
    false_lock: dict[str, int] = defaultdict(int)  # wrong language, yet sure enough to lock
    total: dict[str, int] = defaultdict(int)
    wrong: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for lang, text in examples:
        found = detector.detect(text)
        total[lang] += 1
        if found.language == lang:
            right[lang] += 1
            if lock.is_sure(found, text_weight(text)):
                sure[lang] += 1
        else:
            wrong[lang][found.language] += 1
            if lock.is_sure(found, text_weight(text)):
                false_lock[lang] += 1

    # latency: per call, microseconds; `repeat` passes over all examples
    per_lang: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeat):
        for lang, text in examples:
            start = time.perf_counter_ns()
            detector.detect(text)
            per_lang[lang].append((time.perf_counter_ns() - start) / 1000)
    every = sorted(v for values in per_lang.values() for v in values)

    def p99(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    print(
        f"{source}, {len(total)} languages; "
        f"model load {load_s * 1000:.0f} ms; {platform.machine()}, Python "
        f"{platform.python_version()}"
    )
    print()
    print("| lang | n | accuracy | sure (locks) | wrong lock | median µs | p99 µs | mistaken for |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for lang in sorted(total):
        mistakes = ", ".join(
            f"{code} {n}" for code, n in sorted(wrong[lang].items(), key=lambda kv: -kv[1])[:3]
        )
        print(
            f"| {lang} | {total[lang]} | {right[lang] / total[lang]:.0%} | "
            f"{sure[lang] / total[lang]:.0%} | {false_lock[lang]} | {statistics.median(per_lang[lang]):.0f} | "
            f"{p99(per_lang[lang]):.0f} | {mistakes} |"
        )
    n = len(examples)
    print(
        f"| **all** | {n} | {sum(right.values()) / n:.1%} | {sum(sure.values()) / n:.1%} | "
        f"{sum(false_lock.values())} | "
        f"{statistics.median(every):.0f} | {p99(every):.0f} | |"
    )


if __name__ == "__main__":
    main()
