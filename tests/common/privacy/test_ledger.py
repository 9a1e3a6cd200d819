"""common/privacy/ledger.py: the ledger file as a site opens it, and what survives reopening.

The parts have their own tests: test_ledger_schema.py (opening, upgrades), test_ledger_types.py,
test_ledger_queries.py (reads, epsilon recomputed), test_ledger_writes.py (reservations, marks);
the budget rule is the site gate's (tests/client/test_gate.py).
"""

import pytest

from common.privacy.accounting import DpRelease
from common.privacy.ledger import (
    BudgetExceededError,
    LedgerError,
    LedgerRow,
    PrivacyLedger,
    RunPlan,
    RunSummary,
    default_ledger_path,
)
from tests.common.privacy.ledger_support import DELTA, FP, opacus_rdp, reserve


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "site" / "privacy-ledger.sqlite"


@pytest.fixture
def ledger(ledger_path):
    with PrivacyLedger(ledger_path) as opened:
        yield opened


# --- opening -------------------------------------------------------------------------------


def test_a_new_ledger_is_empty_and_its_folder_is_created(ledger_path):
    assert not ledger_path.parent.exists()
    with PrivacyLedger(ledger_path) as fresh:
        assert fresh.rows() == [] and fresh.datasets() == []
        assert fresh.epsilon_spent(FP, DELTA) == 0.0
        assert fresh.run_plan(FP, "run-1") is None
    assert ledger_path.is_file()


def test_rows_plans_and_datasets_survive_closing_and_reopening(ledger_path):
    plan = RunPlan(1.1, 0.02, 50, 5, 4.0, DELTA, "pld", 1.1)
    with PrivacyLedger(ledger_path) as first:
        first.register_dataset(FP, "heart-disease/site-1", 270)
        first.save_run_plan(FP, "run-1", plan)
        released = reserve(first, DpRelease(1.1, 0.02, 50))
        first.mark_released(released, 50)
        reserve(first, DpRelease(1.1, 0.02, 50), round_number=2)  # left reserved: still counts
        rows = first.rows()
    with PrivacyLedger(ledger_path) as second:  # what the next ClientApp process does
        assert second.rows() == rows
        assert [r.status for r in second.rows(FP)] == ["released", "reserved"]
        assert second.run_plan(FP, "run-1") == plan
        assert second.datasets() == [(FP, "heart-disease/site-1", 270)]
        history = [(1.1, 0.02, 50), (1.1, 0.02, 50)]
        assert second.epsilon_spent(FP, DELTA, "rdp") == pytest.approx(
            opacus_rdp(history), rel=0.01
        )


def test_the_ledgers_names_are_importable_from_one_module(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPRIV_HOME", str(tmp_path / "home"))
    assert default_ledger_path() == tmp_path / "home" / "ledger.sqlite"
    assert issubclass(BudgetExceededError, RuntimeError) and issubclass(LedgerError, RuntimeError)
    assert {LedgerRow.__name__, RunSummary.__name__} == {"LedgerRow", "RunSummary"}
