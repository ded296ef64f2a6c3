"""benchmarks/retrieval_eval.py's scoring on small inputs: the threshold calibration, the
tau2 scorer as its README gives it, the table and the TEST part's threshold report."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import retrieval_eval  # noqa: E402


ROWS = [{"text": "a", "lang": "en", "doc": "a.md"}, {"text": "b", "lang": "es", "doc": "b.md"},
        {"text": "c", "lang": "en", "doc": None}, {"text": "d", "lang": "es", "doc": None}]


def test_calibration_takes_the_lowest_threshold_within_the_false_answer_budget() -> None:
    gap = np.array([0.05, 0.031, 0.02, 0.04])  # the second unanswerable one scores high
    cal = retrieval_eval.calibrate(gap, ROWS, max_false=0.5, signal="gap")
    assert cal["chosen"] == {"threshold": 0.0225, "answered": 1.0, "false_answers": 0.5}
    strict = retrieval_eval.calibrate(gap, ROWS, max_false=0.0, signal="gap")
    assert strict["chosen"]["threshold"] == 0.0425 and strict["chosen"]["answered"] == 0.5
    applied = retrieval_eval.apply_threshold(gap, ROWS, 0.03)
    assert applied["answered"] == 1.0 and applied["false_answers"] == 0.5
    assert applied["answered_per_language"] == {"en": 1.0, "es": 1.0}


@pytest.mark.skipif(not (retrieval_eval.DEFAULT_TAU2 / "score.py").exists(),
                    reason="tau2 data not beside the repository")
def test_tau2_metrics_use_its_scorer_and_ceilings() -> None:
    scorer = retrieval_eval.tau2_scorer(retrieval_eval.DEFAULT_TAU2)
    required = {"q1": {"d1", "d2"}, "q2": {"d3"}}
    metrics = retrieval_eval.tau2_metrics(scorer, required, ["q1", "q2"],
                                          [["d1", "x", "d2"], ["y"]])
    assert metrics["coverage@10"] == 0.5 and metrics["recall@10"] == 0.5
    assert metrics["ceiling_coverage@10"] == 1.0


def test_table_aligns_columns() -> None:
    out = retrieval_eval.table([("dense", 0.97), ("bm25", 0.4)], ("setting", "recall@5"))
    lines = out.splitlines()
    assert lines[0].startswith("setting | recall@5") and lines[2].startswith("dense   | 0.970")
    assert len({len(line) for line in lines}) == 1


@pytest.mark.skipif(not (retrieval_eval.DEFAULT_TAU2 / "queries.jsonl").exists(),
                    reason="tau2 data not beside the repository")
def test_tau2_halves_are_fixed_and_keep_identical_openings_together() -> None:
    queries = retrieval_eval.read_jsonl(retrieval_eval.DEFAULT_TAU2 / "queries.jsonl")
    halves = [retrieval_eval.tau2_half(q["query"]) for q in queries]
    assert (halves.count("tune"), halves.count("test")) == (47, 50)
    by_text: dict[str, set[str]] = {}
    for q, half in zip(queries, halves):
        by_text.setdefault(q["query"], set()).add(half)
    assert all(len(h) == 1 for h in by_text.values())
