"""The privacy-aware strategy: every site's reply recorded and checked, refusals left out.

``PrivacyAware`` wraps a Flower strategy (``inner``: Flower's FedAvg, FedMedian, FedTrimmedAvg,
Krum, MultiKrum, FedAvgM, FedAdam or FedYogi, or one of Flower's DP-FedAvg wrappers around one
of them; server/build.py chooses) and calls only its public methods, as Flower's own DP wrappers
do: ``inner.configure_train`` samples the sites, ``inner.aggregate_train`` combines the replies
that ``accept`` let through. Rounds on the wire and in the records are Flower's round plus
``round_offset`` (the rounds a resumed run completed before).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from common.entities import is_count_key
from common.protocol.records import (
    ARRAYS,
    DECISION,
    METRICS,
    STATUS_NAMES,
    TRAINED,
    from_array_record,
)
from server.metrics import EVAL_FIGURES, federated_eval, number, received_eval
from server.records import RoundRecord
from server.update_validation import check_train_reply

UNIFORM_WEIGHT = "client-dp-weight"  # metric of weight 1 each accepted reply gets (DP-FedAvg)
CLIP_TOLERANCE = 1.001  # a site-clipped update may exceed C by float32 rounding only


class RunStopped(Exception):
    """Too few sites could train (they refused: budget, rounds cap, policy): the run ends
    cleanly with this reason."""


class RoundFailed(RuntimeError):
    """Too few sites answered a round, because of errors: the run fails."""


class PrivacyAware(Strategy):
    """``inner``, plus: every site's reply is recorded (epsilon spent/budget/left, status, the
    reason of a refusal, what its policy clamped); replies are checked before aggregation
    (``check_train_reply``); replies of sites that refused or were rejected are left out.

    site_names: partition id -> display name (e.g. the hospital in simulation);
    min_train_nodes: fewer accepted replies end the run (RunStopped / RoundFailed);
    max_update_norm: bound on ||w_site - w_global||_2 (0 = none); uniform_weights: every
    accepted reply gets weight 1 under ``UNIFORM_WEIGHT``, the inner strategy's weight key
    (DP-FedAvg: the noise is calibrated to an unweighted mean).
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        min_train_nodes: int,
        site_names: dict[int, str] | None = None,
        round_offset: int = 0,
        max_update_norm: float = 0.0,
        uniform_weights: bool = False,
    ) -> None:
        self.inner = inner
        self.min_train_nodes = min_train_nodes
        self.site_names = site_names or {}
        self.round_offset = round_offset
        self.max_update_norm = max_update_norm
        self.uniform_weights = uniform_weights
        self.rounds: dict[int, RoundRecord] = {}
        self.node_labels: dict[int, str] = {}  # node id -> site label, learnt from replies
        self._sent: dict[int, list[Message]] = {}  # round -> the train messages sent
        self._global: dict[str, Any] | None = None  # the arrays sent this round

    def summary(self) -> None:
        self.inner.summary()

    def record(self, server_round: int) -> RoundRecord:
        return self.rounds.setdefault(server_round, RoundRecord(server_round))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._sent[server_round] = messages  # the Grid sets their ids
        self._global = from_array_record(arrays)  # what every reply is checked against
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``accept`` the replies of Flower's round ``server_round``, then
        ``aggregate_accepted``."""
        return self.aggregate_accepted(server_round, self.accept(server_round, replies))

    def aggregate_accepted(
        self, server_round: int, accepted: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's aggregate of replies ``accept`` let through, in the dtypes the
        round sent; records the mean training figures."""
        arrays, metrics = self.inner.aggregate_train(server_round + self.round_offset, accepted)
        rec = self.record(server_round + self.round_offset)
        rec.train = {k: v for k, v in (metrics or {}).items() if k == "train-loss"}
        if arrays is not None and self._global is not None:
            arrays = self._as_sent(arrays)
        return arrays, metrics

    def _as_sent(self, arrays: ArrayRecord) -> ArrayRecord:
        """The new global model in the dtypes the round sent (Flower's FedAdam/FedYogi step in
        float64: the sites' float32 replies would then fail the dtype check next round)."""
        assert self._global is not None
        sent = self._global
        return ArrayRecord(
            {
                k: Array(np.asarray(a.numpy(), dtype=sent[k].dtype) if k in sent else a.numpy())
                for k, a in arrays.items()
            }
        )

    def _replier(self, server_round: int, msg: Message) -> int:
        """The site a reply is about. A SuperLink's own error reply (e.g. "Node Unavailable")
        comes from the SuperLink, so map it back through the message it answers."""
        for sent in self._sent.get(server_round, []):
            if sent.metadata.message_id and sent.metadata.message_id == (
                msg.metadata.reply_to_message_id
            ):
                return sent.metadata.dst_node_id
        return msg.metadata.src_node_id

    def site_label(self, msg: Message) -> str:
        """A simulated site's partition name; a deployed site's own name (from its decision
        record), made unique with its node id; else the node id."""
        metrics = msg.content[METRICS] if METRICS in msg.content else MetricRecord()
        pid = int(metrics.get("partition-id", -1))
        if pid >= 0:
            return self.site_names.get(pid, f"site-{pid}")
        node = msg.metadata.src_node_id
        if node in self.node_labels:
            return self.node_labels[node]
        decision = msg.content[DECISION] if DECISION in msg.content else {}
        name = str(decision.get("site", "")) if "site" in decision else ""
        if name and name not in self.node_labels.values():
            return name
        return f"{name or 'node'}-{node}" if name else f"node-{node}"

    def accept(
        self,
        server_round: int,
        replies: Iterable[Message],
        clip_norm: float = 0.0,
        norm_bit: bool = False,
    ) -> list[Message]:
        """Record every reply of Flower's round ``server_round``; return the trained replies
        that passed ``check_train_reply`` (update norm also bounded by ``clip_norm`` when the
        sites clip it themselves; a 0/1 ``norm_bit`` metric required from sites that clip
        adaptively). Raises RunStopped / RoundFailed when too few are left."""
        server_round += self.round_offset
        bounds = [b for b in (self.max_update_norm, clip_norm * CLIP_TOLERANCE) if b]
        bound = min(bounds, default=0.0)  # 0 = no bound
        rec = self.record(server_round)
        trained: list[Message] = []
        replies = list(replies)
        answered = {self._replier(server_round, msg) for msg in replies}
        for node in (m.metadata.dst_node_id for m in self._sent.get(server_round, [])):
            if node not in answered:  # a site that dropped out: no reply within the timeout
                label = self.node_labels.get(node, f"node-{node}")
                rec.dropped.append(label)
                rec.failures.append(f"{label}: no reply within the round timeout (dropped out)")
        for msg in replies:
            node = self._replier(server_round, msg)
            label = (
                self.site_label(msg)
                if msg.has_content()
                else self.node_labels.get(node, f"node-{node}")
            )
            if msg.has_error():
                rec.failures.append(f"{label}: {msg.error.reason}")
                if msg.error.code == ErrorCode.NODE_UNAVAILABLE:  # missed its heartbeats
                    rec.dropped.append(label)
                continue
            metrics = dict(msg.content[METRICS])
            self.node_labels[node] = label
            self._record_received_eval(server_round - 1, label, metrics)
            status = int(metrics.get("status", TRAINED))
            decision = dict(msg.content[DECISION]) if DECISION in msg.content else {}
            rec.sites[label] = {
                **metrics,
                "status": STATUS_NAMES.get(status, str(status)),
                "reason": str(decision.get("reason", "")),
                "clamped": [str(c) for c in decision.get("clamped", [])],
            }
            reason = None
            if status == TRAINED and self._global is not None:
                reason = check_train_reply(msg.content, self._global, bound)
                if reason is None and norm_bit and metrics.get(KEY_NORM_BIT) not in (0, 1):
                    reason = f"no 0/1 {KEY_NORM_BIT} metric from the site's adaptive clipping"
            if reason is not None:
                rec.rejected.append(f"{label}: {reason}")
                rec.sites[label]["status"] = "rejected"
                rec.sites[label]["reason"] = reason
                log(WARNING, "round %s: update of %s rejected: %s", server_round, label, reason)
            elif status == TRAINED and ARRAYS in msg.content:
                trained.append(msg)
            else:
                log(
                    WARNING,
                    "round %s: %s did not train (%s)",
                    server_round,
                    label,
                    rec.sites[label]["reason"] or STATUS_NAMES.get(status, status),
                )
        rec.trained_sites = len(trained)
        model_round = self.rounds.get(server_round - 1)  # what the replies evaluated
        if model_round is not None and (found := received_eval(model_round.sites.values())):
            model_round.federated_eval = found
        self._check_enough(server_round, rec, len(trained))
        if self.uniform_weights:
            for msg in trained:
                msg.content[METRICS][UNIFORM_WEIGHT] = 1.0
        return trained

    def _check_enough(self, server_round: int, rec: RoundRecord, trained: int) -> None:
        """RoundFailed when errors or rejections left fewer than min-train-nodes updates;
        RunStopped (the run ends cleanly) when the sites refused to train."""
        if trained >= max(self.min_train_nodes, 1):
            return
        refused = [s for s, m in rec.sites.items() if m["status"] != STATUS_NAMES[TRAINED]]
        if rec.failures or rec.rejected:
            problems = "; ".join([*rec.failures, *(f"rejected {r}" for r in rec.rejected)])
            raise RoundFailed(
                f"round {server_round}: {trained} site(s) trained, fewer than "
                f"min-train-nodes={self.min_train_nodes}; errors: {problems}"
            )
        reasons = "; ".join(f"{s}: {rec.sites[s]['status']}" for s in sorted(refused))
        raise RunStopped(
            f"round {server_round}: only {trained} site(s) could train (min-train-nodes"
            f"={self.min_train_nodes}); refused: {reasons or 'none'}"
        )

    def _record_received_eval(self, model_round: int, label: str, metrics: dict) -> None:
        """With evaluate-with-train, a train reply also holds the site's evaluation of the
        model it received, i.e. of round ``model_round``'s global model: file it there."""
        examples = metrics.pop("eval-examples", 0)
        valid = isinstance(examples, int | float) and math.isfinite(examples)
        examples = int(examples) if valid else 0  # an untrusted value
        keys = [k for k in metrics if k in EVAL_FIGURES or is_count_key(k)]
        scores = {k: metrics.pop(k) for k in keys}
        if examples > 0 and model_round >= 0:
            entry = self.record(model_round).sites.setdefault(label, {})
            entry.update(scores | {"eval-examples": examples})

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Record each site's evaluation; the federated evaluation of the sites that answered
        (weighted by the examples each evaluated; server/metrics.py)."""
        server_round += self.round_offset
        rec = self.record(server_round)
        answered = []
        for msg in replies:
            if not (msg.has_content() and METRICS in msg.content):
                continue
            metrics = msg.content[METRICS]
            entry = rec.sites.setdefault(self.site_label(msg), {})
            entry.update({k: v for k, v in metrics.items() if k.startswith("eval-")})
            if number(metrics.get("num-examples", 0)) > 0:
                answered.append(msg)
            else:  # the site refused to answer (its policy or budget): left out of the mean
                entry["eval-status"] = STATUS_NAMES.get(
                    int(number(metrics.get("status", 0))), "refused"
                )
        if not answered:
            rec.federated_eval = {}
            return None
        if self.uniform_weights:  # the inner strategy's weight key; the figures weigh examples
            for msg in answered:
                msg.content[METRICS][UNIFORM_WEIGHT] = 1.0
        means = self.inner.aggregate_evaluate(server_round, answered) or MetricRecord()
        rec.federated_eval = federated_eval(means, [m.content[METRICS] for m in answered])
        return MetricRecord({**means, **rec.federated_eval})
