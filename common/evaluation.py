"""Evaluation of a classifier on a labelled dataset: mean cross-entropy and accuracy; for a token
classifier (NER) also the predicted tags and entity counts (see ``common.entities``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.data.conll import entity_types
from common.entities import Counts, count_metrics, entity_counts
from common.models.losses import TokenCrossEntropy
from common.models.tokens import IGNORE_INDEX


@dataclass(frozen=True)
class EvalResult:
    """loss: mean cross-entropy per example; accuracy: fraction of argmax predictions equal to
    the label (per scored word for a token classifier); num_examples: n.

    Token classifiers only (else None/empty): ``entities`` (TP, FP, FN) per entity type;
    ``gold_tags`` / ``predicted_tags``: per sentence, the tag of each scored word (these stay
    where they were computed; only counts leave a site).
    """

    loss: float
    accuracy: float
    num_examples: int
    entities: Counts | None = None
    gold_tags: list[list[str]] | None = None
    predicted_tags: list[list[str]] | None = None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str,
    tag_names: Sequence[str] | None = None,
) -> EvalResult:
    """Evaluate ``model`` (``model(*inputs)`` gives logits) on tuples ``(*inputs, label)``.

    tag_names: the name of each tag index; needed when labels are per token ([n, T] with -100
    where not scored) to count entities.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.to(device)
    model.eval()
    token_level = dataset[0][-1].dim() > 0
    if token_level and tag_names is None:
        raise ValueError("evaluating a token classifier needs the tag names")
    token_loss = TokenCrossEntropy(reduction="sum")
    loss_sum, correct, scored = 0.0, 0, 0
    gold: list[list[str]] = []
    predicted: list[list[str]] = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        *inputs, labels = (t.to(device) for t in batch)
        logits = model(*inputs)
        if not token_level:
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(dim=-1) == labels).sum().item()
            continue
        loss_sum += token_loss(logits, labels).item()
        guess = logits.argmax(dim=-1)
        mask = labels != IGNORE_INDEX
        correct += (guess[mask] == labels[mask]).sum().item()
        scored += int(mask.sum().item())
        assert tag_names is not None
        for row_labels, row_guess, row_mask in zip(labels, guess, mask, strict=True):
            gold.append([tag_names[i] for i in row_labels[row_mask].tolist()])
            predicted.append([tag_names[i] for i in row_guess[row_mask].tolist()])
    if not token_level:
        return EvalResult(loss=loss_sum / n, accuracy=correct / n, num_examples=n)
    assert tag_names is not None
    types = entity_types(tag_names)
    return EvalResult(
        loss=loss_sum / n,
        accuracy=correct / scored if scored else 0.0,
        num_examples=n,
        entities=entity_counts(gold, predicted, types),
        gold_tags=gold,
        predicted_tags=predicted,
    )


def eval_metrics(result: EvalResult) -> dict[str, float | int]:
    """The scalar metrics a site reports for an evaluation: eval-loss, eval-accuracy and, for a
    token classifier, the entity counts (``common.entities.count_metrics``)."""
    metrics: dict[str, float | int] = {"eval-loss": result.loss, "eval-accuracy": result.accuracy}
    if result.entities is not None:
        metrics |= count_metrics(result.entities)
    return metrics


@torch.no_grad()
def per_example(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 256, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example cross-entropy and argmax prediction on tuples ``(*inputs, label)``; these
    stay at the site (the membership audit and group counts reduce them to aggregates)."""
    model.to(device)
    model.eval()
    losses, predictions = [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        *inputs, labels = (t.to(device) for t in batch)
        logits = model(*inputs)
        losses.append(nn.functional.cross_entropy(logits, labels, reduction="none").cpu())
        predictions.append(logits.argmax(dim=-1).cpu())
    return torch.cat(losses).numpy(), torch.cat(predictions).numpy()


@dataclass(frozen=True)
class RecordOutcomes:
    """What a model did on each record (these stay at the site): ``losses`` [n] (per-record
    cross-entropy; a sentence's mean over its scored words), ``correct`` [n] (1/0; a sentence's
    share of correctly tagged words), ``predictions`` [n] (classification only) and, for a token
    classifier, each sentence's own entity counts."""

    losses: np.ndarray
    correct: np.ndarray
    predictions: np.ndarray | None = None
    entities: list[Counts] | None = None


@torch.no_grad()
def record_outcomes(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device | str,
    tag_names: Sequence[str] | None = None,
    batch_size: int = 64,
) -> RecordOutcomes:
    """Per-record losses and correctness of ``model`` on tuples ``(*inputs, label)`` (labels
    [n] for a classifier, [n, T] with -100 where not scored for a token classifier)."""
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.to(device)
    model.eval()
    token_level = dataset[0][-1].dim() > 0
    if token_level and tag_names is None:
        raise ValueError("evaluating a token classifier needs the tag names")
    token_loss = TokenCrossEntropy(reduction="none")
    losses, correct, predictions = [], [], []
    entities: list[Counts] = []
    types = entity_types(tag_names) if token_level and tag_names is not None else []
    for batch in DataLoader(dataset, batch_size=batch_size):
        *inputs, labels = (t.to(device) for t in batch)
        logits = model(*inputs)
        if not token_level:
            losses.append(nn.functional.cross_entropy(logits, labels, reduction="none").cpu())
            guess = logits.argmax(dim=-1)
            correct.append((guess == labels).float().cpu())
            predictions.append(guess.cpu())
            continue
        losses.append(token_loss(logits, labels).cpu())
        guess = logits.argmax(dim=-1)
        mask = labels != IGNORE_INDEX
        hits = ((guess == labels) & mask).sum(dim=1).float()
        correct.append((hits / mask.sum(dim=1).clamp(min=1)).cpu())
        assert tag_names is not None
        for row_labels, row_guess, row_mask in zip(labels, guess, mask, strict=True):
            gold = [tag_names[i] for i in row_labels[row_mask].tolist()]
            pred = [tag_names[i] for i in row_guess[row_mask].tolist()]
            entities.append(entity_counts([gold], [pred], types))
    return RecordOutcomes(
        losses=torch.cat(losses).numpy(),
        correct=torch.cat(correct).numpy(),
        predictions=None if token_level else torch.cat(predictions).numpy(),
        entities=entities if token_level else None,
    )
