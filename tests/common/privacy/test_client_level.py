"""common/privacy/client_level.py: a DP-FedAvg round's z and q, and the rounds' epsilon.

The z rules are checked against the noise they describe (shares summed, Gaussian releases
composed); epsilon against dp-accounting's own PLDAccountant (tests/reference_accountants.py).
"""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld

from common.privacy.client_level import (
    ClientLevelRelease,
    central_noise_multiplier,
    client_level_epsilon,
    client_sample_rate,
    distributed_noise_multiplier,
    distributed_noise_std,
    with_clipped_count,
)
from tests.reference_accountants import reference_pld

DELTA = 1e-5


def test_sample_rate_is_sampled_over_available_sites():
    assert client_sample_rate(3, 10) == pytest.approx(0.3)
    assert client_sample_rate(10, 10) == 1.0
    assert client_sample_rate(0, 0) == 1.0  # no grid: every site counts as sampled


def test_central_z_is_the_sums_noise_over_the_clip_norm():
    # std 0.05 on the mean of 4 updates = std 0.2 on their sum; C = 0.5
    assert central_noise_multiplier(0.05, 4, 0.5) == pytest.approx(0.4)
    assert central_noise_multiplier(0.05, 0, 0.5) == 0.0


def test_adaptive_z_composes_like_its_two_gaussian_releases():
    z = with_clipped_count(1.0, 2.0)
    assert z == pytest.approx(1 / math.sqrt(1.25))
    two = pld.PLDAccountant()
    two.compose(dp_accounting.GaussianDpEvent(1.0)).compose(dp_accounting.GaussianDpEvent(2.0))
    one = pld.PLDAccountant().compose(dp_accounting.GaussianDpEvent(z))
    assert one.get_epsilon(DELTA) == pytest.approx(two.get_epsilon(DELTA), rel=2e-3)
    assert with_clipped_count(1.0, 0.0) == with_clipped_count(0.0, 2.0) == 0.0


def test_distributed_shares_sum_to_the_z_accounted():
    sigma, clip, sampled, contributed = 1.2, 0.5, 4, 3
    share = distributed_noise_std(sigma, clip, sampled)
    assert share == pytest.approx(0.3)
    summed = np.random.default_rng(0).normal(0.0, share, size=(200_000, contributed)).sum(axis=1)
    z = distributed_noise_multiplier(sigma, contributed, sampled)
    assert z == pytest.approx(1.2 * math.sqrt(0.75))
    assert summed.std() / clip == pytest.approx(z, rel=0.01)
    assert distributed_noise_multiplier(sigma, 0, sampled) == 0.0


def test_a_release_is_a_poisson_sampled_gaussian_event_or_non_private():
    assert ClientLevelRelease(1.1, 0.3).event() == dp_accounting.PoissonSampledDpEvent(
        0.3, dp_accounting.GaussianDpEvent(1.1)
    )
    assert isinstance(ClientLevelRelease(0.005, 1.0).event(), dp_accounting.NonPrivateDpEvent)


def test_epsilon_of_subsampled_rounds_equals_dp_accountings():
    rounds = [ClientLevelRelease(1.1, 0.3)] * 5 + [ClientLevelRelease(0.9, 0.3)]
    expected = reference_pld([(1.1, 0.3, 5), (0.9, 0.3, 1)], DELTA)
    assert client_level_epsilon(rounds, DELTA) == pytest.approx(expected, rel=1e-8)


def test_epsilon_of_full_participation_is_the_exact_gaussian_one():
    rounds = [ClientLevelRelease(2.0, 1.0)] * 4  # four Gaussian releases = one at z = 1
    exact = dp_accounting.get_epsilon_gaussian(1.0, DELTA)
    assert client_level_epsilon(rounds, DELTA) == pytest.approx(exact, rel=1e-6)


def test_no_round_spends_nothing_and_a_noiseless_round_voids_the_bound():
    assert client_level_epsilon([], DELTA) == 0.0
    rounds = [ClientLevelRelease(2.0, 1.0), ClientLevelRelease(0.0, 1.0)]
    assert client_level_epsilon(rounds, DELTA) == math.inf


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5])
def test_delta_outside_the_unit_interval_raises(delta):
    with pytest.raises(ValueError, match="client-dp-delta"):
        client_level_epsilon([ClientLevelRelease(2.0, 1.0)], delta)
