"""One human-readable progress line per round."""

from __future__ import annotations

from statistics import median
from typing import Any

from server.records import RoundRecord

# Above this many replying sites the line summarises them (metrics.jsonl and summary.json keep
# every site): a round of 100 sampled sites out of 1,000 stays one readable line.
MAX_LISTED_SITES = 8


def format_round(rec: RoundRecord, num_rounds: int, dp: bool) -> str:
    """e.g. ``round 2/5 | server acc 0.812 loss 0.43 | fed acc 0.80 | Cleveland eps 2.1/8 ...``"""
    parts = [f"round {rec.server_round}/{num_rounds}"]
    if "train-loss" in rec.train:  # sites do not release their training loss (not DP)
        parts.append(f"train loss {rec.train['train-loss']:.4f}")
    if rec.server_eval:
        parts.append(
            f"server acc {rec.server_eval['accuracy']:.4f} loss {rec.server_eval['loss']:.4f}"
        )
    if "entity-f1" in rec.server_eval:
        parts.append(f"server entity F1 {rec.server_eval['entity-f1']:.4f}")
    if "eval-accuracy" in rec.federated_eval:
        noise = rec.federated_eval.get("eval-accuracy-std", 0.0)
        shown = f" +-{noise:.3f} (DP noise std)" if noise else ""
        parts.append(f"federated acc {rec.federated_eval['eval-accuracy']:.4f}{shown}")
    if "eval-entity-f1" in rec.federated_eval:
        parts.append(f"federated entity F1 {rec.federated_eval['eval-entity-f1']:.4f}")
    replied = {site: m for site, m in rec.sites.items() if "status" in m}
    if len(replied) > MAX_LISTED_SITES:  # many sites: one summary; every site is in the files
        parts.append(_sites_summary(replied, dp))
        replied = {}
    for site, m in sorted(replied.items()):
        if m["status"] == "rejected":  # its metrics are not to be trusted, nor printed
            parts.append(f"{site}: REJECTED")
        elif not dp:
            parts.append(f"{site}: NON-PRIVATE")
        else:
            parts.append(
                f"{site}: eps {m['epsilon-spent']:.3f}/{m['epsilon-budget']:.3f} "
                f"left {m.get('epsilon-left', 0.0):.3f} (delta {m['delta']:.1e})"
                f"{'' if m['status'] == 'trained' else ' ' + m['status'].upper()}"
            )
    if rec.client_dp:
        parts.append(
            f"client-level eps {rec.client_dp['epsilon']:.3f} (delta {rec.client_dp['delta']:.1e}, "
            f"z {rec.client_dp['noise-multiplier']:.3f}, q {rec.client_dp['sample-rate']:.2f})"
        )
    if rec.failures:
        parts.append(f"{len(rec.failures)} failed")
    return " | ".join(parts)


def _sites_summary(sites: dict[str, dict[str, Any]], dp: bool) -> str:
    """e.g. ``100 sites: 97 trained, 3 refused | eps spent min 0.41 median 1.20 max 7.99``"""
    trained = sum(m["status"] == "trained" for m in sites.values())
    rejected = sum(m["status"] == "rejected" for m in sites.values())
    text = f"{len(sites)} sites: {trained} trained"
    if rejected:
        text += f", {rejected} REJECTED"
    if trained + rejected < len(sites):
        text += f", {len(sites) - trained - rejected} did not train"
    if not dp:
        return text + " | NON-PRIVATE"
    # a rejected reply's metrics are not to be trusted: they are left out of the figures
    trusted = [m for m in sites.values() if m["status"] != "rejected"]
    spent = [float(m["epsilon-spent"]) for m in trusted if "epsilon-spent" in m]
    if spent:
        text += f" | eps spent min {min(spent):.3f} median {median(spent):.3f} max {max(spent):.3f}"
    return text
