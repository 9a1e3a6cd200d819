"""common/explain/tabular.py: SHAP additivity; a model that reads one feature ranks it first."""

from __future__ import annotations

import numpy as np
import torch

from common.explain.tabular import probabilities, shap_values
from common.models.tabular import TabularClassifier


def _data(n: int = 60, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_additivity_values_sum_to_output_minus_expected_value():
    torch.manual_seed(0)
    model = TabularClassifier("mlp", 6, 3, hidden=16).eval()
    x = _data()
    done = []
    result = shap_values(model, x[:20], x[20:], progress=lambda d, n: done.append((d, n)))
    assert result.values.shape == (20, 6, 3)
    # the expected value is the mean prediction over the background, computed independently
    assert np.allclose(result.expected, probabilities(model, x[20:]).mean(axis=0), atol=1e-9)
    total = result.values.sum(axis=1) + result.expected
    assert np.abs(total - probabilities(model, x[:20])).max() < 1e-6
    assert done == [(16, 20), (20, 20)]
    # probabilities sum to one, so each feature's values over the classes sum to zero
    assert np.abs(result.values.sum(axis=2)).max() < 1e-6


def test_a_model_that_reads_one_feature_ranks_it_first_and_the_rest_zero():
    model = TabularClassifier("logreg", 6, 2).eval()
    with torch.no_grad():
        model.net[0].weight.zero_()
        model.net[0].bias.zero_()
        model.net[0].weight[1, 4] = 2.0
    x = _data()
    result = shap_values(model, x[:30], x[30:])
    ranking = np.argsort(-result.global_importance())
    assert ranking[0] == 4
    assert np.abs(np.delete(result.values, 4, axis=1)).max() < 1e-12
    # one feature: its value is the whole difference f(x) - E[f]
    rows = np.arange(30)
    p = probabilities(model, x[:30])[:, 1]
    assert np.allclose(result.values[rows, 4, 1], p - result.expected[1], atol=1e-9)
