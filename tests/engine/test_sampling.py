from __future__ import annotations

import numpy as np

from babeldesk.engine.sampling import sample
from babeldesk.types import SamplingParams


def test_greedy_is_argmax() -> None:
    logits = np.array([0.1, 3.0, 2.0, -1.0], dtype=np.float32)
    assert sample(logits, SamplingParams(temperature=0.0), np.random.default_rng(0)) == 1


def test_seed_makes_sampling_repeatable() -> None:
    logits = np.random.default_rng(1).normal(size=50_000).astype(np.float32)
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    a = [sample(logits, p, np.random.default_rng(7)) for _ in range(3)]
    b = [sample(logits, p, np.random.default_rng(7)) for _ in range(3)]
    assert a == b


def test_top_p_excludes_the_tail() -> None:
    # token 0 carries ~88% of the mass: top_p 0.5 must always pick it
    logits = np.array([5.0, 3.0, 1.0, 0.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.5), rng) for _ in range(200)}
    assert picks == {0}


def test_temperature_spreads_choices() -> None:
    logits = np.zeros(8, dtype=np.float32)
    rng = np.random.default_rng(0)
    picks = {sample(logits, SamplingParams(temperature=1.0), rng) for _ in range(400)}
    assert len(picks) == 8


def test_top_p_falls_back_to_full_sort_when_candidates_miss_mass() -> None:
    logits = np.zeros(2000, dtype=np.float32)  # uniform: 512 candidates hold ~26% of mass
    rng = np.random.default_rng(0)
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.95), rng) for _ in range(3000)}
    assert len(picks) > 512  # more distinct tokens than the first candidate set holds
