"""common/group_counts.py: per-group confusion counts and their metric keys."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.types import LabeledData
from common.group_counts import (
    confusion_by_group,
    from_metrics,
    sensitive_values,
    sum_counts,
    to_metrics,
)


def test_counts_per_group_by_hand():
    labels = np.array([1, 1, 0, 0, 1, 0])
    predictions = np.array([1, 0, 1, 0, 1, 1])
    groups = np.array(["F", "F", "F", "M", "M", "M"])
    assert confusion_by_group(labels, predictions, groups) == {
        "F": {"tp": 1, "fp": 1, "tn": 0, "fn": 1},
        "M": {"tp": 1, "fp": 1, "tn": 1, "fn": 0},
    }


def test_odd_group_names_survive_the_metric_keys():
    counts = {"VA Long Beach": {"tp": 1, "fp": 2, "tn": 3, "fn": 4}, "a/b%c": dict.fromkeys("x")}
    counts["a/b%c"] = {"tp": 0, "fp": 0, "tn": 5, "fn": 0}
    metrics = to_metrics(counts)
    assert all(k.count("/") == 2 for k in metrics)  # group name is one key segment
    assert from_metrics(metrics | {"eval-loss": 0.3}) == counts


def test_sum_over_sites_treats_a_missing_group_as_zero():
    a = {"F": {"tp": 1, "fp": 0, "tn": 2, "fn": 0}}
    b = {"F": {"tp": 0, "fp": 1, "tn": 0, "fn": 3}, "M": {"tp": 4, "fp": 0, "tn": 0, "fn": 0}}
    assert sum_counts([a, b]) == {
        "F": {"tp": 1, "fp": 1, "tn": 2, "fn": 3},
        "M": {"tp": 4, "fp": 0, "tn": 0, "fn": 0},
    }


@pytest.mark.parametrize(
    ("metrics", "match"),
    [
        ({"group/F/tp": 1, "group/F/fp": 1, "group/F/tn": 1}, "lacks"),
        ({"group/F/xx": 1}, "malformed"),
        ({"group/F/tp": 1.5, "group/F/fp": 1, "group/F/tn": 1, "group/F/fn": 1}, "integer"),
        ({"group/F/tp": -1, "group/F/fp": 1, "group/F/tn": 1, "group/F/fn": 1}, "integer"),
    ],
)
def test_malformed_counts_are_refused(metrics, match):
    with pytest.raises(ValueError, match=match):
        from_metrics(metrics)


def test_non_binary_inputs_and_unknown_columns_are_refused():
    with pytest.raises(ValueError, match="binary labels"):
        confusion_by_group(np.array([2]), np.array([1]), np.array(["F"]))
    records = LabeledData(
        kind="tabular",
        labels=np.array([0, 1]),
        class_names=["no", "yes"],
        features=np.zeros((2, 1), np.float32),
        columns={"sex": np.array(["F", "M"])},
    )
    assert list(sensitive_values(records, "sex")) == ["F", "M"]
    with pytest.raises(ValueError, match="'SEX' is not a column.*'sex'"):
        sensitive_values(records, "SEX")
