"""server/metrics.py: the figures Flower logs each round, and the federated evaluation.

Flower's default (aggregate_metricrecords) is the reference for the weighted means: fedpriv's
figures must be the very numbers it gave, with the meaningless ones left out."""

import math

import pytest
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from server.metrics import (
    accuracy_noise,
    evaluate_metrics,
    federated_eval,
    received_eval,
    train_metrics,
    weighted_mean,
)
from server.strategy import UNIFORM_WEIGHT
from tests.server.test_strategy import train_metrics as train_reply_metrics


def records(*metrics: dict) -> list[RecordDict]:
    return [RecordDict({"metrics": MetricRecord(m)}) for m in metrics]


def test_a_training_round_logs_the_sites_and_the_largest_epsilon_not_means_of_ids():
    replies = records(
        train_reply_metrics(10, 0, **{"epsilon-spent": 6.03}),
        train_reply_metrics(30, 1, **{"epsilon-spent": 5.74}),
        train_reply_metrics(20, 2, **{"epsilon-spent": 5.92}),
    )
    flower = aggregate_metricrecords(replies, "num-examples")
    assert flower["partition-id"] == pytest.approx(70 / 60)  # what Flower logged before
    ours = train_metrics(replies, "num-examples")
    assert dict(ours) == {"sites": 3, "train-loss": 0.0, "epsilon-spent-max": 6.03}


def test_the_weighted_train_loss_is_exactly_flowers_figure():
    losses = (0.7, 0.1, 0.35)
    replies = records(
        *(
            train_reply_metrics(n, i, **{"train-loss": loss})
            for i, (n, loss) in enumerate(zip((10, 33, 7), losses, strict=True))
        )
    )
    flower = aggregate_metricrecords(replies, "num-examples")["train-loss"]
    assert train_metrics(replies, "num-examples")["train-loss"] == flower  # bit for bit
    assert flower == pytest.approx((10 * 0.7 + 33 * 0.1 + 7 * 0.35) / 50)
    for m in replies:  # DP-FedAvg: one weight each
        m["metrics"][UNIFORM_WEIGHT] = 1.0
    uniform = train_metrics(replies, UNIFORM_WEIGHT)["train-loss"]
    assert uniform == pytest.approx(sum(losses) / 3)


def test_a_non_private_site_has_no_epsilon_to_report():
    replies = records(train_reply_metrics(10, 0, dp=0, **{"epsilon-spent": 0.0}))
    assert dict(train_metrics(replies, "num-examples")) == {"sites": 1, "train-loss": 0.0}
    mixed = records(
        train_reply_metrics(10, 0, dp=0, **{"epsilon-spent": 0.0}),
        train_reply_metrics(10, 1, **{"epsilon-spent": 2.5}),
    )
    assert train_metrics(mixed, "num-examples")["epsilon-spent-max"] == 2.5


def evaluation(n: float, loss: float, acc: float, spent: float, dp: int = 1) -> dict:
    return {
        "num-examples": n,
        "partition-id": 1,
        "status": 0,
        "eval-loss": loss,
        "eval-accuracy": acc,
        "eval-dp": dp,
        "eval-epsilon-spent": spent,
        "eval-noise-std": 5.2,
    }


def test_an_evaluation_round_logs_example_weighted_figures_whatever_the_weight_key():
    replies = records(evaluation(20.3, 0.6, 0.7, 0.71), evaluation(60.9, 0.2, 0.9, 1.08))
    flower = aggregate_metricrecords(replies, "num-examples")
    for key in (UNIFORM_WEIGHT, "num-examples"):  # DP-FedAvg's key: evaluation still weighs n
        ours = evaluate_metrics(replies, key)
        assert set(ours) == {"sites", "eval-loss", "eval-accuracy", "eval-epsilon-spent-max"}
        assert (ours["eval-loss"], ours["eval-accuracy"]) == (
            flower["eval-loss"],
            flower["eval-accuracy"],
        )
        assert ours["eval-accuracy"] == pytest.approx((20.3 * 0.7 + 60.9 * 0.9) / 81.2)
        assert (ours["sites"], ours["eval-epsilon-spent-max"]) == (2, 1.08)
    exact = records(evaluation(20, 0.6, 0.7, 0.0, dp=0))
    assert "eval-epsilon-spent-max" not in evaluate_metrics(exact)


def test_the_federated_accuracy_carries_the_noise_of_the_summed_noisy_counts():
    sites = [
        {"eval-examples": 40, "eval-noise-std": 3.0},
        {"eval-examples": 60, "eval-noise-std": 4.0},
    ]
    # sqrt(3^2 + 4^2) / (40 + 60)
    assert accuracy_noise(sites) == {"eval-accuracy-std": pytest.approx(0.05)}
    assert accuracy_noise([{"eval-examples": 40, "eval-noise-std": 0.0}]) == {}
    assert accuracy_noise([{"eval-examples": math.nan, "eval-noise-std": "3"}]) == {}
    means = {"eval-loss": 0.4, "eval-accuracy": 0.8, "sites": 2, "eval-entity-tp/x": 3}
    assert federated_eval(means, sites) == {
        "eval-loss": 0.4,
        "eval-accuracy": 0.8,
        "eval-accuracy-std": pytest.approx(0.05),
    }


def test_evaluations_inside_train_replies_are_weighted_by_their_examples():
    sites = [
        {"eval-examples": 30, "eval-loss": 0.7, "eval-accuracy": 0.5, "status": "trained"},
        {"eval-examples": 10, "eval-loss": 0.3, "eval-accuracy": 0.9},
        {"status": "trained"},  # it did not evaluate
    ]
    assert received_eval(sites) == pytest.approx({"eval-loss": 0.6, "eval-accuracy": 0.6})
    assert received_eval([{"status": "trained"}]) == {}


def test_the_weighted_mean_is_sum_of_weight_shares():
    assert weighted_mean([1.0, 3.0], [1, 3]) == pytest.approx(2.5)
    assert weighted_mean([2.0], [7]) == 2.0
