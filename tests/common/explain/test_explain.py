"""common/explain/explain.py: the samples and the explanation document."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.explain.explain import explain_tabular, sample
from common.explain.saved_model import load_saved_model
from common.models.save import save_model
from common.models.tabular import TabularClassifier


def test_sample_draws_correct_and_wrong_predictions_up_to_the_limit():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    predicted = np.array([0, 1, 0, 0, 0, 0, 1, 1])
    groups = sample(labels, predicted, per_group=2, seed=0)
    assert set(groups["wrong"]) <= {2, 4, 6} and len(groups["wrong"]) == 2
    assert set(groups["correct"]) <= {0, 1, 3, 5, 7} and len(groups["correct"]) == 2
    assert list(groups["wrong"]) == sorted(groups["wrong"])
    everything = sample(labels, predicted, per_group=10, seed=0)
    assert list(everything["wrong"]) == [2, 4, 6]
    unlabelled = sample(None, predicted, per_group=3, seed=1)
    assert list(unlabelled) == ["unlabelled"] and len(unlabelled["unlabelled"]) == 6


def test_tabular_document_marks_correct_and_wrong_and_checks_its_input(tmp_path):
    torch.manual_seed(0)
    save_model(TabularClassifier("mlp", 3, 2, hidden=4), tmp_path / "model")
    saved = load_saved_model(tmp_path / "model")
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    labels = np.array([0, 1] * 6)
    doc = explain_tabular(saved, x, ["a", "b", "c"], labels, max_records=5)
    assert doc["records-explained"] == 5 and doc["records-given"] == 12
    for r in doc["records"]:
        p = torch.softmax(saved.model(torch.as_tensor(x[r["index"]])[None]), -1)[0]
        assert r["probability"] == pytest.approx(float(p.max()), abs=1e-6)
        assert r["correct"] == (int(p.argmax()) == labels[r["index"]])
        assert r["values"] == pytest.approx(x[r["index"]].tolist())
    with pytest.raises(ValueError, match="takes 3 features per record"):
        explain_tabular(saved, x[:, :2], ["a", "b"])
    with pytest.raises(ValueError, match="class indices 0..1"):
        explain_tabular(saved, x, ["a", "b", "c"], labels + 1)
    with pytest.raises(ValueError, match="no records"):
        explain_tabular(saved, x[:0], ["a", "b", "c"])
