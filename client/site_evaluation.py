"""A site's answer to an evaluate message: its (DP, by default) answer about the received model
on its validation records, or (``final-evaluation``) the final model's answer, group counts and
audit, each part as its policy allows."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from client.evaluation_release import EvaluationRefused, evaluation_refusal, release_evaluation
from client.local_round import Metrics, site_model
from client.site_context import Site
from common.evaluation import record_outcomes

log = logging.getLogger("fedpriv.site")


def answer_evaluation(
    site: Site, weights: dict[str, np.ndarray], config: Mapping[str, Any]
) -> tuple[Metrics, list[str]]:
    """(metrics, notes) a site replies to an evaluate message for ``weights``; notes say why a
    part was refused."""
    server_round = config.get("server-round", 0)
    if isinstance(server_round, bool) or not isinstance(server_round, int):
        server_round = 0  # a label for the ledger row only
    run_key = f"evaluate/{site.session}"
    if config.get("final-evaluation"):  # after the last round: group counts, optional audit
        from client.final_evaluation import final_evaluation  # scipy/sklearn: only here

        return final_evaluation(
            site,
            weights,
            audit=bool(config.get("audit")),
            run_key=run_key,
            server_round=server_round,
        )
    model, dataset, _ = site_model(site, weights, "validation")
    outcomes = record_outcomes(
        model, dataset, device=site.device, tag_names=site.data.validation.class_names
    )
    try:
        metrics = release_evaluation(site, outcomes, run_key=run_key, server_round=server_round)
    except EvaluationRefused as refusal:
        log.warning("site %s: %s", site.data.name, refusal)
        return evaluation_refusal(refusal.status) | {"partition-id": site.partition_id}, [
            str(refusal)
        ]
    return metrics | {"partition-id": site.partition_id}, []
