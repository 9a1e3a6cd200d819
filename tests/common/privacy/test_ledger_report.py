"""common/privacy/ledger_report.py: the operator's numbers, checked against dp-accounting."""

import math

import pytest

from common.privacy.accounting import DpRelease
from common.privacy.ledger import PrivacyLedger, RunPlan
from common.privacy.ledger_report import dataset_report, export_records, round_report, run_report
from tests.common.privacy.ledger_support import admit_all
from tests.reference_accountants import reference_pld

FP, OTHER = "a" * 64, "b" * 64
DELTA = 1e-4


@pytest.fixture
def ledger(tmp_path):
    with PrivacyLedger(tmp_path / "ledger.sqlite") as opened:
        opened.register_dataset(FP, "Cleveland", 240)
        opened.register_dataset(OTHER, "Hungary", 200)
        for run, sigma, rounds in (("run-1", 1.1, 2), ("run-2", 1.6, 3)):
            opened.save_run_plan(FP, run, RunPlan(sigma, 0.05, 20, 3, 4.0, DELTA, "pld", sigma))
            for number in range(1, rounds + 1):
                row = opened.reserve(
                    FP,
                    run,
                    number,
                    DpRelease(sigma, 0.05, 20),
                    delta=DELTA,
                    accountant="pld",
                    epsilon_budget=9.0,
                    admit=admit_all,  # the operator's numbers, not the budget rule
                )
                if (run, number) != ("run-2", 3):  # the last one crashed mid-round
                    opened.mark_released(row, 20)
        yield opened


RUN_1, RUN_2 = [(1.1, 0.05, 20)] * 2, [(1.6, 0.05, 20)] * 3


def test_datasets_show_lifetime_spend_budget_and_left(ledger):
    cleveland, hungary = dataset_report(ledger)
    spent = reference_pld(RUN_1 + RUN_2, DELTA)
    assert cleveland["epsilon-spent"] == pytest.approx(spent, rel=0.01)
    assert cleveland["epsilon-left"] == pytest.approx(9.0 - spent, rel=0.01)
    assert (cleveland["runs"], cleveland["rounds"], cleveland["in-flight-or-crashed"]) == (2, 5, 1)
    assert (cleveland["epsilon-budget"], cleveland["delta"]) == (9.0, DELTA)
    assert (hungary["rounds"], hungary["epsilon-spent"], hungary["epsilon-budget"]) == (
        0,
        0.0,
        None,
    )


def test_the_policy_budget_and_delta_win_when_given(ledger):
    cleveland = dataset_report(ledger, budget=20.0, delta=1e-6)[0]
    assert cleveland["epsilon-budget"] == 20.0
    assert cleveland["epsilon-spent"] == pytest.approx(reference_pld(RUN_1 + RUN_2, 1e-6), rel=0.01)


def test_runs_show_their_plan_and_their_own_epsilon(ledger):
    first, second = run_report(ledger)
    assert (first["run"], first["rounds"], first["noise-multiplier"]) == ("run-1", 2, 1.1)
    assert first["epsilon-of-run"] == pytest.approx(reference_pld(RUN_1, DELTA), rel=0.01)
    assert (second["rounds"], second["in-flight-or-crashed"]) == (2, 1)
    assert second["epsilon-of-run"] == pytest.approx(reference_pld(RUN_2, DELTA), rel=0.01)
    assert run_report(ledger, OTHER) == []


def test_rounds_show_the_epsilon_after_each_release(ledger):
    rounds = round_report(ledger)
    history = RUN_1 + RUN_2
    assert [(r["run"], r["round"]) for r in rounds] == [
        ("run-1", 1), ("run-1", 2), ("run-2", 1), ("run-2", 2), ("run-2", 3),
    ]  # fmt: skip
    for i, record in enumerate(rounds):
        assert record["epsilon-after"] == pytest.approx(
            reference_pld(history[: i + 1], DELTA), rel=0.01
        )
    assert [r["round"] for r in round_report(ledger, FP, "run-2")] == [1, 2, 3]


def test_a_non_private_release_shows_as_infinite_epsilon_from_then_on(ledger):
    ledger.record_non_private(FP, "baseline", 1)
    assert dataset_report(ledger)[0]["epsilon-spent"] == math.inf
    assert dataset_report(ledger)[0]["epsilon-left"] == 0.0
    assert all(math.isfinite(r["epsilon-after"]) for r in round_report(ledger))  # before it


def test_export_holds_every_row_and_the_summaries(ledger):
    ledger.record_non_private(OTHER, "baseline", 4)
    export = export_records(ledger)
    assert len(export["releases"]) == 5 and len(export["runs"]) == 2
    assert export["releases"][0]["noise_multiplier"] == 1.1
    assert export["non-private-releases"] == [{"fingerprint": OTHER, "run": "baseline", "round": 4}]
    assert export["datasets"] == dataset_report(ledger)
