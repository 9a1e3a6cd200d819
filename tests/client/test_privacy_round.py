"""client/privacy_round.py: a round's privacy decision: policy, run plan, budget, reservation."""

import pytest

import client.privacy_round as privacy_round
from client.policy import RoundRefused
from client.privacy_round import BudgetRefused, authorize_round, site_budget
from common.config import SiteSettings
from common.privacy.accounting import DpRelease, compute_epsilon
from common.privacy.ledger import PrivacyLedger, RunPlan
from common.protocol.records import BUDGET_EXHAUSTED, ROUND_LIMIT
from common.protocol.request import TrainRequest
from tests.reference_accountants import opacus_rdp

FP = "f" * 64
NO_POLICY = SiteSettings()


def request(**overrides) -> TrainRequest:
    values = {
        "server_round": 1,
        "run_key": "run-1",
        "num_server_rounds": 4,
        "dp": True,
        "target_epsilon": 2.0,
        "noise_multiplier": 0.0,
        "max_grad_norm": 1.0,
        "local_epochs": 1,
        "local_steps": 0,
        "batch_size": 20,
        "learning_rate": 0.1,
        "evaluate_received": False,
    }
    return TrainRequest(**(values | overrides))


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


def authorize(ledger_path, req=None, policy=NO_POLICY, run_id="run-1", release=True, **kw):
    """One round through the ledger at ``ledger_path`` (a fresh process's view each time)."""
    req = req or request()
    args = {
        "requested_delta": 0.0,
        "accountant": "rdp",
        "num_records": 1000,
        "sample_rate": 0.02,
        "steps": 50,
    } | kw
    with PrivacyLedger(ledger_path) as ledger:
        grant = authorize_round(ledger, FP, run_id, req.server_round, req, policy, **args)
        if release:
            ledger.mark_released(grant.row_id, grant.release.steps)
        return grant


def rows(ledger_path):
    with PrivacyLedger(ledger_path) as ledger:
        return ledger.rows(FP)


# --- budget (the delta rule: tests/common/privacy/test_delta.py) -------------------------


def test_budget_is_the_sites_else_the_runs_target():
    assert site_budget(NO_POLICY, request(target_epsilon=3.0)) == 3.0
    assert site_budget(SiteSettings(epsilon_budget=1.5), request(target_epsilon=3.0)) == 1.5


# --- the run's plan ----------------------------------------------------------------------


def test_first_round_calibrates_for_all_rounds_stores_the_plan_and_reserves(
    ledger_path, calibrations
):
    grant = authorize(ledger_path, policy=SiteSettings(epsilon_budget=6.0), release=False)

    # sigma is chosen for rounds x steps at the site's default delta 0.1/n
    assert calibrations == [(2.0, 1e-4, 0.02, 200, "rdp")]
    expected = RunPlan(1.25, 0.02, 50, 4, 2.0, 1e-4, "rdp", 1.25)
    assert grant.plan == expected
    assert (grant.release, grant.max_grad_norm, grant.delta) == (
        DpRelease(1.25, 0.02, 50),
        1.0,
        1e-4,
    )
    assert (grant.epsilon_budget, grant.epsilon_spent_before, grant.clamps) == (6.0, 0.0, ())
    with PrivacyLedger(ledger_path) as ledger:
        assert ledger.run_plan(FP, "run-1") == expected
        (row,) = ledger.rows(FP)
    assert (row.id, row.status, row.release, row.epsilon_budget) == (
        grant.row_id,
        "reserved",
        DpRelease(1.25, 0.02, 50),
        6.0,
    )


def test_later_rounds_read_the_stored_plan_and_report_the_spend(ledger_path, calibrations):
    first = authorize(ledger_path)
    # a fresh process, and a different local size: the plan's delta stays
    second = authorize(ledger_path, request(server_round=2), num_records=250)
    assert len(calibrations) == 1
    assert second.plan == first.plan and second.delta == 1e-4
    assert second.epsilon_spent_before == pytest.approx(
        opacus_rdp([(1.25, 0.02, 50)], 1e-4), rel=0.01
    )
    assert first.epsilon_spent_before == 0.0


def test_another_run_on_the_same_dataset_gets_its_own_plan_and_counts_the_earlier_spend(
    ledger_path, calibrations
):
    authorize(ledger_path, run_id="run-1")
    other = authorize(ledger_path, request(num_server_rounds=2), run_id="run-2")
    assert len(calibrations) == 2 and calibrations[1][3] == 100  # 2 rounds x 50 steps
    assert other.plan.planned_rounds == 2
    assert other.epsilon_spent_before == pytest.approx(
        compute_epsilon([DpRelease(1.25, 0.02, 50)], 1e-4, "rdp")
    )


def test_an_explicit_noise_request_is_used_without_calibration(ledger_path, calibrations):
    grant = authorize(ledger_path, request(noise_multiplier=3.0))
    assert calibrations == [] and grant.release.noise_multiplier == 3.0 and grant.clamps == ()


# --- the policy's clamps ---------------------------------------------------------------------


def test_a_request_for_less_noise_than_the_site_floor_is_clamped_up(ledger_path, calibrations):
    floor = SiteSettings(min_noise_multiplier=2.0)
    grant = authorize(ledger_path, request(noise_multiplier=0.5), floor)
    assert grant.release.noise_multiplier == 2.0
    assert [str(c) for c in grant.clamps] == [
        "noise-multiplier 0.5 -> 2 (site min-noise-multiplier)"
    ]
    assert rows(ledger_path)[0].noise_multiplier == 2.0


def test_a_calibrated_sigma_under_the_floor_is_clamped_up(ledger_path, calibrations):
    grant = authorize(ledger_path, policy=SiteSettings(min_noise_multiplier=4.0))
    assert grant.plan.noise_multiplier == 4.0 and grant.plan.requested_noise_multiplier == 1.25
    assert [c.key for c in grant.clamps] == ["noise-multiplier"]
    # later rounds say so again: the server sees every round what the site did
    again = authorize(ledger_path, request(server_round=2), SiteSettings(min_noise_multiplier=4.0))
    assert again.release.noise_multiplier == 4.0 and len(again.clamps) == 1


def test_a_later_request_cannot_lower_the_runs_noise_but_may_raise_it(ledger_path, calibrations):
    authorize(ledger_path, request(noise_multiplier=2.0))
    lower = authorize(ledger_path, request(server_round=2, noise_multiplier=0.3))
    assert lower.release.noise_multiplier == 2.0
    assert [str(c) for c in lower.clamps] == ["noise-multiplier 0.3 -> 2 (run plan)"]
    higher = authorize(ledger_path, request(server_round=3, noise_multiplier=5.0))
    assert higher.release.noise_multiplier == 5.0 and higher.clamps == ()
    assert [r.noise_multiplier for r in rows(ledger_path)] == [2.0, 2.0, 5.0]


def test_a_clip_norm_over_the_site_cap_is_clamped(ledger_path, calibrations):
    grant = authorize(ledger_path, request(max_grad_norm=10.0), SiteSettings(max_grad_norm=0.5))
    assert grant.max_grad_norm == 0.5
    assert [str(c) for c in grant.clamps] == ["max-grad-norm 10 -> 0.5 (site max-grad-norm)"]
    assert authorize(ledger_path, request(server_round=2, max_grad_norm=0.1)).max_grad_norm == 0.1


def test_a_run_target_over_the_budget_is_planned_at_the_budget(ledger_path, calibrations):
    grant = authorize(ledger_path, request(target_epsilon=8.0), SiteSettings(epsilon_budget=3.0))
    assert calibrations[0][0] == 3.0 and grant.plan.target_epsilon == 3.0
    assert [str(c) for c in grant.clamps] == ["target-epsilon 8 -> 3 (site budget)"]


def test_the_rounds_cap_shapes_the_plan_and_then_refuses(ledger_path, calibrations):
    policy = SiteSettings(max_rounds_per_run=2)
    first = authorize(ledger_path, request(num_server_rounds=5), policy)
    assert calibrations[0][3] == 100  # sigma for 2 rounds x 50 steps, not 5
    assert [str(c) for c in first.clamps] == ["num-server-rounds 5 -> 2 (site max-rounds-per-run)"]
    authorize(ledger_path, request(server_round=2, num_server_rounds=5), policy)
    with pytest.raises(RoundRefused, match="at most 2 round") as refused:
        authorize(ledger_path, request(server_round=3, num_server_rounds=5), policy)
    assert refused.value.status == ROUND_LIMIT
    assert len(rows(ledger_path)) == 2
    # another run starts its own count
    authorize(ledger_path, request(num_server_rounds=5), policy, run_id="run-2")


# --- the budget ------------------------------------------------------------------------------


def test_a_round_over_the_budget_is_refused_with_the_spend_and_records_nothing(
    ledger_path, calibrations
):
    one = opacus_rdp([(2.0, 0.02, 50)], 1e-4)
    two = opacus_rdp([(2.0, 0.02, 50)] * 2, 1e-4)
    policy = SiteSettings(epsilon_budget=(one + two) / 2)
    authorize(ledger_path, request(noise_multiplier=2.0), policy)
    with pytest.raises(BudgetRefused, match="budget exhausted") as refused:
        authorize(ledger_path, request(server_round=2, noise_multiplier=2.0), policy)
    assert refused.value.status == BUDGET_EXHAUSTED
    assert refused.value.epsilon_spent == pytest.approx(one, rel=0.01)
    assert refused.value.epsilon_budget == policy.epsilon_budget
    assert len(rows(ledger_path)) == 1


def test_real_calibration_meets_the_target_over_the_planned_run(ledger_path):
    grant = authorize(
        ledger_path, request(num_server_rounds=2, target_epsilon=3.0), sample_rate=0.01, steps=20
    )
    p = grant.plan
    planned = [(p.noise_multiplier, p.sample_rate, p.steps_per_round * p.planned_rounds)]
    epsilon = opacus_rdp(planned, grant.delta)
    assert epsilon <= 3.0 * 1.01
    assert epsilon == pytest.approx(3.0, rel=0.03)  # the smallest sigma, not a wasteful one
