"""Membership-inference audit of the final model at a site; only aggregate figures leave.

Members: the site's training records; non-members: its held-out validation records (never
trained on by any site). Two attacks, each a score per record (higher = "member"):
- loss threshold (Yeom et al. 2018): s(x) = -loss_final(x);
- difficulty-calibrated loss (Watson et al. 2022): s(x) = loss_ref(x) - loss_final(x), the
  reference being the run's initial model (same seed, before any training), so records that
  are hard for any model of this family are not mistaken for non-members.
Per attack: ROC AUC, the best TPR at FPR <= 1% and <= 0.1% (with few non-members these can only
be met at FPR 0), and an empirical epsilon lower bound (Jagielski et al. 2020; Nasr et al.
2021): an (epsilon, delta)-DP model bounds every threshold test by TPR <= e^eps FPR + delta and
1 - FPR <= e^eps (1 - TPR) + delta, so for each threshold
  eps_lb = max(log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo)))
with one-sided Clopper-Pearson bounds TPR_lo and FPR_hi, each at 1 - alpha/2 (both hold with
probability >= 1 - alpha = 95%). The bound is the max over all thresholds on the same scores, as
in those papers: the 95% holds for each threshold, not for the max.
Our own code: no maintained library computes this bound from scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.stats import beta
from sklearn.metrics import roc_auc_score, roc_curve

from common.releases import AUDIT_ATTACKS as ATTACKS
from common.releases import AUDIT_FIGURES as FIGURES
from common.releases import AUDIT_SETUP as SETUP

__all__ = ["ATTACKS", "FIGURES", "SETUP", "audit_from_losses", "clopper_pearson"]
CONFIDENCE = 0.95  # 1 - alpha
LOW_FPRS = {"1%": 0.01, "0.1%": 0.001}
assert tuple(LOW_FPRS) == ("1%", "0.1%")  # the inventory's figure names


def clopper_pearson(successes: np.ndarray, trials: int, level: float) -> tuple:
    """One-sided exact binomial bounds at confidence ``level``: (lower, upper)."""
    k = np.asarray(successes, dtype=float)
    lower = np.where(k > 0, beta.ppf(1 - level, k, trials - k + 1), 0.0)
    upper = np.where(k < trials, beta.ppf(level, k + 1, trials - k), 1.0)
    return lower, upper


def epsilon_lower_bound(
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    delta: float,
    confidence: float = CONFIDENCE,
) -> float:
    """Empirical epsilon lower bound of the threshold tests "member iff score >= t" (see the
    module docstring); 0 when no threshold gives a positive bound."""
    members, non_members = np.sort(member_scores), np.sort(non_member_scores)
    thresholds = np.unique(np.concatenate([members, non_members]))
    tp = len(members) - np.searchsorted(members, thresholds, side="left")
    fp = len(non_members) - np.searchsorted(non_members, thresholds, side="left")
    level = 1 - (1 - confidence) / 2  # each of the two rates; union bound gives `confidence`
    tpr_lo, _ = clopper_pearson(tp, len(members), level)
    _, fpr_hi = clopper_pearson(fp, len(non_members), level)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = np.log((tpr_lo - delta) / fpr_hi)
        complement = np.log((1 - fpr_hi - delta) / (1 - tpr_lo))
    bounds = np.concatenate([direct, complement])
    bounds = bounds[np.isfinite(bounds)]
    return float(max(bounds.max(initial=0.0), 0.0))


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, fpr: float) -> float:
    """The largest TPR of a threshold test whose FPR is <= ``fpr``."""
    truth = np.r_[np.ones(len(member_scores)), np.zeros(len(non_member_scores))]
    fprs, tprs, _ = roc_curve(truth, np.r_[member_scores, non_member_scores])
    return float(tprs[fprs <= fpr].max(initial=0.0))


def attack_figures(
    member_scores: np.ndarray, non_member_scores: np.ndarray, delta: float
) -> dict[str, float]:
    """AUC, TPR at 1% and 0.1% FPR, and the epsilon lower bound of one attack's scores."""
    if len(member_scores) == 0 or len(non_member_scores) == 0:
        raise ValueError("the audit needs at least one member and one non-member record")
    truth = np.r_[np.ones(len(member_scores)), np.zeros(len(non_member_scores))]
    out = {"auc": float(roc_auc_score(truth, np.r_[member_scores, non_member_scores]))}
    for name, fpr in LOW_FPRS.items():
        out[f"tpr-at-{name}-fpr"] = tpr_at_fpr(member_scores, non_member_scores, fpr)
    out["epsilon-lower-bound"] = epsilon_lower_bound(member_scores, non_member_scores, delta)
    return out


def audit_from_losses(
    final: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], delta: float
) -> dict[str, float]:
    """The audit's scalar metrics from per-example losses of the final and the reference model
    on ``members`` and ``non-members`` (keys ``audit-<attack>-<figure>``)."""
    if not 0 <= delta < 1 or math.isnan(delta):
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    for side in ("members", "non-members"):
        if len(final[side]) == 0 or len(final[side]) != len(reference[side]):
            raise ValueError(
                f"the audit needs at least one {side} record and one loss per record from each "
                f"model; got {len(final[side])} (final) and {len(reference[side])} (reference)"
            )
    scores = {
        "loss": (-final["members"], -final["non-members"]),
        "calibrated": (
            reference["members"] - final["members"],
            reference["non-members"] - final["non-members"],
        ),
    }
    metrics: dict[str, float] = {
        "audit-members": len(final["members"]),
        "audit-non-members": len(final["non-members"]),
        "audit-delta": delta,
        "audit-confidence": CONFIDENCE,
    }
    for attack, (members, non_members) in scores.items():
        for figure, value in attack_figures(members, non_members, delta).items():
            metrics[f"audit-{attack}-{figure}"] = value
    return metrics
