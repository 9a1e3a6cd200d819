"""One human-readable progress line per round."""

from __future__ import annotations

from server.strategy import RoundRecord


def format_round(rec: RoundRecord, num_rounds: int, dp: bool) -> str:
    """e.g. ``round 2/5 | server acc 0.812 loss 0.43 | fed acc 0.80 | Cleveland eps 2.1/8 ...``"""
    parts = [f"round {rec.server_round}/{num_rounds}"]
    if rec.train:
        parts.append(f"train loss {rec.train.get('train-loss', float('nan')):.4f}")
    if rec.server_eval:
        parts.append(
            f"server acc {rec.server_eval['accuracy']:.4f} loss {rec.server_eval['loss']:.4f}"
        )
    if "entity-f1" in rec.server_eval:
        parts.append(f"server entity F1 {rec.server_eval['entity-f1']:.4f}")
    if rec.federated_eval:
        parts.append(f"federated acc {rec.federated_eval.get('eval-accuracy', float('nan')):.4f}")
    if "eval-entity-f1" in rec.federated_eval:
        parts.append(f"federated entity F1 {rec.federated_eval['eval-entity-f1']:.4f}")
    for site, m in sorted(rec.sites.items()):
        if "status" not in m:
            continue
        if not dp:
            parts.append(f"{site}: NON-PRIVATE")
        else:
            parts.append(
                f"{site}: eps {m['epsilon-spent']:.3f}/{m['epsilon-budget']:.3f} "
                f"left {m.get('epsilon-left', 0.0):.3f} (delta {m['delta']:.1e})"
                f"{'' if m['status'] == 'trained' else ' ' + m['status'].upper()}"
            )
    if rec.failures:
        parts.append(f"{len(rec.failures)} failed")
    return " | ".join(parts)
