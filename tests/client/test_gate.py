"""client/gate.py: a site's privacy decision: policy, caps, run plan, budget rule, reservation.

The budget rule's tests reserve through the gate on a real ledger file (two processes at once
included); epsilons are checked against Opacus's RDP accountant or dp-accounting's PLD built in
tests/reference_accountants.py, never against fedpriv's accounting.
"""

import multiprocessing
import os
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import client.gate as gate
from client.gate import (
    BudgetRefused,
    authorize_round,
    budget_rule,
    check_caps,
    check_non_private_answers,
    check_request,
    reserve_answer,
    reserve_within_budget,
    site_budget,
    validation_budget,
)
from client.policy import RoundRefused
from common.config import SiteSettings
from common.privacy.accounting import DpRelease, compute_epsilon
from common.privacy.ledger import BudgetExceededError, PrivacyLedger, RunPlan
from common.protocol.records import (
    BUDGET_EXHAUSTED,
    NON_PRIVATE_REFUSED,
    RELEASE_REFUSED,
    REPLAYED,
    ROUND_LIMIT,
)
from common.protocol.request import TrainRequest
from tests.reference_accountants import opacus_rdp, reference_pld

ROOT = Path(__file__).resolve().parents[2]
FP = "f" * 64
OTHER_FP = "b" * 64
DELTA = 1e-5  # the budget rule's tests below
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
        "target_delta": 0.0,
        "accountant": "pld",
        "head_learning_rate": 0.0,
        "optimizer": "sgd",
        "grad_sample_mode": "auto",
        "max_physical_batch_size": 0,
        "evaluate_received": False,
    }
    return TrainRequest(**(values | overrides))


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "site" / "ledger.sqlite"


@pytest.fixture
def ledger(ledger_path):
    with PrivacyLedger(ledger_path) as opened:
        yield opened


@pytest.fixture
def calibrations(monkeypatch):
    """Replace the (slow) calibration by a stub that records its arguments."""
    calls = []

    def fake(target_epsilon, delta, sample_rate, steps, accountant="pld"):
        calls.append((target_epsilon, delta, sample_rate, steps, accountant))
        return 1.25

    monkeypatch.setattr(gate, "calibrate_noise_multiplier", fake)
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
    assert site_budget(NO_POLICY, request(target_epsilon=3.0).target_epsilon) == 3.0
    assert (
        site_budget(SiteSettings(epsilon_budget=1.5), request(target_epsilon=3.0).target_epsilon)
        == 1.5
    )


def test_the_budget_default_is_written_once_in_the_gate():
    # "the site's budget, else the requested target": one function; the operator views'
    # ``epsilon_budget or None`` (no budget to show) is another rule and is not counted
    pattern = re.compile(r"epsilon_budget or (?!None)")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("client", "common", "server", "simulations")
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert len(found) == 1 and found[0].startswith("client/gate.py:"), found


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


def reserve(
    ledger,
    release,
    *,
    fingerprint=FP,
    run_id="run-1",
    round_number=1,
    accountant="pld",
    epsilon_budget=1e3,
    delta=DELTA,
):
    """One release through the gate's budget rule (a reservation on ``ledger``)."""
    return reserve_within_budget(
        ledger,
        fingerprint,
        run_id,
        round_number,
        release,
        delta=delta,
        accountant=accountant,
        epsilon_budget=epsilon_budget,
    )


# --- the budget guard ----------------------------------------------------------------------


def test_a_round_over_the_budget_is_refused_and_nothing_is_recorded(ledger):
    round_ = DpRelease(1.0, 0.02, 100)
    reserve(ledger, round_, accountant="rdp")
    reserve(ledger, round_, accountant="rdp", round_number=2)
    two_rounds = opacus_rdp([(1.0, 0.02, 100)] * 2, DELTA)
    three_rounds = opacus_rdp([(1.0, 0.02, 100)] * 3, DELTA)
    assert three_rounds > 1.1 * two_rounds  # the budget below sits well clear of both
    budget = (two_rounds + three_rounds) / 2
    rows = ledger.rows()

    with pytest.raises(BudgetExceededError, match="budget") as refused:
        reserve(ledger, round_, accountant="rdp", round_number=3, epsilon_budget=budget)
    assert refused.value.epsilon_spent == pytest.approx(two_rounds, rel=0.01)
    assert refused.value.epsilon_after == pytest.approx(three_rounds, rel=0.01)
    assert refused.value.epsilon_budget == budget
    assert refused.value.epsilon_after > budget
    assert ledger.rows() == rows

    # a smaller release that fits is still accepted after a refusal
    reserve(
        ledger, DpRelease(1.0, 0.02, 5), accountant="rdp", round_number=3, epsilon_budget=budget
    )
    assert len(ledger.rows()) == 3
    assert ledger.epsilon_spent(FP, DELTA, "rdp") <= budget


def test_the_budget_counts_every_run_on_the_dataset(ledger):
    # run 2's first round is refused: alone it would fit, after run 1 it does not
    first, second = (1.0, 0.05, 100), (1.2, 0.05, 100)
    fits_alone = max(opacus_rdp([first], DELTA), opacus_rdp([second], DELTA))
    together = opacus_rdp([first, second], DELTA)
    assert together > 1.1 * fits_alone
    budget = (fits_alone + together) / 2
    reserve(ledger, DpRelease(*first), run_id="run-1", accountant="rdp", epsilon_budget=budget)
    with pytest.raises(BudgetExceededError):
        reserve(ledger, DpRelease(*second), run_id="run-2", accountant="rdp", epsilon_budget=budget)
    assert [r.run_id for r in ledger.rows(FP)] == ["run-1"]


@pytest.mark.parametrize("delta", [0.0, 1.0, float("nan")])
def test_a_bad_delta_is_refused_and_nothing_is_recorded(ledger, delta):
    with pytest.raises(ValueError, match="delta"):
        reserve(ledger, DpRelease(1.0, 0.02, 10), delta=delta)
    assert ledger.rows() == []


def test_a_nan_budget_records_nothing(ledger):
    with pytest.raises((ValueError, BudgetExceededError)):
        reserve(ledger, DpRelease(0.5, 0.5, 1000), epsilon_budget=float("nan"))
    assert ledger.rows() == []


# --- two processes at once -----------------------------------------------------------------

ROUND = DpRelease(1.0, 0.02, 100)


def _reserve_from_another_process(path, budget, barrier, results):
    """One ClientApp process: open the ledger, wait for the other, reserve a round."""
    ledger = PrivacyLedger(path)
    try:
        barrier.wait(timeout=120)
        row_id = reserve(ledger, ROUND, run_id=f"run-{os.getpid()}", epsilon_budget=budget)
        results.put(("reserved", row_id))
    except BudgetExceededError as err:
        results.put(("refused", err.epsilon_spent, err.epsilon_after, err.epsilon_budget))
    except BaseException as err:  # reported to the parent, which fails the test
        results.put(("error", repr(err)))
    finally:
        ledger.close()


def test_two_processes_cannot_both_take_the_last_round(ledger_path):
    with PrivacyLedger(ledger_path) as ledger:
        for round_number in (1, 2):
            reserve(ledger, ROUND, round_number=round_number)
    three = reference_pld([(1.0, 0.02, 100)] * 3, DELTA)
    four = reference_pld([(1.0, 0.02, 100)] * 4, DELTA)
    budget = (three + four) / 2  # room for exactly one more round

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_reserve_from_another_process, args=(str(ledger_path), budget, barrier, results)
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = sorted((results.get(timeout=180) for _ in workers), key=lambda o: o[0])
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    assert [o[0] for o in outcomes] == ["refused", "reserved"], outcomes
    _, spent, after, refused_budget = outcomes[0]
    assert spent == pytest.approx(three, rel=0.01)
    assert after == pytest.approx(four, rel=0.01)
    assert after > refused_budget == budget
    with PrivacyLedger(ledger_path) as ledger:
        assert len(ledger.rows(FP)) == 3
        assert ledger.epsilon_spent(FP, DELTA) <= budget


# --- property: whatever happens, the ledger stays within the budget -------------------------
# Full-batch releases (q = 1) keep RDP cheap, so hundreds of sequences fit in seconds.

RELEASES = st.builds(
    DpRelease,
    noise_multiplier=st.floats(0.5, 20.0),
    sample_rate=st.just(1.0),
    steps=st.integers(0, 20),
)

AFTERWARDS = st.sampled_from(["released", "released early", "cancelled", "left reserved"])
# The property is about the guard, not the disk: a RAM-backed folder where there is one (a
# commit's fsync on a real disk costs ~20 ms; 200 sequences would take minutes).

FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

OPERATIONS = st.lists(
    st.tuples(st.sampled_from([FP, OTHER_FP]), RELEASES, AFTERWARDS), min_size=1, max_size=10
)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(budget=st.floats(0.05, 30.0), delta=st.sampled_from([1e-6, 1e-5, 1e-3]), ops=OPERATIONS)
def test_property_epsilon_never_exceeds_the_budget(budget, delta, ops):
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp, PrivacyLedger(Path(tmp) / "l") as ledger:
        for round_number, (fingerprint, release, afterwards) in enumerate(ops):
            spent = ledger.epsilon_spent(fingerprint, delta, "rdp")
            rows = ledger.rows()
            try:
                row_id = reserve(
                    ledger,
                    release,
                    fingerprint=fingerprint,
                    accountant="rdp",
                    round_number=round_number,
                    epsilon_budget=budget,
                    delta=delta,
                )
            except BudgetExceededError as err:
                assert err.epsilon_after > budget
                assert err.epsilon_spent == spent
                assert err.epsilon_budget == budget
                assert ledger.rows() == rows  # nothing recorded
                continue
            assert len(ledger.rows()) == len(rows) + 1
            if afterwards == "released":
                ledger.mark_released(row_id, release.steps)
            elif afterwards == "released early":
                ledger.mark_released(row_id, release.steps // 2)
            elif afterwards == "cancelled":
                ledger.cancel(row_id)
            for key in (FP, OTHER_FP):
                assert ledger.epsilon_spent(key, delta, "rdp") <= budget


def test_after_a_non_private_update_every_dp_reservation_on_that_dataset_is_refused(ledger):
    reserve(ledger, DpRelease(1.0, 0.02, 10))
    ledger.record_non_private(FP, "baseline", 3)
    with pytest.raises(BudgetExceededError, match="without DP"):
        reserve(ledger, DpRelease(50.0, 0.01, 1), round_number=4)
    assert len(ledger.rows(FP)) == 1
    reserve(ledger, DpRelease(50.0, 0.01, 1), fingerprint=OTHER_FP)  # its own bound holds
    assert len(ledger.rows(OTHER_FP)) == 1


# --- the budget rule on its own --------------------------------------------------------------
def test_the_budget_rule_admits_up_to_the_budget_and_refuses_past_it():
    past = [DpRelease(1.0, 0.05, 100)]
    release = DpRelease(1.2, 0.05, 100)
    spent = compute_epsilon(past, DELTA, "rdp")
    after = compute_epsilon([*past, release], DELTA, "rdp")
    assert after == pytest.approx(opacus_rdp([(1.0, 0.05, 100), (1.2, 0.05, 100)], DELTA), rel=0.01)
    budget_rule(release, delta=DELTA, accountant="rdp", epsilon_budget=after)(past)  # = budget
    budget = after * 0.999
    with pytest.raises(BudgetExceededError) as refused:
        budget_rule(release, delta=DELTA, accountant="rdp", epsilon_budget=budget)(past)
    assert (refused.value.epsilon_spent, refused.value.epsilon_after) == (spent, after)
    assert str(refused.value) == (
        f"budget exhausted: this round would bring epsilon from {spent:.4f} to {after:.4f}, "
        f"over the budget {budget:.4f} ({budget - spent:.4f} left)"
    )


@pytest.mark.parametrize("budget", [-0.5, float("inf"), float("nan")])
def test_a_budget_that_is_not_a_finite_number_at_least_0_is_an_error(budget):
    with pytest.raises(ValueError, match="finite number >= 0"):
        budget_rule(DpRelease(1.0, 0.02, 1), delta=DELTA, accountant="rdp", epsilon_budget=budget)


# --- answers about the validation records ----------------------------------------------------
def answering_site(ledger_path, epsilon_budget=0.0, **policy):
    """What the gate reads of a site for an answer: policy, run settings, validation records."""
    return SimpleNamespace(
        policy=SiteSettings(epsilon_budget=epsilon_budget, **policy),
        settings=SimpleNamespace(target_epsilon=2.0, target_delta=0.0, accountant="rdp"),
        data=SimpleNamespace(
            validation=[None] * 100, validation_key="s/validation", validation_since=0
        ),
        ledger_path=ledger_path,
        session="flwr-7",
    )


def test_answers_are_reserved_on_the_validation_records_until_the_budget_refuses(ledger):
    z = 5.0
    one = opacus_rdp([(z, 1.0, 1)], 1e-3)  # delta = 0.1 / 100 validation records
    two = opacus_rdp([(z, 1.0, 1)] * 2, 1e-3)
    site = answering_site(ledger.path, epsilon_budget=(one + two) / 2)
    row_id = reserve_answer(ledger, site, z, "evaluation", "run-1", 3)
    (row,) = ledger.rows("s/validation")
    assert (row.id, row.release, row.delta, row.accountant) == (
        row_id,
        DpRelease(z, 1.0, 1),
        1e-3,
        "rdp",
    )
    assert (row.purpose, row.session, row.epsilon_budget) == (
        "evaluation",
        "flwr-7",
        (one + two) / 2,
    )
    with pytest.raises(BudgetRefused, match="^budget exhausted: this round would bring") as refused:
        reserve_answer(ledger, site, z, "group-counts", "run-1", 3)
    assert refused.value.status == BUDGET_EXHAUSTED
    assert refused.value.epsilon_spent == pytest.approx(one, rel=0.01)
    assert refused.value.epsilon_budget == (one + two) / 2
    assert len(ledger.rows("s/validation")) == 1


def test_answers_without_a_site_budget_are_bounded_by_the_runs_target(ledger):
    site = answering_site(ledger.path)
    assert validation_budget(site) == 2.0
    assert validation_budget(answering_site(ledger.path, epsilon_budget=0.7)) == 0.7
    reserve_answer(ledger, site, 5.0, "evaluation", "run-1", 1)
    assert ledger.rows("s/validation")[0].epsilon_budget == 2.0


def test_non_private_answers_are_refused_once_the_days_cap_is_reached(ledger):
    policy = SiteSettings(max_exact_answers_per_day=2)
    ledger.record_policy_release("s/validation", "run-1", 1, "exact-evaluation", "flwr-7")
    check_non_private_answers(ledger, policy)  # 1 of 2
    ledger.record_policy_release("s/train", "run-1", 1, "audit-figures", "flwr-7")
    with pytest.raises(RoundRefused) as refused:
        check_non_private_answers(ledger, policy)
    assert refused.value.status == RELEASE_REFUSED
    assert str(refused.value) == (
        "2 non-private answers in the last 24 h (site max-exact-answers-per-day = 2)"
    )
    check_non_private_answers(ledger, SiteSettings(max_exact_answers_per_day=3))


# --- replays and caps, before the model is loaded --------------------------------------------
def training_site(ledger_path, session="flwr-7", **policy):
    return SimpleNamespace(
        policy=SiteSettings(**policy),
        data=SimpleNamespace(train_key=FP),
        ledger_path=ledger_path,
        session=session,
    )


def test_a_released_round_is_refused_as_a_replay_and_a_reserved_one_may_retry(ledger):
    site = training_site(ledger.path)
    crashed = reserve(ledger, DpRelease(1.0, 0.02, 10), run_id="run-1", round_number=1)
    check_caps(ledger, site, "run-1", 1)  # reserved, never released: the retry may train
    ledger.mark_released(crashed, 10)
    with pytest.raises(RoundRefused) as refused:
        check_caps(ledger, site, "run-1", 1)
    assert refused.value.status == REPLAYED
    assert str(refused.value) == (
        "replay refused: round 1 of run 'run-1' was already trained and released by this "
        "site; a round is released once"
    )
    ledger.record_non_private(FP, "run-1", 2)
    with pytest.raises(RoundRefused, match="round 2 of run 'run-1'"):
        check_caps(ledger, site, "run-1", 2)
    check_caps(ledger, site, "run-2", 1)


def test_rounds_are_capped_per_run_per_asking_flower_run_and_per_day(ledger):
    for number, (run_id, session) in enumerate([("a", "flwr-1"), ("b", "flwr-1")], 1):
        ledger.mark_released(
            reserve_within_budget(
                ledger,
                FP,
                run_id,
                number,
                DpRelease(1.0, 0.02, 10),
                delta=DELTA,
                accountant="pld",
                epsilon_budget=1e3,
                session=session,
            ),
            10,
        )
    per_run = training_site(ledger.path, "flwr-9", max_rounds_per_run=1)
    with pytest.raises(RoundRefused, match="at most 1 round"):
        check_caps(ledger, per_run, "a", 5)  # run a has 1
    with pytest.raises(RoundRefused) as refused:  # a new run key in the same Flower run
        check_caps(ledger, training_site(ledger.path, "flwr-1", max_rounds_per_run=2), "c", 1)
    assert refused.value.status == ROUND_LIMIT
    assert str(refused.value) == (
        "round limit: this site trains at most 2 round(s) per run and has trained 2"
    )
    check_caps(ledger, training_site(ledger.path, "flwr-2", max_rounds_per_run=2), "c", 1)
    per_day = training_site(ledger.path, "flwr-2", max_rounds_per_day=2)
    with pytest.raises(RoundRefused) as refused:
        check_caps(ledger, per_day, "c", 1)
    assert refused.value.status == ROUND_LIMIT
    assert str(refused.value) == (
        "round limit: this site trains at most 2 round(s) a day and has trained 2 in the last 24 h"
    )
    assert ledger.releases_since(time.time() - 2 * 86_400.0) == 2
    check_caps(ledger, training_site(ledger.path, "flwr-2", max_rounds_per_day=3), "c", 1)


def test_a_non_private_request_without_consent_is_refused_before_the_ledger_is_opened(
    ledger_path,
):
    site = training_site(ledger_path)
    with pytest.raises(RoundRefused, match="allow-non-private") as refused:
        check_request(site, request(dp=False))
    assert refused.value.status == NON_PRIVATE_REFUSED
    assert not ledger_path.exists()
    check_request(training_site(ledger_path, allow_non_private=True), request(dp=False))
    assert ledger_path.is_file()  # the caps were read from it
