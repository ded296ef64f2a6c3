"""Token sampling over one row of logits, in numpy: greedy, temperature, top-p, seeded."""

from __future__ import annotations

import numpy as np

from babeldesk.types import SamplingParams

_TOP_CANDIDATES = 512  # top-p looks here first; a full sort only if these miss top_p mass


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """logits: [vocab] float32 -> token id."""
    if params.greedy:
        return int(np.argmax(logits))
    x = logits.astype(np.float64, copy=False) / params.temperature
    x = x - x.max()
    probs = np.exp(x)
    probs /= probs.sum()
    if params.top_p < 1.0:
        k = min(_TOP_CANDIDATES, probs.shape[0])
        top = np.argpartition(probs, -k)[-k:]
        order = top[np.argsort(probs[top])[::-1]]
        cum = np.cumsum(probs[order])
        if cum[-1] < params.top_p and k < probs.shape[0]:
            order = np.argsort(probs)[::-1]
            cum = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (at least one token)
        cut = int(np.searchsorted(cum, params.top_p, side="left")) + 1
        keep = order[:cut]
        p = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=p)])
    return int(rng.choice(probs.shape[0], p=probs))
