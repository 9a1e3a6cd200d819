"""FedAvg that knows about sites' privacy: per-site records each round, refusals left out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAvg

from common.protocol import ARRAYS, DECISION, METRICS, STATUS_NAMES, TRAINED


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
    trained_sites: int = 0


class PrivacyAwareFedAvg(FedAvg):
    """Flower's FedAvg, plus: every site's reply is recorded (epsilon spent/budget/left, status,
    the reason of a refusal, what its policy clamped), and replies of sites that refused to
    train are left out of aggregation.

    site_names: optional partition-id -> display name (e.g. the hospital in simulation).
    """

    def __init__(self, *, site_names: dict[int, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site_names = site_names or {}
        self.rounds: dict[int, RoundRecord] = {}

    def record(self, server_round: int) -> RoundRecord:
        return self.rounds.setdefault(server_round, RoundRecord(server_round))

    def site_label(self, msg: Message) -> str:
        metrics = msg.content[METRICS] if METRICS in msg.content else MetricRecord()
        pid = int(metrics.get("partition-id", -1))
        if pid >= 0:
            return self.site_names.get(pid, f"site-{pid}")
        return f"node-{msg.metadata.src_node_id}"

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rec = self.record(server_round)
        trained: list[Message] = []
        for msg in replies:
            label = (
                self.site_label(msg) if msg.has_content() else f"node-{msg.metadata.src_node_id}"
            )
            if msg.has_error():
                rec.failures.append(f"{label}: {msg.error.reason}")
                continue
            metrics = dict(msg.content[METRICS])
            status = int(metrics.get("status", TRAINED))
            decision = dict(msg.content[DECISION]) if DECISION in msg.content else {}
            rec.sites[label] = {
                **metrics,
                "status": STATUS_NAMES.get(status, str(status)),
                "reason": str(decision.get("reason", "")),
                "clamped": [str(c) for c in decision.get("clamped", [])],
            }
            if status == TRAINED and ARRAYS in msg.content:
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
        if len(trained) < max(self.min_train_nodes, 1):
            refused = [s for s, m in rec.sites.items() if m["status"] != STATUS_NAMES[TRAINED]]
            if rec.failures:
                raise RoundFailed(
                    f"round {server_round}: {len(trained)} site(s) trained, fewer than "
                    f"min-train-nodes={self.min_train_nodes}; errors: {'; '.join(rec.failures)}"
                )
            reasons = "; ".join(f"{s}: {rec.sites[s]['status']}" for s in sorted(refused))
            raise RunStopped(
                f"round {server_round}: only {len(trained)} site(s) could train (min-train-nodes"
                f"={self.min_train_nodes}); refused: {reasons or 'none'}"
            )
        arrays, metrics = super().aggregate_train(server_round, trained)
        rec.train = {k: v for k, v in (metrics or {}).items() if k == "train-loss"}
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        rec = self.record(server_round)
        for msg in replies:
            if msg.has_content() and METRICS in msg.content:
                rec.sites.setdefault(self.site_label(msg), {}).update(
                    {f"{k}": v for k, v in msg.content[METRICS].items() if k.startswith("eval-")}
                )
        metrics = super().aggregate_evaluate(server_round, replies)
        rec.federated_eval = {k: v for k, v in (metrics or {}).items() if k.startswith("eval-")}
        return metrics
