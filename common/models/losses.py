"""Per-example losses for DP-SGD: each example's loss a function of that example alone."""

from __future__ import annotations

import torch
from torch import nn


class TokenCrossEntropy(nn.Module):
    """Cross-entropy of a token classifier with one loss per example: logits [B, T, C], labels
    [B, T]; example b's loss is the mean over its own scored tokens (labels != ignore_index),
    weighted by tag when ``weight`` (w, one per tag) is given:
    loss_b = sum_t w[y_bt] CE_bt / sum_t w[y_bt]. A weight below 1 on the O tag keeps the
    entity tokens from drowning in a sentence's loss; the weights are public settings, never
    counted from the data, so each loss stays a function of its own sentence (per-example DP).

    Our own (a few lines) because torch's CrossEntropyLoss(ignore_index) divides by the batch's
    total token count, which couples examples: DP-SGD needs each example's gradient to depend on
    that example alone. reduction "mean" averages the per-example losses (Opacus's convention),
    "sum" adds them, "none" returns them ([B]); Opacus's ghost clipping switches to "none" to get
    the per-example losses (the same per-sequence mean its own ``shape=`` path computes).
    """

    def __init__(
        self,
        reduction: str = "mean",
        ignore_index: int = -100,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.ignore_index = ignore_index
        if weight is not None and not (weight.dim() == 1 and bool((weight > 0).all())):
            raise ValueError(f"tag weights must be a vector of positive numbers, got {weight}")
        self.weight = weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_token = nn.functional.cross_entropy(
            logits.flatten(0, 1),
            labels.flatten(),
            ignore_index=self.ignore_index,
            reduction="none",
        ).view(labels.shape)
        scored = labels != self.ignore_index
        if self.weight is None:
            token_weight = scored.to(per_token.dtype)
        else:
            w = self.weight.to(per_token.device, per_token.dtype)
            token_weight = torch.where(scored, w[labels.clamp(min=0)], 0.0)
        per_example = (per_token * token_weight).sum(dim=1) / token_weight.sum(dim=1).clamp(
            min=torch.finfo(per_token.dtype).tiny
        )
        if self.reduction == "none":
            return per_example
        if self.reduction == "sum":
            return per_example.sum()
        if self.reduction == "mean":
            return per_example.mean()
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {self.reduction!r}")
