"""common/privacy/ledger_writes.py: reservations (atomic with the caller's admission rule),
marks, cancellations, run plans and datasets."""

import pytest

from common.privacy.accounting import DpRelease, NonPrivateRelease
from common.privacy.ledger import PrivacyLedger, RunPlan
from tests.common.privacy.ledger_support import (
    DELTA,
    FP,
    OTHER_FP,
    opacus_rdp,
    reserve,
)


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "site" / "privacy-ledger.sqlite"


@pytest.fixture
def ledger(ledger_path):
    with PrivacyLedger(ledger_path) as opened:
        yield opened


@pytest.mark.parametrize("accountant", ["prv", "PLD", ""])
def test_an_unknown_accountant_is_refused_and_nothing_is_recorded(ledger, accountant):
    with pytest.raises(ValueError, match="unknown accountant"):
        reserve(ledger, DpRelease(1.0, 0.02, 10), accountant=accountant)
    assert ledger.rows() == []


# --- marking and cancelling ----------------------------------------------------------------


def test_cancel_removes_only_a_reserved_row(ledger):
    released = reserve(ledger, DpRelease(1.0, 0.02, 10))
    ledger.mark_released(released, 10)
    pending = reserve(ledger, DpRelease(1.0, 0.02, 10), round_number=2)
    other = reserve(ledger, DpRelease(1.0, 0.02, 10), round_number=3)

    ledger.cancel(released)  # already left the site: must stay
    ledger.cancel(pending)
    ledger.cancel(10_000)  # no such row: nothing happens
    assert [(r.id, r.status) for r in ledger.rows()] == [
        (released, "released"),
        (other, "reserved"),
    ]


def test_mark_released_records_the_steps_actually_taken(ledger):
    row_id = reserve(ledger, DpRelease(1.0, 0.02, 30))
    ledger.mark_released(row_id, 12)
    (row,) = ledger.rows()
    assert (row.status, row.steps) == ("released", 12)
    assert ledger.epsilon_spent(FP, DELTA, "rdp") == pytest.approx(
        opacus_rdp([(1.0, 0.02, 12)]), rel=0.01
    )


# --- run plans and datasets ----------------------------------------------------------------


def test_the_first_run_plan_saved_wins(ledger_path):
    first = RunPlan(1.2, 0.02, 40, 5, 4.0, DELTA, "pld", 1.0)
    second = RunPlan(0.7, 0.05, 80, 10, 8.0, 1e-6, "rdp", 0.7)
    with PrivacyLedger(ledger_path) as ledger:
        assert ledger.save_run_plan(FP, "run-1", first) == first
        assert ledger.save_run_plan(FP, "run-1", second) == first
        assert ledger.save_run_plan(FP, "run-2", second) == second
        assert ledger.save_run_plan(OTHER_FP, "run-1", second) == second
    with PrivacyLedger(ledger_path) as reopened:
        assert reopened.save_run_plan(FP, "run-1", second) == first
        assert reopened.run_plan(FP, "run-1") == first
        assert reopened.run_plan(FP, "run-3") is None


def test_a_dataset_is_registered_once(ledger):
    ledger.register_dataset(FP, "site-1", 100)
    ledger.register_dataset(FP, "site-1 again", 100)
    ledger.register_dataset(OTHER_FP, "site-2", 50)
    assert sorted(ledger.datasets()) == [(FP, "site-1", 100), (OTHER_FP, "site-2", 50)]


# --- the admission rule --------------------------------------------------------------------
class Refused(Exception):
    pass


def test_reserve_shows_the_rule_what_counts_after_since_and_a_refusal_records_nothing(ledger):
    first = reserve(ledger, DpRelease(1.0, 0.02, 10))
    reserve(ledger, DpRelease(2.0, 0.05, 20), round_number=2)
    reserve(ledger, DpRelease(3.0, 0.5, 1), fingerprint=OTHER_FP)
    ledger.record_non_private(FP, "baseline", 9)
    shown = []

    def refuse(past):
        shown.append(past)
        raise Refused("no")

    before = ledger.rows()
    for since in (0, first):
        with pytest.raises(Refused):
            ledger.reserve(
                FP,
                "run-1",
                3,
                DpRelease(1.0, 0.02, 10),
                delta=DELTA,
                accountant="pld",
                epsilon_budget=1.0,
                admit=refuse,
                since=since,
            )
    assert shown == [
        [DpRelease(1.0, 0.02, 10), DpRelease(2.0, 0.05, 20), NonPrivateRelease("baseline", 9)],
        [DpRelease(2.0, 0.05, 20), NonPrivateRelease("baseline", 9)],  # after row ``first``
    ]
    assert ledger.rows() == before


def test_a_reservation_stores_the_budget_purpose_and_session_it_was_given(ledger):
    row_id = ledger.reserve(
        FP,
        "run-7",
        4,
        DpRelease(1.5, 1.0, 1),
        delta=1e-4,
        accountant="rdp",
        epsilon_budget=2.5,
        admit=lambda past: None,
        purpose="evaluation",
        session="flwr-42",
    )
    (row,) = ledger.rows(FP)
    assert (row.id, row.run_id, row.round, row.status) == (row_id, "run-7", 4, "reserved")
    assert (row.delta, row.accountant, row.epsilon_budget) == (1e-4, "rdp", 2.5)
    assert (row.purpose, row.session) == ("evaluation", "flwr-42")
    assert ledger.sessions_rounds("flwr-42", "evaluation") == 1
    assert ledger.sessions_rounds("flwr-42") == 0  # dp-sgd rounds only
