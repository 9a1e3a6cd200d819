"""common/privacy/fingerprint.py: the key a site's spend is recorded under.

Same records in any order -> same key (spend composes across runs); any changed record -> new key.
"""

import numpy as np
import pytest

from common.data.types import LabeledData
from common.privacy.fingerprint import dataset_fingerprint


def tabular(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return LabeledData(
        kind="tabular",
        labels=rng.integers(0, 3, n).astype(np.int64),
        class_names=["a", "b", "c"],
        features=rng.normal(size=(n, 5)).astype(np.float32),
        feature_names=[f"x{i}" for i in range(5)],
    )


def text(n=20):
    return LabeledData(
        kind="text",
        labels=np.arange(n, dtype=np.int64) % 2,
        class_names=["neg", "pos"],
        texts=[f"review number {i}: fine, I guess" for i in range(n)],
    )


def with_features(data, features):
    return LabeledData("tabular", data.labels, data.class_names, features=features)


def with_labels(data, labels):
    return LabeledData(
        data.kind, labels, data.class_names, features=data.features, texts=data.texts
    )


@pytest.mark.parametrize("make", [tabular, text])
def test_is_a_sha256_hex_digest_stable_across_calls(make):
    key = dataset_fingerprint(make())
    assert len(key) == 64 and int(key, 16) >= 0
    assert dataset_fingerprint(make()) == key


@pytest.mark.parametrize("make", [tabular, text])
def test_same_records_in_another_order_give_the_same_fingerprint(make):
    data = make()
    order = np.random.default_rng(1).permutation(len(data))
    assert not np.array_equal(order, np.arange(len(data)))
    assert dataset_fingerprint(data.subset(order)) == dataset_fingerprint(data)
    assert dataset_fingerprint(data.subset(order[::-1])) == dataset_fingerprint(data)


def test_one_changed_feature_changes_the_fingerprint():
    data = tabular()
    features = data.features.copy()
    features[7, 3] += 1e-3
    assert dataset_fingerprint(with_features(data, features)) != dataset_fingerprint(data)


def test_swapping_values_between_records_changes_the_fingerprint():
    data = tabular()
    features = data.features.copy()
    features[[0, 1], 2] = features[[1, 0], 2]  # same multiset of values, different records
    assert dataset_fingerprint(with_features(data, features)) != dataset_fingerprint(data)


@pytest.mark.parametrize("make", [tabular, text])
def test_one_changed_label_changes_the_fingerprint(make):
    data = make()
    labels = data.labels.copy()
    labels[5] = (labels[5] + 1) % data.num_classes
    assert dataset_fingerprint(with_labels(data, labels)) != dataset_fingerprint(data)


def test_one_changed_text_changes_the_fingerprint():
    data = text()
    texts = list(data.texts)
    texts[3] = texts[3].replace("fine", "Fine")
    changed = LabeledData("text", data.labels, data.class_names, texts=texts)
    assert dataset_fingerprint(changed) != dataset_fingerprint(data)


@pytest.mark.parametrize("make", [tabular, text])
def test_a_removed_or_duplicated_record_changes_the_fingerprint(make):
    data = make()
    key = dataset_fingerprint(data)
    assert dataset_fingerprint(data.subset(np.arange(1, len(data)))) != key
    assert dataset_fingerprint(data.subset(np.r_[np.arange(len(data)), 0])) != key


def test_tagged_sentences_fingerprint_covers_words_and_tags():
    from common.data.conll import bio_tags, tagged_data

    tags = bio_tags(["person"])
    words = [["Ann", "said"], ["ok"], ["Bo"]]
    data = tagged_data(words, [np.array([1, 0]), np.array([0]), np.array([1])], tags)
    same = data.subset(np.array([2, 0, 1]))
    # same words, same sentence strata (labels), one tag changed: B-person -> I-person
    other_tag = tagged_data(words, [np.array([2, 0]), np.array([0]), np.array([1])], tags)
    assert other_tag.labels.tolist() == data.labels.tolist()
    other_word = tagged_data(
        [["Ann", "says"], ["ok"], ["Bo"]], [np.array([1, 0]), np.array([0]), np.array([1])], tags
    )
    assert dataset_fingerprint(data) == dataset_fingerprint(same)
    assert dataset_fingerprint(data) != dataset_fingerprint(other_tag)
    assert dataset_fingerprint(data) != dataset_fingerprint(other_word)
