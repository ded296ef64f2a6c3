"""Cross-lingual intent scoring over language-neutral vectors (``neutral.py``).

For one message vector ``z`` (neutral, unit):

- the support-domain direction is removed first: every vector has the mean of the KB's
  example vectors (times ``domain``) subtracted and is normalised again, so the cosines
  measure what differs between support questions, not that they are support questions
  (tune set, English-only KB: +2 to +4 points of accuracy at the same false-hit rate);
- intent i: ``s_i = w * max_j cos(z, x_ij) + (1 - w) * cos(z, centroid_i)`` over the
  intent's examples (the nearest example catches a paraphrase, the centroid what the
  examples share; w = 0.5 was best on the tune set, 0.3-0.7 within a point);
- out of scope: ``o``, the mean of the 3 largest cosines to the product's out-of-scope
  anchors (assistant commands, small talk, general knowledge, other businesses) in the
  KB's example languages, so that ``s`` and ``o`` compare the message with texts in the
  same languages;
- the decision (precision first): the best intent when ``s_best >= accept`` and
  ``s_best - o >= margin``.

``calibrate`` turns a false-hit rate on a labelled set of out-of-scope messages into a
threshold (the tuning benchmark chooses the defaults with it). Measured on the tune set,
alternatives that did worse at the same false-hit rate: a logistic regression over the
neutral vectors with an out-of-scope class (English-only KB 72% against 80%), dividing
cosines by how close translations are per language pair, and thresholds calibrated on
the product's own anchors (each scored with its translations left out): those anchors
sit much closer to shop intents than real off-topic messages (other businesses' refunds
and cancellations), so the thresholds came out far too strict (docs/benchmarks.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_ANCHORS = 3  # o: mean of the k most similar anchors
_WHITE_SPACES = re.compile(r"\s\s+")  # scikit-learn's char analyzer collapses these first


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Scores:
    intents: np.ndarray  # float [n, n_intents]: s_i
    out_of_scope: np.ndarray  # float [n]: o


class IntentScorer:
    """The KB's example vectors and the product's anchors, ready to score. Read-only
    after construction (thread-safe)."""

    def __init__(self, intent_ids: list[str], examples: np.ndarray, example_intents: list[str],
                 anchors: np.ndarray, *, nearest_weight: float = 0.5,
                 domain: float = 1.0) -> None:
        """examples: neutral unit rows [E, dim], each with its intent id; anchors: [A, dim]."""
        self.intent_ids = tuple(intent_ids)
        col = {i: k for k, i in enumerate(self.intent_ids)}
        cols = np.array([col[i] for i in example_intents], dtype=np.intp)
        order = np.argsort(cols, kind="stable")  # each intent's examples contiguous
        self._shift = (domain * examples.mean(axis=0)).astype(np.float32)  # [dim]
        self._examples = _unit(examples[order] - self._shift)  # [E, dim]
        self._starts = np.searchsorted(cols[order], np.arange(len(self.intent_ids)))  # [k]
        centroids = np.stack([self._examples[cols[order] == k].mean(axis=0)
                              for k in range(len(self.intent_ids))])
        self._centroids = _unit(centroids)  # [k, dim]
        self._anchors = _unit(anchors - self._shift) if len(anchors) else anchors  # [A, dim]
        self._w = nearest_weight

    @property
    def anchor_count(self) -> int:
        return len(self._anchors)

    def score(self, vectors: np.ndarray, anchor_mask: np.ndarray | None = None) -> Scores:
        """vectors: neutral unit rows [n, dim]. ``anchor_mask``: bool [n, A], False
        leaves that anchor out of row n's ``o`` (calibration)."""
        q = _unit(vectors - self._shift)  # [n, dim]
        nearest = np.maximum.reduceat(q @ self._examples.T, self._starts, axis=1)  # [n, k]
        intents = self._w * nearest + (1.0 - self._w) * (q @ self._centroids.T)
        if not len(self._anchors):
            return Scores(intents, np.full(len(q), -1.0, dtype=np.float32))
        sims = q @ self._anchors.T  # [n, A]
        if anchor_mask is not None:
            sims = np.where(anchor_mask, sims, -np.inf)
        k = min(TOP_ANCHORS, sims.shape[1])
        top = np.partition(sims, -k, axis=1)[:, -k:]
        top = np.where(np.isfinite(top), top, np.nan)
        oos = np.nan_to_num(np.nanmean(top, axis=1), nan=-1.0) if np.isnan(top).any() \
            else top.mean(axis=1)
        return Scores(intents, oos.astype(np.float32))


def decide(scores: Scores, accept: float | np.ndarray,
           margin: float) -> tuple[np.ndarray, np.ndarray]:
    """accept: one threshold, or one per row [n] -> (best intent column [n], accepted [n])."""
    best = scores.intents.argmax(axis=1)
    top = scores.intents[np.arange(len(best)), best]
    return best, (top >= accept) & (top - scores.out_of_scope >= margin)


def calibrate(scores: Scores, margin: float, false_hit_rate: float,
              floor: float = 0.0) -> float:
    """The lowest accept threshold at which at most ``false_hit_rate`` of the messages
    behind ``scores`` (all out of scope) would be answered; at least ``floor``."""
    top = scores.intents.max(axis=1)
    passing = np.sort(top[top - scores.out_of_scope >= margin])[::-1]  # descending
    allowed = int(np.floor(false_hit_rate * len(top)))
    if len(passing) <= allowed:
        return floor
    # accept must exceed the (allowed+1)-th largest passing score
    return max(floor, float(np.nextafter(passing[allowed], np.float32(np.inf))))


class NgramTfidf:
    """A fitted ``TfidfVectorizer(analyzer="char", sublinear_tf=True)`` as a dict and an
    array: text -> (columns, weights) of its L2-normalised TF-IDF row. The same numbers as
    ``vectorizer.transform([text])`` (tested) without building a CSR matrix and
    validating input on every call (~10x cheaper for one short message)."""

    def __init__(self, vectorizer: Any) -> None:
        if vectorizer.analyzer != "char" or not vectorizer.sublinear_tf or vectorizer.norm != "l2":
            raise ValueError("NgramTfidf mirrors char analyzers with sublinear tf and l2 norm")
        self._columns: dict[str, int] = {g: int(c) for g, c in vectorizer.vocabulary_.items()}
        self._idf = np.asarray(vectorizer.idf_, dtype=np.float64)  # [vocab]
        self._lowercase = bool(vectorizer.lowercase)
        lo, hi = vectorizer.ngram_range
        self._sizes = range(lo, hi + 1)

    def transform(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """text -> (columns int [k], weights float64 [k]); k = 0 when no n-gram is known."""
        doc = _WHITE_SPACES.sub(" ", text.lower() if self._lowercase else text)
        counts: dict[int, int] = {}
        get = self._columns.get
        for n in self._sizes:
            for i in range(len(doc) - n + 1):
                col = get(doc[i : i + n])
                if col is not None:
                    counts[col] = counts.get(col, 0) + 1
        if not counts:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
        cols = np.fromiter(counts, dtype=np.intp, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        weights = (np.log(tf) + 1.0) * self._idf[cols]
        weights /= np.sqrt(weights @ weights)
        return cols, weights


class SurfaceSimilarity:
    """Character n-grams, only where the KB has examples in the message's language: the
    TF-IDF cosine of a message to the same-language examples of each intent (the
    largest) and to the same-language anchors (mean of the 3 largest), added to ``s`` and
    ``o`` times ``weight``. A message in a language without examples gets nothing from
    it, so an English-only KB is not tilted towards English (tune set, bundled KB: 93.4%
    -> 95.0% at <= 2% false hits with weight 0.15; 0.5 lost accuracy)."""

    def __init__(self, intent_count: int, examples: list[str], example_langs: list[str],
                 example_cols: list[int], anchors: list[str], anchor_langs: list[str],
                 weight: float) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.weight = weight
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(2, 4), sublinear_tf=True)
        vectorizer.fit(examples + anchors)
        self._tfidf = NgramTfidf(vectorizer)
        ex = vectorizer.transform(examples)
        an = vectorizer.transform(anchors)
        cols = np.asarray(example_cols, dtype=np.intp)
        ex_langs = np.asarray(example_langs, dtype=object)
        an_langs = np.asarray(anchor_langs, dtype=object)
        # per KB language: its examples [vocab, E_l] (CSR: a message's n-grams are rows),
        # their intent columns, its anchors [vocab, A_l]
        self._per_lang: dict[str, tuple[Any, np.ndarray, Any]] = {}
        for lang in sorted(set(example_langs)):
            e_rows, a_rows = ex_langs == lang, an_langs == lang
            self._per_lang[lang] = (ex[e_rows].T.tocsr(), cols[e_rows],
                                    an[a_rows].T.tocsr() if a_rows.any() else None)
        self._k = intent_count
        self.languages = frozenset(self._per_lang)

    def add_to(self, scores: Scores, texts: list[str], languages: list[str | None]) -> Scores:
        """``scores`` with the n-gram evidence added for rows in a KB example language."""
        if not self.weight or not any(lang in self._per_lang for lang in languages):
            return scores
        intents, oos = scores.intents.copy(), scores.out_of_scope.copy()
        for r, lang in enumerate(languages):
            if lang not in self._per_lang:
                continue
            cols, weights = self._tfidf.transform(texts[r])
            if not len(cols):
                continue
            examples, intent_cols, anchors = self._per_lang[lang]
            sims = examples[cols].T @ weights  # [E_l]
            best = np.zeros(self._k, dtype=np.float64)
            np.maximum.at(best, intent_cols, sims)
            intents[r] += self.weight * best
            if anchors is not None:
                a = anchors[cols].T @ weights  # [A_l]
                k = min(TOP_ANCHORS, len(a))
                oos[r] += self.weight * float(np.partition(a, -k)[-k:].mean())
        return Scores(intents, oos)
