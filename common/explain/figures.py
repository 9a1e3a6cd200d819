"""Figures of explanation documents (matplotlib, Agg backend): feature importance, one bar per
run side by side; top tokens per class, one panel per run and class."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from common.explain.compare import importance  # noqa: E402

FEATURES = 12
TOKENS = 8


def feature_importance(docs: dict[str, dict[str, Any]]) -> Figure:
    """Mean |SHAP| of the top features of the first run, each run's bar beside the others."""
    first = next(iter(docs.values()))
    order = [r["feature"] for r in first["global-importance"][:FEATURES]][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(order) + 1.5))
    height = 0.8 / len(docs)
    y = np.arange(len(order))
    for k, (label, doc) in enumerate(docs.items()):
        values = importance(doc)
        # the first run's bar on top within each feature's group
        offset = (len(docs) - 1 - k) * height
        ax.barh(y + offset, [values.get(f, 0.0) for f in order], height, label=label)
    ax.set_yticks(y + height * (len(docs) - 1) / 2, order)
    ax.set_xlabel("mean |SHAP value| (class probability)")
    ax.set_title("Global feature importance")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def top_tokens(docs: dict[str, dict[str, Any]]) -> Figure:
    """Per run (rows) and class (columns): the tokens with the highest mean attribution."""
    classes = next(iter(docs.values()))["class-names"]
    fig, axes = plt.subplots(
        len(docs), len(classes), figsize=(4 * len(classes), 3 * len(docs)), squeeze=False
    )
    for row, (label, doc) in enumerate(docs.items()):
        for col, name in enumerate(classes):
            ax = axes[row][col]
            rows = doc["top-tokens"].get(name, [])[:TOKENS][::-1]
            ax.barh([r["token"] for r in rows], [r["mean-attribution"] for r in rows])
            ax.set_title(f"{label}: towards '{name}'", fontsize=10)
            ax.set_xlabel("mean attribution (log-odds)")
    fig.tight_layout()
    return fig


def explanation_figures(docs: dict[str, dict[str, Any]]) -> dict[str, Figure]:
    """The figures for documents of one kind: "explanations" (and nothing for no documents)."""
    if not docs:
        return {}
    kind = next(iter(docs.values()))["kind"]
    return {"explanations": feature_importance(docs) if kind == "tabular" else top_tokens(docs)}
