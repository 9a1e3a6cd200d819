"""What a site operator reads from a ledger: datasets, runs and rounds with epsilon spent and left.

Our own code (nothing off the shelf reads our ledger). Every epsilon here is recomputed from the
ledger's rows with the accountant the rows name, at the site's delta; none is stored.
"""

from __future__ import annotations

import math
import time
from typing import Any

from common.privacy.accounting import compute_epsilon
from common.privacy.ledger import LedgerRow, PrivacyLedger

Record = dict[str, Any]


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) + "Z"


def _settings(
    rows: list[LedgerRow], budget: float | None, delta: float | None
) -> tuple[float | None, float | None, str]:
    """Budget, delta and accountant to report a dataset at: the caller's (from the site's
    policy) if given, else those of its latest release."""
    latest = rows[-1] if rows else None
    if latest is None:
        return budget, delta, "pld"
    return (
        budget if budget is not None else latest.epsilon_budget,
        delta if delta is not None else latest.delta,
        latest.accountant,
    )


def dataset_report(
    ledger: PrivacyLedger, *, budget: float | None = None, delta: float | None = None
) -> list[Record]:
    """One record per dataset: records, runs, rounds, epsilon spent, budget, left."""
    out = []
    for fingerprint, name, num_records in ledger.datasets():
        rows = ledger.rows(fingerprint)
        limit, at_delta, accountant = _settings(rows, budget, delta)
        non_private = ledger.non_private_rounds(fingerprint)
        if at_delta is None:  # nothing DP released: no delta to report at
            spent = math.inf if non_private else 0.0
        else:
            spent = ledger.epsilon_spent(fingerprint, at_delta, accountant)
        out.append(
            {
                "dataset": name,
                "fingerprint": fingerprint,
                "records": num_records,
                "runs": len({r.run_id for r in rows} | {run for run, _ in non_private}),
                "rounds": len(rows),
                "in-flight-or-crashed": sum(r.status == "reserved" for r in rows),
                "non-private-rounds": len(non_private),
                "delta": at_delta,
                "accountant": accountant,
                "epsilon-spent": spent,
                "epsilon-budget": limit,
                "epsilon-left": None if limit is None else max(limit - spent, 0.0),
            }
        )
    return out


def run_report(ledger: PrivacyLedger, fingerprint: str | None = None) -> list[Record]:
    """One record per (dataset, run): its plan, rounds released, and its own epsilon."""
    names = {fp: name for fp, name, _ in ledger.datasets()}
    out = []
    for run in ledger.runs(fingerprint):
        rows = [r for r in ledger.rows(run.fingerprint) if r.run_id == run.run_id]
        plan = run.plan
        out.append(
            {
                "dataset": names.get(run.fingerprint, "?"),
                "fingerprint": run.fingerprint,
                "run": run.run_id,
                "started": _when(run.created),
                "noise-multiplier": plan.noise_multiplier,
                "sample-rate": plan.sample_rate,
                "steps-per-round": plan.steps_per_round,
                "planned-rounds": plan.planned_rounds,
                "target-epsilon": plan.target_epsilon,
                "rounds": run.rounds,
                "in-flight-or-crashed": run.reserved,
                "delta": plan.delta,
                "accountant": plan.accountant,
                "epsilon-of-run": compute_epsilon(
                    [r.release for r in rows], plan.delta, plan.accountant
                ),
            }
        )
    return out


def round_report(
    ledger: PrivacyLedger,
    fingerprint: str | None = None,
    run_id: str | None = None,
    *,
    delta: float | None = None,
) -> list[Record]:
    """One record per release (a round at a site), with the dataset's epsilon after it."""
    names = {fp: name for fp, name, _ in ledger.datasets()}
    out = []
    for fp in [fingerprint] if fingerprint else list(names):
        rows = ledger.rows(fp)
        _, at_delta, accountant = _settings(rows, None, delta)
        voided = ledger.non_private_since(fp)  # no epsilon bound holds after this time
        for i, row in enumerate(rows):
            if run_id is not None and row.run_id != run_id:
                continue
            d = at_delta if at_delta is not None else row.delta
            after = (
                math.inf
                if voided is not None and row.recorded_at >= voided
                else compute_epsilon([r.release for r in rows[: i + 1]], d, accountant)
            )
            out.append(
                {
                    "dataset": names.get(fp, "?"),
                    "fingerprint": fp,
                    "run": row.run_id,
                    "round": row.round,
                    "recorded": _when(row.recorded_at),
                    "status": row.status,
                    "noise-multiplier": row.noise_multiplier,
                    "sample-rate": row.sample_rate,
                    "steps": row.steps,
                    "delta": d,
                    "epsilon-after": after,
                    "epsilon-budget": row.epsilon_budget,
                }
            )
    return out


def export_records(ledger: PrivacyLedger) -> Record:
    """Everything in the ledger, plus the computed summaries, as one JSON-ready record."""
    names = [fp for fp, _, _ in ledger.datasets()]
    return {
        "ledger": str(ledger.path),
        "exported": _when(time.time()),
        "datasets": dataset_report(ledger),
        "runs": run_report(ledger),
        "releases": [vars(row) for row in ledger.rows()],
        "non-private-releases": [
            {"fingerprint": fp, "run": run, "round": number}
            for fp in names
            for run, number in ledger.non_private_rounds(fp)
        ],
    }
