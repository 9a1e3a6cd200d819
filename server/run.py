"""One federated run at the coordinator: model, strategy, per-round report, results folder."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from logging import INFO, WARNING
from types import TracebackType
from typing import Any

import flwr
import numpy as np
import opacus
import torch
import transformers
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from common.config import ConfigError, RunSettings
from common.data.partition import natural_partition_values
from common.data.registry import load_dataset
from common.entities import seqeval_report, seqeval_scores
from common.evaluation import evaluate
from common.group_counts import sensitive_values
from common.models.save import save_model
from common.models.weights import load_trainable_state, trainable_state, weights_digest
from common.protocol.records import from_array_record, to_array_record
from common.protocol.request import TrainRequest
from common.task import build_model, head_features, pick_device, to_tensors
from server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from server.client_dp import client_level_dp_summary, with_client_dp
from server.final_evaluation import run_final_evaluation
from server.progress import format_round
from server.results import RunResults
from server.secure_aggregation import with_secure_aggregation
from server.strategy import RoundRecord, make_strategy


class FederatedRun:
    """Holds the server's model and results for one run; use as a context manager so a failed
    run leaves no partial results folder behind (unless it can be resumed from a checkpoint).

    After every round the global model, the round number and every round's records are
    checkpointed in the partial results folder; ``resume=true`` continues from there.
    """

    def __init__(self, settings: RunSettings, run_name: str, run_id: int) -> None:
        self.settings = settings
        self.run_name = run_name
        self.run_id = run_id
        self.results = RunResults(settings.results_dir, run_name, resume=settings.resume)
        try:
            self._prepare(settings, run_id)
        except BaseException:
            self.results.abort()
            raise

    def _prepare(self, settings: RunSettings, run_id: int) -> None:
        self.checkpoint = load_checkpoint(self.results.path) if settings.resume else None
        if self.checkpoint is not None:
            _check_same_run(self.checkpoint.settings, settings)
        self.device = pick_device()
        pool, test = load_dataset(settings.dataset, settings.seed)
        if test.kind == "tokens" and (settings.audit or settings.sensitive_column):
            raise ConfigError(
                f"dataset {settings.dataset} is token-tagged (NER): the membership audit and "
                "group counts score one label per record; set audit=false and "
                'sensitive-column=""'
            )
        if settings.sensitive_column:  # checked before any site trains
            try:
                sensitive_values(test, settings.sensitive_column)
            except ValueError as err:
                raise ConfigError(f"dataset {settings.dataset}: {err}") from err
        self.positive_class = test.class_names[-1]
        self.final_sections: dict[str, Any] = {}  # final evaluation, audit, fairness
        self.model, self.tokenizer = build_model(settings, test, self.device)
        self.tag_names = test.class_names if test.kind == "tokens" else None  # NER runs
        if settings.server_eval_max_records and len(test) > settings.server_eval_max_records:
            keep = np.random.default_rng(settings.seed).permutation(len(test))
            test = test.subset(np.sort(keep[: settings.server_eval_max_records]))
        self.test_tensors = (
            to_tensors(test, self.tokenizer, settings.max_length)[0]
            if settings.server_eval
            else None
        )
        self.eval_model = self.model  # head mode: the head on the encoder's cached features
        if self.test_tensors is not None and settings.model == "text":
            if settings.finetune_mode == "head":
                self.eval_model, self.test_tensors = head_features(
                    settings, self.model, self.test_tensors, self.device
                )
        by = settings.partition_by if settings.partitioner == "natural" else ""
        names = dict(enumerate(natural_partition_values(pool, by))) if by else {}
        done = self.checkpoint.completed_round if self.checkpoint else 0
        self.strategy = make_strategy(
            settings.aggregation,
            settings.server_optimizer,
            **_aggregation_options(settings),
            **_server_optimizer_options(settings),
            site_names=names,
            round_offset=done,
            max_update_norm=settings.max_update_norm,
            fraction_train=settings.fraction_train,
            min_train_nodes=settings.min_train_nodes,
            min_available_nodes=settings.min_train_nodes,
            # evaluate-with-train: sites evaluate inside the train message, none separately
            fraction_evaluate=0.0 if settings.evaluate_with_train else settings.fraction_evaluate,
            min_evaluate_nodes=0 if settings.evaluate_with_train else settings.min_evaluate_nodes,
        )
        # what Flower's loop runs: the strategy, wrapped for client-level DP when asked
        self.flower_strategy = (
            with_secure_aggregation(self.strategy, settings)
            if settings.secure_aggregation
            else with_client_dp(self.strategy, settings)
        )
        if self.checkpoint is not None:
            self.strategy.rounds = dict(self.checkpoint.rounds)
            self.run_key = self.checkpoint.run_key
            self.flower_run_ids = [*self.checkpoint.flower_run_ids, run_id]
            self.resumed = list(self.checkpoint.resumed)
            self.started = self.checkpoint.started
            log(INFO, "Resuming run %s after round %s", self.run_name, done)
        else:
            self.run_key = f"{self.run_name}@{run_id}"  # sites key this run's privacy plan by it
            self.flower_run_ids = [run_id]
            self.resumed: list[dict[str, Any]] = []
            self.started = time.time()
        self.latest_arrays: ArrayRecord | None = None

    @property
    def completed_rounds(self) -> int:
        """Rounds already done before this process started (0 unless resumed)."""
        return self.strategy.round_offset

    @property
    def remaining_rounds(self) -> int:
        return self.settings.num_server_rounds - self.completed_rounds

    def __enter__(self) -> FederatedRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if err is not None and self.results.abort():
            log(
                WARNING,
                "The run failed; its checkpoint is kept in %s: continue it with "
                "--run-config \"resume=true run-name='%s'\"",
                self.results.path,
                self.run_name,
            )

    def start_weights(self) -> ArrayRecord:
        """The global model to start from: the checkpoint's when resuming (checked against
        the digest recorded for its round), else the initial trainable parameters."""
        self._round_started = time.time()
        if self.checkpoint is None:
            self.latest_arrays = to_array_record(trainable_state(self.model))
            return self.latest_arrays
        done = self.checkpoint.completed_round
        digest = weights_digest(self.checkpoint.arrays)
        recorded = (
            self.checkpoint.rounds[done].model_sha256 if done in self.checkpoint.rounds else ""
        )
        if digest != recorded:
            raise CheckpointError(
                f"the checkpoint's model (sha256 {digest[:12]}) is not the model recorded after "
                f"round {done} ({recorded[:12] or 'none'}); refusing to resume from it"
            )
        self.resumed.append(
            {"flower-run-id": self.run_id, "after-round": done, "model-sha256": digest}
        )
        self.latest_arrays = to_array_record(self.checkpoint.arrays)
        return self.latest_arrays

    def requested_training(self) -> dict[str, Any]:
        """What the server asks of the sites each round (the site may clamp or refuse)."""
        return TrainRequest.of_run(self.settings, self.run_key)

    def end_of_round(self, flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Called by the strategy after each round (and for round 0): server-side evaluation,
        checkpoint, metrics file, one progress line."""
        server_round = flower_round + self.completed_rounds
        rec = self.strategy.record(server_round)
        self.latest_arrays = arrays
        if flower_round == 0 and self.checkpoint is not None:
            return MetricRecord(rec.server_eval) if rec.server_eval else None  # done before
        now = time.time()
        rec.seconds, self._round_started = now - self._round_started, now
        state = from_array_record(arrays)  # once: digest, evaluation and checkpoint share it
        rec.model_sha256 = weights_digest(state)
        if self.test_tensors is not None:
            load_trainable_state(self.model, state)
            result = evaluate(
                self.eval_model, self.test_tensors, device=self.device, tag_names=self.tag_names
            )
            rec.server_eval = {"loss": result.loss, "accuracy": result.accuracy}
            if result.gold_tags is not None and result.predicted_tags is not None:
                rec.server_eval |= seqeval_scores(result.gold_tags, result.predicted_tags)
        self.save_checkpoint(server_round, state)
        self.results.write_rounds(
            [
                _round_json(self.strategy.rounds[r], self.settings.dp)
                for r in sorted(self.strategy.rounds)
            ]
        )
        log(INFO, format_round(rec, self.settings.num_server_rounds, self.settings.dp))
        return MetricRecord(rec.server_eval) if rec.server_eval else None

    def save_checkpoint(self, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        """Persist the global model after ``server_round`` with every round's records."""
        save_checkpoint(
            self.results.path,
            Checkpoint(
                completed_round=server_round,
                arrays=arrays,
                rounds=self.strategy.rounds,
                run_key=self.run_key,
                settings=_resumable_settings(self.settings),
                flower_run_ids=self.flower_run_ids,
                started=self.started,
                resumed=self.resumed,
            ),
        )

    def final_evaluation(self, grid: Grid, arrays: ArrayRecord) -> None:
        """With ``audit`` or ``sensitive-column``: the sites evaluate the final model once more
        (server/final_evaluation.py). A failure here is logged and recorded, not fatal: the
        trained model and its records are kept."""
        if not (self.settings.audit or self.settings.sensitive_column):
            return
        try:
            self.final_sections = run_final_evaluation(
                grid,
                self.strategy,
                arrays,
                server_round=max(self.strategy.rounds, default=0),
                audit=self.settings.audit,
                sensitive_column=self.settings.sensitive_column,
                positive_class=self.positive_class,
                timeout=self.settings.round_timeout,
            )
        except Exception as err:  # the run's results must survive it
            log(WARNING, "final evaluation failed: %r", err)
            self.final_sections = {"final-evaluation": {"sites": {}, "failures": [repr(err)]}}

    def finish(self, arrays: ArrayRecord, stopped_early: str = "") -> None:
        """Save the final global model and the summary; publish the results folder."""
        state = from_array_record(arrays)
        load_trainable_state(self.model, state)
        save_model(self.model, self.results.model_dir, self.tokenizer)
        report = self._entity_report()
        completed = [r for r, rec in self.strategy.rounds.items() if rec.trained_sites and r > 0]
        final = self.strategy.rounds.get(max(completed, default=0))
        summary = {
            "rounds-completed": len(completed),
            "rounds-planned": self.settings.num_server_rounds,
            "stopped-early": stopped_early or None,
            "run-name": self.run_name,
            "run-id": self.run_id,
            "flower-run-ids": self.flower_run_ids,  # more than one: the run was resumed
            "resumed": self.resumed,
            "model-sha256": weights_digest(state),
            "run-key": self.run_key,
            "privacy": _privacy_statement(self.settings),
            "config": asdict(self.settings),
            "client-level-dp": client_level_dp_summary(self.strategy.rounds, self.settings),
            "final-round": None if final is None else _round_json(final, self.settings.dp),
            "sites": site_summaries(self.strategy.rounds),
            **({"entity-report": report} if report else {}),
            "rejected-updates": [
                f"round {r}: {reason}"
                for r, rec in sorted(self.strategy.rounds.items())
                for reason in rec.rejected
            ],
            "versions": {
                "python": platform.python_version(),
                "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "",
                "torch": torch.__version__,
                "opacus": opacus.__version__,
                "transformers": transformers.__version__,
            },
        } | self.final_sections
        path = self.results.finish(summary)
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

    def _entity_report(self) -> dict[str, Any] | None:
        """NER runs: seqeval's CoNLL-style report of the final model on the held-out set (logged
        as text, returned per entity type for the summary); None otherwise."""
        if self.tag_names is None or self.test_tensors is None:
            return None
        result = evaluate(
            self.eval_model, self.test_tensors, device=self.device, tag_names=self.tag_names
        )
        assert result.gold_tags is not None and result.predicted_tags is not None
        gold, predicted = result.gold_tags, result.predicted_tags
        log(INFO, "Entity-level scores on the held-out set:\n%s", seqeval_report(gold, predicted))
        report = seqeval_report(gold, predicted, as_dict=True)
        assert isinstance(report, dict)
        return {k: {m: float(v) for m, v in row.items()} for k, row in report.items()}


def _privacy_statement(settings: RunSettings) -> str:
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


def _aggregation_options(settings: RunSettings) -> dict[str, Any]:
    """The robust aggregation's own parameters (Flower's names)."""
    if settings.aggregation == "trimmed-mean":
        return {"beta": settings.trim_fraction}
    if settings.aggregation in ("krum", "multi-krum"):
        options: dict[str, Any] = {"num_malicious_nodes": settings.malicious_sites}
        if settings.aggregation == "multi-krum":  # keep the n - f best-scored updates
            options["num_nodes_to_select"] = max(
                settings.min_train_nodes - settings.malicious_sites, 1
            )
        return options
    if settings.client_dp != "off":  # DP-FedAvg: noise is calibrated to an unweighted mean
        return {"uniform_weights": True}
    return {}


def _server_optimizer_options(settings: RunSettings) -> dict[str, Any]:
    """The server optimizer's parameters (Flower's names); server-learning-rate 0 keeps
    Flower's default (FedAvgM 1.0, FedAdam/FedYogi 0.1)."""
    lr = settings.server_learning_rate
    if settings.server_optimizer == "fedavgm":
        return {"server_momentum": settings.server_momentum} | (
            {"server_learning_rate": lr} if lr else {}
        )
    if settings.server_optimizer in ("fedadam", "fedyogi"):
        return {
            "beta_1": settings.server_beta_1,
            "beta_2": settings.server_beta_2,
            "tau": settings.server_tau,
        } | ({"eta": lr} if lr else {})
    return {}


def _resumable_settings(settings: RunSettings) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues (all but resume)."""
    return {k: v for k, v in asdict(settings).items() if k != "resume"}


def _check_same_run(saved: dict[str, Any], settings: RunSettings) -> None:
    """A key a checkpoint lacks was added to fedpriv after it was written: that run had the
    key's default behaviour, so it counts as the default."""
    now = _resumable_settings(settings)
    saved = _resumable_settings(RunSettings()) | saved
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"resume needs the configuration of the run it continues; changed: {details}"
        )


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
        "dropped": rec.dropped,
        "rejected": rec.rejected,
        "client-dp": rec.client_dp,
        "model-sha256": rec.model_sha256,
        "seconds": rec.seconds,
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
