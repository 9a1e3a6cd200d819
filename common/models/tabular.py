"""Small classifiers for tabular features: logistic regression and a one-hidden-layer MLP."""

from __future__ import annotations

import torch
from torch import nn

TABULAR_KINDS = ("logreg", "mlp")


class TabularClassifier(nn.Module):
    """``logits = model(features)`` for a float32 batch of shape (B, num_features).

    Keeps its own spec (kind, sizes) so that it can be saved and rebuilt (see ``save.py``).
    """

    def __init__(self, kind: str, num_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        if kind not in TABULAR_KINDS:
            raise ValueError(f"unknown tabular model kind {kind!r}; known kinds: {TABULAR_KINDS}")
        if num_features < 1 or num_classes < 2 or hidden < 1:
            raise ValueError(
                f"tabular model needs num_features >= 1, num_classes >= 2, hidden >= 1; "
                f"got {num_features}, {num_classes}, {hidden}"
            )
        self.kind = kind
        self.num_features = num_features
        self.num_classes = num_classes
        self.hidden = hidden
        if kind == "logreg":
            self.net = nn.Sequential(nn.Linear(num_features, num_classes))
        else:
            self.net = nn.Sequential(
                nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def build_tabular_model(
    kind: str, num_features: int, num_classes: int, hidden: int = 64
) -> TabularClassifier:
    """A fresh tabular classifier: "logreg" (one Linear) or "mlp" (Linear-ReLU-Linear with
    ``hidden`` units)."""
    return TabularClassifier(kind, num_features, num_classes, hidden)
