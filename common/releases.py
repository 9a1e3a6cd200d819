"""The release inventory: every value a site can send, and what lets it leave.

Each metric a site's reply may hold is listed here with how it is covered:
- ``dp-sgd``: the model arrays of a DP-SGD round (Poisson-subsampled Gaussian, sigma, q, k
  steps, composed in the ledger on ``<site>/train``);
- ``dp-gaussian``: a Gaussian answer on validation records (clipped per-record sums + noise,
  composed in the ledger on ``<site>/validation``): evaluation figures, entity and group counts;
- ``accounting``: the site's own privacy accounting and decisions (epsilon, delta, sigma, C,
  steps, status), functions of its policy, the requests and the ledger;
- ``policy:<key>``: a non-private value the site's policy allows (off unless that key is set).
  Exact evaluation and audit figures are counted against ``max-exact-answers-per-day``;
- ``public``: carries no information about records (simulation partition id, the noise std).
``check_reply`` enforces it at the site: a reply with any other key is never sent.
"""

from __future__ import annotations

from collections.abc import Mapping

from common.config import SiteSettings
from common.entities import COUNT_PREFIX
from common.group_counts import PREFIX as GROUP_PREFIX

# Membership-audit figures (client/audit.py): audit-<attack>-<figure> and audit-<setup>.
AUDIT_ATTACKS = ("loss", "calibrated")
AUDIT_LOW_FPRS = ("1%", "0.1%")
AUDIT_FIGURES = ("auc", *(f"tpr-at-{name}-fpr" for name in AUDIT_LOW_FPRS), "epsilon-lower-bound")
AUDIT_SETUP = ("members", "non-members", "delta", "confidence")

TRAIN_INVENTORY: dict[str, str] = {
    "num-examples": "policy:release-record-count",  # 1 when the policy keeps the count
    "sample-rate": "policy:release-record-count",  # q = 1/ceil(n/B); 0 when kept
    "status": "accounting",
    "partition-id": "public",
    "dp": "accounting",
    "epsilon-spent": "accounting",
    "epsilon-budget": "accounting",
    "epsilon-left": "accounting",
    "rounds-trained": "accounting",
    "delta": "accounting",
    "noise-multiplier": "accounting",
    "max-grad-norm": "accounting",
    "steps": "accounting",
    "train-seconds": "policy:release-timings",  # 0 when kept
}
EVALUATION_INVENTORY: dict[str, str] = {
    "status": "accounting",
    "partition-id": "public",
    "num-examples": "dp-gaussian",  # the noisy record count (the answer's weight)
    "eval-examples": "dp-gaussian",
    "eval-accuracy": "dp-gaussian",  # or policy:evaluation=exact
    "eval-loss": "dp-gaussian",
    "eval-dp": "accounting",
    "eval-noise-std": "public",
    "eval-epsilon-spent": "accounting",
    "eval-epsilon-budget": "accounting",
    "eval-delta": "accounting",
    "eval-status": "accounting",
    "groups-noise-std": "public",
    "groups-suppressed": "accounting",
    **{f"audit-{k}": "policy:release-audit-figures" for k in AUDIT_SETUP},
    **{
        f"audit-{a}-{f}": "policy:release-audit-figures"
        for a in AUDIT_ATTACKS
        for f in AUDIT_FIGURES
    },
}
# prefixes of per-type / per-group keys: eval-entity-<tp|fp|fn>/<type>, group/<g>/<cell>
PREFIXED: dict[str, str] = {COUNT_PREFIX: "dp-gaussian", GROUP_PREFIX: "dp-gaussian"}


class ReleaseError(RuntimeError):
    """A reply would carry a value the release inventory does not cover: it is not sent."""


def coverage(key: str, message_type: str) -> str | None:
    """How ``key`` may leave in a reply to a ``message_type`` message (None: it may not)."""
    if message_type == "train":
        # a train reply may carry the evaluation of the model it received (evaluate-with-train)
        found = TRAIN_INVENTORY.get(key) or (
            EVALUATION_INVENTORY.get(key) if key.startswith("eval-") else None
        )
    else:
        found = EVALUATION_INVENTORY.get(key)
    if found:
        return found
    for prefix, how in PREFIXED.items():
        if key.startswith(prefix):
            return how
    return None


def check_reply(metrics: Mapping[str, object], message_type: str, policy: SiteSettings) -> None:
    """Raise ReleaseError if any metric is outside the inventory or needs a policy key the
    site has not set."""
    for key in metrics:
        how = coverage(key, message_type)
        if how is None:
            raise ReleaseError(f"{key!r} is not in the release inventory: this reply is not sent")
        if how == "policy:release-audit-figures" and not policy.release_audit_figures:
            raise ReleaseError(f"{key!r} needs the site's release-audit-figures policy")
