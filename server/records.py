"""What the server learnt in one round, and its line of ``metrics.jsonl``.

One RoundRecord per round number (round 0: the initial model, evaluated by the server only).
The record holds what the sites reported (their lifetime epsilon spent/budget/left, delta,
status, the reason of a refusal) and what the server derived from the accepted replies; the
sites' ledgers stay the only record of their epsilon. ``server/checkpoint.py`` stores the
records as they are (``dataclasses.asdict``), so a resumed run continues them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundRecord:
    """What the server learnt in one round: per-site train/eval metrics and aggregates.

    sites: site label -> the metrics of its reply (train and/or evaluation keys), its status,
    the reason of a refusal and what its policy clamped; train: the mean of the training
    figures the sites release ("train-loss"); federated_eval: the sites' evaluation of this
    round's global model (weighted by the examples each evaluated); server_eval: the server's
    own evaluation of it on the held-out split; client_dp: this round's client-level release
    (z, q, C, noise std, epsilon so far at delta); model_sha256: digest of the global model
    after this round.
    """

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

    def to_json(self, dp: bool) -> dict[str, Any]:
        """The round's line of ``metrics.jsonl`` (kebab-case keys; ``dp``: whether the run's
        sites trained with DP-SGD, so a reader knows what the epsilons mean)."""
        return {
            "round": self.server_round,
            "dp": dp,
            "trained-sites": self.trained_sites,
            "train": self.train,
            "federated-eval": self.federated_eval,
            "server-eval": self.server_eval,
            "sites": self.sites,
            "failures": self.failures,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "client-dp": self.client_dp,
            "model-sha256": self.model_sha256,
            "seconds": self.seconds,
        }
