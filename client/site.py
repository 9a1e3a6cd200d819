"""The site service's core: one object per site that owns its policy, data, split, ledger and
models, and answers the coordinator's messages. The one privacy gate lives behind ``handle``.

Deployment: ``fedpriv-site serve`` holds one SiteService for the site's whole life (the base
model, tensors and feature caches stay in memory across rounds and runs) and feeds it the
messages the untrusted ClientApp shim forwards. Simulation: the ClientApp calls the same object
in-process (one per simulated site and worker process). Either way every computation on private
records happens here, and every value a reply carries is in the release inventory
(``common.protocol``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from client.site_context import Site, build_site
from common.config import ConfigError, SiteSettings
from common.models.weights import WeightsMismatchError
from common.protocol.records import (
    ARRAYS,
    CONFIG,
    DECISION,
    METRICS,
    from_array_record,
    to_array_record,
)
from common.releases import check_reply

log = logging.getLogger("fedpriv.site")

TRAIN = "train"
EVALUATE = "evaluate"
MESSAGE_TYPES = (TRAIN, EVALUATE)


class SiteRequestError(ValueError):
    """A message the site cannot answer (unknown type, missing records): refused, nothing
    changes."""


@dataclass
class SiteService:
    """A site: its own settings (policy, data file, ledger), fixed by its operator.

    partition_id / num_partitions: the simulated partition (-1 / 1 in deployment, where the
    site's data file holds its records).
    """

    policy: SiteSettings
    partition_id: int = -1
    num_partitions: int = 1
    _sites: dict[tuple, Site] = field(default_factory=dict, repr=False)

    def site_for(self, run_config: Mapping[str, Any], run_id: int) -> Site:
        """The site as this run sees it (run settings checked; data loaded once per schema)."""
        key = (tuple(sorted((k, repr(v)) for k, v in run_config.items())), run_id)
        site = self._sites.get(key)
        if site is None:
            site = build_site(
                run_config, self.policy, self.partition_id, self.num_partitions, run_id
            )
            if len(self._sites) >= 8:  # a long-lived service serves many runs
                self._sites.pop(next(iter(self._sites)))
            self._sites[key] = site
        return site

    def handle(
        self,
        message_type: str,
        content: RecordDict,
        run_config: Mapping[str, Any],
        run_id: int,
    ) -> RecordDict:
        """Answer one coordinator message (``train`` or ``evaluate``) with the reply content.

        Raises SiteRequestError / ConfigError for a message it cannot answer at all; a request
        it answers with a refusal (budget, policy) is a normal reply with a status and reason.
        """
        if message_type not in MESSAGE_TYPES:
            raise SiteRequestError(
                f"unknown message type {message_type!r}; this site answers {list(MESSAGE_TYPES)}"
            )
        if ARRAYS not in content.array_records:
            raise SiteRequestError("the message carries no model (ArrayRecord 'arrays')")
        config = dict(content.config_records[CONFIG]) if CONFIG in content.config_records else {}
        site = self.site_for(run_config, run_id)
        weights = from_array_record(content.array_records[ARRAYS])
        try:
            return self._answer(message_type, site, weights, config, run_config)
        except WeightsMismatchError as err:  # names and shapes only: safe to say
            raise SiteRequestError(f"the model sent does not fit this run: {err}") from None

    def _answer(
        self,
        message_type: str,
        site: Site,
        weights: dict,
        config: dict[str, Any],
        run_config: Mapping[str, Any],
    ) -> RecordDict:
        if message_type == TRAIN:
            from client.client_dp import ClientClippingError, client_clipping
            from client.local_round import run_train_round

            try:  # client-level DP: clipping (and noise shares) happen here, at the site
                config, clipping = client_clipping(run_config, config)
            except ClientClippingError as err:
                raise SiteRequestError(str(err)) from None
            reply = run_train_round(site, weights, config)
            check_reply(reply.metrics, TRAIN, site.policy)  # nothing outside the inventory
            out = RecordDict(
                {METRICS: MetricRecord(reply.metrics), DECISION: ConfigRecord(reply.decision)}
            )
            if reply.arrays is not None:
                out[ARRAYS] = to_array_record(reply.arrays)
            if clipping is not None:
                clipping.apply(out, weights)
            return out
        from client.site_evaluation import answer_evaluation

        metrics, notes = answer_evaluation(site, weights, config)
        check_reply(metrics, EVALUATE, site.policy)
        decision = {"site": site.data.name, "notes": notes}
        return RecordDict({METRICS: MetricRecord(metrics), DECISION: ConfigRecord(decision)})


__all__ = ["ConfigError", "SiteRequestError", "SiteService", "TRAIN", "EVALUATE"]
