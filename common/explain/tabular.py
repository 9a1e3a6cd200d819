"""SHAP values of a tabular model's class probabilities (shap's PermutationExplainer).

For record x and class c, phi_j is feature j's Shapley value of f_c(x) = softmax(model(x))_c
against a background set B (interventional: absent features take B's values), estimated from
antithetic permutations. Additivity holds exactly: sum_j phi_j = f_c(x) - E_B[f_c].
Global importance of feature j: mean over records of |phi_j| for the predicted class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Progress = Callable[[int, int], None]

BACKGROUND_RECORDS = 100
PERMUTATIONS = 10
CHUNK = 16


@dataclass(frozen=True)
class ShapResult:
    """values: (n, d, C) Shapley values; expected: (C,) E_B[f_c]; probabilities: (n, C) f(x)."""

    values: np.ndarray
    expected: np.ndarray
    probabilities: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def global_importance(self) -> np.ndarray:
        """(d,) mean |phi_j| for each record's predicted class."""
        rows = np.arange(len(self.values))
        return np.abs(self.values[rows, :, self.predicted]).mean(axis=0)


def probabilities(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """softmax(model(x)) for a float matrix (n, d), as float64."""
    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(features), dtype=torch.float32))
    return torch.softmax(logits.double(), dim=-1).numpy()


def shap_values(
    model: nn.Module,
    features: np.ndarray,
    background: np.ndarray,
    *,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
    progress: Progress | None = None,
) -> ShapResult:
    """SHAP values of ``model``'s class probabilities for every row of ``features``.

    background: reference rows for absent features (at most BACKGROUND_RECORDS are used).
    permutations: antithetic feature orderings per record (more: less variance, same additivity).
    progress: called with (records done, records) after each chunk.
    """
    import shap  # numba-compiled on first use: imported only when explaining

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"need a non-empty (n, d) feature matrix, got shape {features.shape}")
    rng = np.random.default_rng(seed)
    if len(background) > BACKGROUND_RECORDS:
        background = background[rng.choice(len(background), BACKGROUND_RECORDS, replace=False)]
    masker = shap.maskers.Independent(np.asarray(background, dtype=np.float64), max_samples=len(background))
    explainer = shap.PermutationExplainer(lambda x: probabilities(model, x), masker, seed=seed)
    max_evals = 2 * permutations * (features.shape[1] + 1)
    values, expected = [], None
    for start in range(0, len(features), CHUNK):
        part = explainer(features[start : start + CHUNK], max_evals=max_evals, silent=True)
        values.append(np.asarray(part.values))
        expected = np.asarray(part.base_values)[0]
        if progress is not None:
            progress(min(start + CHUNK, len(features)), len(features))
    assert expected is not None
    return ShapResult(np.concatenate(values), expected, probabilities(model, features))
