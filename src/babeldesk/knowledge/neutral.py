"""Language-neutral sentence vectors: e5's embedding minus what says "which language".

multilingual-e5-small puts a sentence and its translation close together, but each
language also shifts every sentence by a vector of its own. A classifier trained on a
knowledge base written in one language learns that shift as a feature ("English ->
an intent"), and the same question in Spanish lands in the out-of-scope class.
Libovický et al. (2020, "On the language neutrality of pre-trained multilingual
representations") measured that subtracting each language's mean vector recovers most
of the cross-lingual retrieval accuracy. This module does that, and also projects out
the directions along which translations of the same sentence still differ.

Fitted on the product's own parallel corpus (``data/out_of_scope_corpus.yaml``: the same
concepts written in 36 languages), never on a shop's knowledge base:

- ``means[l]``: language l's mean vector over the corpus (the concepts are the same in
  every language, so the difference between two means is language, not content);
- ``basis``: [k, dim] orthonormal directions of the largest spread of translations
  around their concept's mean, after the language means are removed.

``transform(vectors, languages)``: subtract the language's mean (the overall mean for a
language the corpus lacks), project out ``basis``, L2-normalise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Neutralizer:
    means: Mapping[str, np.ndarray]  # language -> float32 [dim]
    overall: np.ndarray  # float32 [dim]: the mean of the language means
    basis: np.ndarray  # float32 [k, dim], orthonormal rows (k may be 0)

    @classmethod
    def fit(cls, vectors: np.ndarray, languages: Sequence[str], concepts: Sequence[int],
            components: int = 8) -> Neutralizer:
        """vectors: float [n, dim], one row per (concept, language) text of a parallel
        corpus; ``components``: residual directions to remove (0: means only)."""
        vectors = np.asarray(vectors, dtype=np.float64)
        langs = np.asarray(languages)
        concept_ids = np.asarray(concepts)
        means = {str(lang): vectors[langs == lang].mean(axis=0) for lang in np.unique(langs)}
        overall = np.mean(np.stack(list(means.values())), axis=0)
        centred = vectors - np.stack([means[str(lang)] for lang in langs])
        residual = np.empty_like(centred)
        for concept in np.unique(concept_ids):
            rows = concept_ids == concept
            residual[rows] = centred[rows] - centred[rows].mean(axis=0)
        basis = np.zeros((0, vectors.shape[1]))
        if components > 0:
            # right singular vectors of the translation residuals: [k, dim]
            _, _, vt = np.linalg.svd(residual, full_matrices=False)
            basis = vt[:components]
        return cls({k: v.astype(np.float32) for k, v in means.items()},
                   overall.astype(np.float32), basis.astype(np.float32))

    @property
    def languages(self) -> frozenset[str]:
        return frozenset(self.means)

    def transform(self, vectors: np.ndarray, languages: Sequence[str | None]) -> np.ndarray:
        """float [n, dim] + the language of each row -> float32 [n, dim], unit rows."""
        out = np.asarray(vectors, dtype=np.float32).copy()
        for i, lang in enumerate(languages):
            out[i] -= self.means.get(lang or "", self.overall)
        if len(self.basis):
            out -= (out @ self.basis.T) @ self.basis
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def to_arrays(self) -> dict[str, np.ndarray]:
        langs = sorted(self.means)
        return {"neutral_langs": np.array(langs),
                "neutral_means": np.stack([self.means[lang] for lang in langs]),
                "neutral_overall": self.overall, "neutral_basis": self.basis}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Neutralizer:
        langs = [str(x) for x in arrays["neutral_langs"]]
        means = arrays["neutral_means"]
        return cls({lang: means[i] for i, lang in enumerate(langs)},
                   arrays["neutral_overall"], arrays["neutral_basis"])
