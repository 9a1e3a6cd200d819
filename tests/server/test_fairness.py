"""server/fairness.py: per-group metrics from summed site counts equal fairlearn's on the pooled
predictions."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame, selection_rate
from sklearn.metrics import accuracy_score, recall_score

from common.group_counts import confusion_by_group, from_metrics, sum_counts, to_metrics
from server.fairness import group_metrics


def test_metrics_from_summed_site_counts_equal_fairlearn_on_pooled_predictions():
    rng = np.random.default_rng(3)
    sites = []
    for n in (40, 75, 12):  # three sites, group mix and error rates differ
        groups = rng.choice(["Female", "Male", "VA Long Beach"], size=n, p=[0.2, 0.7, 0.1])
        labels = rng.integers(0, 2, size=n)
        flip = rng.random(n) < np.where(groups == "Female", 0.4, 0.15)
        sites.append((labels, np.where(flip, 1 - labels, labels), groups))
    # what leaves each site: scalar metrics; the server parses and sums them
    received = [from_metrics(to_metrics(confusion_by_group(*site))) for site in sites]
    ours = group_metrics(sum_counts(received), "sex", "disease")

    y, p, g = (np.concatenate(parts) for parts in zip(*sites, strict=True))
    central = MetricFrame(
        metrics={
            "accuracy": accuracy_score,
            "true-positive-rate": recall_score,
            "selection-rate": selection_rate,
        },
        y_true=y,
        y_pred=p,
        sensitive_features=g,
    )
    for group in ("Female", "Male", "VA Long Beach"):
        assert ours["groups"][group]["records"] == int((g == group).sum())
        for metric in ("accuracy", "true-positive-rate", "selection-rate"):
            assert ours["groups"][group][metric] == pytest.approx(
                central.by_group.loc[group, metric]
            )
    for metric, gap in central.difference().items():
        assert ours["gaps"][metric] == pytest.approx(gap)
        assert ours["overall"][metric] == pytest.approx(central.overall[metric])
    # and by hand, for one group: TPR = TP / (TP + FN)
    female = ours["groups"]["Female"]
    assert female["true-positive-rate"] == pytest.approx(
        female["tp"] / (female["tp"] + female["fn"])
    )


def test_a_group_without_positives_has_no_tpr_and_empty_counts_are_refused():
    counts = {"A": {"tp": 0, "fp": 1, "tn": 3, "fn": 0}, "B": {"tp": 2, "fp": 0, "tn": 1, "fn": 1}}
    out = group_metrics(counts, "sex", "yes")
    assert np.isnan(out["groups"]["A"]["true-positive-rate"])
    assert out["groups"]["A"]["selection-rate"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no group counts"):
        group_metrics({}, "sex", "yes")
