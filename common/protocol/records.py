"""What travels between server and sites each round: record names, metric keys, status codes.

A site's reply holds one ArrayRecord (the trainable parameters, absent when the site did not
train), one MetricRecord of the scalars below and one ConfigRecord ``decision`` (its status, the
reason for a refusal, the values its policy clamped). Nothing else leaves a site: no records,
labels, per-example values or gradients.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
DECISION = "decision"  # ConfigRecord of the site's decision: status, reason, clamps (text)

# Train-config key under secure aggregation with client-dp = client-fixed: the std of the
# Gaussian noise each site adds to its clipped update (distributed DP; client/client_dp.py).
DISTRIBUTED_NOISE_STDDEV = "distributed-noise-stddev"

# Site status codes (MetricRecords hold numbers only). Anything but TRAINED is a refusal:
# the site trained nothing, recorded nothing and sent no arrays.
TRAINED = 0
BUDGET_EXHAUSTED = 1
ROUND_LIMIT = 2
INVALID_REQUEST = 3
NON_PRIVATE_REFUSED = 4
SITE_UNAVAILABLE = 5  # the shim could not reach the site service
REPLAYED = 6  # a (run, round) the site already answered: no second release
RELEASE_REFUSED = 7  # the site's policy does not allow this release (evaluation, audit, groups)
STATUS_NAMES = {
    TRAINED: "trained",
    BUDGET_EXHAUSTED: "budget exhausted",
    ROUND_LIMIT: "round limit",
    INVALID_REQUEST: "invalid request",
    NON_PRIVATE_REFUSED: "non-private refused",
    SITE_UNAVAILABLE: "site service unavailable",
    REPLAYED: "replay refused",
    RELEASE_REFUSED: "refused by site policy",
}

# Metric keys a training reply carries (the same keys in every train reply). Evaluations of a
# token classifier (NER) add TP/FP/FN counts per entity type (common.entities.count_metrics).
TRAIN_METRIC_KEYS = (
    "num-examples",  # n: training records (FedAvg weight; 1 if the policy keeps n); 0 = no training
    "status",  # TRAINED or a refusal code (STATUS_NAMES)
    "partition-id",  # simulation partition, -1 in deployment
    "dp",  # 1 = DP-SGD, 0 = non-private baseline
    "epsilon-spent",  # lifetime epsilon of this dataset after this round (all runs, all rounds)
    "epsilon-budget",  # the site's lifetime budget for this dataset
    "epsilon-left",  # budget - spent
    "rounds-trained",  # rounds this site has trained in this run, this one included
    "delta",
    "noise-multiplier",  # sigma
    "sample-rate",  # q (0 if the policy keeps the record count)
    "max-grad-norm",  # C
    "steps",  # DP-SGD steps this round
    "train-seconds",  # 0 unless the site's policy releases timings
    "eval-examples",  # > 0: the received global model was evaluated on this many records
    "eval-loss",
    "eval-accuracy",
)


def to_array_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays -> ArrayRecord (keys kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays."""
    return {k: v.numpy() for k, v in record.items()}
