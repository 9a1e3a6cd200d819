"""Evaluation of a classifier on a labelled dataset: mean cross-entropy and accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class EvalResult:
    """loss: mean cross-entropy per example; accuracy: fraction of argmax predictions equal to
    the label; num_examples: n."""

    loss: float
    accuracy: float
    num_examples: int


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 64, device: torch.device | str
) -> EvalResult:
    """Evaluate ``model`` (``model(*inputs)`` gives logits) on tuples ``(*inputs, label)``."""
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.to(device)
    model.eval()
    loss_sum, correct = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        *inputs, labels = (t.to(device) for t in batch)
        logits = model(*inputs)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
    return EvalResult(loss=loss_sum / n, accuracy=correct / n, num_examples=n)


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
