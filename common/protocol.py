"""What travels between server and sites each round: record names, metric keys, status codes.

A site's reply holds exactly one ArrayRecord (the trainable parameters, absent when the site did
not train) and one MetricRecord of scalars below. Nothing else leaves a site: no records,
labels, per-example values or gradients.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"

# Site status codes (MetricRecords hold numbers only).
TRAINED = 0
BUDGET_EXHAUSTED = 1
STATUS_NAMES = {TRAINED: "trained", BUDGET_EXHAUSTED: "budget exhausted"}

# Metric keys a training reply carries (the same keys in every train reply).
TRAIN_METRIC_KEYS = (
    "num-examples",  # n: training records (FedAvg weight); 0 when the site did not train
    "status",  # TRAINED / BUDGET_EXHAUSTED
    "partition-id",  # simulation partition, -1 in deployment
    "train-loss",
    "dp",  # 1 = DP-SGD, 0 = non-private baseline
    "epsilon-spent",  # lifetime epsilon of this dataset after this round (all runs, all rounds)
    "epsilon-budget",  # the site's lifetime budget for this dataset
    "delta",
    "noise-multiplier",  # sigma
    "sample-rate",  # q
    "max-grad-norm",  # C
    "steps",  # DP-SGD steps this round
    "truncated-texts",
    "train-seconds",
)


def to_array_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays -> ArrayRecord (keys kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays."""
    return {k: v.numpy() for k, v in record.items()}
