"""What the privacy ledger holds and the errors it raises: plain frozen records.

LedgerRow is one stored release batch (sigma, q, steps, delta: what happened, never a derived
epsilon); RunPlan is a run's DP parameters fixed at its first round; RunSummary is a run as the
operator sees it. BudgetExceededError is the budget rule's refusal (client/gate.py applies the
rule; the ledger only stores what passed it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.privacy.accounting import DpRelease


class LedgerError(RuntimeError):
    """The ledger file cannot be used (corrupt, foreign, newer schema). Never auto-reset."""


class BudgetExceededError(RuntimeError):
    """A planned release would take the dataset's epsilon past its budget."""

    def __init__(self, epsilon_spent: float, epsilon_after: float, epsilon_budget: float) -> None:
        self.epsilon_spent = epsilon_spent
        self.epsilon_after = epsilon_after
        self.epsilon_budget = epsilon_budget
        if math.isinf(epsilon_spent):
            super().__init__(
                "budget exhausted: an update trained without DP already left the site on this "
                "dataset, so no epsilon bound holds for it any more"
            )
            return
        super().__init__(
            f"budget exhausted: this round would bring epsilon from {epsilon_spent:.4f} to "
            f"{epsilon_after:.4f}, over the budget {epsilon_budget:.4f} "
            f"({max(epsilon_budget - epsilon_spent, 0.0):.4f} left)"
        )


@dataclass(frozen=True)
class LedgerRow:
    """One recorded release batch."""

    id: int
    fingerprint: str
    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    status: str
    recorded_at: float
    epsilon_budget: float | None  # the budget this release was checked against
    purpose: str = "dp-sgd"  # dp-sgd | evaluation | group-counts
    session: str = ""  # the Flower run that asked (the site's own count of who asked)

    @property
    def release(self) -> DpRelease:
        return DpRelease(self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class RunPlan:
    """The DP parameters of one run on one dataset, fixed at its first round.

    noise_multiplier: sigma used (never below the site's floor); requested_noise_multiplier:
    sigma asked for or calibrated, before the floor; target_epsilon: what the planned
    rounds x steps at (sigma, q) cost on their own.
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    target_epsilon: float
    delta: float
    accountant: str
    requested_noise_multiplier: float


@dataclass(frozen=True)
class RunSummary:
    """One run on one dataset as the ledger saw it (for the operator view)."""

    fingerprint: str
    run_id: str
    created: float
    plan: RunPlan
    rounds: int
    reserved: int  # reservations never marked released (a crash mid-round): counted as spent
