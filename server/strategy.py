"""FedAvg that knows about sites' privacy: per-site records each round, refusals left out."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from common.entities import federated_entity_scores, is_count_key
from common.protocol.records import (
    ARRAYS,
    DECISION,
    METRICS,
    STATUS_NAMES,
    TRAINED,
    from_array_record,
)
from server.update_validation import check_train_reply

UNIFORM_WEIGHT = "client-dp-weight"  # metric of weight 1 each accepted update gets (uniform)
CLIP_TOLERANCE = 1.001  # a site-clipped update may exceed C by float32 rounding only


class RunStopped(Exception):
    """Too few sites could train (they refused: budget, rounds cap, policy): the run ends
    cleanly with this reason."""


class RoundFailed(RuntimeError):
    """Too few sites answered a round, because of errors: the run fails."""


@dataclass
class RoundRecord:
    """What the server learnt in one round: per-site train/eval metrics and aggregates."""

    server_round: int
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    federated_eval: dict[str, float] = field(default_factory=dict)
    server_eval: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # sites that did not reply in time
    rejected: list[str] = field(default_factory=list)  # "site: reason" of updates refused
    client_dp: dict[str, Any] = field(default_factory=dict)  # client-level DP of this round
    trained_sites: int = 0
    model_sha256: str = ""  # digest of the global model after this round
    seconds: float = 0.0  # wall time of the round at the server


class PrivacyAware(FedAvg):
    """A Flower strategy, plus: every site's reply is recorded (epsilon spent/budget/left,
    status, the reason of a refusal, what its policy clamped); replies are checked before
    aggregation; replies of sites that refused or were rejected are left out. Mixed in front
    of Flower's FedAvg, FedMedian, FedTrimmedAvg, Krum or MultiKrum (``make_strategy``), whose
    own aggregation then runs on the accepted replies.

    site_names: optional partition-id -> display name (e.g. the hospital in simulation).
    """

    def __init__(
        self,
        *,
        site_names: dict[int, str] | None = None,
        round_offset: int = 0,
        max_update_norm: float = 0.0,
        uniform_weights: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.uniform_weights = uniform_weights  # client-level DP: every accepted update once
        self.max_update_norm = max_update_norm  # 0 = no bound on ||w_site - w_global||_2
        self.site_names = site_names or {}
        self.rounds: dict[int, RoundRecord] = {}
        # A resumed run: Flower's loop counts from 1 again; rounds on the wire and in the
        # records continue from the checkpoint (round_offset = rounds already completed).
        self.round_offset = round_offset
        self.node_labels: dict[int, str] = {}  # node id -> site label, learnt from replies
        self._sent: dict[int, list[Message]] = {}  # round -> the train messages sent
        self._global: dict[str, Any] | None = None  # the arrays sent this round
        self._accepted_round: int | None = None  # set by a client-DP wrapper that ran accept()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(
            super().configure_train(server_round + self.round_offset, arrays, config, grid)
        )
        self._sent[server_round + self.round_offset] = messages  # the Grid sets their ids
        self._global = from_array_record(arrays)  # what every reply is checked against
        return messages

    def _replier(self, server_round: int, msg: Message) -> int:
        """The site a reply is about. A SuperLink's own error reply (e.g. "Node Unavailable")
        comes from the SuperLink, so map it back through the message it answers."""
        for sent in self._sent.get(server_round, []):
            if sent.metadata.message_id and sent.metadata.message_id == (
                msg.metadata.reply_to_message_id
            ):
                return sent.metadata.dst_node_id
        return msg.metadata.src_node_id

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def record(self, server_round: int) -> RoundRecord:
        return self.rounds.setdefault(server_round, RoundRecord(server_round))

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

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._accepted_round == server_round:  # checked and clipped by a client-DP wrapper
            self._accepted_round = None
            trained = list(replies)
        else:
            trained = self.accept(server_round, replies)
        weighted_by = self.weighted_by_key
        if self.uniform_weights:  # training only: evaluation stays weighted by examples
            self.weighted_by_key = UNIFORM_WEIGHT
        try:
            arrays, metrics = super().aggregate_train(server_round + self.round_offset, trained)
        finally:
            self.weighted_by_key = weighted_by
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
        self._aggregate_received_eval(server_round - 1)
        if len(trained) < max(self.min_train_nodes, 1):
            refused = [s for s, m in rec.sites.items() if m["status"] != STATUS_NAMES[TRAINED]]
            if rec.failures or rec.rejected:
                problems = "; ".join([*rec.failures, *(f"rejected {r}" for r in rec.rejected)])
                raise RoundFailed(
                    f"round {server_round}: {len(trained)} site(s) trained, fewer than "
                    f"min-train-nodes={self.min_train_nodes}; errors: {problems}"
                )
            reasons = "; ".join(f"{s}: {rec.sites[s]['status']}" for s in sorted(refused))
            raise RunStopped(
                f"round {server_round}: only {len(trained)} site(s) could train (min-train-nodes"
                f"={self.min_train_nodes}); refused: {reasons or 'none'}"
            )
        if self.uniform_weights:
            for msg in trained:
                msg.content[METRICS][UNIFORM_WEIGHT] = 1.0
        return trained

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

    def _aggregate_received_eval(self, model_round: int) -> None:
        sites = [m for m in self.rounds.get(model_round, RoundRecord(0)).sites.values()]
        weighted = [m for m in sites if m.get("eval-examples", 0) > 0]
        total = sum(m["eval-examples"] for m in weighted)
        if total:
            self.record(model_round).federated_eval = (
                {
                    k: sum(m[k] * m["eval-examples"] for m in weighted) / total
                    for k in ("eval-loss", "eval-accuracy")
                }
                | federated_entity_scores(weighted)  # NER: F1 of the summed entity counts
                | accuracy_noise(weighted)
            )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        server_round += self.round_offset
        replies = list(replies)
        rec = self.record(server_round)
        answered = []
        for msg in replies:
            if not (msg.has_content() and METRICS in msg.content):
                continue
            metrics = msg.content[METRICS]
            entry = rec.sites.setdefault(self.site_label(msg), {})
            entry.update({k: v for k, v in metrics.items() if k.startswith("eval-")})
            if _positive_count(metrics.get("num-examples", 0)):
                answered.append(msg)
            else:  # the site refused to answer (its policy or budget): left out of the mean
                entry["eval-status"] = STATUS_NAMES.get(
                    int(_number(metrics.get("status", 0))), "refused"
                )
        if not answered:
            rec.federated_eval = {}
            return None
        metrics = super().aggregate_evaluate(server_round, answered)
        # Entity counts (NER) are summed, not averaged: F1 is computed from the sums.
        answers = [msg.content[METRICS] for msg in answered]
        rec.federated_eval = (
            {
                k: v
                for k, v in (metrics or {}).items()
                if k in ("eval-loss", "eval-accuracy") and not is_count_key(k)
            }
            | federated_entity_scores(answers)
            | accuracy_noise(
                [{k: m.get(k, 0) for k in ("eval-examples", "eval-noise-std")} for m in answers]
            )
        )
        return metrics


EVAL_FIGURES = (
    "eval-loss",
    "eval-accuracy",
    "eval-noise-std",
    "eval-dp",
    "eval-epsilon-spent",
    "eval-epsilon-budget",
    "eval-delta",
)


def accuracy_noise(sites: Iterable[Any]) -> dict[str, float]:
    """The noise on a federated accuracy from the sites' noisy sums: std of the summed noisy
    correct count sqrt(sum_k s_k^2) over the summed count n (s_k: site k's ``eval-noise-std``);
    0 when every answer was exact."""
    sites = list(sites)
    total = sum(_number(m.get("eval-examples", 0)) for m in sites)
    variance = sum(_number(m.get("eval-noise-std", 0.0)) ** 2 for m in sites)
    if total <= 0 or variance <= 0:
        return {}
    return {"eval-accuracy-std": math.sqrt(variance) / total}


def _number(value: Any) -> float:
    """An untrusted metric as a finite float (0 otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) else 0.0


def _positive_count(value: Any) -> bool:
    return _number(value) > 0


class PrivacyAwareFedAvg(PrivacyAware, FedAvg):
    """Weighted federated averaging (FedAvg) of the accepted replies."""


class PrivacyAwareFedAvgM(PrivacyAware, FedAvgM):
    """FedAvg with server momentum (Hsu et al. 2019): with the pseudo-gradient
    g = w - mean(w_site), v <- beta v + g and w <- w - eta v (Flower's FedAvgM)."""


class PrivacyAwareFedAdam(PrivacyAware, FedAdam):
    """Adam on the server (Reddi et al. 2021) over the mean update delta = mean(w_site) - w:
    m <- b1 m + (1 - b1) delta, v <- b2 v + (1 - b2) delta^2, w <- w + eta m / (sqrt(v) + tau)
    (Flower's FedAdam, with its bias-corrected eta)."""


class PrivacyAwareFedYogi(PrivacyAware, FedYogi):
    """Yogi on the server (Reddi et al. 2021): as FedAdam but
    v <- v - (1 - b2) delta^2 sign(v - delta^2) (Flower's FedYogi)."""


# server-optimizer -> the privacy-aware strategy that applies it after the weighted mean
SERVER_OPTIMIZERS: dict[str, type[PrivacyAware]] = {
    "fedavg": PrivacyAwareFedAvg,
    "fedavgm": PrivacyAwareFedAvgM,
    "fedadam": PrivacyAwareFedAdam,
    "fedyogi": PrivacyAwareFedYogi,
}


# aggregation -> Flower strategy whose aggregate_train combines the accepted replies
AGGREGATIONS: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "median": FedMedian,  # coordinate-wise median
    "trimmed-mean": FedTrimmedAvg,  # coordinate-wise mean without the beta tails
    "krum": Krum,  # the update closest to its n - f - 2 nearest neighbours
    "multi-krum": MultiKrum,  # the mean of the m best-scored updates
}


def make_strategy(
    aggregation: str, server_optimizer: str = "fedavg", **kwargs: Any
) -> PrivacyAware:
    """The privacy-aware strategy on top of Flower's ``aggregation`` (see AGGREGATIONS), or,
    for ``aggregation="fedavg"``, of the ``server_optimizer`` (see SERVER_OPTIMIZERS); extra
    keyword arguments go to it (e.g. beta, num_malicious_nodes, num_nodes_to_select;
    server_learning_rate, server_momentum; eta, beta_1, beta_2, tau)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {aggregation!r}")
    if server_optimizer not in SERVER_OPTIMIZERS:
        raise ValueError(
            f"server-optimizer must be one of {sorted(SERVER_OPTIMIZERS)}, got {server_optimizer!r}"
        )
    if server_optimizer != "fedavg" and aggregation != "fedavg":
        raise ValueError(
            f"server-optimizer={server_optimizer!r} steps from the weighted mean: it needs "
            f"aggregation='fedavg', got {aggregation!r}"
        )
    base = AGGREGATIONS[aggregation]
    if base is FedAvg:
        return SERVER_OPTIMIZERS[server_optimizer](**kwargs)
    cls = type(f"PrivacyAware{base.__name__}", (PrivacyAware, base), {})
    return cls(**kwargs)
