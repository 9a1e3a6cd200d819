"""common/privacy/pld_cache.py: the cached, vectorised PLD accountant gives dp-accounting's epsilon.

References share none of its code: dp-accounting's own GaussianPrivacyLoss (point by point) for
the hockey-stick grid, and dp-accounting's PLDAccountant composing every ledger row as its own
event (tests/reference_accountants.py) for whole random histories.
"""

import ast
import inspect
import math
import random

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from dp_accounting.pld.privacy_loss_mechanism import AdjacencyType, GaussianPrivacyLoss

from common.privacy import pld_cache
from common.privacy.accounting import DpRelease, compute_epsilon
from common.privacy.pld_cache import (
    CachedPLDAccountant,
    _GridGaussianPrivacyLoss,
    one_step_pld,
    pld_epsilon,
)
from tests.reference_accountants import dpsgd_event, reference_pld

DELTA = 1e-5


@pytest.mark.parametrize("q", [0.01, 1 / 3, 1.0])
@pytest.mark.parametrize("adjacency", [AdjacencyType.ADD, AdjacencyType.REMOVE])
def test_grid_divergence_equals_dp_accountings_point_by_point(q, adjacency):
    edges = [math.log1p(-q), -math.log1p(-q)] if q < 1 else []
    eps = np.concatenate([np.linspace(-4, 4, 801), edges, [0.0]])
    if adjacency == AdjacencyType.ADD:
        eps = np.append(eps, -math.inf)
    plain = GaussianPrivacyLoss(0.9, sampling_prob=q, adjacency_type=adjacency)
    grid = _GridGaussianPrivacyLoss(0.9, sampling_prob=q, adjacency_type=adjacency)
    expected = np.asarray(plain.get_delta_for_epsilon(eps))
    np.testing.assert_allclose(grid.get_delta_for_epsilon(eps), expected, rtol=1e-12, atol=1e-300)
    assert grid.get_delta_for_epsilon(0.5) == pytest.approx(plain.get_delta_for_epsilon(0.5))


def _random_history(rng: random.Random) -> list[tuple[float, float, int]]:
    """Ledger rows of 1-2 runs: each run one (sigma, q), a few rounds of a few steps."""
    runs = [(round(rng.uniform(1.2, 3.0), 3), 1 / rng.randint(5, 40)) for _ in range(2)]
    return [(*rng.choice(runs), rng.randint(1, 12)) for _ in range(rng.randint(2, 4))]


@pytest.mark.parametrize("seed", [0, 1])
def test_random_histories_match_plain_dp_accounting(seed):
    rows = _random_history(random.Random(seed))
    ours = compute_epsilon([DpRelease(*row) for row in rows], DELTA)
    assert ours == pytest.approx(reference_pld(rows, DELTA), rel=1e-8)


def test_histories_share_the_one_step_pld_of_their_sigma_and_q():
    before = one_step_pld.cache_info()
    first = pld_epsilon((((2.5, 0.05), 7),), DELTA, 1e-4)
    second = pld_epsilon((((2.5, 0.05), 9),), DELTA, 1e-4)
    after = one_step_pld.cache_info()
    assert after.misses - before.misses <= 1 and after.hits - before.hits >= 1
    assert 0 < first < second  # more steps, more epsilon


# --- the accountant ----------------------------------------------------------------------
MIXED = dp_accounting.ComposedDpEvent(
    [
        dpsgd_event(2.5, 0.05, 7),
        dp_accounting.SelfComposedDpEvent(dpsgd_event(1.5, 0.1, 3), 2),
        dpsgd_event(4.0, 1.0, 2),  # two Gaussian answers (q = 1)
        dp_accounting.NoOpDpEvent(),
    ]
)


def test_it_is_a_privacy_accountant_with_dp_accountings_epsilon_and_delta():
    ours = CachedPLDAccountant().compose(MIXED)
    plain = pld.PLDAccountant().compose(MIXED)
    assert isinstance(ours, dp_accounting.PrivacyAccountant)
    assert ours.ledger == plain.ledger  # the events composed, as dp-accounting records them
    assert ours.get_epsilon(DELTA) == pytest.approx(plain.get_epsilon(DELTA), rel=1e-8)
    assert ours.get_delta(1.5) == pytest.approx(plain.get_delta(1.5), rel=1e-8)


def test_composing_twice_is_composing_the_sum_of_steps():
    twice = CachedPLDAccountant().compose(dpsgd_event(2.5, 0.05, 7), count=2)
    assert twice.get_epsilon(DELTA) == pytest.approx(reference_pld([(2.5, 0.05, 14)], DELTA))


def test_gaussian_answers_alone_are_exact():
    ours = CachedPLDAccountant().compose(dp_accounting.GaussianDpEvent(2.0), count=4)
    exact = dp_accounting.get_epsilon_gaussian(1.0, DELTA)  # 4 answers at z = 2: one at z = 1
    assert ours.get_epsilon(DELTA) == pytest.approx(exact, rel=1e-6)
    plain = pld.PLDAccountant().compose(dp_accounting.GaussianDpEvent(2.0), count=4)
    assert ours.get_epsilon(DELTA) <= plain.get_epsilon(DELTA)  # the grid only over-reports
    assert ours.get_delta(1.0) == pytest.approx(plain.get_delta(1.0), rel=1e-3)


def test_nothing_composed_spends_nothing():
    fresh = CachedPLDAccountant().compose(dp_accounting.NoOpDpEvent())
    assert fresh.get_epsilon(DELTA) == 0.0
    assert fresh.get_delta(0.5) == pld.PLDAccountant().get_delta(0.5) == 0.0


@pytest.mark.parametrize(
    "event",
    [dp_accounting.NonPrivateDpEvent(), dp_accounting.GaussianDpEvent(0.0)],
    ids=["non-private", "no-noise"],
)
def test_a_non_private_release_voids_the_bound(event):
    acc = CachedPLDAccountant().compose(dpsgd_event(2.5, 0.05, 7)).compose(event)
    assert (acc.get_epsilon(DELTA), acc.get_delta(100.0)) == (math.inf, 1.0)


def test_other_mechanisms_are_refused_before_anything_is_composed():
    acc = CachedPLDAccountant()
    laplace = dp_accounting.ComposedDpEvent(
        [dpsgd_event(2.5, 0.05, 7), dp_accounting.LaplaceDpEvent(1.0)]
    )
    assert acc.supports(dpsgd_event(2.5, 0.05, 7)) and not acc.supports(laplace)
    with pytest.raises(dp_accounting.UnsupportedEventError):
        acc.compose(laplace)
    assert acc.get_epsilon(DELTA) == 0.0


def test_a_fresh_one_has_an_empty_ledger():
    assert isinstance(CachedPLDAccountant().ledger, dp_accounting.NoOpDpEvent)


def test_dp_accountings_calibration_runs_on_it():
    # k = 10 Gaussian answers at z are one at z / sqrt(10): z = sqrt(10) * analytic sigma
    z = dp_accounting.calibrate_dp_mechanism(
        CachedPLDAccountant,
        lambda z: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), 10),
        1.0,
        DELTA,
        bracket_interval=dp_accounting.ExplicitBracketInterval(1.0, 100.0),
    )
    assert z == pytest.approx(
        math.sqrt(10) * dp_accounting.get_sigma_gaussian(1.0, DELTA), rel=1e-5
    )


def test_only_dp_accountings_public_names_are_used():
    tree = ast.parse(inspect.getsource(pld_cache))
    private = [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in {"dp_accounting", "pld_lib", "pld_pmf", "super"}
        and node.attr.startswith("_")
    ]
    inherited = {"_standard_deviation", "_gaussian_random_variable", "_pessimistic_estimate"}
    assert private == [] and not any(
        f"self.{name}" in inspect.getsource(pld_cache) for name in inherited
    )
