"""A site's answer to an evaluate message: the received model on its validation records, or
(``final-evaluation``) the final model's group counts and membership audit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from client.evaluation import eval_metrics, evaluate
from client.local_round import Metrics, site_model
from client.site_context import Site


def answer_evaluation(
    site: Site, weights: dict[str, np.ndarray], config: Mapping[str, Any]
) -> Metrics:
    """The metrics a site replies to an evaluate message for ``weights``."""
    if config.get("final-evaluation"):  # after the last round: group counts, optional audit
        from client.final_evaluation import final_evaluation  # scipy/sklearn: only here

        return final_evaluation(site, weights, audit=bool(config.get("audit")))
    model, dataset, _ = site_model(site, weights, "validation")
    result = evaluate(model, dataset, device=site.device, tag_names=site.data.train.class_names)
    return eval_metrics(result) | {
        "num-examples": result.num_examples,
        "partition-id": site.partition_id,
    }
