"""common/privacy/calibration.py: the chosen sigma meets the target per an independent accountant.

Each returned sigma is checked with dp-accounting events built here (PLD at its default
discretisation, or RDP) and against Opacus's own calibration (``get_noise_multiplier``):
epsilon(sigma) <= target, within 2% of it, and epsilon(0.99 * sigma) > target (minimality).
"""

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp
from opacus.accountants.utils import get_noise_multiplier

from common.privacy.accounting import DpRelease
from common.privacy.calibration import calibrate_noise_multiplier

# Opacus's RDP order grid is narrow for large epsilon; it says so, and it does not matter here.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

DELTA = 1e-5

# (target_epsilon, sample_rate, steps) of whole planned runs (rounds x local steps).
PLANS = [(8.0, 0.01, 1000), (1.0, 0.01, 500), (3.0, 0.05, 200)]


def dpsgd_event(sigma, q, steps):
    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def reference_epsilon(batches, accountant="pld", delta=DELTA):
    """dp-accounting PLD (default discretisation) or RDP, one event per (sigma, q, steps)."""
    acc = pld.PLDAccountant() if accountant == "pld" else rdp.RdpAccountant()
    for sigma, q, steps in batches:
        acc.compose(dpsgd_event(sigma, q, steps))
    return acc.get_epsilon(delta)


def assert_tight(target, epsilon_at_sigma, epsilon_below_sigma):
    assert epsilon_at_sigma <= target
    assert epsilon_at_sigma >= 0.98 * target
    assert epsilon_below_sigma > target  # 1% less noise would overspend: sigma is minimal


@pytest.mark.parametrize("target, q, steps", PLANS)
def test_pld_sigma_meets_the_target_tightly(target, q, steps):
    sigma = calibrate_noise_multiplier(target, DELTA, q, steps)
    assert_tight(
        target,
        reference_epsilon([(sigma, q, steps)]),
        reference_epsilon([(0.99 * sigma, q, steps)]),
    )
    # PLD is tighter than RDP, so it needs no more noise.
    assert sigma <= calibrate_noise_multiplier(target, DELTA, q, steps, "rdp")


def test_pld_sigma_agrees_with_opacus_prv_calibration():
    target, q, steps = 1.0, 0.01, 500
    ours = calibrate_noise_multiplier(target, DELTA, q, steps, "pld")
    theirs = get_noise_multiplier(
        target_epsilon=target,
        target_delta=DELTA,
        sample_rate=q,
        steps=steps,
        accountant="prv",
        epsilon_tolerance=0.005,
    )
    assert ours == pytest.approx(theirs, rel=0.02)


@pytest.mark.parametrize("target, q, steps", PLANS)
def test_rdp_sigma_meets_the_target_and_agrees_with_opacus(target, q, steps):
    sigma = calibrate_noise_multiplier(target, DELTA, q, steps, "rdp")
    assert_tight(
        target,
        reference_epsilon([(sigma, q, steps)], "rdp"),
        reference_epsilon([(0.99 * sigma, q, steps)], "rdp"),
    )
    theirs = get_noise_multiplier(
        target_epsilon=target,
        target_delta=DELTA,
        sample_rate=q,
        steps=steps,
        accountant="rdp",
        epsilon_tolerance=0.005,
    )
    assert sigma == pytest.approx(theirs, rel=0.01)


def test_sigma_accounts_for_releases_already_spent():
    spent_batches = [(1.0, 0.02, 100), (4.0, 1.0, 2)]  # a subsampled run, a full-batch one
    spent = tuple(DpRelease(*batch) for batch in spent_batches)
    target, q, steps = 4.0, 0.02, 200
    sigma = calibrate_noise_multiplier(target, DELTA, q, steps, spent=spent)
    assert_tight(
        target,
        reference_epsilon([*spent_batches, (sigma, q, steps)]),
        reference_epsilon([*spent_batches, (0.99 * sigma, q, steps)]),
    )
    # what was spent before leaves less room: more noise than on a fresh dataset
    fresh = calibrate_noise_multiplier(target, DELTA, q, steps, "rdp")
    assert calibrate_noise_multiplier(target, DELTA, q, steps, "rdp", spent=spent) > fresh


def test_releases_with_no_steps_spend_nothing():
    fresh = calibrate_noise_multiplier(3.0, DELTA, 0.05, 200, "rdp")
    spent = (DpRelease(0.5, 0.5, 0),)
    assert calibrate_noise_multiplier(3.0, DELTA, 0.05, 200, "rdp", spent=spent) == fresh


@pytest.mark.parametrize(
    "target, delta, q, steps",
    [
        (0.0, DELTA, 0.01, 100),
        (-1.0, DELTA, 0.01, 100),
        (math.nan, DELTA, 0.01, 100),
        (math.inf, DELTA, 0.01, 100),
        (1.0, 0.0, 0.01, 100),
        (1.0, 1.0, 0.01, 100),
        (1.0, 1.5, 0.01, 100),
        (1.0, math.nan, 0.01, 100),
        (1.0, DELTA, 0.0, 100),
        (1.0, DELTA, 1.5, 100),
        (1.0, DELTA, math.nan, 100),
        (1.0, DELTA, 0.01, 0),
        (1.0, DELTA, 0.01, -3),
    ],
)
def test_impossible_inputs_raise(target, delta, q, steps):
    with pytest.raises(ValueError):
        calibrate_noise_multiplier(target, delta, q, steps)


def test_unknown_accountant_raises():
    with pytest.raises(ValueError, match="unknown accountant"):
        calibrate_noise_multiplier(3.0, DELTA, 0.05, 200, "prv")


def test_budget_already_spent_raises_a_clear_error():
    spent_batches = [(0.5, 0.1, 1000)]
    target = 1.0
    assert reference_epsilon(spent_batches, "rdp") > 10 * target  # independently over budget
    spent = (DpRelease(*spent_batches[0]),)
    with pytest.raises(ValueError, match="no noise multiplier .* meets the target epsilon"):
        calibrate_noise_multiplier(target, DELTA, 0.01, 100, "rdp", spent=spent)


@pytest.mark.parametrize("target, q, steps", [(0.2, 0.001, 10_000), (0.1, 0.003, 1000)])
def test_pld_sigma_is_tight_for_small_sample_rates(target, q, steps):
    sigma = calibrate_noise_multiplier(target, DELTA, q, steps)
    assert_tight(
        target,
        reference_epsilon([(sigma, q, steps)]),
        reference_epsilon([(0.99 * sigma, q, steps)]),
    )
