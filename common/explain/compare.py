"""How much two models' explanations agree: rank correlation of their feature (or token)
importance, scipy's Spearman rho and Kendall tau-b over the items both rank."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import kendalltau, spearmanr

TOP = 5


def importance(document: dict[str, Any]) -> dict[str, float]:
    """Item -> importance of an explanation document (features: mean |SHAP|; tokens: mean
    |attribution|)."""
    if document["kind"] == "tabular":
        return {r["feature"]: r["mean-abs-shap"] for r in document["global-importance"]}
    return dict(document["token-importance"])


def rank_agreement(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Spearman and Kendall correlation of the two documents' importance over their common
    items, and the overlap of their top-``TOP`` items."""
    a, b = importance(first), importance(second)
    common = sorted(set(a) & set(b))
    out: dict[str, Any] = {"items-compared": len(common), "spearman": None, "kendall": None}
    if len(common) >= 3:
        x, y = np.array([a[k] for k in common]), np.array([b[k] for k in common])
        if np.ptp(x) > 0 and np.ptp(y) > 0:  # a constant ranking has no correlation
            out["spearman"] = float(spearmanr(x, y).statistic)
            out["kendall"] = float(kendalltau(x, y).statistic)
    top_a = sorted(a, key=lambda k: -a[k])[:TOP]
    top_b = sorted(b, key=lambda k: -b[k])[:TOP]
    out |= {"top": [top_a, top_b], "top-shared": sorted(set(top_a) & set(top_b))}
    return out
