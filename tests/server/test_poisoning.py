"""A poisoning site scales its update by 100x: robust aggregation keeps the model, FedAvg not.

Strategy level with real training (not a Flower simulation, to stay within the suite's time):
5 sites hold iid shares of the real heart-disease data and train the real MLP locally
(client.training.train_locally, no DP so that only the poisoning differs); their replies go
through the privacy-aware strategy's aggregate_train as real Flower Messages; the global model
is scored on the held-out test split. Every run uses the same seeds, so the runs differ only
in the poisoning and in the aggregation. Measured (4 rounds): clean FedAvg 0.810, poisoned
FedAvg 0.446, poisoned median 0.826, trimmed mean 0.826, Krum 0.804 (one site's model).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from client.site_data import load_site_data
from client.training import train_locally
from common.config import SIMULATED_SITE, RunSettings
from common.data.registry import load_dataset
from common.evaluation import evaluate
from common.models.weights import load_trainable_state, trainable_state
from common.task import build_model, to_tensors
from server.build import build_strategy
from tests.server.test_strategy import trained

SITES, ROUNDS, SCALE = 5, 4, 100.0
SETTINGS = replace(RunSettings(), partitioner="iid", dp=False, learning_rate=0.1)


@cache
def federation() -> tuple:
    _, test = load_dataset(SETTINGS.dataset, SETTINGS.seed)
    model, _ = build_model(SETTINGS, test, "cpu")
    sites = [
        to_tensors(load_site_data(SETTINGS, SIMULATED_SITE, pid, SITES).train, None, 64)[0]
        for pid in range(SITES)
    ]
    return model, trainable_state(model), sites, to_tensors(test, None, 64)[0]


@cache
def final_accuracy(aggregation: str, poisoned: bool) -> float:
    model, start, sites, test = federation()
    options = {
        "trimmed-mean": {"trim_fraction": 0.2},  # Flower's beta
        "krum": {"malicious_sites": 1},  # Flower's num_malicious_nodes
    }.get(aggregation, {})
    strategy, _ = build_strategy(
        replace(SETTINGS, aggregation=aggregation, min_train_nodes=1, **options)
    )
    state = {k: v.copy() for k, v in start.items()}
    for server_round in range(1, ROUNDS + 1):
        replies = []
        for pid, data in enumerate(sites):
            load_trainable_state(model, state)
            train_locally(
                model,
                data,
                batch_size=SETTINGS.batch_size,
                epochs=1,
                learning_rate=SETTINGS.learning_rate,
                dp=None,
                device="cpu",
                seed=1000 * server_round + pid,
            )
            update = trainable_state(model)
            if poisoned and pid == 0:  # w_global + 100 (w_site - w_global)
                update = {k: state[k] + SCALE * (update[k] - state[k]) for k in update}
            replies.append(trained(10 + pid, len(data), pid, update))
        arrays, _ = strategy.aggregate_train(server_round, replies)
        state = {k: np.asarray(v.numpy()) for k, v in arrays.items()}
    load_trainable_state(model, state)
    return evaluate(model, test, device="cpu").accuracy


@pytest.mark.slow
def test_plain_fedavg_is_wrecked_by_one_site_scaling_its_update_100x():
    clean = final_accuracy("fedavg", poisoned=False)
    assert clean > 0.75, clean
    assert final_accuracy("fedavg", poisoned=True) < clean - 0.15


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["median", "trimmed-mean", "krum"])
def test_robust_aggregation_keeps_accuracy_within_a_few_points_of_the_clean_run(aggregation):
    clean = final_accuracy("fedavg", poisoned=False)
    assert final_accuracy(aggregation, poisoned=True) >= clean - 0.05
