"""A site's privacy gate: may this release leave the site, and what does it cost.

The one place a site decides, one hop from client/local_round.py, client/evaluation_release.py
and client/final_evaluation.py. A training round: the policy's consent to non-private training,
replays and round caps counted from the ledger (``check_request``), then the policy's clamps
(client/policy.py), the run's plan (sigma fixed at the run's first round and kept in the ledger,
so fresh processes reuse it) and the budget rule (``authorize_round``). A Gaussian answer on the
validation records: the budget rule (``reserve_answer``). A non-private answer: the daily cap
(``check_non_private_answers``). The output is a *reserved* ledger row, or a refusal carrying
its protocol status and reason, recording nothing.

The ledger (common/privacy/ledger.py) is storage only: the gate reads it and stores what it
decided. The budget rule is passed into ``PrivacyLedger.reserve`` as a function because it
must run inside the ledger's write transaction (two processes cannot both take the last round).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from client.policy import (
    Clamp,
    RoundRefused,
    check_non_private,
    check_round_cap,
    clip_norm,
    noise_multiplier,
    planned_rounds,
    run_target_epsilon,
)
from client.site_context import Site
from common.config import SiteSettings
from common.privacy.accounting import DpRelease, Release, compute_epsilon
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.delta import site_delta
from common.privacy.gaussian_sum import gaussian_release
from common.privacy.ledger import Admission, BudgetExceededError, PrivacyLedger, RunPlan
from common.protocol.records import BUDGET_EXHAUSTED, RELEASE_REFUSED, REPLAYED, ROUND_LIMIT
from common.protocol.request import TrainRequest

DAY = 86_400.0


# --- the budget ------------------------------------------------------------------------------
def site_budget(policy: SiteSettings, requested_epsilon: float) -> float:
    """The dataset's lifetime epsilon budget: the policy's epsilon-budget. Deployed sites must
    set one (site_context checks); a simulated site without one takes the requested target
    epsilon (the request's, or the run's settings' for answers and unreadable requests)."""
    return policy.epsilon_budget or requested_epsilon


def budget_rule(
    release: DpRelease, *, delta: float, accountant: str, epsilon_budget: float
) -> Admission:
    """The rule a reservation must pass: epsilon at ``delta`` of what already counts plus
    ``release`` stays <= ``epsilon_budget``. The returned check raises BudgetExceededError
    (with the epsilon spent, after and the budget) otherwise."""
    if not (math.isfinite(epsilon_budget) and epsilon_budget >= 0):
        raise ValueError(f"epsilon budget must be a finite number >= 0, got {epsilon_budget}")

    def admit(past: list[Release]) -> None:
        spent = compute_epsilon(past, delta, accountant)  # inf after a non-private update
        after = compute_epsilon([*past, release], delta, accountant)
        if after > epsilon_budget:
            raise BudgetExceededError(spent, after, epsilon_budget)

    return admit


def reserve_within_budget(
    ledger: PrivacyLedger,
    fingerprint: str,
    run_id: str,
    round_number: int,
    release: DpRelease,
    *,
    delta: float,
    accountant: str,
    epsilon_budget: float,
    since: int = 0,
    purpose: str = "dp-sgd",
    session: str = "",
) -> int:
    """Reserve ``release`` on dataset ``fingerprint`` if the budget rule admits it (atomically:
    the rule runs inside the ledger's write transaction).

    since: the oldest present record's ``since`` (its epsilon is the largest); purpose: what
    the release is (dp-sgd, evaluation, group-counts); session: who asked. Raises
    BudgetExceededError, recording nothing. Returns the row id to ``mark_released`` or
    ``cancel``.
    """
    rule = budget_rule(release, delta=delta, accountant=accountant, epsilon_budget=epsilon_budget)
    return ledger.reserve(
        fingerprint,
        run_id,
        round_number,
        release,
        delta=delta,
        accountant=accountant,
        epsilon_budget=epsilon_budget,
        admit=rule,
        since=since,
        purpose=purpose,
        session=session,
    )


class BudgetRefused(RoundRefused):
    """The release would take the dataset past its budget. Carries the spend and the budget."""

    def __init__(self, reason: str, epsilon_spent: float, epsilon_budget: float) -> None:
        super().__init__(BUDGET_EXHAUSTED, reason)
        self.epsilon_spent = epsilon_spent
        self.epsilon_budget = epsilon_budget


# --- a training round ------------------------------------------------------------------------
def check_request(site: Site, request: TrainRequest) -> None:
    """Before the model is loaded: refuse non-private training without the policy's consent,
    then a replayed or capped round (``check_caps``). Raises RoundRefused."""
    check_non_private(request, site.policy)
    with PrivacyLedger(site.ledger_path) as ledger:
        check_caps(ledger, site, request.run_key, request.server_round)


def check_caps(ledger: PrivacyLedger, site: Site, run_id: str, server_round: int) -> None:
    """Refuse a replayed (run, round) and rounds past the site's caps, counted from its own
    ledger: per run key (max-rounds-per-run), per asking Flower run (the same cap: new run keys
    in one Flower run do not reset it) and per 24 hours of the site's clock (max-rounds-per-day).
    """
    key = site.data.train_key
    if ledger.round_released(key, run_id, server_round):
        raise RoundRefused(
            REPLAYED,
            f"replay refused: round {server_round} of run {run_id!r} was already trained and "
            "released by this site; a round is released once",
        )
    check_round_cap(ledger.rounds_recorded(key, run_id), site.policy)
    check_round_cap(ledger.sessions_rounds(site.session), site.policy)
    cap = site.policy.max_rounds_per_day
    if cap:
        recent = ledger.releases_since(time.time() - DAY)
        if recent >= cap:
            raise RoundRefused(
                ROUND_LIMIT,
                f"round limit: this site trains at most {cap} round(s) a day and has trained "
                f"{recent} in the last 24 h",
            )


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
    budget = site_budget(policy, request.target_epsilon)
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
        row_id = reserve_within_budget(
            ledger,
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


# --- answers about the validation records ----------------------------------------------------
def validation_delta(site: Site) -> float:
    """delta of the validation records' answers: the site's, for its n validation records."""
    return site_delta(site.policy, site.settings.target_delta, len(site.data.validation))


def validation_budget(site: Site) -> float:
    """The validation records' budget: the site's, else the run's target epsilon."""
    return site_budget(site.policy, site.settings.target_epsilon)


def reserve_answer(
    ledger: PrivacyLedger, site: Site, z: float, purpose: str, run_key: str, server_round: int
) -> int:
    """Reserve one Gaussian answer (noise multiplier z) on the validation records against the
    budget of the oldest of them; BudgetRefused (nothing recorded; str() is the budget rule's
    message) if it cannot afford it. The caller computes the answer, then
    ``ledger.mark_released(row, 1)``."""
    budget = validation_budget(site)
    try:
        return reserve_within_budget(
            ledger,
            site.data.validation_key,
            run_key,
            server_round,
            gaussian_release(z),
            delta=validation_delta(site),
            accountant=site.settings.accountant,
            epsilon_budget=budget,
            since=site.data.validation_since,
            purpose=purpose,
            session=site.session,
        )
    except BudgetExceededError as err:
        raise BudgetRefused(str(err), err.epsilon_spent, budget) from err


def non_private_answers_today(ledger: PrivacyLedger) -> int:
    """Non-private answers (exact evaluation, audit figures) recorded in the last 24 h."""
    return sum(
        ledger.policy_releases_since(time.time() - DAY, purpose)
        for purpose in ("exact-evaluation", "audit-figures")
    )


def check_non_private_answers(ledger: PrivacyLedger, policy: SiteSettings) -> None:
    """Refuse a non-private answer (exact evaluation, audit figures) once the last 24 h hold
    max-exact-answers-per-day of them: RoundRefused(RELEASE_REFUSED). The caller records the
    answer (``ledger.record_policy_release``) before it leaves."""
    used = non_private_answers_today(ledger)
    cap = policy.max_exact_answers_per_day
    if used >= cap:
        raise RoundRefused(
            RELEASE_REFUSED,
            f"{used} non-private answers in the last 24 h (site max-exact-answers-per-day = {cap})",
        )
