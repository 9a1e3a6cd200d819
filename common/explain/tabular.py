"""SHAP values of a tabular model's class probabilities (shap's KernelExplainer).

For record x and class c, phi_j is feature j's Shapley value of f_c(x) = softmax(model(x))_c
against a background set B (interventional: absent features take B's values), estimated by
Kernel SHAP's weighted linear regression over feature coalitions (Lundberg & Lee 2017), which
enforces additivity: sum_j phi_j = f_c(x) - E_B[f_c]. (shap's PermutationExplainer is as exact
but JIT-compiles ~30 s per process; KernelExplainer needs no compilation.)
Global importance of feature j: mean over records of |phi_j| for the predicted class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Progress = Callable[[int, int], None]

BACKGROUND_RECORDS = 50
SAMPLES = 512
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
    samples: int = SAMPLES,
    seed: int = 0,
    progress: Progress | None = None,
) -> ShapResult:
    """SHAP values of ``model``'s class probabilities for every row of ``features``.

    background: reference rows for absent features (at most BACKGROUND_RECORDS are used).
    samples: coalitions evaluated per record (more: less variance; additivity holds for any).
    progress: called with (records done, records) after each chunk.
    """
    import shap  # imports numba (~10 s): only when explaining

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"need a non-empty (n, d) feature matrix, got shape {features.shape}")
    if len(background) > BACKGROUND_RECORDS:
        keep = np.random.default_rng(seed).choice(
            len(background), BACKGROUND_RECORDS, replace=False
        )
        background = background[np.sort(keep)]
    explainer = shap.KernelExplainer(
        lambda x: probabilities(model, x), np.asarray(background, dtype=np.float64), silent=True
    )
    values = []
    state = np.random.get_state()  # shap draws coalitions from the global np.random
    np.random.seed(seed)
    try:
        for start in range(0, len(features), CHUNK):
            part = explainer.shap_values(
                features[start : start + CHUNK], nsamples=samples, l1_reg=False, silent=True
            )
            values.append(np.asarray(part))
            if progress is not None:
                progress(min(start + CHUNK, len(features)), len(features))
    finally:
        np.random.set_state(state)
    expected = np.asarray(explainer.expected_value, dtype=np.float64)
    return ShapResult(np.concatenate(values), expected, probabilities(model, features))
