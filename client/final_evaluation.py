"""A site's answer to the server's final-evaluation message (after the last round).

On the final global model: loss and accuracy on the site's validation records; with the run's
``sensitive-column``, TP/FP/TN/FN per group of that column (common.group_counts); with
``audit`` requested, the membership-inference audit's aggregate figures (client.audit). Per-
example losses and predictions stay here; only these scalars leave the site.
"""

from __future__ import annotations

import numpy as np

from client.audit import audit_from_losses
from client.evaluation import per_example
from client.local_round import Metrics, site_model
from client.privacy_round import site_delta
from client.site_context import Site
from common.group_counts import confusion_by_group, sensitive_values, to_metrics
from common.models.weights import trainable_state
from common.task import build_model


def final_evaluation(site: Site, weights: dict[str, np.ndarray], audit: bool) -> Metrics:
    """Validation loss/accuracy, per-group counts and (if ``audit``) the audit of ``weights``."""
    column = site.settings.sensitive_column
    if column:  # fail before any work when the column cannot be counted
        groups = sensitive_values(site.data.validation, column)
    model, validation, _ = site_model(site, weights, "validation")
    val_losses, predictions = per_example(model, validation, device=site.device)
    metrics: Metrics = {
        "partition-id": site.partition_id,
        "num-examples": len(val_losses),
        "eval-examples": len(val_losses),
        "eval-loss": float(val_losses.mean()),
        "eval-accuracy": float((predictions == site.data.validation.labels).mean()),
    }
    if column:
        counts = confusion_by_group(site.data.validation.labels, predictions, groups)
        metrics |= to_metrics(counts)
    if audit:
        model, train, _ = site_model(site, weights, "train")
        final = {"members": per_example(model, train, device=site.device)[0]}
        final["non-members"] = val_losses
        model, _, _ = site_model(site, initial_weights(site), "train")
        reference = {
            "members": per_example(model, train, device=site.device)[0],
            "non-members": per_example(model, validation, device=site.device)[0],
        }
        delta = site_delta(site.policy, site.settings.target_delta, len(site.data.train))
        metrics |= audit_from_losses(final, reference, delta)
    return metrics


def initial_weights(site: Site) -> dict[str, np.ndarray]:
    """The trainable parameters every party started the run from (build_model is seeded)."""
    model, _ = build_model(site.settings, site.data.train, "cpu")
    return trainable_state(model)
