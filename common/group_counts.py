"""Per-group confusion counts: what a site sends for fairness, and how the keys encode groups.

A site counts, for each value g of the sensitive column on its evaluation records, TP, FP, TN,
FN of the binary prediction (positive class = class index 1). Only these four integers per group
leave the site, as scalar metrics ``group/<g percent-encoded>/<tp|fp|tn|fn>`` (percent-encoding
keeps any group name, e.g. "VA Long Beach" or "a/b", one unambiguous key segment). The server
sums them over sites; accuracy, TPR and selection rate follow from the sums (server.fairness).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, unquote

import numpy as np

from common.data.types import LabeledData

PREFIX = "group/"
CELLS = ("tp", "fp", "tn", "fn")

Counts = dict[str, int]  # cell -> count


def confusion_by_group(
    labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray
) -> dict[str, Counts]:
    """TP, FP, TN, FN of ``predictions`` against ``labels`` (0/1) for each value of ``groups``."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    groups = np.asarray(groups).astype(str)
    if not (len(labels) == len(predictions) == len(groups)):
        raise ValueError(
            f"labels, predictions and groups differ in length: "
            f"{len(labels)}, {len(predictions)}, {len(groups)}"
        )
    for name, values in (("labels", labels), ("predictions", predictions)):
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"group counts need binary {name} (0/1), got {np.unique(values)}")
    out: dict[str, Counts] = {}
    for group in np.unique(groups):
        y, p = labels[groups == group], predictions[groups == group]
        out[str(group)] = {
            "tp": int(((y == 1) & (p == 1)).sum()),
            "fp": int(((y == 0) & (p == 1)).sum()),
            "tn": int(((y == 0) & (p == 0)).sum()),
            "fn": int(((y == 1) & (p == 0)).sum()),
        }
    return out


def to_metrics(counts: Mapping[str, Counts]) -> dict[str, int]:
    """Flat scalar metrics ``group/<g>/<cell>`` of per-group counts."""
    return {
        f"{PREFIX}{quote(group, safe='')}/{cell}": int(cells[cell])
        for group, cells in counts.items()
        for cell in CELLS
    }


def from_metrics(metrics: Mapping[str, object]) -> dict[str, Counts]:
    """Per-group counts from a reply's metrics (other keys are ignored); ValueError when a
    group lacks a cell or a count is not a non-negative integer."""
    out: dict[str, Counts] = {}
    for key, value in metrics.items():
        if not key.startswith(PREFIX):
            continue
        encoded, _, cell = key[len(PREFIX) :].rpartition("/")
        if cell not in CELLS or not encoded:
            raise ValueError(f"malformed group-count key {key!r}")
        if isinstance(value, bool) or not float(value).is_integer() or float(value) < 0:  # type: ignore[arg-type]
            raise ValueError(f"group count {key} must be a non-negative integer, got {value!r}")
        out.setdefault(unquote(encoded), {})[cell] = int(value)  # type: ignore[call-overload]
    for group, cells in out.items():
        missing = sorted(set(CELLS) - set(cells))
        if missing:
            raise ValueError(f"group {group!r} lacks counts {missing}")
    return out


def sum_counts(per_site: list[dict[str, Counts]]) -> dict[str, Counts]:
    """Cell-wise sums over sites (a group absent at a site counts 0 there)."""
    total: dict[str, Counts] = {}
    for counts in per_site:
        for group, cells in counts.items():
            into = total.setdefault(group, dict.fromkeys(CELLS, 0))
            for cell in CELLS:
                into[cell] += cells[cell]
    return dict(sorted(total.items()))


def sensitive_values(records: LabeledData, column: str) -> np.ndarray:
    """The sensitive column's value per record; ValueError when it cannot be counted."""
    if column not in records.columns:
        raise ValueError(
            f"sensitive-column {column!r} is not a column of these records; "
            f"its columns: {sorted(records.columns) or 'none'}"
        )
    if records.num_classes != 2:
        raise ValueError(
            f"group counts need a binary task (positive class = class 1); this one has "
            f"{records.num_classes} classes {records.class_names}"
        )
    return np.asarray(records.columns[column]).astype(str)
