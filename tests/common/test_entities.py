"""common/entities.py: entity counts summed over sites give seqeval's scores of the pooled data."""

import numpy as np
import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from common.data.conll import bio_tags
from common.entities import (
    count_metrics,
    entity_counts,
    entity_scores,
    federated_entity_scores,
    seqeval_scores,
    summed_counts,
)

TYPES = ["person", "geo-loc", "company"]
TAGS = bio_tags(TYPES)


def _random_tags(rng: np.random.Generator, n: int) -> list[list[str]]:
    return [list(rng.choice(TAGS, size=rng.integers(1, 12))) for _ in range(n)]


def _noisy(rng: np.random.Generator, gold: list[list[str]]) -> list[list[str]]:
    """Predictions: each tag kept with probability 0.7, else a random tag (I- without B-, too)."""
    return [[t if rng.random() < 0.7 else str(rng.choice(TAGS)) for t in s] for s in gold]


def test_counts_of_a_small_example():
    gold = [["B-person", "I-person", "O", "B-geo-loc"], ["O", "B-company"]]
    pred = [["B-person", "I-person", "O", "B-person"], ["O", "O"]]
    assert entity_counts(gold, pred, TYPES) == {
        "person": (1, 1, 0),
        "geo-loc": (0, 0, 1),
        "company": (0, 0, 1),
    }
    assert count_metrics({"geo-loc": (0, 0, 1)}) == {
        "eval-entity-tp/geo-loc": 0,
        "eval-entity-fp/geo-loc": 0,
        "eval-entity-fn/geo-loc": 1,
    }
    with pytest.raises(ValueError, match="same sentences and lengths"):
        entity_counts(gold, [["O"], ["O", "O"]], TYPES)
    with pytest.raises(ValueError, match="not among"):
        entity_counts([["B-movie"]], [["O"]], TYPES)


def test_summed_site_counts_give_seqeval_scores_of_the_pooled_predictions():
    rng = np.random.default_rng(0)
    sites = []
    for n in (40, 25, 60):
        gold = _random_tags(rng, n)
        sites.append((gold, _noisy(rng, gold)))
    records = [count_metrics(entity_counts(g, p, TYPES)) | {"eval-loss": 1.0} for g, p in sites]
    gold = [s for g, _ in sites for s in g]
    pred = [s for _, p in sites for s in p]

    federated = federated_entity_scores(records)
    assert federated["eval-entity-f1"] == pytest.approx(f1_score(gold, pred))
    assert federated["eval-entity-precision"] == pytest.approx(precision_score(gold, pred))
    assert federated["eval-entity-recall"] == pytest.approx(recall_score(gold, pred))
    assert federated["eval-entity-macro-f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    report = classification_report(gold, pred, output_dict=True)
    for kind in TYPES:
        assert federated[f"eval-entity-f1/{kind}"] == pytest.approx(report[kind]["f1-score"])
    assert 0.1 < federated["eval-entity-f1"] < 0.9  # neither trivial case
    assert seqeval_scores(gold, pred)["entity-f1"] == pytest.approx(federated["eval-entity-f1"])
    assert federated_entity_scores([{"eval-loss": 1.0}]) == {}


def test_no_entities_anywhere_scores_zero_not_nan():
    counts = summed_counts([count_metrics(entity_counts([["O", "O"]], [["O", "O"]], TYPES))])
    assert counts == {k: (0, 0, 0) for k in TYPES}
    scores = entity_scores(counts)
    assert scores["entity-f1"] == 0.0 and scores["entity-macro-f1"] == 0.0


def test_a_record_with_impossible_counts_is_left_out():
    good = count_metrics({"person": (2, 1, 0)})
    bad = count_metrics({"person": (5, 0, 0)}) | {"eval-entity-fn/person": -3}
    half = count_metrics({"person": (1, 0, 0)}) | {"eval-entity-tp/person": 0.5}
    assert summed_counts([good, bad, half]) == {"person": (2, 1, 0)}
