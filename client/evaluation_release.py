"""What a site may say about a model's performance on its validation records, and what it costs.

By default (policy ``evaluation = "dp"``) each answer is one Gaussian release on the validation
records (``common.privacy.gaussian_sum``): per record the vector (1, correct, min(loss, B)/B)
— a sentence: (1, its share of correct words, min(mean loss, B)/B, its entity TP/FP/FN clipped
to L2 norm E) — summed, with noise N(0, (z Delta)^2), Delta = sqrt(3) (NER: sqrt(3 + E^2)).
Accuracy = noisy correct / noisy n and loss = B x noisy loss sum / noisy n are post-processing.
The site's gate (client/gate.py) reserves the answer in the ledger (dataset
``<site>/validation``) against the site's budget before it is computed; once the budget cannot
afford one, the site refuses. ``"exact"`` answers are non-private, allowed only by the site's
policy and capped per day (the gate's cap); ``"off"`` refuses.
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from client.gate import (
    BudgetRefused,
    check_non_private_answers,
    reserve_answer,
    validation_budget,
    validation_delta,
)
from client.policy import RoundRefused
from client.site_context import Site
from common.entities import COUNTS, count_metrics
from common.evaluation import RecordOutcomes
from common.privacy.gaussian_sum import clip_rows, gaussian_sum
from common.privacy.ledger import PrivacyLedger
from common.protocol.records import RELEASE_REFUSED, TRAINED

Metrics = dict[str, float | int]

ENTITY_CLIP = 2.0  # E: L2 bound of one sentence's entity counts


class EvaluationRefused(Exception):
    """The site answers no evaluation now. status: a protocol code; str(): the reason."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(reason)


def evaluation_refusal(status: int) -> Metrics:
    """The metrics of a refused evaluation: no examples, no scores."""
    return {"status": status, "num-examples": 0, "eval-examples": 0}


def release_evaluation(
    site: Site, outcomes: RecordOutcomes, *, run_key: str, server_round: int
) -> Metrics:
    """The site's answer about ``outcomes`` (validation records) under its policy; raises
    EvaluationRefused (recording nothing) when the policy or the budget does not allow one."""
    mode = site.policy.evaluation
    if mode == "off":
        raise EvaluationRefused(RELEASE_REFUSED, "evaluation refused: site policy evaluation=off")
    if mode == "exact":
        return _exact(site, outcomes, run_key, server_round)
    return _noisy(site, outcomes, run_key, server_round)


def vectors(outcomes: RecordOutcomes, loss_bound: float) -> tuple[np.ndarray, float, list[str]]:
    """Per-record vectors, their sensitivity Delta and the entity types (NER) they hold."""
    n = len(outcomes.losses)
    base = np.stack(
        [np.ones(n), outcomes.correct, np.clip(outcomes.losses, 0.0, loss_bound) / loss_bound],
        axis=1,
    )
    if outcomes.entities is None:
        return base, math.sqrt(3.0), []
    types = sorted(outcomes.entities[0]) if outcomes.entities else []
    counts = np.array(
        [[c[t][i] for t in types for i in range(len(COUNTS))] for c in outcomes.entities],
        dtype=np.float64,
    ).reshape(n, len(types) * len(COUNTS))
    return np.hstack([base, clip_rows(counts, ENTITY_CLIP)]), math.sqrt(3.0 + ENTITY_CLIP**2), types


def _noisy(site: Site, outcomes: RecordOutcomes, run_key: str, server_round: int) -> Metrics:
    policy, data = site.policy, site.data
    z, bound = policy.evaluation_noise_multiplier, policy.evaluation_loss_bound
    rows, sensitivity, types = vectors(outcomes, bound)
    delta = validation_delta(site)
    accountant = site.settings.accountant
    with PrivacyLedger(site.ledger_path) as ledger:
        try:
            row_id = reserve_answer(ledger, site, z, "evaluation", run_key, server_round)
        except BudgetRefused as refusal:
            raise EvaluationRefused(refusal.status, f"evaluation refused: {refusal}") from refusal
        noisy = gaussian_sum(rows, sensitivity, z, np.random.default_rng(secrets.randbits(128)))
        ledger.mark_released(row_id, 1)  # recorded before the answer leaves
        spent = ledger.epsilon_spent(
            data.validation_key, delta, accountant, since=data.validation_since
        )
    n = max(float(noisy[0]), 1.0)
    metrics: Metrics = {
        "status": TRAINED,
        "num-examples": max(int(round(noisy[0])), 1),
        "eval-examples": max(int(round(noisy[0])), 1),
        "eval-accuracy": float(np.clip(noisy[1] / n, 0.0, 1.0)),
        "eval-loss": float(np.clip(noisy[2] * bound / n, 0.0, bound)),
        "eval-dp": 1,
        "eval-noise-std": z * sensitivity,  # std of each noisy sum, in records
        "eval-epsilon-spent": spent,
        "eval-epsilon-budget": validation_budget(site),
        "eval-delta": delta,
    }
    if types:
        counts = np.maximum(np.rint(noisy[3:]), 0).astype(int).reshape(len(types), len(COUNTS))
        metrics |= count_metrics({t: tuple(int(v) for v in counts[i]) for i, t in enumerate(types)})
    return metrics


def _exact(site: Site, outcomes: RecordOutcomes, run_key: str, server_round: int) -> Metrics:
    """A non-private answer: only under ``evaluation = "exact"``, at most
    ``max-exact-answers-per-day`` (with audit figures) in any 24 hours."""
    with PrivacyLedger(site.ledger_path) as ledger:
        try:
            check_non_private_answers(ledger, site.policy)
        except RoundRefused as refusal:
            raise EvaluationRefused(refusal.status, f"evaluation refused: {refusal}") from refusal
        ledger.record_policy_release(
            site.data.validation_key, run_key, server_round, "exact-evaluation", site.session
        )
    n = len(outcomes.losses)
    metrics: Metrics = {
        "status": TRAINED,
        "num-examples": n,
        "eval-examples": n,
        "eval-accuracy": float(outcomes.correct.mean()),
        "eval-loss": float(outcomes.losses.mean()),
        "eval-dp": 0,
        "eval-noise-std": 0.0,
    }
    if outcomes.entities is not None:
        types = sorted(outcomes.entities[0]) if outcomes.entities else []
        totals = {
            t: tuple(sum(c[t][i] for c in outcomes.entities) for i in range(len(COUNTS)))
            for t in types
        }
        metrics |= count_metrics(totals)  # type: ignore[arg-type]
    return metrics
