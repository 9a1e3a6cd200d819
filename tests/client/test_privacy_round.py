"""client/privacy_round.py: the site's delta and budget, and the run's plan (calibrated once)."""

import pytest

import client.privacy_round as privacy_round
from client.privacy_round import RoundPrivacy, plan_round, site_budget, site_delta, this_round
from common.config import RunSettings, SiteSettings
from common.privacy.accounting import DpRelease, compute_epsilon
from common.privacy.ledger import PrivacyLedger, RunPlan

FP = "f" * 64
NO_POLICY = SiteSettings()


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "site" / "ledger.sqlite"


@pytest.fixture
def calibrations(monkeypatch):
    """Replace the (slow) calibration by a stub that records its arguments."""
    calls = []

    def fake(target_epsilon, delta, sample_rate, steps, accountant="pld"):
        calls.append((target_epsilon, delta, sample_rate, steps, accountant))
        return 1.25

    monkeypatch.setattr(privacy_round, "calibrate_noise_multiplier", fake)
    return calls


# --- delta and budget --------------------------------------------------------------------


def test_default_delta_is_a_tenth_of_one_over_n():
    delta = site_delta(SiteSettings(), RunSettings(), num_records=500)
    assert delta == pytest.approx(2e-4)
    assert delta < 1 / 500


def test_run_target_delta_overrides_the_default():
    settings = RunSettings(target_delta=1e-6)
    assert site_delta(SiteSettings(), settings, num_records=500) == 1e-6


def test_site_delta_wins_over_the_run():
    settings = RunSettings(target_delta=1e-6)
    assert site_delta(SiteSettings(delta=1e-7), settings, num_records=500) == 1e-7


def test_default_budget_is_the_run_target_epsilon():
    assert site_budget(SiteSettings(), RunSettings(target_epsilon=3.0)) == 3.0


def test_site_budget_wins_over_the_run_target():
    assert site_budget(SiteSettings(epsilon_budget=1.5), RunSettings(target_epsilon=3.0)) == 1.5


# --- the run's plan ----------------------------------------------------------------------


def plan(ledger_path, settings, site=NO_POLICY, run_id="run-1", **kw) -> RoundPrivacy:
    args = {"num_records": 1000, "sample_rate": 0.02, "steps_per_round": 50} | kw
    with PrivacyLedger(ledger_path) as ledger:
        return plan_round(ledger, FP, run_id, settings, site, **args)


def test_first_round_calibrates_for_all_rounds_and_stores_the_plan(ledger_path, calibrations):
    settings = RunSettings(num_server_rounds=4, target_epsilon=2.0, accountant="rdp")
    privacy = plan(ledger_path, settings, SiteSettings(epsilon_budget=6.0))

    # sigma is chosen for rounds x steps at the site's default delta 0.1/n
    assert calibrations == [(2.0, 1e-4, 0.02, 200, "rdp")]
    expected = RunPlan(
        noise_multiplier=1.25,
        sample_rate=0.02,
        steps_per_round=50,
        planned_rounds=4,
        target_epsilon=2.0,
        delta=1e-4,
        accountant="rdp",
    )
    assert privacy == RoundPrivacy(expected, 1e-4, 6.0, 0.0)
    with PrivacyLedger(ledger_path) as ledger:
        assert ledger.run_plan(FP, "run-1") == expected
    assert this_round(privacy) == DpRelease(1.25, 0.02, 50)


def test_later_rounds_read_the_stored_plan_and_report_the_spend(ledger_path, calibrations):
    settings = RunSettings(num_server_rounds=4, target_epsilon=2.0, accountant="rdp")
    first = plan(ledger_path, settings)
    with PrivacyLedger(ledger_path) as ledger:
        row = ledger.reserve(
            FP,
            "run-1",
            1,
            this_round(first),
            delta=first.delta,
            accountant="rdp",
            epsilon_budget=100.0,
        )
        ledger.mark_released(row, 50)

    # a fresh process: new ledger object on the same file, and different local numbers
    second = plan(ledger_path, settings, num_records=250, sample_rate=0.5, steps_per_round=3)

    assert len(calibrations) == 1
    assert second.plan == first.plan
    assert second.delta == first.delta == 1e-4  # the plan's delta, not 0.1/250
    expected_spent = compute_epsilon([DpRelease(1.25, 0.02, 50)], 1e-4, "rdp")
    assert expected_spent > 0
    assert second.epsilon_spent_before == pytest.approx(expected_spent)
    assert first.epsilon_spent_before == 0.0


def test_another_run_on_the_same_dataset_gets_its_own_plan(ledger_path, calibrations):
    plan(ledger_path, RunSettings(accountant="rdp"), run_id="run-1")
    other = plan(ledger_path, RunSettings(num_server_rounds=2, accountant="rdp"), run_id="run-2")
    assert len(calibrations) == 2
    assert calibrations[1][3] == 100  # 2 rounds x 50 steps
    assert other.plan.planned_rounds == 2


def test_spend_of_earlier_runs_counts_in_the_next_run(ledger_path, calibrations):
    settings = RunSettings(accountant="rdp")
    first = plan(ledger_path, settings, run_id="run-1")
    with PrivacyLedger(ledger_path) as ledger:
        row = ledger.reserve(
            FP, "run-1", 1, this_round(first), delta=1e-4, accountant="rdp", epsilon_budget=100.0
        )
        ledger.mark_released(row, 50)
    second = plan(ledger_path, settings, run_id="run-2")
    assert second.epsilon_spent_before == pytest.approx(
        compute_epsilon([this_round(first)], 1e-4, "rdp")
    )


def test_real_calibration_meets_the_target_over_the_planned_run(ledger_path):
    settings = RunSettings(num_server_rounds=2, target_epsilon=3.0, accountant="rdp")
    privacy = plan(ledger_path, settings, sample_rate=0.01, steps_per_round=20)
    p = privacy.plan
    planned = DpRelease(p.noise_multiplier, p.sample_rate, p.steps_per_round * p.planned_rounds)
    epsilon = compute_epsilon([planned], privacy.delta, "rdp")
    assert epsilon <= 3.0
    assert epsilon == pytest.approx(3.0, rel=0.02)  # the smallest sigma, not a wasteful one
