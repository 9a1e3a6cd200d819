"""Per-group metrics of the final model from the sites' summed confusion counts (no records).

fairlearn's MetricFrame computes them: each group's counts become four weighted cells
(y_true, y_pred) = TP (1,1), FP (0,1), TN (0,0), FN (1,0) with sample_weight = the count, which
gives exactly the metrics of the pooled predictions. Per group g:
accuracy = (TP+TN)/n_g, true-positive rate = TP/(TP+FN), selection rate = (TP+FP)/n_g;
gap = max over groups - min over groups (MetricFrame.difference, "between_groups").
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from fairlearn.metrics import MetricFrame, selection_rate
from sklearn.metrics import accuracy_score, recall_score

from common.group_counts import CELLS, Counts

METRICS = {
    "accuracy": accuracy_score,
    "true-positive-rate": partial(recall_score, zero_division=np.nan),
    "selection-rate": selection_rate,
}
_CELL_LABELS = {"tp": (1, 1), "fp": (0, 1), "tn": (0, 0), "fn": (1, 0)}  # (y_true, y_pred)


def metric_frame(counts: dict[str, Counts]) -> MetricFrame:
    """fairlearn's MetricFrame over the weighted confusion cells of every group."""
    if not counts:
        raise ValueError("no group counts to compute fairness metrics from")
    rows = [(g, *_CELL_LABELS[c], cells[c]) for g, cells in counts.items() for c in CELLS]
    groups, y_true, y_pred, weight = (np.array(col) for col in zip(*rows, strict=True))
    return MetricFrame(
        metrics=METRICS,
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
        sample_params={name: {"sample_weight": weight} for name in METRICS},
    )


def group_metrics(counts: dict[str, Counts], column: str, positive_class: str) -> dict[str, Any]:
    """The summary's fairness section: per-group counts and metrics, overall, gaps."""
    frame = metric_frame(counts)
    by_group = frame.by_group
    return {
        "column": column,
        "positive-class": positive_class,
        "groups": {
            g: {"records": sum(cells.values()), **cells}
            | {m: float(by_group.loc[g, m]) for m in METRICS}
            for g, cells in counts.items()
        },
        "overall": {m: float(frame.overall[m]) for m in METRICS},
        "gaps": {m: float(v) for m, v in frame.difference(method="between_groups").items()},
    }
