"""What a round's metric records add up to: the figures Flower logs, fedpriv's federated evaluation.

Flower's default (``aggregate_metricrecords``) averages every key of the sites' MetricRecords,
weighted by the strategy's weight key: a mean partition id, status or lifetime epsilon means
nothing. fedpriv hands Flower's strategies ``train_metrics`` (``train_metrics_aggr_fn``) and
returns ``evaluate_metrics`` from its evaluation, so Flower's per-round "Aggregated
MetricRecord" lines hold only:
- ``sites``: the replies aggregated;
- ``train-loss`` (when the sites release it), ``eval-loss``, ``eval-accuracy``: the weighted
  mean sum_k (w_k / W) x_k with W = sum_k w_k, where w_k is the training weight (examples, or 1
  per site under DP-FedAvg) for training, and the examples site k evaluated for evaluation;
- ``epsilon-spent-max`` / ``eval-epsilon-spent-max``: the largest lifetime epsilon a DP site
  reported, i.e. the weakest guarantee among the sites (a mean of epsilons guarantees nothing).
Each site's own values stay in the round's records (server/records.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import MetricRecord, RecordDict

from common.entities import federated_entity_scores, is_count_key

EVAL_WEIGHT = "num-examples"  # an evaluate reply's weight: the (noisy) count it evaluated
MEANS = ("eval-loss", "eval-accuracy")  # the evaluation figures averaged over the sites

# The evaluation figures a train reply may carry (evaluate-with-train): filed as the site's
# evaluation of the model it received, never as training figures.
EVAL_FIGURES = (
    *MEANS,
    "eval-noise-std",
    "eval-dp",
    "eval-epsilon-spent",
    "eval-epsilon-budget",
    "eval-delta",
)


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """sum_k (w_k / W) x_k, W = sum_k w_k, summed in the order Flower's aggregate_metricrecords
    sums it (so the figures equal what Flower's default gave)."""
    total = sum(weights)
    mean = 0.0
    for value, weight in zip(values, weights, strict=True):
        mean += value * (weight / total)
    return mean


def _metrics(records: Iterable[RecordDict]) -> list[Mapping[str, Any]]:
    """The one MetricRecord of each reply (Flower's strategies check there is exactly one)."""
    return [next(iter(record.metric_records.values())) for record in records]


def _largest(metrics: list[Mapping[str, Any]], key: str, dp_key: str) -> dict[str, float]:
    spent = [float(m[key]) for m in metrics if key in m and m.get(dp_key) == 1]
    return {f"{key}-max": max(spent)} if spent else {}


def train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Flower's ``train_metrics_aggr_fn``: sites, their weighted train-loss (when released),
    the largest epsilon spent. ``weight_key``: the strategy's weight (Flower passes it)."""
    metrics = _metrics(records)
    out: dict[str, Any] = {"sites": len(metrics)}
    if metrics and all("train-loss" in m for m in metrics):
        out["train-loss"] = weighted_mean(
            [float(m["train-loss"]) for m in metrics], [float(m[weight_key]) for m in metrics]
        )
    return MetricRecord(out | _largest(metrics, "epsilon-spent", "dp"))


def evaluate_metrics(records: list[RecordDict], weight_key: str = EVAL_WEIGHT) -> MetricRecord:
    """Flower's ``evaluate_metrics_aggr_fn``: sites, eval-loss and eval-accuracy weighted by the
    examples each site evaluated (``num-examples``, whatever ``weight_key``: DP-FedAvg's equal
    weights are for model updates), the largest evaluation epsilon spent."""
    metrics = _metrics(records)
    weights = [float(m[EVAL_WEIGHT]) for m in metrics]
    out: dict[str, Any] = {"sites": len(metrics)}
    for key in MEANS:
        if metrics and all(key in m for m in metrics):
            out[key] = weighted_mean([float(m[key]) for m in metrics], weights)
    return MetricRecord(out | _largest(metrics, "eval-epsilon-spent", "eval-dp"))


def federated_eval(means: Mapping[str, Any], answers: list[Mapping[str, Any]]) -> dict[str, float]:
    """A round's federated evaluation from the sites' evaluate replies: the weighted
    eval-loss/eval-accuracy (``means``), entity precision/recall/F1 of the summed TP/FP/FN
    counts (NER: F1 is not averaged), the noise std of the accuracy."""
    noise = [{k: m.get(k, 0) for k in ("eval-examples", "eval-noise-std")} for m in answers]
    return (
        {k: v for k, v in means.items() if k in MEANS and not is_count_key(k)}
        | federated_entity_scores(answers)
        | accuracy_noise(noise)
    )


def received_eval(sites: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The federated evaluation from evaluations inside train replies (evaluate-with-train):
    sum_k n_k x_k / sum_k n_k over the sites with n_k = eval-examples > 0 (empty if none),
    entity scores of the summed counts, the accuracy's noise std."""
    weighted = [m for m in sites if m.get("eval-examples", 0) > 0]
    total = sum(m["eval-examples"] for m in weighted)
    if not total:
        return {}
    return (
        {k: sum(m[k] * m["eval-examples"] for m in weighted) / total for k in MEANS}
        | federated_entity_scores(weighted)  # NER: F1 of the summed entity counts
        | accuracy_noise(weighted)
    )


def accuracy_noise(sites: Iterable[Any]) -> dict[str, float]:
    """The noise on a federated accuracy from the sites' noisy sums: std of the summed noisy
    correct count sqrt(sum_k s_k^2) over the summed count n (s_k: site k's ``eval-noise-std``);
    0 when every answer was exact."""
    sites = list(sites)
    total = sum(number(m.get("eval-examples", 0)) for m in sites)
    variance = sum(number(m.get("eval-noise-std", 0.0)) ** 2 for m in sites)
    if total <= 0 or variance <= 0:
        return {}
    return {"eval-accuracy-std": math.sqrt(variance) / total}


def number(value: Any) -> float:
    """An untrusted metric as a finite float (0 otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) else 0.0
