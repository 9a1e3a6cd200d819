"""The explanation document of a saved model on a set of records (JSON-ready dict).

Tabular: SHAP values of the class probabilities for every record (``common.explain.tabular``),
the global ranking (mean |phi| per feature) and per-record explanations. Text: predictions on
the records, then integrated-gradients token attributions (``common.explain.text``) for a
sample of correct and wrong predictions (a random sample when no labels are known), and the
tokens with the highest mean attribution per class. Used by the coordinator's report and by a
site's ``fedpriv-explain``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from common.explain.saved_model import SavedModel

Progress = Callable[[str, int, int], None]

TABULAR_RECORDS = 200
TEXT_PREDICTED = 512
TEXT_PER_GROUP = 12
TOP_TOKENS = 10


def sample(
    labels: np.ndarray | None, predicted: np.ndarray, per_group: int, seed: int
) -> dict[str, np.ndarray]:
    """Sorted indices of up to ``per_group`` correct and ``per_group`` wrong predictions (without
    labels: ``2 * per_group`` records under "unlabelled"), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    if labels is None:
        groups = {"unlabelled": np.arange(len(predicted))}
        per_group *= 2
    else:
        groups = {
            "correct": np.flatnonzero(labels == predicted),
            "wrong": np.flatnonzero(labels != predicted),
        }
    return {
        name: np.sort(rng.choice(idx, min(per_group, len(idx)), replace=False))
        for name, idx in groups.items()
    }


def _record(
    index: int, labels: np.ndarray | None, probabilities: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    predicted = int(probabilities.argmax())
    out: dict[str, Any] = {
        "index": int(index),
        "predicted": names[predicted],
        "probability": float(probabilities[predicted]),
    }
    if labels is not None:
        out |= {"label": names[int(labels[index])], "correct": int(labels[index]) == predicted}
    return out


def _check_labels(labels: np.ndarray | None, n: int, classes: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} records")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be class indices 0..{classes - 1} of the model")
    return labels


def explain_tabular(
    saved: SavedModel,
    features: np.ndarray,
    feature_names: Sequence[str],
    labels: np.ndarray | None = None,
    *,
    background: np.ndarray | None = None,
    max_records: int = TABULAR_RECORDS,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """SHAP explanation of up to ``max_records`` records (a seeded sample of ``features``);
    ``background`` (default: ``features``) is the reference set for absent features."""
    from common.explain.tabular import shap_values

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != saved.num_features:
        raise ValueError(
            f"the model takes {saved.num_features} features per record; the data have "
            f"{features.shape[1] if features.ndim == 2 else features.shape}"
        )
    if len(feature_names) != features.shape[1]:
        raise ValueError(f"{len(feature_names)} feature names for {features.shape[1]} features")
    if len(features) == 0:
        raise ValueError("no records to explain")
    labels = _check_labels(labels, len(features), len(saved.class_names))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(features), min(max_records, len(features)), replace=False))
    result = shap_values(
        saved.model,
        features[chosen],
        features if background is None else background,
        seed=seed,
        progress=None if progress is None else (lambda d, n: progress("SHAP values", d, n)),
    )
    names = saved.class_names
    records = []
    for row, index in enumerate(chosen):
        c = int(result.predicted[row])
        records.append(
            _record(index, labels, result.probabilities[row], names)
            | {
                "values": [float(v) for v in features[index]],
                "shap": [float(v) for v in result.values[row, :, c]],
                "expected-value": float(result.expected[c]),
            }
        )
    importance = result.global_importance()
    order = np.argsort(-importance, kind="stable")
    additivity = result.values.sum(axis=1) + result.expected - result.probabilities
    return {
        "kind": "tabular",
        "method": "SHAP (shap KernelExplainer, interventional, class probabilities)",
        "model": {"path": str(saved.path), "sha256": saved.sha256},
        "class-names": list(names),
        "features": list(feature_names),
        "records-explained": len(chosen),
        "records-given": len(features),
        "expected-value": [float(v) for v in result.expected],
        "global-importance": [
            {"feature": feature_names[j], "mean-abs-shap": float(importance[j])} for j in order
        ],
        "additivity-max-error": float(np.abs(additivity).max()),
        "records": records,
    }


def explain_text(
    saved: SavedModel,
    texts: Sequence[str],
    labels: np.ndarray | None = None,
    *,
    max_length: int = 64,
    max_predicted: int = TEXT_PREDICTED,
    per_group: int = TEXT_PER_GROUP,
    n_steps: int = 50,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Predictions on up to ``max_predicted`` texts (a seeded sample), then integrated-gradients
    token attributions for up to ``per_group`` correct and ``per_group`` wrong ones."""
    from common.explain.text import predict, token_attributions, token_importance, token_table

    assert saved.tokenizer is not None
    if not texts:
        raise ValueError("no texts to explain")
    labels = _check_labels(labels, len(texts), len(saved.class_names))
    rng = np.random.default_rng(seed)
    pool = np.sort(rng.choice(len(texts), min(max_predicted, len(texts)), replace=False))
    pool_texts = [texts[i] for i in pool]
    if progress is not None:
        progress("predictions", 0, len(pool))
    probabilities = predict(saved.model, saved.tokenizer, pool_texts, max_length)
    if progress is not None:
        progress("predictions", len(pool), len(pool))
    predicted = probabilities.argmax(axis=1)
    groups = sample(None if labels is None else labels[pool], predicted, per_group, seed)
    chosen = np.sort(np.concatenate(list(groups.values())))
    explained = token_attributions(
        saved.model,
        saved.tokenizer,
        [pool_texts[i] for i in chosen],
        [int(predicted[i]) for i in chosen],
        max_length=max_length,
        n_steps=n_steps,
        progress=None if progress is None else (lambda d, n: progress("attributions", d, n)),
    )
    names = saved.class_names
    special = saved.tokenizer.all_special_tokens
    records = [
        _record(pool[i], labels, probabilities[i], names)
        | {
            "tokens": e.tokens,
            "attributions": e.attributions,
            "output-difference": e.output_difference,
            "delta": e.delta,
            "steps": e.steps,
        }
        for i, e in zip(chosen, explained, strict=True)
    ]
    accuracy = None if labels is None else float(np.mean(labels[pool] == predicted))
    return {
        "kind": "text",
        "method": (
            "integrated gradients on the input embeddings (Captum LayerIntegratedGradients, "
            f"{n_steps}+ steps, [PAD] baseline), towards the predicted class's log-odds"
        ),
        "model": {"path": str(saved.path), "sha256": saved.sha256},
        "class-names": list(names),
        "records-given": len(texts),
        "records-predicted": len(pool),
        "accuracy-on-predicted": accuracy,
        "sample": {name: len(idx) for name, idx in groups.items()},
        "max-abs-delta": max((abs(e.delta) for e in explained), default=0.0),
        "top-tokens": {
            names[c]: [
                {"token": t, "mean-attribution": m, "count": k} for t, m, k in rows[:TOP_TOKENS]
            ]
            for c, rows in token_table(explained, special).items()
        },
        "token-importance": token_importance(explained, special),
        "records": records,
    }
