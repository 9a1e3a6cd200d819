"""The run's ``summary.json``: what was run, what protected whom, where each site stands.

Built from the round records (server/records.py) once the run ends. Each site's account is its
own last report (lifetime epsilon spent/budget/left at its delta, from its ledger), never a
figure the server derived; the client-level epsilon is the server's (server/client_dp.py).
"""

from __future__ import annotations

import platform
from dataclasses import asdict
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import flwr
import opacus
import torch
import transformers
from flwr.common.logger import log

from common.config import RunSettings
from server.client_dp import client_level_dp_summary
from server.records import RoundRecord
from server.results import RunResults


def run_summary(
    settings: RunSettings,
    rounds: dict[int, RoundRecord],
    *,
    identity: dict[str, Any],
    model_sha256: str,
    stopped_early: str = "",
    entity_report: dict[str, Any] | None = None,
    initial_head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary of a run with these ``rounds``. identity: run-name, run-id, flower-run-ids
    (more than one: the run was resumed), resumed, run-key; model_sha256: digest of the final
    model; stopped_early: why the run ended before its last round ("" = it did not);
    initial_head: where the starting head came from and its sha256 (init-head-from)."""
    completed = [r for r, rec in rounds.items() if rec.trained_sites and r > 0]
    final = rounds.get(max(completed, default=0))
    return {
        "rounds-completed": len(completed),
        "rounds-planned": settings.num_server_rounds,
        "stopped-early": stopped_early or None,
        "run-name": identity["run-name"],
        "run-id": identity["run-id"],
        "flower-run-ids": identity["flower-run-ids"],
        "resumed": identity["resumed"],
        "model-sha256": model_sha256,
        "initial-head": initial_head,
        "run-key": identity["run-key"],
        "privacy": privacy_statement(settings),
        "config": asdict(settings),
        "client-level-dp": client_level_dp_summary(rounds, settings),
        "final-round": None if final is None else final.to_json(settings.dp),
        "sites": site_summaries(rounds),
        **({"entity-report": entity_report} if entity_report else {}),
        "rejected-updates": [
            f"round {r}: {reason}" for r, rec in sorted(rounds.items()) for reason in rec.rejected
        ],
        "versions": versions(),
    }


def publish(results: RunResults, summary: dict[str, Any]) -> Path:
    """Write ``summary`` and publish the results folder; then its report, if it can be made
    (the results are complete without it: ``fedpriv-report`` retries)."""
    path = results.finish(summary)
    log(INFO, "Results written to %s", path)
    try:
        from server.report import write_report  # matplotlib: only once the run is done

        log(INFO, "Report written to %s", write_report(path))
    except Exception as err:  # the results are complete without it
        log(
            WARNING,
            "the report could not be written (%r); the results are complete: "
            "retry with `fedpriv-report %s`",
            err,
            path,
        )
    return path


def privacy_statement(settings: RunSettings) -> str:
    """What protects whom in this run, in one line."""
    parts = [
        "sample-level DP-SGD (Opacus) at each site"
        if settings.dp
        else "NON-PRIVATE BASELINE (dp=false): no sample-level differential privacy"
    ]
    if settings.client_dp != "off":
        parts.append(f"client-level DP-FedAvg ({settings.client_dp}; see client-level-dp)")
    if settings.secure_aggregation:
        parts.append("secure aggregation (SecAgg+): the server saw only the sum")
    return "; ".join(parts)


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "",
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "transformers": transformers.__version__,
    }


def site_summaries(rounds: dict[int, RoundRecord]) -> dict[str, dict[str, Any]]:
    """Each site's last reported privacy state (lifetime epsilon spent/budget/left, delta),
    sigma and q of its last trained round, the rounds it trained, what its policy clamped, and
    when and why it stopped (if it did)."""
    out: dict[str, dict[str, Any]] = {}
    for number in sorted(rounds):
        for site in rounds[number].dropped:
            entry = out.setdefault(
                site, {"rounds-trained": 0, "last-trained-round": None, "clamped": []}
            )
            entry.setdefault("dropped-rounds", []).append(number)
        for site, m in rounds[number].sites.items():
            if "status" not in m:
                continue  # an evaluation-only entry
            entry = out.setdefault(
                site,
                {"rounds-trained": 0, "last-trained-round": None, "clamped": []},
            )
            if m["status"] == "trained":
                entry["rounds-trained"] += 1
                entry["last-trained-round"] = number
                entry["stopped-round"] = entry["stop-reason"] = None
                entry |= {k: m[k] for k in ("noise-multiplier", "sample-rate") if k in m}
            elif entry.get("stopped-round") is None:
                entry["stopped-round"] = number
                entry["stop-reason"] = m.get("reason") or m["status"]
            entry["clamped"] = sorted(set(entry["clamped"]) | set(m.get("clamped", [])))
            entry |= {
                key: m[key]
                for key in ("epsilon-spent", "epsilon-budget", "epsilon-left", "delta", "status")
                if key in m
            }
            entry["last-round"] = number
    return out
