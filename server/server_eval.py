"""The server's own evaluation of the global model on the dataset's held-out test split.

The test split is the server's (no site's records): after every round the global model's
cross-entropy loss and accuracy on it (``server-eval``); for a token classifier (NER) also
seqeval's entity-level precision/recall/F1, and at the end its CoNLL-style report. With
``server-eval-max-records`` a seeded random subset of the split is used; in head mode the
frozen encoder's features are computed once and only the head is evaluated.
"""

from __future__ import annotations

from logging import INFO
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.common.logger import log
from torch import nn

from common.config import RunSettings
from common.data.types import LabeledData
from common.entities import seqeval_report, seqeval_scores
from common.evaluation import evaluate
from common.models.weights import load_trainable_state
from common.task import head_features, to_tensors

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class ServerEvaluation:
    """``model`` scored on ``test`` (already checked against the run's settings)."""

    def __init__(
        self,
        settings: RunSettings,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase | None,
        test: LabeledData,
        device: torch.device,
    ) -> None:
        self.model = model
        self.device = device
        self.tag_names = test.class_names if test.kind == "tokens" else None  # NER runs
        if settings.server_eval_max_records and len(test) > settings.server_eval_max_records:
            keep = np.random.default_rng(settings.seed).permutation(len(test))
            test = test.subset(np.sort(keep[: settings.server_eval_max_records]))
        self.tensors = to_tensors(test, tokenizer, settings.max_length)[0]
        self.eval_model = model  # head mode: the head on the encoder's cached features
        if settings.model == "text" and settings.finetune_mode == "head":
            self.eval_model, self.tensors = head_features(settings, model, self.tensors, device)

    def scores(self, state: dict[str, np.ndarray]) -> dict[str, float]:
        """loss and accuracy of the model with trainable parameters ``state`` (NER: with
        seqeval's entity scores)."""
        load_trainable_state(self.model, state)
        result = evaluate(
            self.eval_model, self.tensors, device=self.device, tag_names=self.tag_names
        )
        scores = {"loss": result.loss, "accuracy": result.accuracy}
        if result.gold_tags is not None and result.predicted_tags is not None:
            scores |= seqeval_scores(result.gold_tags, result.predicted_tags)
        return scores

    def entity_report(self) -> dict[str, Any] | None:
        """NER runs: seqeval's CoNLL-style report of the model as it is on the held-out set
        (logged as text, returned per entity type for the summary); None otherwise."""
        if self.tag_names is None:
            return None
        result = evaluate(
            self.eval_model, self.tensors, device=self.device, tag_names=self.tag_names
        )
        assert result.gold_tags is not None and result.predicted_tags is not None
        gold, predicted = result.gold_tags, result.predicted_tags
        log(INFO, "Entity-level scores on the held-out set:\n%s", seqeval_report(gold, predicted))
        report = seqeval_report(gold, predicted, as_dict=True)
        assert isinstance(report, dict)
        return {k: {m: float(v) for m, v in row.items()} for k, row in report.items()}
