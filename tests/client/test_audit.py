"""client/audit.py: the membership-inference audit's numbers on an overfit and a strong-DP model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from torch.utils.data import TensorDataset

from client.audit import audit_from_losses, epsilon_lower_bound, tpr_at_fpr
from client.training import DpSgdSettings, train_locally
from common.data.registry import load_dataset
from common.evaluation import per_example
from common.models.tabular import build_tabular_model
from common.privacy.sampling import sample_rate, steps_per_epoch
from tests.reference_accountants import reference_pld

N = 150  # members and non-members each
DELTA = 1e-5


def test_bound_of_a_perfect_attack_matches_clopper_pearson_computed_independently():
    members, non_members = np.arange(100) + 100.0, np.arange(100) * 1.0
    # threshold 100: TP = 100/100, FP = 0/100; two-sided 95% exact CI = one-sided 97.5% bounds
    tpr_lo = binomtest(100, 100).proportion_ci(0.95, method="exact").low
    fpr_hi = binomtest(0, 100).proportion_ci(0.95, method="exact").high
    expected = np.log((tpr_lo - DELTA) / fpr_hi)
    assert expected == pytest.approx(3.28, abs=0.01)
    assert epsilon_lower_bound(members, non_members, DELTA) == pytest.approx(expected, rel=1e-9)
    # the complementary test gives the same here; a useless attack gives no bound
    same = np.random.default_rng(0).normal(size=200)
    assert epsilon_lower_bound(same[:100], same[100:], DELTA) < 0.3


def test_tpr_at_low_fpr_counts_only_thresholds_within_the_fpr():
    members = np.array([10.0, 9.0, 1.0, 0.5])
    non_members = np.array([8.0, 0.0, -1.0, -2.0])
    assert tpr_at_fpr(members, non_members, 0.0) == 0.5  # above 8: two of four members
    assert tpr_at_fpr(members, non_members, 0.25) == 1.0  # one false positive allowed


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread (two threads on a busy 2-core machine are 40x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def records() -> tuple[TensorDataset, TensorDataset]:
    """Members and non-members: two disjoint draws of N heart-disease patients."""
    pool, _ = load_dataset("heart-disease", 0)
    order = np.random.default_rng(0).permutation(len(pool))
    x = torch.as_tensor(pool.features, dtype=torch.float32)
    y = torch.as_tensor(pool.labels)
    members, non_members = order[:N], order[N : 2 * N]
    return TensorDataset(x[members], y[members]), TensorDataset(x[non_members], y[non_members])


def _losses(model: torch.nn.Module, records: tuple) -> dict[str, np.ndarray]:
    members, non_members = records
    return {
        "members": per_example(model, members, device="cpu")[0],
        "non-members": per_example(model, non_members, device="cpu")[0],
    }


def _fresh_model(records: tuple) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_tabular_model("mlp", records[0].tensors[0].shape[1], 2, hidden=256)


def test_an_overfit_non_private_model_is_caught_by_both_attacks(records):
    model = _fresh_model(records)
    reference = _losses(model, records)
    features, labels = records[0].tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):  # full-batch, no regularisation: memorises the members
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(features), labels).backward()
        optimizer.step()
    metrics = audit_from_losses(_losses(model, records), reference, DELTA)
    assert metrics["audit-members"] == metrics["audit-non-members"] == N
    for attack in ("loss", "calibrated"):
        assert metrics[f"audit-{attack}-auc"] > 0.64, metrics
        assert metrics[f"audit-{attack}-epsilon-lower-bound"] > 1.0, metrics


def test_a_strong_dp_model_looks_like_guessing_and_stays_below_its_theoretical_epsilon(records):
    sigma, epochs, batch = 8.0, 10, 30
    model = _fresh_model(records)
    reference = _losses(model, records)
    dp = DpSgdSettings(noise_multiplier=sigma, max_grad_norm=1.0)
    result = train_locally(
        model,
        records[0],
        batch_size=batch,
        epochs=epochs,
        learning_rate=0.5,
        dp=dp,
        device="cpu",
        seed=1,
    )
    assert result.num_steps == steps_per_epoch(N, batch) * epochs
    epsilon = reference_pld([(sigma, sample_rate(N, batch), result.num_steps)], DELTA)
    assert epsilon < 1.0
    metrics = audit_from_losses(_losses(model, records), reference, DELTA)
    for attack in ("loss", "calibrated"):
        assert abs(metrics[f"audit-{attack}-auc"] - 0.5) < 0.07, metrics
        assert metrics[f"audit-{attack}-epsilon-lower-bound"] <= epsilon, (metrics, epsilon)


def test_audit_refuses_an_impossible_delta_and_empty_sides():
    losses = {"members": np.ones(3), "non-members": np.ones(3)}
    with pytest.raises(ValueError, match="delta"):
        audit_from_losses(losses, losses, 1.5)
    with pytest.raises(ValueError, match="at least one"):
        audit_from_losses(losses | {"non-members": np.ones(0)}, losses, DELTA)
