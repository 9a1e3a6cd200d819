"""common/privacy/accounting.py checked against computations that share none of its code.

References: the closed-form epsilon of the Gaussian mechanism (Balle & Wang 2018), Google
dp-accounting's PLD accountant at its default discretisation with one event per release batch
(no merging), and Opacus's RDP and PRV accountants fed the same (sigma, q, steps) history.
Tolerances: PLD vs PLD and PLD vs PRV within 1%; our "rdp" vs Opacus RDP within 1%; PLD <= RDP.
"""

import math

import dp_accounting
import pytest
from opacus.accountants import PRVAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from common.privacy.accounting import DpRelease, NonPrivateRelease, compute_epsilon, make_accountant
from tests.reference_accountants import opacus_rdp as _opacus_rdp
from tests.reference_accountants import reference_pld as _reference_pld

DELTA = 1e-5

# (noise_multiplier, sample_rate, steps) in the regimes DP-SGD fine-tuning runs in.
TYPICAL = [(1.0, 0.01, 1000), (0.8, 0.05, 500), (1.1, 0.2, 50), (0.6, 0.01, 100)]


def reference_pld(batches, delta=DELTA):
    return _reference_pld(batches, delta)


def opacus_rdp(batches, delta=DELTA):
    return _opacus_rdp(batches, delta)


def opacus_prv(batches, delta=DELTA):
    accountant = PRVAccountant()
    accountant.history = list(batches)
    return accountant.get_epsilon(delta)


def gaussian_epsilon(sigma, steps, delta):
    """Exact epsilon of ``steps`` full-batch Gaussian releases (sensitivity 1, std sigma).

    k compositions of N(0, sigma^2) equal one Gaussian with std s = sigma / sqrt(k), whose
    delta(eps) = Phi(1/(2s) - eps*s) - e^eps * Phi(-1/(2s) - eps*s); solve for eps.
    """
    s = sigma / math.sqrt(steps)

    def gap(eps):
        return norm.cdf(0.5 / s - eps * s) - math.exp(eps) * norm.cdf(-0.5 / s - eps * s) - delta

    return brentq(gap, 0.0, 100.0, xtol=1e-12)


def releases(batches):
    return [DpRelease(*batch) for batch in batches]


# --- one release batch ---------------------------------------------------------------------
@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (2.0, 3), (5.0, 10), (20.0, 400)])
def test_full_batch_gaussian_matches_the_closed_form(sigma, steps):
    exact = gaussian_epsilon(sigma, steps, DELTA)
    ours = compute_epsilon([DpRelease(sigma, 1.0, steps)], DELTA)
    # PLD is a pessimistic (upper) bound and tight here.
    assert exact * (1 - 1e-6) <= ours <= exact * 1.001


@pytest.mark.parametrize("sigma, q, steps", TYPICAL)
def test_single_release_pld_matches_dp_accounting_and_opacus_prv(sigma, q, steps):
    ours = compute_epsilon([DpRelease(sigma, q, steps)], DELTA, "pld")
    assert ours == pytest.approx(reference_pld([(sigma, q, steps)]), rel=0.01)
    assert ours == pytest.approx(opacus_prv([(sigma, q, steps)]), rel=0.01)


@pytest.mark.parametrize("sigma, q, steps", [*TYPICAL, (5.0, 1.0, 10)])
def test_single_release_rdp_matches_opacus_rdp_and_bounds_pld(sigma, q, steps):
    ours_rdp = compute_epsilon([DpRelease(sigma, q, steps)], DELTA, "rdp")
    assert ours_rdp == pytest.approx(opacus_rdp([(sigma, q, steps)]), rel=0.01)
    assert compute_epsilon([DpRelease(sigma, q, steps)], DELTA, "pld") <= ours_rdp


def test_default_accountant_is_pld():
    release = [DpRelease(1.0, 0.01, 1000)]
    assert compute_epsilon(release, DELTA) == compute_epsilon(release, DELTA, "pld")
    assert compute_epsilon(release, DELTA) < compute_epsilon(release, DELTA, "rdp")


def test_epsilon_grows_with_steps_and_shrinks_with_noise_and_delta():
    base = compute_epsilon([DpRelease(1.0, 0.01, 500)], DELTA)
    assert compute_epsilon([DpRelease(1.0, 0.01, 1000)], DELTA) > base
    assert compute_epsilon([DpRelease(1.5, 0.01, 500)], DELTA) < base
    assert compute_epsilon([DpRelease(1.0, 0.01, 500)], 1e-3) < base


@pytest.mark.parametrize("sigma, q, steps", [(2.0, 0.001, 1000), (4.0, 0.003, 1000)])
def test_pld_stays_accurate_for_small_sample_rates(sigma, q, steps):
    ours = compute_epsilon([DpRelease(sigma, q, steps)], DELTA, "pld")
    assert ours <= compute_epsilon([DpRelease(sigma, q, steps)], DELTA, "rdp")
    assert ours == pytest.approx(reference_pld([(sigma, q, steps)]), rel=0.01)


# --- several releases: rounds of several runs ----------------------------------------------
# Run 1: three rounds of 50 steps; run 2 (other sigma and q): two rounds, the last cut short;
# run 3: one round of full-batch steps.
HISTORY = [
    *[(1.0, 0.01, 50)] * 3,
    (0.8, 0.02, 30),
    (0.8, 0.02, 12),
    (3.0, 1.0, 2),
]


def test_heterogeneous_releases_compose_like_dp_accounting_pld():
    ours = compute_epsilon(releases(HISTORY), DELTA, "pld")
    assert ours == pytest.approx(reference_pld(HISTORY), rel=0.01)


def test_heterogeneous_releases_compose_like_opacus_rdp():
    ours = compute_epsilon(releases(HISTORY), DELTA, "rdp")
    assert ours == pytest.approx(opacus_rdp(HISTORY), rel=0.01)
    assert compute_epsilon(releases(HISTORY), DELTA, "pld") < ours


def test_composition_is_more_than_any_part_and_less_than_their_sum():
    whole = compute_epsilon(releases(HISTORY), DELTA)
    parts = [compute_epsilon(releases(part), DELTA) for part in (HISTORY[:3], HISTORY[3:])]
    assert max(parts) < whole < sum(parts)


def test_order_of_releases_does_not_matter():
    forward = compute_epsilon(releases(HISTORY), DELTA)
    assert compute_epsilon(releases(HISTORY[::-1]), DELTA) == pytest.approx(forward, rel=1e-6)


def test_many_rounds_equal_one_batch_of_all_their_steps():
    rounds = compute_epsilon([DpRelease(1.0, 0.01, 100)] * 10, DELTA)
    assert rounds == pytest.approx(reference_pld([(1.0, 0.01, 1000)]), rel=0.01)


# --- nothing released ----------------------------------------------------------------------
@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_zero_steps_spend_nothing(accountant):
    assert compute_epsilon([], DELTA, accountant) == 0.0
    assert compute_epsilon([DpRelease(1.0, 0.01, 0)] * 3, DELTA, accountant) == 0.0
    with_empty = [DpRelease(1.0, 0.01, 100), DpRelease(0.5, 0.5, 0)]
    assert compute_epsilon(with_empty, DELTA, accountant) == compute_epsilon(
        with_empty[:1], DELTA, accountant
    )


# --- non-private releases ------------------------------------------------------------------
@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_a_non_private_release_voids_every_bound(accountant):
    assert isinstance(NonPrivateRelease("baseline", 3).event(), dp_accounting.NonPrivateDpEvent)
    history = [DpRelease(1.0, 0.01, 100), NonPrivateRelease("baseline", 3)]
    assert compute_epsilon(history, DELTA, accountant) == math.inf
    assert compute_epsilon(history[1:], DELTA, accountant) == math.inf


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_each_accountant_is_a_dp_accounting_privacy_accountant(accountant):
    acc = make_accountant(accountant)
    assert isinstance(acc, dp_accounting.PrivacyAccountant)
    acc.compose(DpRelease(1.1, 0.2, 50).event())
    expected = compute_epsilon([DpRelease(1.1, 0.2, 50)], DELTA, accountant)
    assert acc.get_epsilon(DELTA) == pytest.approx(expected, rel=1e-12)


# --- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 1.5, math.nan])
@pytest.mark.parametrize("batches", [[], [(1.0, 0.01, 10)]])
def test_bad_delta_raises(delta, batches):
    with pytest.raises(ValueError, match="delta"):
        compute_epsilon(releases(batches), delta)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan])
def test_bad_noise_multiplier_raises(sigma):
    with pytest.raises(ValueError, match="noise multiplier"):
        DpRelease(sigma, 0.01, 10)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.0001, math.nan])
def test_bad_sample_rate_raises(q):
    with pytest.raises(ValueError, match="sample rate"):
        DpRelease(1.0, q, 10)


def test_negative_steps_raise():
    with pytest.raises(ValueError, match="steps"):
        DpRelease(1.0, 0.01, -1)


@pytest.mark.parametrize("name", ["prv", "PLD", "", "gdp"])
def test_unknown_accountant_raises(name):
    with pytest.raises(ValueError, match="unknown accountant"):
        compute_epsilon([DpRelease(1.0, 0.01, 10)], DELTA, name)


def test_unknown_accountant_raises_even_before_any_release():
    with pytest.raises(ValueError, match="unknown accountant"):
        compute_epsilon([], DELTA, "prv")
