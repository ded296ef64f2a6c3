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

from dataclasses import dataclass

import numpy as np

TOP_ANCHORS = 3  # o: mean of the k most similar anchors


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
