"""common/privacy/ledger_types.py: the stored rows and the budget rule's error message."""

import math

import pytest

from common.privacy.accounting import DpRelease
from common.privacy.ledger import BudgetExceededError, LedgerRow, PrivacyLedger
from tests.common.privacy.ledger_support import FP, reserve


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "site" / "privacy-ledger.sqlite"


@pytest.fixture
def ledger(ledger_path):
    with PrivacyLedger(ledger_path) as opened:
        yield opened


def test_rows_are_ledger_rows_with_their_release(ledger):
    row_id = reserve(ledger, DpRelease(1.3, 0.04, 25), run_id="r", round_number=7)
    (row,) = ledger.rows(FP)
    assert isinstance(row, LedgerRow)
    assert (row.id, row.fingerprint, row.run_id, row.round) == (row_id, FP, "r", 7)
    assert row.release == DpRelease(1.3, 0.04, 25)


def test_the_budget_error_names_the_spend_the_epsilon_after_and_what_is_left():
    err = BudgetExceededError(1.2, 2.5, 2.0)
    assert (err.epsilon_spent, err.epsilon_after, err.epsilon_budget) == (1.2, 2.5, 2.0)
    assert str(err) == (
        "budget exhausted: this round would bring epsilon from 1.2000 to 2.5000, over the "
        "budget 2.0000 (0.8000 left)"
    )
    # spent already past the budget (a smaller budget set later): nothing left, never negative
    assert str(BudgetExceededError(3.0, 3.5, 2.0)).endswith("(0.0000 left)")


def test_the_budget_error_after_a_non_private_update_says_no_bound_holds():
    err = BudgetExceededError(math.inf, math.inf, 2.0)
    assert "without DP" in str(err) and "no epsilon bound holds" in str(err)
    assert err.epsilon_budget == 2.0
