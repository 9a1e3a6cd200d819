"""common/privacy/pld_cache.py: the cached, vectorised PLD path gives dp-accounting's epsilon.

References share none of its code: dp-accounting's own GaussianPrivacyLoss (point by point) for
the hockey-stick grid, and dp-accounting's PLDAccountant composing every ledger row as its own
event (tests/reference_accountants.py) for whole random histories.
"""

import math
import random

import numpy as np
import pytest
from dp_accounting.pld.privacy_loss_mechanism import AdjacencyType, GaussianPrivacyLoss

from common.privacy.accounting import DpRelease, compute_epsilon
from common.privacy.pld_cache import _GridGaussianPrivacyLoss, one_step_pld, pld_epsilon
from tests.reference_accountants import reference_pld

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
