"""One federated run at the coordinator: model, strategy, per-round report, results folder."""

from __future__ import annotations

import platform
from dataclasses import asdict
from logging import INFO
from types import TracebackType
from typing import Any

import flwr
import numpy as np
import opacus
import torch
import transformers
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log

from client.evaluation import evaluate
from client.request import TrainRequest
from common.config import RunSettings
from common.data.partition import natural_partition_values
from common.data.registry import load_dataset
from common.models.save import save_model
from common.models.weights import load_trainable_state, trainable_state
from common.protocol import from_array_record
from common.task import build_model, pick_device, to_tensors
from server.progress import format_round
from server.results import RunResults
from server.strategy import PrivacyAwareFedAvg, RoundRecord


class FederatedRun:
    """Holds the server's model and results for one run; use as a context manager so a failed
    run leaves no partial results folder behind."""

    def __init__(self, settings: RunSettings, run_name: str, run_id: int) -> None:
        self.settings = settings
        self.run_name = run_name
        self.run_id = run_id
        self.device = pick_device()
        pool, test = load_dataset(settings.dataset, settings.seed)
        self.model, self.tokenizer = build_model(settings, test, self.device)
        if settings.server_eval_max_records and len(test) > settings.server_eval_max_records:
            keep = np.random.default_rng(settings.seed).permutation(len(test))
            test = test.subset(np.sort(keep[: settings.server_eval_max_records]))
        self.test_tensors = (
            to_tensors(test, self.tokenizer, settings.max_length)[0]
            if settings.server_eval
            else None
        )
        by = settings.partition_by if settings.partitioner == "natural" else ""
        names = dict(enumerate(natural_partition_values(pool, by))) if by else {}
        self.strategy = PrivacyAwareFedAvg(
            site_names=names,
            fraction_train=settings.fraction_train,
            min_train_nodes=settings.min_train_nodes,
            min_available_nodes=settings.min_train_nodes,
            fraction_evaluate=settings.fraction_evaluate,
            min_evaluate_nodes=settings.min_evaluate_nodes,
        )
        self.results = RunResults(settings.results_dir, run_name)
        self.latest_arrays: ArrayRecord | None = None

    def __enter__(self) -> FederatedRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if err is not None:
            self.results.abort()

    def initial_weights(self) -> dict[str, np.ndarray]:
        """The trainable parameters every site starts from (LoRA: adapters + head only)."""
        return trainable_state(self.model)

    def requested_training(self) -> dict[str, Any]:
        """What the server asks of the sites each round (the site may clamp or refuse)."""
        return TrainRequest.of_run(self.settings)

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Called by the strategy after each round (and for round 0): server-side evaluation,
        one metrics line, one progress line."""
        rec = self.strategy.record(server_round)
        self.latest_arrays = arrays
        if self.test_tensors is not None:
            load_trainable_state(self.model, from_array_record(arrays))
            result = evaluate(self.model, self.test_tensors, device=self.device)
            rec.server_eval = {"loss": result.loss, "accuracy": result.accuracy}
        self.results.append_round(_round_json(rec, self.settings.dp))
        log(INFO, format_round(rec, self.settings.num_server_rounds, self.settings.dp))
        return MetricRecord(rec.server_eval) if rec.server_eval else None

    def finish(self, arrays: ArrayRecord, stopped_early: str = "") -> None:
        """Save the final global model and the summary; publish the results folder."""
        load_trainable_state(self.model, from_array_record(arrays))
        save_model(self.model, self.results.model_dir, self.tokenizer)
        completed = [r for r, rec in self.strategy.rounds.items() if rec.trained_sites and r > 0]
        final = self.strategy.rounds.get(max(completed, default=0))
        summary = {
            "rounds-completed": len(completed),
            "rounds-planned": self.settings.num_server_rounds,
            "stopped-early": stopped_early or None,
            "run-name": self.run_name,
            "run-id": self.run_id,
            "privacy": "sample-level DP-SGD (Opacus) at each site"
            if self.settings.dp
            else "NON-PRIVATE BASELINE (dp=false): no differential privacy",
            "config": asdict(self.settings),
            "final-round": None if final is None else _round_json(final, self.settings.dp),
            "sites": site_summaries(self.strategy.rounds),
            "versions": {
                "python": platform.python_version(),
                "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "",
                "torch": torch.__version__,
                "opacus": opacus.__version__,
                "transformers": transformers.__version__,
            },
        }
        path = self.results.finish(summary)
        log(INFO, "Results written to %s", path)


def _round_json(rec: RoundRecord, dp: bool) -> dict[str, Any]:
    return {
        "round": rec.server_round,
        "dp": dp,
        "trained-sites": rec.trained_sites,
        "train": rec.train,
        "federated-eval": rec.federated_eval,
        "server-eval": rec.server_eval,
        "sites": rec.sites,
        "failures": rec.failures,
    }


def site_summaries(rounds: dict[int, RoundRecord]) -> dict[str, dict[str, Any]]:
    """Each site's last reported privacy state (lifetime epsilon spent/budget/left, delta),
    sigma and q of its last trained round, the rounds it trained, what its policy clamped, and
    when and why it stopped (if it did)."""
    out: dict[str, dict[str, Any]] = {}
    for number in sorted(rounds):
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
