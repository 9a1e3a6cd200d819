"""The site's privacy decision for one training round: plan, budget check, reservation.

One hop from client/app.py. Inputs are the site's own settings (budget, delta, ledger) and the
server's request (target epsilon for the run, clip norm, rounds). sigma is calibrated once per
(run, dataset) for rounds x steps and kept in the ledger, so fresh processes reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import RunSettings, SiteSettings
from common.privacy.accounting import DpRelease
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.ledger import PrivacyLedger, RunPlan


@dataclass(frozen=True)
class RoundPrivacy:
    """What this round may spend: the plan, the site's delta and budget, the spend so far."""

    plan: RunPlan
    delta: float
    epsilon_budget: float
    epsilon_spent_before: float


def site_delta(site: SiteSettings, settings: RunSettings, num_records: int) -> float:
    """The site's delta; default 0.1/n (< 1/n, the usual bar) for its n training records."""
    return site.delta or settings.target_delta or 0.1 / num_records


def site_budget(site: SiteSettings, settings: RunSettings) -> float:
    """The dataset's lifetime epsilon budget; default the run's target epsilon."""
    return site.epsilon_budget or settings.target_epsilon


def plan_round(
    ledger: PrivacyLedger,
    fingerprint: str,
    run_id: str,
    settings: RunSettings,
    site: SiteSettings,
    *,
    num_records: int,
    sample_rate: float,
    steps_per_round: int,
) -> RoundPrivacy:
    """The run's calibrated plan (made at its first round, then read back) and the spend so far.

    sigma = calibrate(target epsilon of the run, delta, q, rounds x steps): the planned run on
    its own costs ``target-epsilon``; the ledger then composes it with everything before.
    """
    delta = site_delta(site, settings, num_records)
    plan = ledger.run_plan(fingerprint, run_id)
    if plan is None:
        sigma = calibrate_noise_multiplier(
            settings.target_epsilon,
            delta,
            sample_rate,
            steps_per_round * settings.num_server_rounds,
            settings.accountant,
        )
        plan = ledger.save_run_plan(
            fingerprint,
            run_id,
            RunPlan(
                noise_multiplier=sigma,
                sample_rate=sample_rate,
                steps_per_round=steps_per_round,
                planned_rounds=settings.num_server_rounds,
                target_epsilon=settings.target_epsilon,
                delta=delta,
                accountant=settings.accountant,
            ),
        )
    spent = ledger.epsilon_spent(fingerprint, plan.delta, plan.accountant)
    return RoundPrivacy(plan, plan.delta, site_budget(site, settings), spent)


def this_round(privacy: RoundPrivacy) -> DpRelease:
    """The release one round makes under the plan: steps_per_round steps at (sigma, q)."""
    p = privacy.plan
    return DpRelease(p.noise_multiplier, p.sample_rate, p.steps_per_round)
