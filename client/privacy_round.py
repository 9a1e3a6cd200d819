"""The site's privacy decision for one training round: policy, plan, budget check, reservation.

One hop from client/local_round.py. Inputs: the site's policy (budget, delta, sigma floor, clip
cap, rounds cap, ledger) and the server's request (target epsilon for the run, sigma, C,
rounds, batch size, epochs). sigma is fixed once per (run, dataset) at the run's first round
and kept in the ledger, so fresh processes reuse it. The output is either an authorization
backed by a *reserved* ledger row, or a RoundRefused with the reason; a refusal records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from client.policy import (
    Clamp,
    RoundRefused,
    check_round_cap,
    clip_norm,
    noise_multiplier,
    planned_rounds,
    run_target_epsilon,
)
from common.config import SiteSettings
from common.privacy.accounting import DpRelease
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.delta import site_delta
from common.privacy.ledger import BudgetExceededError, PrivacyLedger, RunPlan
from common.protocol.records import BUDGET_EXHAUSTED
from common.protocol.request import TrainRequest


@dataclass(frozen=True)
class RoundAuthorization:
    """A round the site may train: the release it reserved (sigma, q, steps) and clip C, the
    ledger row holding the reservation, the site's delta and budget, and what was clamped."""

    row_id: int
    release: DpRelease
    max_grad_norm: float
    plan: RunPlan
    epsilon_budget: float
    epsilon_spent_before: float
    clamps: tuple[Clamp, ...]

    @property
    def delta(self) -> float:
        return self.plan.delta


class BudgetRefused(RoundRefused):
    """The round would take the dataset past its budget. Carries the spend and the budget."""

    def __init__(self, reason: str, epsilon_spent: float, epsilon_budget: float) -> None:
        super().__init__(BUDGET_EXHAUSTED, reason)
        self.epsilon_spent = epsilon_spent
        self.epsilon_budget = epsilon_budget


def site_budget(policy: SiteSettings, request: TrainRequest) -> float:
    """The dataset's lifetime epsilon budget. Deployed sites must set one (site_context checks);
    a simulated site without one takes the run's target epsilon."""
    return policy.epsilon_budget or request.target_epsilon


def authorize_round(
    ledger: PrivacyLedger,
    fingerprint: str,
    run_id: str,
    server_round: int,
    request: TrainRequest,
    policy: SiteSettings,
    *,
    requested_delta: float,
    accountant: str,
    num_records: int,
    sample_rate: float,
    steps: int,
    since: int = 0,
    session: str = "",
) -> RoundAuthorization:
    """Apply the policy, fix or read the run's plan, and reserve this round's release.

    since: the ledger's ``since`` of the oldest training record present (the budget bounds its
    epsilon, the largest); session: who asked. Raises RoundRefused (round cap) or BudgetRefused
    (epsilon after > budget); nothing is recorded then. The caller trains, then
    ``ledger.mark_released`` or ``ledger.cancel``.
    """
    budget = site_budget(policy, request)
    check_round_cap(ledger.rounds_recorded(fingerprint, run_id), policy)
    clip, clamps = clip_norm(request, policy)
    target, target_clamps = run_target_epsilon(request, budget)
    rounds, round_clamps = planned_rounds(request, policy)
    plan = ledger.run_plan(fingerprint, run_id)
    if plan is None:
        delta = site_delta(policy, requested_delta, num_records)
        asked = request.noise_multiplier or calibrate_noise_multiplier(
            target, delta, sample_rate, steps * rounds, accountant
        )
        plan = ledger.save_run_plan(
            fingerprint,
            run_id,
            RunPlan(
                noise_multiplier=max(asked, policy.min_noise_multiplier),
                sample_rate=sample_rate,
                steps_per_round=steps,
                planned_rounds=rounds,
                target_epsilon=target,
                delta=delta,
                accountant=accountant,
                requested_noise_multiplier=asked,
            ),
        )
    sigma, sigma_clamps = noise_multiplier(
        request.noise_multiplier or plan.requested_noise_multiplier, plan.noise_multiplier, policy
    )
    release = DpRelease(sigma, sample_rate, steps)
    spent = ledger.epsilon_spent(fingerprint, plan.delta, plan.accountant, since=since)
    try:
        row_id = ledger.reserve(
            fingerprint,
            run_id,
            server_round,
            release,
            delta=plan.delta,
            accountant=plan.accountant,
            epsilon_budget=budget,
            since=since,
            session=session,
        )
    except BudgetExceededError as err:
        raise BudgetRefused(str(err), err.epsilon_spent, budget) from err
    return RoundAuthorization(
        row_id=row_id,
        release=release,
        max_grad_norm=clip,
        plan=plan,
        epsilon_budget=budget,
        epsilon_spent_before=spent,
        clamps=(*clamps, *target_clamps, *round_clamps, *sigma_clamps),
    )
