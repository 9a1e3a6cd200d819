"""common/privacy/ledger_queries.py: reading the ledger; epsilon recomputed from the rows.

Epsilons are checked against dp-accounting events built here (PLD at its default discretisation)
or Opacus's RDP accountant fed the rows' (sigma, q, steps); never against accounting.py itself.
"""

import time

import pytest

from common.privacy.accounting import DpRelease, NonPrivateRelease
from common.privacy.ledger import PrivacyLedger, RunPlan
from tests.common.privacy.ledger_support import (
    DELTA,
    FP,
    OTHER_FP,
    batches,
    opacus_rdp,
    reference_pld,
    reserve,
)


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "site" / "privacy-ledger.sqlite"


@pytest.fixture
def ledger(ledger_path):
    with PrivacyLedger(ledger_path) as opened:
        yield opened


def test_epsilon_spent_is_the_composition_of_every_row(ledger):
    # run 1: two rounds released in full; run 2: one round stopped after 20 of 30 steps, and
    # one reserved round whose process died before marking it (it still counts).
    for run_id, round_number, release, done in [
        ("run-1", 1, DpRelease(1.0, 0.01, 50), 50),
        ("run-1", 2, DpRelease(1.0, 0.01, 50), 50),
        ("run-2", 1, DpRelease(0.8, 0.02, 30), 20),
        ("run-2", 2, DpRelease(0.8, 0.02, 30), None),
    ]:
        row_id = reserve(ledger, release, run_id=run_id, round_number=round_number)
        if done is not None:
            ledger.mark_released(row_id, done)

    rows = ledger.rows(FP)
    assert [(r.run_id, r.round, r.status) for r in rows] == [
        ("run-1", 1, "released"),
        ("run-1", 2, "released"),
        ("run-2", 1, "released"),
        ("run-2", 2, "reserved"),
    ]
    recorded = [(1.0, 0.01, 50), (1.0, 0.01, 50), (0.8, 0.02, 20), (0.8, 0.02, 30)]
    assert batches(rows) == recorded
    assert all(r.delta == DELTA and r.accountant == "pld" for r in rows)
    assert all(time.time() - 60 < r.recorded_at <= time.time() for r in rows)

    spent = ledger.epsilon_spent(FP, DELTA, "pld")
    assert spent == pytest.approx(reference_pld(recorded), rel=0.01)
    assert ledger.epsilon_spent(FP, DELTA, "rdp") == pytest.approx(opacus_rdp(recorded), rel=0.01)
    assert ledger.epsilon_spent(FP, DELTA, "pld") < ledger.epsilon_spent(FP, DELTA, "rdp")


def test_each_dataset_has_its_own_spend(ledger):
    reserve(ledger, DpRelease(1.0, 0.02, 100))
    reserve(ledger, DpRelease(2.0, 0.05, 40), fingerprint=OTHER_FP)
    assert batches(ledger.rows(FP)) == [(1.0, 0.02, 100)]
    assert batches(ledger.rows(OTHER_FP)) == [(2.0, 0.05, 40)]
    assert len(ledger.rows()) == 2
    for fingerprint, history in [(FP, [(1.0, 0.02, 100)]), (OTHER_FP, [(2.0, 0.05, 40)])]:
        spent = ledger.epsilon_spent(fingerprint, DELTA, "rdp")
        assert spent == pytest.approx(opacus_rdp(history), rel=0.01)


def test_a_non_private_release_voids_every_epsilon_bound_on_that_dataset(ledger):
    reserve(ledger, DpRelease(1.0, 0.02, 10))
    ledger.record_non_private(FP, "baseline", 3)
    assert ledger.non_private_rounds(FP) == [("baseline", 3)]
    assert ledger.epsilon_spent(FP, DELTA) == float("inf")
    assert ledger.epsilon_spent(OTHER_FP, DELTA) == 0.0  # other datasets keep their bound
    # what a reservation's admission rule is shown: the DP rows, then the non-private update
    # (the gate then refuses every DP reservation: tests/client/test_gate.py)
    assert ledger.releases(FP) == [DpRelease(1.0, 0.02, 10), NonPrivateRelease("baseline", 3)]
    assert ledger.releases(OTHER_FP) == []
    assert len(ledger.rows(FP)) == 1


def test_runs_list_each_plan_with_released_and_reserved_rounds(ledger):
    plan = RunPlan(1.1, 0.02, 50, 5, 4.0, DELTA, "pld", 0.9)
    ledger.save_run_plan(FP, "run-1", plan)
    ledger.save_run_plan(OTHER_FP, "run-1", plan)
    for round_number in (1, 2):
        ledger.mark_released(
            reserve(ledger, DpRelease(1.1, 0.02, 50), round_number=round_number), 50
        )
    reserve(ledger, DpRelease(1.1, 0.02, 50), round_number=3)  # a crash mid-round
    (run,) = ledger.runs(FP)
    assert (run.run_id, run.plan, run.rounds, run.reserved) == ("run-1", plan, 2, 1)
    assert [r.fingerprint for r in ledger.runs()] == [FP, OTHER_FP]
    assert ledger.rounds_recorded(FP, "run-1") == 3
    assert ledger.rounds_recorded(OTHER_FP, "run-1") == 0
