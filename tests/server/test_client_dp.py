"""server/client_dp.py: Flower's DP-FedAvg wrappers inside the privacy-aware strategy, the
client-level account around it.

Replies are real Flower Messages; the client-level epsilon is checked against dp-accounting
(tests/reference_accountants.py), not against fedpriv's accounting code."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from common.config import ConfigError, RunSettings
from server.build import build_strategy
from server.client_dp import ClientLevelDp, client_level_dp_summary
from tests.reference_accountants import reference_pld
from tests.server.test_strategy import FakeGrid, evaluated, trained

SHAPE = (100, 100)  # 10,000 weights: enough samples to measure the noise std


@pytest.fixture(autouse=True)
def in_a_run(monkeypatch):
    """Messages a ServerApp builds take their run id from the process's task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


def settings(**over) -> RunSettings:
    values = {
        "client_dp": "server-fixed",
        "client_noise_multiplier": 1.0,
        "client_clipping_norm": 2.0,
        "min_train_nodes": 2,
    }
    return replace(RunSettings(), **(values | over))


def build(s: RunSettings, fraction_train: float = 1.0):
    """(the privacy-aware strategy and its records, the ClientLevelDp rounds around it)"""
    inner, dp = build_strategy(replace(s, fraction_train=fraction_train))
    assert isinstance(dp, ClientLevelDp) and dp.strategy is inner
    return inner, dp


def model(value: float = 0.0) -> dict[str, np.ndarray]:
    return {"w": np.full(SHAPE, value, np.float32), "b": np.full(3, value, np.float32)}


def reply_to(sent: Message, weights: dict[str, np.ndarray], n: int = 10, **over) -> Message:
    node = sent.metadata.dst_node_id
    return trained(node, n, node, weights, **over)


def run_round(dp, server_round: int, grid: FakeGrid, replies_for, global_value: float = 0.0):
    arrays = ArrayRecord({k: Array(v) for k, v in model(global_value).items()})
    sent = list(dp.configure_train(server_round, arrays, ConfigRecord(), grid))
    return sent, dp.aggregate_train(server_round, replies_for(sent))


def test_noise_of_std_sigma_c_over_m_is_added_to_the_unweighted_mean():
    s = settings(client_noise_multiplier=1.0, client_clipping_norm=2.0)
    inner, dp = build(s)
    grid = FakeGrid([11, 12, 13, 14])
    update = model(0.001)  # ||update|| = 0.1 < C: nothing clipped
    sent, (arrays, _) = run_round(
        dp, 1, grid, lambda sent: [reply_to(m, update, n=10 * (i + 1)) for i, m in enumerate(sent)]
    )
    noise = arrays["w"].numpy().astype(np.float64) - 0.001  # plain (Fed)Avg would give 0.001
    assert noise.std() == pytest.approx(1.0 * 2.0 / 4, rel=0.03)  # sigma * C / m
    assert abs(noise.mean()) < 0.02
    rec = inner.rounds[1]
    assert rec.client_dp["noise-std"] == pytest.approx(0.5)
    assert rec.client_dp["noise-multiplier"] == pytest.approx(1.0)
    assert rec.client_dp["sample-rate"] == 1.0 and rec.client_dp["aggregated-sites"] == 4


def test_updates_are_clipped_to_c_and_weighted_equally():
    s = settings(client_noise_multiplier=1e-9, client_clipping_norm=1.0)
    inner, dp = build(s)
    small, poisoned = model(0.001), model(1.0)  # norms 0.1 and ~100
    _, (arrays, _) = run_round(
        dp,
        1,
        FakeGrid([11, 12]),
        lambda sent: [reply_to(sent[0], small, n=1), reply_to(sent[1], poisoned, n=1000)],
    )
    norm = math.sqrt(SHAPE[0] * SHAPE[1] + 3)
    expected = (0.001 + 1.0 / norm) / 2  # poisoned update scaled to norm C = 1, then equal mean
    np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=1e-4)
    # evaluation stays weighted by examples: (10 * 0.5 + 30 * 0.9) / 40
    metrics = dp.aggregate_evaluate(
        1, [evaluated(11, 10, 0, 0.1, 0.5), evaluated(12, 30, 1, 0.1, 0.9)]
    )
    assert metrics["eval-accuracy"] == pytest.approx(0.8)


def test_malformed_replies_are_rejected_before_clipping_and_never_aggregated():
    inner, dp = build(settings(client_noise_multiplier=1e-9))
    bad_shape = {"w": np.zeros((3, 3), np.float32), "b": np.zeros(3, np.float32)}
    nan = model(0.001)
    nan["b"][0] = np.nan

    def replies(sent):
        return [
            reply_to(sent[0], model(0.001)),
            reply_to(sent[1], bad_shape),  # Flower's clipping alone would crash on it
            reply_to(sent[2], nan),
            reply_to(sent[3], model(0.003)),
        ]

    _, (arrays, _) = run_round(dp, 1, FakeGrid([11, 12, 13, 14]), replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 0.002, rtol=1e-4)
    rec = inner.rounds[1]
    assert len(rec.rejected) == 2 and rec.trained_sites == 2
    assert rec.client_dp["aggregated-sites"] == 2 and rec.client_dp["sampled-sites"] == 4
    # noise std sigma*C/m with m = 4 sampled, on a mean over n = 2: z = sigma * n / m
    assert rec.client_dp["noise-multiplier"] == pytest.approx(1e-9 * 2 / 4)


def test_client_side_clipping_rejects_an_update_above_c():
    inner, dp = build(settings(client_dp="client-fixed", client_clipping_norm=1.0))
    _, (arrays, _) = run_round(
        dp,
        1,
        FakeGrid([11, 12, 13]),
        lambda sent: (
            [reply_to(sent[0], model(0.001)), reply_to(sent[1], model(0.002))]
            + [reply_to(sent[2], model(1.0))]
        ),  # not clipped by its site: norm 100 > C
    )
    rec = inner.rounds[1]
    assert rec.trained_sites == 2
    assert any("exceeds the bound 1.001" in r for r in rec.rejected), rec.rejected


def test_client_level_epsilon_equals_dp_accounting_with_site_sampling_and_dropouts():
    sigma, delta = 1.3, 1e-5
    s = settings(client_noise_multiplier=sigma, client_dp_delta=delta, min_train_nodes=2)
    inner, dp = build(s, fraction_train=0.4)
    grid = FakeGrid(list(range(100, 110)))  # N = 10 sites, m = 4 sampled each round: q = 0.4
    for r in (1, 2):
        sent, _ = run_round(dp, r, grid, lambda sent: [reply_to(m, model(0.001)) for m in sent])
        assert len(sent) == 4
    # round 3: one sampled site drops out: the mean is over n = 3, the noise still sigma*C/4
    run_round(dp, 3, grid, lambda sent: [reply_to(m, model(0.001)) for m in sent[:3]])
    rec = inner.rounds[3]
    assert rec.dropped and rec.client_dp["aggregated-sites"] == 3
    history = [(sigma, 0.4, 2), (sigma * 3 / 4, 0.4, 1)]  # (z, q, rounds)
    expected = reference_pld(history, delta)
    assert rec.client_dp["epsilon"] == pytest.approx(expected, rel=0.01)
    assert inner.rounds[2].client_dp["epsilon"] == pytest.approx(
        reference_pld([(sigma, 0.4, 2)], delta), rel=0.01
    )
    summary = client_level_dp_summary(inner.rounds, s)
    assert summary["epsilon"] == pytest.approx(expected, rel=0.01)
    assert summary["delta"] == delta and summary["mode"] == "server-fixed"


def test_adaptive_clipping_accounts_the_clipped_count_release_too():
    sigma, sigma_b = 1.0, 1.0
    s = settings(client_dp="server-adaptive", client_clipped_count_stddev=sigma_b)
    inner, dp = build(s)
    grid = FakeGrid([11, 12, 13, 14])
    run_round(dp, 1, grid, lambda sent: [reply_to(m, model(1.0)) for m in sent])
    rec = inner.rounds[1].client_dp
    # the noise actually added, relative to the C the updates were clipped with
    z_update = rec["noise-std"] * 4 / rec["clipping-norm"]
    assert rec["update-noise-multiplier"] == pytest.approx(z_update)
    assert rec["noise-multiplier"] == pytest.approx((z_update**-2 + sigma_b**-2) ** -0.5)
    assert rec["noise-multiplier"] < sigma  # Flower's z budget assumes the count costs less
    expected = reference_pld([(rec["noise-multiplier"], 1.0, 1)], s.client_dp_delta)
    assert rec["epsilon"] == pytest.approx(expected, rel=0.01)


def test_client_dp_settings_are_checked():
    with pytest.raises(ConfigError, match="client-dp must be one of"):
        RunSettings.from_run_config({"client-dp": "on"})
    with pytest.raises(ConfigError, match="needs aggregation='fedavg'"):
        RunSettings.from_run_config({"client-dp": "server-fixed", "aggregation": "median"})
    with pytest.raises(ConfigError, match="client-clipped-count-stddev"):
        RunSettings.from_run_config(
            {"client-dp": "client-adaptive", "client-clipped-count-stddev": 0.4}
        )
    # client-dp off: the privacy-aware strategy around plain FedAvg, no wrapper
    strategy, outer = build_strategy(RunSettings())
    assert outer is strategy and strategy.inner.__class__.__name__ == "FedAvg"


def test_client_adaptive_rejects_a_reply_without_its_clipping_bit_instead_of_failing():
    inner, dp = build(settings(client_dp="client-adaptive", client_clipping_norm=1.0))

    def replies(sent):
        with_bit = [reply_to(m, model(0.001), **{"norm_bit": 0}) for m in sent[:2]]
        return [*with_bit, reply_to(sent[2], model(0.002))]  # Flower alone: AggregationError

    _, (arrays, _) = run_round(dp, 1, FakeGrid([11, 12, 13]), replies)
    rec = inner.rounds[1]
    assert arrays is not None and rec.trained_sites == 2
    assert [r.split(": ", 1)[1] for r in rec.rejected] == [
        "no 0/1 norm_bit metric from the site's adaptive clipping"
    ]
