"""Every training reply is checked before aggregation; a bad one is rejected with its reason.

Our own code: Flower's FedAvg checks only that replies agree with each other, and rejects the
whole round when one does not, so one broken or hostile site could stop every round. Here each
reply is held against the global model that was sent: exactly the expected arrays, shapes and
dtypes; finite values; an update norm ||w_site - w_global||_2 within a bound; the metrics a
site reports, present and sane.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import RecordDict

from common.protocol.records import ARRAYS, DECISION, METRICS, TRAIN_METRIC_KEYS

MAX_EXAMPLES = 1_000_000_000


def check_train_reply(
    content: RecordDict, sent: Mapping[str, np.ndarray], max_update_norm: float = 0.0
) -> str | None:
    """The reason ``content`` must not be aggregated, or None if it may.

    sent: the global model's trainable arrays sent this round; max_update_norm: bound on the
    L2 norm of the update over all arrays (0 = no bound).
    """
    extra = sorted(set(content.keys()) - {ARRAYS, METRICS, DECISION})
    if extra:
        return f"unexpected records {extra}"
    if ARRAYS not in content.array_records or METRICS not in content.metric_records:
        return "no arrays or no metrics record"
    metrics = dict(content[METRICS])
    reason = _check_metrics(metrics)
    if reason:
        return reason
    arrays = {key: array.numpy() for key, array in content[ARRAYS].items()}
    missing, unknown = sorted(set(sent) - set(arrays)), sorted(set(arrays) - set(sent))
    if missing or unknown:
        return f"array keys differ from the model's: missing {missing}, unexpected {unknown}"
    squared = 0.0
    for key, expected in sent.items():
        got = arrays[key]
        if got.shape != expected.shape:
            return f"array {key} has shape {got.shape}, expected {expected.shape}"
        if got.dtype != expected.dtype:
            return f"array {key} has dtype {got.dtype}, expected {expected.dtype}"
        if not np.isfinite(got).all():
            return f"array {key} holds NaN or infinite values"
        squared += float(np.sum((got.astype(np.float64) - expected.astype(np.float64)) ** 2))
    norm = math.sqrt(squared)
    if max_update_norm and norm > max_update_norm:
        return f"update norm {norm:.4g} exceeds the bound {max_update_norm:g}"
    return None


def _check_metrics(metrics: dict[str, object]) -> str | None:
    missing = sorted(set(TRAIN_METRIC_KEYS) - set(metrics))
    if missing:
        return f"metrics lack {missing}"
    for key in TRAIN_METRIC_KEYS:
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric {key} is not a number: {value!r}"
        if key != "epsilon-spent" and not math.isfinite(value):  # inf epsilon = non-private
            return f"metric {key} is not finite: {value}"
    examples = metrics["num-examples"]
    if not (isinstance(examples, int) or float(examples).is_integer()) or not (
        1 <= examples <= MAX_EXAMPLES
    ):
        return f"num-examples must be a whole number in [1, {MAX_EXAMPLES:g}], got {examples}"
    if metrics["epsilon-spent"] < 0 or metrics["delta"] < 0 or metrics["steps"] < 0:  # type: ignore[operator]
        return "negative epsilon, delta or steps"
    return None
