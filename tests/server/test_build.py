"""server/build.py: the strategy a run's settings compose, from Flower's aggregation outwards."""

from dataclasses import replace

import flwr.serverapp.strategy as flower
import numpy as np
import pytest
from flwr.app import ConfigRecord

from common.config import RunSettings
from server.build import build_strategy
from server.client_dp import ClientLevelDp
from server.metrics import evaluate_metrics, train_metrics
from server.secure_aggregation import SecureAggregation
from server.strategy import UNIFORM_WEIGHT, PrivacyAware
from tests.server.test_strategy import FakeGrid, global_model, trained, w


@pytest.fixture
def in_a_run(monkeypatch):
    """Messages a ServerApp builds take their run id from the process's task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


def build(**settings):
    return build_strategy(replace(RunSettings(), **settings))


def test_a_plain_run_is_the_privacy_aware_strategy_around_fedavg_with_fedprivs_figures():
    strategy, outer = build()
    assert outer is strategy and isinstance(strategy, PrivacyAware)
    assert type(strategy.inner) is flower.FedAvg
    assert strategy.inner.weighted_by_key == "num-examples" and not strategy.uniform_weights
    assert strategy.inner.train_metrics_aggr_fn is train_metrics
    assert strategy.inner.evaluate_metrics_aggr_fn is evaluate_metrics
    assert strategy.min_train_nodes == 2 and strategy.inner.min_available_nodes == 2


def test_evaluate_with_train_sends_no_evaluate_messages():
    strategy, _ = build(evaluate_with_train=True)
    assert strategy.inner.fraction_evaluate == 0.0 and strategy.inner.min_evaluate_nodes == 0


@pytest.mark.parametrize(
    ("mode", "flower_class"),
    [
        ("server-fixed", flower.DifferentialPrivacyServerSideFixedClipping),
        ("server-adaptive", flower.DifferentialPrivacyServerSideAdaptiveClipping),
        ("client-fixed", flower.DifferentialPrivacyClientSideFixedClipping),
        ("client-adaptive", flower.DifferentialPrivacyClientSideAdaptiveClipping),
    ],
)
def test_client_level_dp_nests_flowers_wrapper_inside_and_the_account_outside(mode, flower_class):
    strategy, outer = build(client_dp=mode, client_dp_delta=1e-6)
    assert isinstance(outer, ClientLevelDp) and outer.strategy is strategy
    assert type(strategy.inner) is flower_class and outer.dp is strategy.inner
    assert type(strategy.inner.strategy) is flower.FedAvg  # Flower's wrapper around FedAvg
    # DP-FedAvg: every accepted update weighs the same
    assert strategy.uniform_weights and strategy.inner.strategy.weighted_by_key == UNIFORM_WEIGHT
    assert (outer.mode, outer.delta, outer.client_side) == (mode, 1e-6, mode.startswith("client"))


def test_secure_aggregation_drives_the_rounds_and_the_server_adds_no_noise():
    strategy, outer = build(secure_aggregation=True, client_dp="client-fixed")
    assert isinstance(outer, SecureAggregation) and outer.strategy is strategy
    assert type(strategy.inner) is flower.FedAvg  # the sites clip and share the noise
    assert outer.client_dp == (1.0, 1.0, 1e-5)  # (sigma, C, delta)


@pytest.mark.parametrize(
    ("aggregation", "options", "settings"),
    [
        ("median", {}, {}),
        ("trimmed-mean", {"beta": 0.2}, {"trim_fraction": 0.2}),
        ("krum", {"num_malicious_nodes": 1}, {"malicious_sites": 1}),
        (  # multi-krum keeps n - f = 4 - 1 updates
            "multi-krum",
            {"num_malicious_nodes": 1, "num_nodes_to_select": 3},
            {"malicious_sites": 1, "min_train_nodes": 4},
        ),
    ],
)
def test_robust_aggregation_resists_an_update_scaled_100x_where_fedavg_does_not(
    aggregation, options, settings
):
    rng = np.random.default_rng(0)
    honest = [rng.normal(1.0, 0.1, size=(1, 2)).astype(np.float32) for _ in range(4)]
    poisoned = honest[0] * 100

    def replies():
        updates = [*honest, poisoned]
        return [
            trained(11 + i, 10, i, {"layer.weight": u, "layer.bias": u[0]})
            for i, u in enumerate(updates)
        ]

    fedavg, _ = build(min_train_nodes=1)[0].aggregate_train(1, replies())
    robust_strategy, _ = build(aggregation=aggregation, **({"min_train_nodes": 1} | settings))
    for name, value in options.items():  # Flower's own parameters, from fedpriv's settings
        assert getattr(robust_strategy.inner, name) == value
    robust, _ = robust_strategy.aggregate_train(1, replies())
    clean = np.mean(honest, axis=0)
    assert np.abs(fedavg["layer.weight"].numpy() - clean).max() > 10  # the damage
    assert np.abs(robust["layer.weight"].numpy() - clean).max() < 0.3
    assert type(robust_strategy).__name__.startswith("PrivacyAware")
    assert (
        type(robust_strategy.inner).__name__
        == {
            "median": "FedMedian",
            "trimmed-mean": "FedTrimmedAvg",
            "krum": "Krum",
            "multi-krum": "MultiKrum",
        }[aggregation]
    )
    assert robust_strategy.rounds[1].trained_sites == 5  # still recorded per site


def test_an_unknown_aggregation_is_named():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        build(aggregation="mean-of-friends")


@pytest.mark.parametrize(
    ("optimizer", "flower_class", "options", "settings"),
    [
        (
            "fedavgm",
            "FedAvgM",
            {"server_momentum": 0.9, "server_learning_rate": 0.7},
            {"server_momentum": 0.9, "server_learning_rate": 0.7},
        ),
        (
            "fedadam",
            "FedAdam",
            {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
            {"server_learning_rate": 0.05, "server_beta_1": 0.9, "server_beta_2": 0.99},
        ),
        (
            "fedyogi",
            "FedYogi",
            {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.9, "tau": 1e-2},
            {"server_learning_rate": 0.05, "server_beta_1": 0.8, "server_beta_2": 0.9}
            | {"server_tau": 1e-2},
        ),
    ],
)
def test_server_optimizers_step_as_flowers_reference_strategies(
    in_a_run, optimizer, flower_class, options, settings
):
    ours, _ = build(server_optimizer=optimizer, min_train_nodes=3, **settings)
    reference = getattr(flower, flower_class)(min_train_nodes=3, min_available_nodes=1, **options)
    plain, _ = build(min_train_nodes=3)
    rng = np.random.default_rng(0)
    grid = FakeGrid([11, 12, 13])
    arrays = {name: global_model() for name in ("ours", "reference", "plain")}
    for server_round in (1, 2, 3):
        replies = [
            trained(
                11 + i, 10 + 5 * i, i, w(*(rng.normal(1.0, 0.5, s).tolist() for s in (2, (1, 2))))
            )
            for i in range(3)
        ]
        for name, s in (("ours", ours), ("reference", reference), ("plain", plain)):
            list(s.configure_train(server_round, arrays[name], ConfigRecord(), grid))
            arrays[name], _ = s.aggregate_train(server_round, replies)
        for key in ("layer.weight", "layer.bias"):
            np.testing.assert_allclose(
                arrays["ours"][key].numpy(), arrays["reference"][key].numpy(), rtol=0, atol=1e-5
            )
            assert arrays["ours"][key].numpy().dtype == np.float32  # as sent: float64 steps cast
    assert ours.rounds[3].trained_sites == 3  # the privacy records are still kept
    # the optimizer moved the model somewhere else than the weighted mean would
    gap = np.abs(arrays["ours"]["layer.weight"].numpy() - arrays["plain"]["layer.weight"].numpy())
    assert gap.max() > 1e-2


def test_a_server_optimizer_needs_the_weighted_mean():
    with pytest.raises(ValueError, match="needs aggregation='fedavg'"):
        build(aggregation="median", server_optimizer="fedadam")
    with pytest.raises(ValueError, match="server-optimizer must be one of"):
        build(server_optimizer="sgd-with-hope")


def test_every_aggregation_and_optimizer_the_settings_accept_has_a_flower_strategy():
    from common import config
    from server.build import AGGREGATIONS, SERVER_OPTIMIZERS

    assert set(AGGREGATIONS) == set(config.AGGREGATIONS)
    assert set(SERVER_OPTIMIZERS) == set(config.SERVER_OPTIMIZERS)
