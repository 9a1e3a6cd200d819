"""One federated run at the coordinator: model, strategy, per-round hook, results folder."""

from __future__ import annotations

import time
from logging import INFO, WARNING
from types import TracebackType
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from common.config import RunSettings
from common.data.partition import natural_partition_values
from common.data.registry import load_dataset
from common.models.save import save_model
from common.models.weights import load_trainable_state, trainable_state, weights_digest
from common.protocol.records import from_array_record, to_array_record
from common.protocol.request import TrainRequest
from common.task import build_model, pick_device
from server.build import build_strategy
from server.checkpoint import (
    RunIdentity,
    check_model,
    resume_checkpoint,
    save_checkpoint,
)
from server.final_evaluation import check_final_evaluation, final_sections
from server.initial_head import load_initial_head
from server.progress import format_round
from server.results import RunResults
from server.server_eval import ServerEvaluation
from server.summary import publish, run_summary


class FederatedRun:
    """Holds the server's model and results for one run; use as a context manager so a failed
    run leaves no partial results folder behind (unless it can be resumed from a checkpoint).

    After every round the global model, the round number and every round's records are
    checkpointed in the partial results folder; ``resume=true`` continues from there.
    """

    def __init__(self, settings: RunSettings, run_name: str, run_id: int) -> None:
        self.settings, self.run_name, self.run_id = settings, run_name, run_id
        self.results = RunResults(settings.results_dir, run_name, resume=settings.resume)
        try:
            self._prepare(settings, run_id)
        except BaseException:
            self.results.abort()
            raise

    def _prepare(self, settings: RunSettings, run_id: int) -> None:
        self.checkpoint = (
            resume_checkpoint(self.results.path, settings) if settings.resume else None
        )
        self.device = pick_device()
        pool, test = load_dataset(settings.dataset, settings.seed)
        check_final_evaluation(settings, test)  # before any site trains
        self.positive_class = test.class_names[-1]
        self.final_sections: dict[str, Any] = {}  # final evaluation, audit, fairness
        self.model, self.tokenizer = build_model(settings, test, self.device)
        # LP-FT: a trained head from an earlier run, before the initial state is taken
        self.initial_head = (
            load_initial_head(self.model, settings.init_head_from)  # type: ignore[arg-type]
            if settings.init_head_from
            else None
        )
        self.server_eval = (
            ServerEvaluation(settings, self.model, self.tokenizer, test, self.device)
            if settings.server_eval
            else None
        )
        by = settings.partition_by if settings.partitioner == "natural" else ""
        names = dict(enumerate(natural_partition_values(pool, by))) if by else {}
        done = self.checkpoint.completed_round if self.checkpoint else 0
        # the privacy-aware strategy (its records) and what Flower's loop runs around it
        self.strategy, self.flower_strategy = build_strategy(
            settings, site_names=names, round_offset=done
        )
        self.identity = RunIdentity.of(self.run_name, run_id, self.checkpoint)
        if self.checkpoint is not None:
            self.strategy.rounds = dict(self.checkpoint.rounds)
            log(INFO, "Resuming run %s after round %s", self.run_name, done)
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
        digest, after = check_model(self.checkpoint), self.checkpoint.completed_round
        resume = {"flower-run-id": self.run_id, "after-round": after, "model-sha256": digest}
        self.identity.resumed.append(resume)
        self.latest_arrays = to_array_record(self.checkpoint.arrays)
        return self.latest_arrays

    def requested_training(self) -> dict[str, Any]:
        """What the server asks of the sites each round (the site may clamp or refuse)."""
        return TrainRequest.of_run(self.settings, self.identity.run_key)

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
        if self.server_eval is not None:
            rec.server_eval = self.server_eval.scores(state)
        rounds = self.strategy.rounds
        checkpoint = self.identity.checkpoint(server_round, state, rounds, self.settings)
        save_checkpoint(self.results.path, checkpoint)
        self.results.write_rounds([rounds[r].to_json(self.settings.dp) for r in sorted(rounds)])
        log(INFO, format_round(rec, self.settings.num_server_rounds, self.settings.dp))
        return MetricRecord(rec.server_eval) if rec.server_eval else None

    def final_evaluation(self, grid: Grid, arrays: ArrayRecord) -> None:
        """With ``audit`` or ``sensitive-column``: the sites evaluate the final model once more
        (server/final_evaluation.py; a failure there is recorded, not fatal)."""
        self.final_sections = final_sections(
            grid, self.strategy, arrays, self.settings, self.positive_class
        )

    def finish(self, arrays: ArrayRecord, stopped_early: str = "") -> None:
        """Save the final global model and the summary; publish the results folder."""
        state = from_array_record(arrays)
        load_trainable_state(self.model, state)
        save_model(self.model, self.results.model_dir, self.tokenizer)
        summary = run_summary(
            self.settings,
            self.strategy.rounds,
            identity=self.identity.to_json(),
            model_sha256=weights_digest(state),
            stopped_early=stopped_early,
            entity_report=self.server_eval.entity_report() if self.server_eval else None,
            initial_head=self.initial_head,
        )
        publish(self.results, summary | self.final_sections)
