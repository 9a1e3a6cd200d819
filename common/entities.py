"""Entity-level scores of a tagger (NER) that federate exactly: sites send counts, not scores.

An entity is a maximal span of BIO tags of one type (seqeval's ``get_entities``, the conlleval
rules). Per type t: TP_t = predicted spans equal to a gold span (same type, start and end),
FP_t = predicted spans - TP_t, FN_t = gold spans - TP_t. Precision = TP / (TP + FP), recall =
TP / (TP + FN), F1 = 2PR / (P + R); micro sums the counts over types, macro averages the per-type
F1 over the types that occur (gold or predicted), as seqeval does. Counts add up across sites,
so the server's F1 from the summed counts equals seqeval's F1 on all sites' predictions pooled.

Metric keys a site sends (scalars, MetricRecord): ``eval-entity-tp/<type>``, ``.../fp/...``,
``.../fn/...`` for every entity type of the run's tag set (0 where none occur).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

log = logging.getLogger("fedpriv.entities")

COUNT_PREFIX = "eval-entity-"
COUNTS = ("tp", "fp", "fn")

Counts = dict[str, tuple[int, int, int]]  # entity type -> (TP, FP, FN)


def entity_counts(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], types: Iterable[str]
) -> Counts:
    """(TP, FP, FN) per entity type over sentences of gold and predicted tags (same lengths)."""
    from seqeval.metrics.sequence_labeling import get_entities

    if len(gold) != len(predicted) or any(
        len(g) != len(p) for g, p in zip(gold, predicted, strict=True)
    ):
        raise ValueError("gold and predicted tags must have the same sentences and lengths")
    true_spans = set(get_entities([list(s) for s in gold]))
    pred_spans = set(get_entities([list(s) for s in predicted]))
    counts: Counts = {}
    for kind in types:
        t = {s for s in true_spans if s[0] == kind}
        p = {s for s in pred_spans if s[0] == kind}
        hits = len(t & p)
        counts[kind] = (hits, len(p) - hits, len(t) - hits)
    unknown = {s[0] for s in true_spans | pred_spans} - set(counts)
    if unknown:
        raise ValueError(f"entity types {sorted(unknown)} are not among {sorted(counts)}")
    return counts


def count_metrics(counts: Counts) -> dict[str, int]:
    """The scalar metrics a site sends: ``eval-entity-tp/<type>`` etc."""
    return {
        f"{COUNT_PREFIX}{name}/{kind}": value[i]
        for kind, value in counts.items()
        for i, name in enumerate(COUNTS)
    }


def is_count_key(key: str) -> bool:
    return key.startswith(COUNT_PREFIX) and key[len(COUNT_PREFIX) :].split("/", 1)[0] in COUNTS


def summed_counts(records: Iterable[Mapping[str, float | int]]) -> Counts:
    """Per-type (TP, FP, FN) summed over the sites' metric records (keys of ``count_metrics``).
    A record holding a count that is not a whole number >= 0 is left out (and logged)."""
    totals: dict[str, list[int]] = {}
    for record in records:
        counts = {k: v for k, v in record.items() if is_count_key(k)}
        bad = [k for k, v in counts.items() if not (math.isfinite(v) and v >= 0 and v == int(v))]
        if bad:
            log.warning("entity counts %s are not whole numbers >= 0: record left out", bad[:3])
            continue
        for key, value in counts.items():
            name, kind = key[len(COUNT_PREFIX) :].split("/", 1)
            totals.setdefault(kind, [0, 0, 0])[COUNTS.index(name)] += int(value)
    return {kind: (v[0], v[1], v[2]) for kind, v in totals.items()}


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(counts: Counts) -> dict[str, float]:
    """Micro precision/recall/F1, macro F1 and per-type F1 (``entity-f1/<type>``) from counts."""
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    precision, recall, f1 = _prf(tp, fp, fn)
    occurring = {k: c for k, c in counts.items() if c[0] + c[1] + c[2] > 0}
    per_type = {k: _prf(*c)[2] for k, c in occurring.items()}
    macro = sum(per_type.values()) / len(per_type) if per_type else 0.0
    return {
        "entity-precision": precision,
        "entity-recall": recall,
        "entity-f1": f1,
        "entity-macro-f1": macro,
        **{f"entity-f1/{k}": v for k, v in sorted(per_type.items())},
    }


def federated_entity_scores(records: Iterable[Mapping[str, float | int]]) -> dict[str, float]:
    """``eval-entity-f1`` etc. from the counts summed over the sites' records ({} if none hold
    entity counts: not a token-classification run)."""
    records = list(records)
    if not any(is_count_key(k) for r in records for k in r):
        return {}
    return {f"eval-{k}": v for k, v in entity_scores(summed_counts(records)).items()}


def seqeval_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """seqeval's own micro precision/recall/F1 and macro F1 (default conlleval mode)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    args = {"y_true": gold, "y_pred": predicted, "zero_division": 0}
    return {
        "entity-precision": float(precision_score(**args)),
        "entity-recall": float(recall_score(**args)),
        "entity-f1": float(f1_score(**args)),
        "entity-macro-f1": float(f1_score(**args, average="macro")),
    }


def seqeval_report(
    gold: list[list[str]], predicted: list[list[str]], as_dict: bool = False
) -> str | dict:
    """seqeval's CoNLL-style report: precision, recall, F1 and support per entity type, then
    micro / macro / weighted averages (a dict of them when ``as_dict``)."""
    from seqeval.metrics import classification_report

    return classification_report(gold, predicted, digits=4, zero_division=0, output_dict=as_dict)
