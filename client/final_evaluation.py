"""A site's answer to the server's final-evaluation message (after the last round).

On the final global model, each part only as the site's policy allows (release inventory,
common/releases.py):
- the evaluation answer on its validation records (client.evaluation_release: DP by default);
- with the run's ``sensitive-column``: per-group TP/FP/TN/FN counts, only for a column in the
  policy's ``group-columns`` that is not identifier-like, only for the groups of the run's
  public schema, as one Gaussian release on the validation records (each record adds 1 to one
  cell: L2 sensitivity 1, noise std z), rounded, and a group whose noisy total is below
  ``min-cell-size`` is suppressed;
- with ``audit`` asked: the membership-inference audit (client.audit) runs only if the policy
  allows it, and its figures (statistics of training records, outside the DP accounting) leave
  only with ``release-audit-figures``, within the daily cap of non-private answers.
Per-example losses and predictions stay here. Each part refused says why (the reply's notes).
"""

from __future__ import annotations

import secrets

import numpy as np

from client.audit import audit_from_losses
from client.evaluation_release import EvaluationRefused, release_evaluation
from client.gate import BudgetRefused, check_non_private_answers, reserve_answer
from client.local_round import Metrics, site_model
from client.policy import RoundRefused
from client.site_context import Site
from client.site_data import reference_schema
from common.evaluation import per_example, record_outcomes
from common.group_counts import CELLS, sensitive_values, to_metrics
from common.models.weights import trainable_state
from common.privacy.delta import site_delta
from common.privacy.ledger import PrivacyLedger
from common.task import build_model

MAX_GROUPS = 20  # a column with more distinct values is identifier-like: never a group column


class PartRefused(Exception):
    """One part of the final evaluation is not released; str() says why."""


def final_evaluation(
    site: Site, weights: dict[str, np.ndarray], *, audit: bool, run_key: str, server_round: int
) -> tuple[Metrics, list[str]]:
    """(metrics, notes): what the site releases about the final ``weights``, and why any part
    was refused."""
    notes: list[str] = []
    model, validation, _ = site_model(site, weights, "validation")
    outcomes = record_outcomes(
        model, validation, device=site.device, tag_names=site.data.validation.class_names
    )
    metrics: Metrics = {"partition-id": site.partition_id}
    try:
        metrics |= release_evaluation(site, outcomes, run_key=run_key, server_round=server_round)
    except EvaluationRefused as refusal:
        metrics |= {"status": refusal.status, "num-examples": 0, "eval-examples": 0}
        notes.append(str(refusal))
    column = site.settings.sensitive_column
    if column:
        try:
            assert outcomes.predictions is not None, "group counts need a classifier"
            metrics |= group_counts(site, column, outcomes.predictions, run_key, server_round)
        except (PartRefused, ValueError, AssertionError) as refusal:
            notes.append(f"group counts refused: {refusal}")
    if audit:
        try:
            metrics |= audit_figures(site, weights, outcomes.losses, run_key, server_round)
        except PartRefused as refusal:
            notes.append(f"audit refused: {refusal}")
    return metrics, notes


def check_group_column(site: Site, column: str) -> list[str]:
    """The groups of ``column`` the site may count (the run's public schema's values), or
    PartRefused: not allowed by the policy, or identifier-like."""
    allowed = site.policy.group_column_list
    if column not in allowed and allowed != ["*"]:
        raise PartRefused(
            f"column {column!r} is not in this site's group-columns {allowed or '(none)'}"
        )
    values = sensitive_values(site.data.validation, column)
    distinct = len(set(values.tolist()))
    if distinct > MAX_GROUPS or distinct > len(values) // 2:
        raise PartRefused(
            f"column {column!r} has {distinct} distinct values in {len(values)} records: "
            f"identifier-like, never a group column (at most {MAX_GROUPS}, and fewer than "
            "half the records)"
        )
    reference = reference_schema(site.settings.dataset, site.settings.seed)
    if column not in reference.columns:
        raise PartRefused(f"column {column!r} is not in the run's public schema")
    public = sorted({str(v) for v in reference.columns[column]})
    if len(public) > MAX_GROUPS:
        raise PartRefused(f"column {column!r} has {len(public)} public groups: identifier-like")
    return public


def group_counts(
    site: Site, column: str, predictions: np.ndarray, run_key: str, server_round: int
) -> Metrics:
    """Noisy per-group confusion counts of the validation records (see module doc)."""
    groups = check_group_column(site, column)
    values = sensitive_values(site.data.validation, column)
    labels = site.data.validation.labels
    cell_of = {(1, 1): "tp", (0, 1): "fp", (0, 0): "tn", (1, 0): "fn"}
    exact = np.zeros((len(groups), len(CELLS)))
    index = {g: i for i, g in enumerate(groups)}
    for value, label, guess in zip(values, labels, predictions, strict=True):
        if value in index:  # a value outside the public schema is not counted
            exact[index[value], CELLS.index(cell_of[(int(label), int(guess))])] += 1
    policy = site.policy
    z = policy.evaluation_noise_multiplier
    with PrivacyLedger(site.ledger_path) as ledger:
        try:
            row_id = reserve_answer(ledger, site, z, "group-counts", run_key, server_round)
        except BudgetRefused as refusal:
            raise PartRefused(str(refusal)) from refusal
        rng = np.random.default_rng(secrets.randbits(128))
        noisy = exact + rng.normal(0.0, z, size=exact.shape)  # sensitivity 1
        ledger.mark_released(row_id, 1)
    counts = np.maximum(np.rint(noisy), 0).astype(int)
    kept = {
        g: dict(zip(CELLS, (int(v) for v in counts[i]), strict=True))
        for i, g in enumerate(groups)
        if counts[i].sum() >= policy.min_cell_size
    }
    return to_metrics(kept) | {"groups-noise-std": z, "groups-suppressed": len(groups) - len(kept)}


def audit_figures(
    site: Site,
    weights: dict[str, np.ndarray],
    validation_losses: np.ndarray,
    run_key: str,
    server_round: int,
) -> Metrics:
    """The membership audit's aggregate figures, if the policy runs and releases them."""
    policy = site.policy
    if not policy.allow_audit:
        raise PartRefused("this site's policy does not run membership audits (allow-audit)")
    if not policy.release_audit_figures:
        raise PartRefused(
            "audit figures are statistics of training records; this site's policy keeps them "
            "(release-audit-figures = false): run the audit locally"
        )
    with PrivacyLedger(site.ledger_path) as ledger:
        try:
            check_non_private_answers(ledger, policy)
        except RoundRefused as refusal:
            raise PartRefused(str(refusal)) from refusal
        model, train, _ = site_model(site, weights, "train")
        final = {"members": per_example(model, train, device=site.device)[0]}
        final["non-members"] = validation_losses
        model, validation, _ = site_model(site, initial_weights(site), "validation")
        reference = {"non-members": per_example(model, validation, device=site.device)[0]}
        model, train, _ = site_model(site, initial_weights(site), "train")
        reference["members"] = per_example(model, train, device=site.device)[0]
        delta = site_delta(policy, site.settings.target_delta, len(site.data.train))
        figures = audit_from_losses(final, reference, delta)
        ledger.record_policy_release(
            site.data.train_key, run_key, server_round, "audit-figures", site.session
        )
    return figures


def initial_weights(site: Site) -> dict[str, np.ndarray]:
    """The trainable parameters every party started the run from (build_model is seeded)."""
    model, _ = build_model(site.settings, site.data.train, "cpu")
    return trainable_state(model)
